"""ManTra-Net (Wu, AbdAlmageed, Natarajan, CVPR 2019), the released 'Ptrain4' configuration, for any
image size, in bounded memory.

The network has no pooling and no stride: 4.1 M multiply-adds and, in one pass, about 6.6 KB of
memory per pixel (official code, measured), so a 3 MP image would need ~21 GB. ``forward`` therefore
runs in two passes over tiles:

1. Featex -> outlierTrans -> bnorm on tiles with ``FEATEX_HALO`` (14) pixels of context; only the
   64-channel ``bnorm`` output is kept (256 B per pixel in float32; above ``spill_bytes`` it goes to
   a temporary file, not RAM). Its global mean and std come from the whole of it.
2. The nested windows, the ConvLSTM and ``pred`` on tiles with ``HEAD_HALO`` (24) pixels of context
   (the 31 window's 15, then the ConvLSTM's 7x7 convs of its two steps and ``pred``'s 7x7).

An image no larger than one tile goes through in one piece, exactly as the official code does it
(its float32 integral image included). With tiles, each tile's integral image starts at the tile,
so float32 sums are smaller and rounding differs (tested: float64 tiled = whole to ~1e-12).
"""
from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trufor_core.progress import step

from .anomaly import (LSTM_KERNEL, PRED_KERNEL, WINDOWS, BNorm, ConvLSTM, GlobalStd, OutlierTrans, Pred,
                      nested_deviations)
from .featex import FEATEX_HALO, Featex

# Context the head reads: step t (windows 7, 15, 31, then the global mean) passes through the ConvLSTM's
# 7x7 convs once per step left (4 - t) and then pred's 7x7, after its own window: 15 + 2 x 3 + 3 = 24 for
# the 31 window (the 7 window: 3 + 4 x 3 + 3 = 18). A test shows 23 is not enough.
HEAD_HALO = max(k // 2 + (len(WINDOWS) + 1 - t) * (LSTM_KERNEL // 2)
                for t, k in enumerate(WINDOWS + (1,))) + PRED_KERNEL // 2
DEFAULT_TILE = 512  # core tile side: ~1.1 GB peak for Featex in float32 (measured in BENCHMARKS.md)
DEFAULT_SPILL_BYTES = 2 << 30  # a bnorm store larger than this goes to a temporary file


def to_input(rgb: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) in [-1, 1], as the demo's ``decode_an_image_array``:
    float32(u8 / 255) * 2 - 1 computed in float32, then cast (a float64 model gets the float32 values)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    x = rgb.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(dtype)  # (1, 3, H, W)


def tiles(h: int, w: int, tile: int | None) -> list[tuple[int, int, int, int]]:
    """Core tiles (r0, r1, c0, c1) covering an h x w image; one tile when it fits (or ``tile`` is None)."""
    if tile is None or (h <= tile and w <= tile):
        return [(0, h, 0, w)]
    return [(r, min(r + tile, h), c, min(c + tile, w)) for r in range(0, h, tile) for c in range(0, w, tile)]


def _grown(r0: int, r1: int, c0: int, c1: int, halo: int, h: int, w: int) -> tuple[int, int, int, int]:
    """A tile's rows and columns with ``halo`` pixels of context on each side, clipped to the h x w image."""
    return max(r0 - halo, 0), min(r1 + halo, h), max(c0 - halo, 0), min(c1 + halo, w)


def count_steps(h: int, w: int, tile: int | None = DEFAULT_TILE) -> int:
    """Progress steps of one forward (``trufor_core.progress``): one per tile of each pass."""
    return 2 * len(tiles(h, w, tile))


def image_score(mask: torch.Tensor) -> torch.Tensor:
    """The image-level score of (N, H, W) masks: each map's maximum.

    ManTra-Net has no image-level output. The maximum reads "somewhere in this image a region looks
    manipulated", needs no parameter, and is how the noise-anomaly second opinion scores too, so both
    second opinions read alike. A high percentile would hide small edits (a splice of 0.5% of the image
    stays under the 99th percentile); the map is smooth (7x7 convs on 7..31-pixel windows), so one stray
    pixel does not make the maximum. Larger images give the maximum more chances: compare scores within
    a size band, or calibrate per source (`calibrate`)."""
    return mask.flatten(1).amax(1)


