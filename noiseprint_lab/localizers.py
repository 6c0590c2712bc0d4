"""Splice localisers on a Noiseprint++ network (no Ray).

- ``NoiseAnomalyModel``: the noise-anomaly method of "Noise-based anomaly detection for image
  forgery localization" (PoliMi 2023): PaDiM on DnCNN activations. A few activation maps of the
  DnCNN are taken (``blocks``: the outputs of its ReLUs), a fixed random subset of their channels
  kept (PaDiM's dimension reduction), and one multivariate Gaussian (mean, covariance + eps I) fitted
  per position of a P x P patch aligned to the 8x8 grid (position = (y mod P, x mod P): the
  camera's JPEG/CFA phase) on pristine images. A pixel's score is the Mahalanobis distance of its
  features to its position's Gaussian; the heat map is that distance averaged over a window.
- ``em_heatmap``: a per-image baseline needing no fitting, as Splicebuster and the Noiseprint paper
  do: local statistics of the noiseprint (mean, log-variance, gradient energy over a window)
  clustered into two classes by a Gaussian mixture fitted with EM; the heat map is the posterior of
  the class that does not hold the image border.

Both give (H, W) float32 maps where high = spliced, at the image's resolution.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.base.options import opt
from trufor_core.image import to_model_input
from trufor_core.noiseprint import DnCNN

NOISE_ANOMALY_VERSION = 1


def noiseprint(net: DnCNN, rgb: np.ndarray) -> np.ndarray:
    """The Noiseprint++ residual (H, W) float32 of one image."""
    net.eval()
    with torch.inference_mode():
        return net(to_model_input(rgb))[0, 0].numpy()


def dncnn_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a DnCNN's floating-point weights and statistics (keys as ``DnCNN().state_dict()``), in
    float32: the same network whatever file it came from (noiseprint++.th or a trufor.pth.tar)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        if v.is_floating_point():
            h.update(k.encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def activations(net: DnCNN, rgb: np.ndarray, blocks: tuple[int, ...]) -> list[torch.Tensor]:
    """The outputs of the DnCNN's ReLUs numbered ``blocks`` (0 = after the first conv, 15 = the last
    ReLU of a 17-layer net), each (64, H, W) on the CPU in float32, for one image (the net may be on
    any device)."""
    net.eval()
    wanted, out, k = set(blocks), {}, -1
    p = next(net.parameters())
    with torch.inference_mode():
        y = to_model_input(rgb, p.dtype).to(p.device)
        for layer in net:
            y = layer(y)
            if isinstance(layer, nn.ReLU):
                k += 1
                if k in wanted:
                    out[k] = y[0].to("cpu", torch.float32, copy=True)
                if k >= max(wanted):
                    break
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"the DnCNN has no ReLU blocks {sorted(missing)} (it has {k + 1})")
    return [out[b] for b in blocks]


def box_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean over a window x window box around each pixel (edges: the box shrinks), (H, W) or (C, H, W)."""
    from scipy.ndimage import uniform_filter

    size = (1, window, window) if x.ndim == 3 else window
    return uniform_filter(x.astype(np.float64), size=size, mode="reflect")


