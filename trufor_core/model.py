"""TruFor: Noiseprint++ + dual MiT-B2 encoder + anomaly/confidence decoders + detection."""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import EvalConfig, TruForConfig
from .decoder import MLPDecoder
from .encoder import DualMiT
from .noiseprint import DnCNN
from .pooling import confpool_features, detection_head
from .result import TruForOutput

# Reduced precision runs the SegFormer encoder and the decoders' convolutions/matmuls under
# torch.autocast. Always in the model's dtype, because measurement says so (BENCHMARKS.md, "Reduced
# precision"): the Noiseprint++ DnCNN (a faint residual through 17 layers: in bf16 the noiseprint
# moved by up to 0.79 and the score by 0.149; kept in float32, 0 and 0.004), the upsampling of the
# logits, the confidence-weighted pooling (softmin/softmax over every pixel) and the detection head.
# fp32 = no autocast at all.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_HELP = ("fp32 (exact), or bf16/fp16: autocast the SegFormer encoder and decoders (Noiseprint++, pooling "
                  "and detection stay in the model dtype); measured deviations in docs/scanning.md \"Reduced precision\"")


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The context a forward runs in for ``precision`` (fp32: nothing changes)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=PRECISIONS[precision])


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """Where a result was computed, down to the kernel family float32 rounding depends on.

    e.g. ``cpu (AVX512, 2 threads)``, ``cpu (DEFAULT, oneDNN ISA <= SSE41, 1 threads)`` or
    ``cuda:0 (NVIDIA H100 80GB HBM3, sm_90)``: float32 outputs of different kernels differ by up
    to ~1e-4 on the score (docs/numerics.md), so a reader can tell why two rows do.
    """
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, sm_{major}{minor})"
    parts = [torch.backends.cpu.get_cpu_capability()]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if isa:
        parts.append(f"oneDNN ISA <= {isa}")
    parts.append(f"{torch.get_num_threads()} threads")
    return f"{device} ({', '.join(parts)})"


class ImageTooSmallError(ValueError):
    """The image is smaller than the encoder's spatial-reduction convolutions allow."""


def min_image_side(cfg: TruForConfig) -> int:
    """Smallest side for which every stage's sr conv sees at least one full window."""
    # Walk the stages backwards: stage i needs a grid of at least sr_i cells.
    need = 1
    for i in reversed(range(4)):
        need = max(need, cfg.sr_ratios[i])
        stride = 4 if i == 0 else 2
        # grid = (prev - 1) // stride + 1 >= need  <=>  prev >= (need - 1) * stride + 1
        need = (need - 1) * stride + 1
    return need


class TruFor(nn.Module):
    """The official TruFor inference model; submodule names match ``trufor.pth.tar``.

    Input: (B, 3, H, W) uint8 RGB / 256 in the model's dtype. Output: ``TruForOutput``.
    The whole computation follows the model's dtype, constants included (``model.double()`` is
    float64 everywhere), so a float64 model is exact to float64 rounding.
    """

    def __init__(self, cfg: TruForConfig | None = None):
        super().__init__()
        self.cfg = cfg or TruForConfig()
        # Registration order = the official state-dict order (dncnn last).
        self.backbone = DualMiT(self.cfg)
        self.decode_head = MLPDecoder(self.cfg.embed_dims, 2, self.cfg.decoder_embed_dim, self.cfg.loc_head_bn_eps)
        self.decode_head_conf = MLPDecoder(self.cfg.embed_dims, 1, self.cfg.decoder_embed_dim, self.cfg.conf_head_bn_eps)
        self.detection = detection_head()
        self.dncnn = DnCNN(self.cfg.dncnn_depth, self.cfg.dncnn_features)
        self.min_side = min_image_side(self.cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.dncnn[0].weight.dtype

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"TruFor expects a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(f"input dtype {x.dtype} differs from the model's {self.dtype}: "
                             "convert one of them (e.g. to_model_input(rgb, dtype=model.dtype))")
        h, w = x.shape[2:]
        if min(h, w) < self.min_side:
            raise ImageTooSmallError(f"image of {h}x{w} px is too small: TruFor needs at least "
                                     f"{self.min_side} px on each side")

    def encode(self, x: torch.Tensor, ev: EvalConfig) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Noiseprint++ (B, H, W) and the four fused encoder features."""
        self.check_input(x)
        with torch.autocast(device_type=x.device.type, enabled=False):  # never reduced: see PRECISIONS
            npp = self.dncnn.forward_tiled(x, ev.dncnn_tile)  # (B, 1, H, W)
        # Built in the input's dtype on every call: a float32 buffer upcast by .double() would keep
        # the float32 rounding of 0.485 etc. (up to 1.4e-6 on the features, far above float64 error).
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        rgb = (x - mean) / std
        feats = self.backbone(rgb, npp.expand(-1, 3, -1, -1), ev)
        return npp[:, 0], feats

    def decode(self, npp: torch.Tensor, feats: list[torch.Tensor], ev: EvalConfig) -> TruForOutput:
        """Both decoders, full-resolution logits, pooling and detection."""
        return self.finish(npp, *self.decode_lowres(feats, ev))

    def decode_lowres(self, feats: list[torch.Tensor], ev: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The two decoders' stride-4 logits: anomaly (B, 2, h1, w1) and confidence (B, 1, h1, w1)."""
        return self.decode_head(feats, ev), self.decode_head_conf(feats, ev)

    def lowres(self, x: torch.Tensor, ev: EvalConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noiseprint++ (B, H, W) and both stride-4 logits: the part of the forward a compiled backend
        runs (``trufor_core.backends``); ``finish`` does the rest in the model dtype."""
        npp, feats = self.encode(x, ev)
        return (npp, *self.decode_lowres(feats, ev))

    def finish(self, npp: torch.Tensor, loc_low: torch.Tensor, conf_low: torch.Tensor) -> TruForOutput:
        """Full-resolution logits, pooling and detection from the stride-4 logits."""
        size = tuple(npp.shape[-2:])
        loc_low, conf_low = loc_low.to(npp.dtype), conf_low.to(npp.dtype)
        # Whatever the precision: upsampling, the pooling over every pixel (softmin/softmax, where
        # bf16's 8-bit mantissa would dominate the score) and the detection head in the model dtype.
        with torch.autocast(device_type=npp.device.type, enabled=False):
            loc = F.interpolate(loc_low, size=size, mode="bilinear", align_corners=False)
            conf = F.interpolate(conf_low, size=size, mode="bilinear", align_corners=False)
            pooled = confpool_features(loc, conf)
            det = self.detection(pooled)[:, 0]
        return TruForOutput(anomaly_logits=loc, conf_logits=conf, anomaly_logits_lowres=loc_low,
                            conf_logits_lowres=conf_low, pooled=pooled, det_logit=det, noiseprint=npp)

    def forward(self, x: torch.Tensor, ev: EvalConfig | None = None) -> TruForOutput:
        ev = ev or EvalConfig()
        npp, feats = self.encode(x, ev)
        return self.decode(npp, feats, ev)