@dataclass
class ManTraNetOutput:
    logits: torch.Tensor  # (N, 1, H, W) pre-sigmoid
    glbstd: torch.Tensor  # (N, 64) the floored global std

    @property
    def mask(self) -> torch.Tensor:
        """(N, H, W) forgery likelihood in [0, 1], the official demo's output."""
        return torch.sigmoid(self.logits[:, 0])

    @property
    def score(self) -> torch.Tensor:
        """(N,) image-level scores (``image_score``)."""
        return image_score(self.mask)


class ManTraNet(nn.Module):
    """Module names are the HDF5 file's layer names, so loading needs no key map."""

    def __init__(self):
        super().__init__()
        self.Featex = Featex()
        self.outlierTrans = OutlierTrans()
        self.bnorm = BNorm()
        self.glbStd = GlobalStd()
        self.cLSTM = ConvLSTM()
        self.pred = Pred()

    @property
    def dtype(self) -> torch.dtype:
        return self.pred.kernel.dtype

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) -> (N, 64, h, w) bnorm output (valid away from a cut side: ``FEATEX_HALO``).

        float32 on the CPU runs channels-last (oneDNN's blocked kernels: 21% faster measured at 0.1 MP);
        float64 has no such kernels and stays as it is."""
        if x.device.type == "cpu" and self.dtype != torch.float64:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.bnorm(self.outlierTrans(self.Featex(x)))

    def head(self, bn: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor, origin: tuple[int, int],
             image_hw: tuple[int, int]) -> torch.Tensor:
        """(N, 64, h, w) region of bnorm at ``origin`` -> (N, 1, h, w) logits (valid ``HEAD_HALO`` from a cut side)."""
        dev = nested_deviations(bn, mean, origin, image_hw)  # (N, T, 64, h, w)
        dev = torch.abs(dev / sigma[:, None, :, None, None])  # divStd
        return self.pred(self.cLSTM(dev))

    def forward(self, x: torch.Tensor, tile: int | None = DEFAULT_TILE,
                spill_bytes: int = DEFAULT_SPILL_BYTES) -> ManTraNetOutput:
        """(N, 3, H, W) in [-1, 1] (``to_input``) -> logits, in two passes over ``tile`` x ``tile`` cores."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W), got {tuple(x.shape)}")
        n, _, h, w = x.shape
        parts = tiles(h, w, tile)
        with _store((n, self.bnorm.moving_mean.numel(), h, w), x.dtype, x.device, spill_bytes) as bn:
            for r0, r1, c0, c1 in parts:
                a0, a1, b0, b1 = _grown(r0, r1, c0, c1, FEATEX_HALO, h, w)
                f = self.features(x[..., a0:a1, b0:b1])  # (N, 64, a1-a0, b1-b0)
                bn[..., r0:r1, c0:c1] = f[..., r0 - a0:r1 - a0, c0 - b0:c1 - b0]
                step()
            if len(parts) == 1:
                std, mean = torch.std_mean(bn, (2, 3), correction=0)  # (N, 64) each
            else:  # per channel, so a spilled store is read a channel at a time
                stats = [torch.std_mean(bn[:, ch], (1, 2), correction=0) for ch in range(bn.shape[1])]
                std, mean = torch.stack([s for s, _ in stats], 1), torch.stack([m for _, m in stats], 1)
            mean, sigma = mean.to(x.device), self.glbStd(std.to(x.device))
            logits = torch.empty((n, 1, h, w), dtype=x.dtype, device=x.device)
            for r0, r1, c0, c1 in parts:
                a0, a1, b0, b1 = _grown(r0, r1, c0, c1, HEAD_HALO, h, w)
                region = torch.as_tensor(bn[..., a0:a1, b0:b1]).to(x.device)
                out = self.head(region, mean, sigma, (a0, b0), (h, w))  # (N, 1, a1-a0, b1-b0)
                logits[..., r0:r1, c0:c1] = out[..., r0 - a0:r1 - a0, c0 - b0:c1 - b0]
                step()
        return ManTraNetOutput(logits=logits, glbstd=sigma)


@contextlib.contextmanager
def _store(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, spill_bytes: int):
    """The bnorm output of a whole image: a tensor, or above ``spill_bytes`` a tensor over a temporary file
    in $TMPDIR (deleted on exit), so pass 1's output does not have to fit in RAM."""
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if size <= spill_bytes:
        yield torch.empty(shape, dtype=dtype, device=device)
        return
    with tempfile.NamedTemporaryFile(prefix="mantranet-bnorm-", suffix=".bin") as f:
        f.truncate(size)
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        yield torch.from_numpy(np.memmap(f.name, dtype=np_dtype, mode="r+", shape=shape))