@dataclasses.dataclass
class NoiseAnomalyModel:
    """Fitted per-position Gaussians of DnCNN features (see the module docstring)."""

    blocks: tuple[int, ...]
    channels: np.ndarray  # indices into the concatenated block channels, (d,)
    period: int  # P: positions are (y mod P, x mod P)
    mean: np.ndarray  # (P, P, d)
    cov_inv: np.ndarray  # (P, P, d, d)
    window: int  # heat-map smoothing window, pixels
    threshold: float  # the fit images' 99th percentile of the heat map: the fixed decision threshold
    dncnn_sha256: str  # the Noiseprint++ network whose features these are (``dncnn_digest``)
    images: int  # pristine images fitted on

    def features(self, net: DnCNN, rgb: np.ndarray) -> torch.Tensor:
        acts = torch.cat(activations(net, rgb, self.blocks))  # (64 * len(blocks), H, W)
        return acts[torch.from_numpy(self.channels)]  # (d, H, W)

    def distance(self, net: DnCNN, rgb: np.ndarray) -> np.ndarray:
        """Per-pixel Mahalanobis distance to the pixel's position's Gaussian, (H, W)."""
        f = self.features(net, rgb).double().numpy()
        d, h, w = f.shape
        p = self.period
        out = np.empty((h, w))
        for py in range(p):
            for px in range(p):
                x = f[:, py::p, px::p].reshape(d, -1).T - self.mean[py, px]  # (n, d)
                m = np.einsum("nd,de,ne->n", x, self.cov_inv[py, px], x)
                out[py::p, px::p] = np.sqrt(np.maximum(m, 0)).reshape(out[py::p, px::p].shape)
        return out

    def heatmap(self, net: DnCNN, rgb: np.ndarray) -> np.ndarray:
        """The distance averaged over a window: high = unlike the fitted cameras (the thesis's map).

        One-sided, as published. Measured alternative (TRAINING.md "Splice localisation"): the
        deviation from the image's own median, either way, finds splices into a background whose
        camera was not fitted (where a fitted camera's splice has the *smaller* distance) but
        loses them into fitted cameras' images, the case this model is fitted for.
        """
        return box_mean(self.distance(net, rgb), self.window).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        d = dataclasses.asdict(self)
        d = {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in d.items()}
        d["blocks"] = list(self.blocks)
        torch.save({"version": NOISE_ANOMALY_VERSION, **d}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NoiseAnomalyModel":
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or raw.get("version") != NOISE_ANOMALY_VERSION:
            raise ValueError(f"{path} is not a noise-anomaly model of version {NOISE_ANOMALY_VERSION}")
        raw.pop("version")
        raw = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in raw.items()}
        raw["blocks"] = tuple(raw["blocks"])
        return cls(**raw)


def fit_noise_anomaly(net: DnCNN, images, blocks: tuple[int, ...] = (1, 5, 9),
                      dims: int = 64, period: int = 8, eps: float = 0.01, window: int = 16,
                      seed: int = 0) -> NoiseAnomalyModel:
    """Fit the per-position Gaussians on pristine ``images`` (an iterable of (H, W, 3) uint8 arrays,
    their 8x8 grid at the origin), each position's covariance regularised by ``eps`` I."""
    if period % 8:
        raise ValueError(f"the patch must be aligned to the 8x8 grid: period {period} is not a multiple of 8")
    total = 64 * len(blocks)
    if not 1 <= dims <= total:
        raise ValueError(f"dims must be in 1..{total} for blocks {blocks}, got {dims}")
    channels = np.sort(np.random.default_rng(seed).choice(total, dims, replace=False))
    p = period
    s1 = np.zeros((p, p, dims))
    s2 = np.zeros((p, p, dims, dims))
    n = np.zeros((p, p))
    digest = dncnn_digest(net.state_dict())
    probe = NoiseAnomalyModel(blocks, channels, p, np.zeros((p, p, dims)), np.zeros((p, p, dims, dims)), window, 0.0,
                              digest, 0)
    kept = []
    for rgb in images:
        f = probe.features(net, rgb).double().numpy()
        kept.append(rgb)
        for py in range(p):
            for px in range(p):
                x = f[:, py::p, px::p].reshape(dims, -1)
                s1[py, px] += x.sum(1)
                s2[py, px] += x @ x.T
                n[py, px] += x.shape[1]
    if not kept:
        raise ValueError("no pristine images to fit the noise-anomaly model on")
    mean = s1 / n[..., None]
    cov = s2 / n[..., None, None] - mean[..., :, None] * mean[..., None, :]
    cov_inv = np.linalg.inv(cov + eps * np.eye(dims))
    model = NoiseAnomalyModel(blocks, channels, p, mean, cov_inv, window, 0.0, digest, len(kept))
    # The fixed threshold: what pristine images reach (99th percentile of the fit images' heat maps).
    model.threshold = float(np.percentile(np.concatenate([model.heatmap(net, rgb).ravel() for rgb in kept[:32]]), 99))
    return model


