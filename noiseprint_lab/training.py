"""Noiseprint++ retraining, the parts that are not Ray: settings, the DnCNN to train, the loss, the
weight average, the export at the released residual scale. ``jobs.noiseprint_train`` wires them
into Ray Train and the command line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.base.options import opt
from pipeline.base.storage import StorageConfig, local_copy
from trufor_core.checkpoint import CheckpointError, map_noiseprint_state_dict, map_official_state_dict, read_torch_file
from trufor_core.noiseprint import DnCNN

from .data import BatchLayout, Corpus, sample_batch

LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; `trufor-scan noiseprint train`'s options are derived from these fields."""

    corpus: str = field(metadata=opt("URI/<camera_model>/**/*.jpg (eval/ folders held out) or a manifest with uri, "
                                     "camera_model ('exif' = from EXIF)"))
    output: str = field(metadata=opt("local directory or object-store prefix for checkpoints and the export"))
    init: str = field(default="scratch", metadata=opt("noiseprint++.th or trufor.pth.tar to fine-tune, or 'scratch'"))
    workers: int = field(default=2, metadata=opt("Ray Train workers (DDP)"))
    use_gpu: bool = field(default=False, metadata=opt("one GPU per worker"))
    steps: int | None = field(default=None, metadata=opt("optimizer steps (give this or --epochs)"))
    epochs: float | None = field(default=None, metadata=opt("passes over the training images (or --steps)"))
    batch_groups: int = field(default=16, metadata=opt("groups per worker batch, crossing cameras x positions x "
                                                       "histories"))
    batch_cameras: int = field(default=4, metadata=opt("cameras in every batch (capped at the corpus's)"))
    batch_positions: int = field(default=2, metadata=opt("8x8-grid positions in every batch"))
    per_group: int = field(default=3, metadata=opt("patches per group (from different images of the camera)"))
    unedited_share: float = field(default=0.25, metadata=opt(
        "share of history slots that are the camera's own, unedited output"))
    patch: int = field(default=64, metadata=opt("patch side, pixels"))
    lr: float = field(default=1e-4, metadata=opt("learning rate (Adam)"))
    lr_schedule: str = field(default="constant", metadata=opt("constant, or cosine decay to 0 at the last step",
                                                               choices=LR_SCHEDULES))
    warmup_steps: int = field(default=0, metadata=opt("linear learning-rate warm-up"))
    ema_decay: float = field(default=0.0, metadata=opt(
        "> 0: export the exponential moving average of the weights (e.g. 0.95), not the last step's"))
    temperature: float = field(default=0.005, metadata=opt(
        "divides the mean squared residual distances (eq. 1); TRAINING.md compares values"))
    anchor: float = field(default=0.0, metadata=opt(
        "> 0 (fine-tuning only): adds this weight x the mean squared difference between the residual and the "
        "starting weights' residual, relative to the latter's mean square, to the loss (keeps what the "
        "released network already does; TRAINING.md 'Splice localisation')"))
    match_scale: bool = field(default=True, metadata=opt(
        "export the trained residual scale as it is (default when fine-tuning: scale the last layer to the starting "
        "weights' residual RMS, which no metric depends on but TruFor's detector does)", flag="--no-match-scale"))
    checkpoint_every: int = field(default=25, metadata=opt("steps between checkpoints"))
    resume: bool = field(default=False, metadata=opt("continue the last run in --output from its checkpoint"))
    seed: int = field(default=0, metadata=opt("seed of the training batches"))
    threads_per_worker: int = field(default=1, metadata=opt("torch threads (and CPUs) per worker"))
    max_failures: int = 1  # Ray Train restarts of a failed worker group
    s3_endpoint: str | None = field(default=None, metadata=opt("S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)"))
    eval_pairs: int = field(default=300, metadata=opt(
        "positive (and negative) pairs of the final evaluation; 0 skips it"))
    eval_seed: int = field(default=0, metadata=opt(
        "seed of the evaluation's held-out pairs (not --seed: runs of any seed are compared on the same pairs)"))

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of --steps and --epochs")
        if self.per_group < 2 or self.batch_groups < 2:
            raise ValueError(f"need >= 2 groups of >= 2 patches (positives and negatives), got "
                             f"{self.batch_groups} x {self.per_group}")
        if not 0.0 <= self.unedited_share <= 1.0:
            raise ValueError(f"--unedited-share must be in [0, 1], got {self.unedited_share}")
        if self.anchor < 0 or (self.anchor > 0 and self.init == "scratch"):
            raise ValueError(f"--anchor needs a value >= 0 and fine-tuning weights (--init), got {self.anchor} "
                             f"with --init {self.init!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"need --warmup-steps >= 0 and 0 <= --ema-decay < 1, got {self.warmup_steps}, "
                             f"{self.ema_decay}")

    def learning_rate(self, step: int, steps: int) -> float:
        """The learning rate of 0-based ``step`` out of ``steps``: linear warm-up, then constant or cosine."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "cosine":
            progress = (step - self.warmup_steps) / max(1, steps - self.warmup_steps)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr

    def layout(self, corpus_cameras: int) -> BatchLayout:
        """The batch layout for a corpus with ``corpus_cameras`` cameras (raises on an impossible one)."""
        return BatchLayout.for_groups(self.batch_groups, self.batch_cameras, self.batch_positions, self.per_group,
                                      corpus_cameras)


def load_dncnn_weights(path: str) -> dict[str, torch.Tensor]:
    """DnCNN weights (keys '0.weight', ...) from a noiseprint++.th file or a full trufor.pth.tar."""
    raw = read_torch_file(path)
    if isinstance(raw, dict) and "network" in raw:
        sd = map_noiseprint_state_dict(raw)
    else:
        sd = {k: v for k, v in map_official_state_dict(raw).items() if k.startswith("dncnn.")}
        if not sd:
            raise CheckpointError(f"{path} holds no Noiseprint++ (dncnn.*) weights")
    return {k[len("dncnn."):]: v for k, v in sd.items()}


def build_dncnn(init: str | None, storage: StorageConfig | None = None) -> DnCNN:
    """The same 17-layer DnCNN as trufor_core, loaded strictly from ``init`` (a path or URI) unless "scratch"."""
    model = DnCNN()
    if init and init != "scratch":
        sd = load_dncnn_weights(local_copy(init, storage or StorageConfig()))
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{init}: missing {missing}, unexpected {unexpected}")
        model.load_state_dict(sd, strict=True)
    return model.to(memory_format=torch.channels_last)  # the layout to_input gives


def to_input(patches: np.ndarray) -> torch.Tensor:
    """(N, P, P, 3) uint8 -> (N, 3, P, P) float32 / 256, exactly TruFor's preprocessing, channels_last."""
    # channels_last: oneDNN's faster convolution layout on CPU (2x measured for this DnCNN), still fp32.
    x = torch.from_numpy(patches.transpose(0, 3, 1, 2).copy()).float() / 256.0
    return x.contiguous(memory_format=torch.channels_last)


