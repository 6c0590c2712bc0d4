"""`trufor-scan noiseprint eval-splices`: how well a Noiseprint++ network's localisers find the splices of a benchmark.

Per subset (``splices.SUBSETS``) and localiser, averaged over the spliced images: pixel ROC AUC
(the heat map against the mask), MCC and F1 at each image's best threshold (the thesis's oracle
figures) and at a fixed threshold (EM: posterior 0.5; noise anomaly: the 99th percentile of its fit
images' heat maps), and image-level ROC AUC of spliced vs pristine images from the map's max and
mean. Printed as JSON.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.base.options import opt

from .localizers import NoiseAnomalyModel, check_fitted_on, em_heatmap, noiseprint
from .metrics import roc_auc
from .splices import SUBSETS, load_benchmark
from .training import build_dncnn

EM_THRESHOLD = 0.5


@dataclass(frozen=True)
class SpliceEvalConfig:
    """`trufor-scan noiseprint eval-splices`; the command line is derived from these fields."""

    benchmark: str = field(metadata=opt("a folder written by `noiseprint make-splice-benchmark`"))
    weights: str = field(metadata=opt("Noiseprint++ weights (noiseprint++.th or trufor.pth.tar)"))
    noise_anomaly: str | None = field(default=None, metadata=opt("a model from `noiseprint fit-anomaly` (fitted on these "
                                                                 "weights): adds its localiser"))


def _mcc(tp, fp, fn, tn) -> np.ndarray:
    num = tp * tn - fp * fn
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _f1(tp, fp, fn) -> np.ndarray:
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)


def pixel_metrics(heat: np.ndarray, mask: np.ndarray, threshold: float) -> dict:
    """AUC, best-threshold F1/MCC and fixed-threshold F1/MCC of one heat map against its boolean mask."""
    if heat.shape != mask.shape:
        raise ValueError(f"heat map {heat.shape} and mask {mask.shape} differ")
    s, y = heat.ravel().astype(np.float64), mask.ravel().astype(bool)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the end of each run of equal scores
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    p, n = float(y.sum()), float(len(y) - y.sum())
    fn, tn = p - tp, n - fp
    fixed = heat.ravel() > threshold
    ftp = float((fixed & mask.ravel()).sum())
    ffp = float((fixed & ~mask.ravel()).sum())
    return {"auc": roc_auc(s[y], s[~y]), "f1_best": float(_f1(tp, fp, fn).max()),
            "mcc_best": float(_mcc(tp, fp, fn, tn).max()), "f1_fixed": float(_f1(ftp, ffp, p - ftp)),
            "mcc_fixed": float(_mcc(ftp, ffp, p - ftp, n - ffp))}


def evaluate_splices(benchmark: str | Path, weights: str, noise_anomaly: str | None = None, log=None) -> dict:
    """Run the localisers over every benchmark image and summarise per subset (see the module docstring)."""
    t0 = time.monotonic()
    desc, items = load_benchmark(benchmark)
    net = build_dncnn(weights).eval()
    model = NoiseAnomalyModel.load(noise_anomaly) if noise_anomaly else None
    if model is not None:
        check_fitted_on(model, net.state_dict(), weights, noise_anomaly)
    localizers = {"em": (lambda rgb: em_heatmap(noiseprint(net, rgb)), EM_THRESHOLD)}
    if model is not None:
        localizers["noise_anomaly"] = (lambda rgb: model.heatmap(net, rgb), model.threshold)
    per: dict = {}
    for n, it in enumerate(items):
        rgb = np.asarray(Image.open(Path(benchmark) / it.image).convert("RGB"))
        mask = np.asarray(Image.open(Path(benchmark) / it.mask)) > 127 if it.spliced else None
        for name, (fn, threshold) in localizers.items():
            heat = fn(rgb)
            rec = per.setdefault(it.subset, {}).setdefault(name, {"pixel": [], "img": []})
            rec["img"].append((it.spliced, float(heat.max()), float(heat.mean())))
            if it.spliced:
                rec["pixel"].append(pixel_metrics(heat, mask, threshold))
        if log and (n + 1) % 20 == 0:
            log(f"noiseprint eval-splices: {n + 1}/{len(items)} images, {time.monotonic() - t0:.0f} s")
    out = {"benchmark": str(benchmark), "weights": str(weights), "noise_anomaly": noise_anomaly,
           "subsets": {}, "seconds": round(time.monotonic() - t0, 1)}
    for subset in SUBSETS:
        for name, rec in per.get(subset, {}).items():
            px = {k: float(np.mean([m[k] for m in rec["pixel"]])) for k in rec["pixel"][0]}
            sp = [r for r in rec["img"] if r[0]]
            pr = [r for r in rec["img"] if not r[0]]
            out["subsets"].setdefault(subset, {})[name] = {
                **{f"pixel_{k}": round(v, 4) for k, v in px.items()},
                "image_auc_max": round(roc_auc([r[1] for r in sp], [r[1] for r in pr]), 4),
                "image_auc_mean": round(roc_auc([r[2] for r in sp], [r[2] for r in pr]), 4),
                "spliced": len(sp), "pristine": len(pr)}
    return out