def em_heatmap(np_map: np.ndarray, window: int = 32, stride: int = 8, seed: int = 0) -> np.ndarray:
    """Two-class EM clustering of local noiseprint statistics; the posterior of the class that is not
    the image border's, (H, W).

    Which class is the splice: the one the image border does not hold (a splice is an inner region
    of someone else's picture). Measured on simulated cameras, 6 camera pairs, pixel AUC: the
    border rule 0.50-0.95; taking the class of smaller weight or pixel count instead gave 0.05-0.50
    (the mixture splits content as well as cameras, and the splice often falls in the larger class).
    """
    from sklearn.mixture import GaussianMixture

    x = np_map.astype(np.float64)
    mean = box_mean(x, window)
    var = np.maximum(box_mean(x * x, window) - mean * mean, 1e-12)
    gy, gx = np.gradient(x)
    energy = box_mean(gy * gy + gx * gx, window)
    feats = np.stack([mean, np.log(var), np.log(energy + 1e-12)], -1)[::stride, ::stride]  # (h, w, 3)
    h, w, _ = feats.shape
    flat = feats.reshape(-1, 3)
    flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-12)
    gmm = GaussianMixture(2, covariance_type="full", random_state=seed, reg_covar=1e-4).fit(flat)
    post = gmm.predict_proba(flat).reshape(h, w, 2)
    border = np.concatenate([post[0], post[-1], post[:, 0], post[:, -1]])  # (cells on the border, 2)
    inner = int(np.argmin(border.mean(0)))
    # Back to full resolution: each stride x stride cell takes its sample's posterior.
    full = np.kron(post[..., inner], np.ones((stride, stride)))[: x.shape[0], : x.shape[1]]
    return full.astype(np.float32)


@dataclass(frozen=True)
class FitConfig:
    """`trufor-scan noiseprint fit-anomaly`; the command line is derived from these fields."""

    corpus: str = field(metadata=opt("a camera corpus: its training split (cameras seen in training) is the pristine set"))
    weights: str = field(metadata=opt("the Noiseprint++ weights whose features are modelled (noiseprint++.th or "
                                      "trufor.pth.tar)"))
    out: str = field(metadata=opt("where to write the fitted model (.pt)"))
    blocks: tuple[int, ...] = field(default=(1, 5, 9), metadata=opt("DnCNN ReLU outputs to take (0..15)"))
    dims: int = field(default=64, metadata=opt("channels kept (a fixed random subset, as PaDiM; 16/32/64 of blocks "
                                               "1,5,9 measured: 64 best)"))
    period: int = field(default=8, metadata=opt("P: one Gaussian per position of a P x P grid-aligned patch"))
    window: int = field(default=16, metadata=opt("heat-map smoothing window, pixels"))
    histories: int = field(default=2, metadata=opt("editing histories per image (the first unedited, then random "
                                                   "training histories)"))
    seed: int = field(default=0, metadata=opt("channel subset and histories"))


def fit_from_corpus(cfg: FitConfig, log=None) -> NoiseAnomalyModel:
    """Fit on the corpus's training images, each through ``cfg.histories`` training histories; writes ``cfg.out``."""
    from .data import HISTORIES, TRAIN_HISTORIES, apply_history, load_corpus
    from .training import build_dncnn

    corpus = load_corpus(cfg.corpus, "train")
    if log:
        log(corpus.report.text())
    rng = np.random.default_rng(cfg.seed)

    def pristine():
        for cam in corpus.cameras:
            for rgb in corpus.images[cam]:
                for k in range(cfg.histories):
                    h = HISTORIES[0] if k == 0 else TRAIN_HISTORIES[int(rng.integers(len(TRAIN_HISTORIES)))]
                    yield apply_history(rgb, h)

    net = build_dncnn(cfg.weights).eval()
    model = fit_noise_anomaly(net, pristine(), blocks=tuple(cfg.blocks), dims=cfg.dims,
                              period=cfg.period, window=cfg.window, seed=cfg.seed)
    model.save(cfg.out)
    return model


def check_fitted_on(model: NoiseAnomalyModel, state: dict[str, torch.Tensor], what: str, model_path: str) -> None:
    """Refuse a model fitted on another network's features (one line with both digests)."""
    digest = dncnn_digest(state)
    if model.dncnn_sha256 != digest:
        raise ValueError(f"{model_path} was fitted on the features of another Noiseprint++ network "
                         f"({model.dncnn_sha256[:12]}) than {what} ({digest[:12]}): fit it again with these weights")