def pair_distances(residuals: torch.Tensor, temperature: float) -> torch.Tensor:
    """s(i, j): mean squared difference of residual patches, divided by the temperature. (N, N)."""
    r = residuals.flatten(1)  # (N, 1, P, P) -> (N, P*P)
    sq = (r * r).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (r @ r.T)).clamp_min(0.0)
    return d / r.shape[1] / temperature


def infonce_loss(residuals: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """TruFor eq. (1): -mean_i log( sum_{j in N_i} e^{-s_ij} / sum_{j != i} e^{-s_ij} )."""
    logits = -pair_distances(residuals, temperature)
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    if not bool(pos.any(1).all()):
        raise ValueError("every patch needs at least one positive in its batch")
    logits = logits.masked_fill(eye, float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)).mean()


def training_loss(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                  anchor_net: torch.nn.Module | None = None) -> torch.Tensor:
    """The step's loss: InfoNCE (eq. 1), plus ``cfg.anchor`` x the residual's relative squared
    distance to ``anchor_net``'s (the frozen starting weights; needed when ``cfg.anchor`` > 0)."""
    residuals = model(x)
    loss = infonce_loss(residuals, labels, cfg.temperature)
    if cfg.anchor > 0:
        if anchor_net is None:
            raise ValueError(f"--anchor {cfg.anchor} needs the starting network, none was given")
        with torch.no_grad():
            ref = anchor_net.eval()(x)
        loss = loss + cfg.anchor * (residuals - ref).pow(2).mean() / ref.pow(2).mean().clamp_min(1e-12)
    return loss


def start_step(model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, step: int, steps: int) -> None:
    """Training mode (released BN statistics kept when fine-tuning) and this step's learning rate."""
    model.train()
    if cfg.init != "scratch":
        bn_eval(model)
    for group in opt.param_groups:
        group["lr"] = cfg.learning_rate(step, steps)


def bn_eval(model: torch.nn.Module) -> None:
    # Fine-tuning keeps the released BN statistics: small patch batches would only add noise to them.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def clone_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def update_average(average: dict[str, torch.Tensor], net: torch.nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * weights, in place; integer buffers are copied."""
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                average[k].lerp_(v, 1.0 - decay)
            else:
                average[k].copy_(v)


def export_noiseprint(state: dict, path: str | Path, step: int) -> Path:
    """Write ``{"network": state_dict, "global_step": step}`` exactly like the released noiseprint++.th."""
    sd = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    build = DnCNN()
    build.load_state_dict(sd, strict=True)  # same keys and shapes as the released file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network": sd, "global_step": int(step)}, path)
    return path


def match_residual_scale(state: dict, reference: torch.nn.Module, patches: np.ndarray) -> tuple[dict, float]:
    """Scale the last convolution so that the residual RMS on ``patches`` equals ``reference``'s.

    The last layer is linear, so the residual is scaled exactly: pair distances change by one
    common factor, which moves no AUC and no nearest centroid of standardised features, while
    TruFor's detector, trained on the released noiseprint, sees residuals of the scale it knows
    (the contrastive loss lets training inflate them freely).

    Returns:
        (the state with the last layer's weight and bias scaled, the factor).
    """
    model = DnCNN()
    model.load_state_dict(state, strict=True)
    x = to_input(patches)
    with torch.inference_mode():
        ref_rms = float(reference.eval()(x).pow(2).mean().sqrt())
        rms = float(model.eval()(x).pow(2).mean().sqrt())
    factor = ref_rms / rms if rms > 0 else float("nan")
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"cannot match the residual scale: RMS {rms} (trained) vs {ref_rms} (reference)")
    last = len(model) - 1
    out = dict(state)
    out[f"{last}.weight"] = state[f"{last}.weight"] * factor
    out[f"{last}.bias"] = state[f"{last}.bias"] * factor
    return out, factor


def calibration_patches(corpus: Corpus, layout: BatchLayout, cfg: TrainConfig, batches: int = 2) -> np.ndarray:
    """Training patches of a fixed seed (apart from the steps' seeds) for `match_residual_scale`."""
    rng = np.random.default_rng([cfg.seed, 1 << 31])
    return np.concatenate([sample_batch(rng, corpus, layout, cfg.patch, unedited_share=cfg.unedited_share)[0]
                           for _ in range(batches)])


def final_weights(model_state: dict, average: dict | None, cfg: TrainConfig, corpus: Corpus, layout: BatchLayout,
                  reference: torch.nn.Module | None) -> tuple[dict, float | None]:
    """The weights to export and the residual scale factor applied to them (None: not matched).

    The moving average when kept (the last step's weights carry that step's noise), brought to the
    residual scale of ``reference`` (the starting weights; None from scratch) with ``cfg.match_scale``.
    """
    weights = average if average is not None else model_state
    if not cfg.match_scale or reference is None:
        return weights, None
    return match_residual_scale(weights, reference, calibration_patches(corpus, layout, cfg))


def steps_for(cfg: TrainConfig, n_train_images: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    per_step = cfg.batch_groups * cfg.per_group * cfg.workers
    return max(1, int(np.ceil(cfg.epochs * n_train_images / per_step)))
