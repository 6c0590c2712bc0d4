"""`trufor-scan noiseprint eval`: does a Noiseprint++ tell origins apart on held-out images?

- Pair verification ROC AUC: pairs of patches from held-out images with the same camera model,
  grid position and (held-out) history vs pairs that differ in any of them; the score is minus the
  mean squared difference of the two residual patches (the training loss's distance). "Same
  position" is the same phase of the output's 8x8 grid and of the camera's grids, also after a
  resize (`sample_patch`).
- Residual RMS on the held-out patches: TruFor's detector was trained on the released weights'
  noiseprint, so a retrained one far off that scale changes what the detector sees.
- Camera-model identification: per image, statistics of the noiseprint on each of the 64 phases
  of the 8x8 grid (mean and standard deviation, whole image up to 512x512); nearest centroid,
  with centroids from the training-split images and tests on the held-out (eval-split) images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.base.options import opt
from pipeline.base.storage import StorageConfig, StorageOptions

from .data import EVAL_HISTORIES, Corpus, load_corpus, sample_patch
from .training import build_dncnn, to_input

DIFFERS = ("camera", "position", "history")


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    if not len(pos) or not len(neg):
        raise ValueError(f"ROC AUC needs positives and negatives, got {len(pos)} and {len(neg)}")
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks over ties
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def make_pairs(corpus: Corpus, n_pairs: int, patch: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Patches and (i, j, kind) pairs: kind "same" or what differs ("camera", "position", "history")."""
    rng = np.random.default_rng(seed)
    cams = corpus.cameras
    patches: list[np.ndarray] = []
    pairs: list[tuple[int, int, str]] = []

    def add(cam, phase, h, exclude=None):
        imgs = corpus.images[cam]
        while True:
            k = int(rng.integers(len(imgs)))
            if k != exclude:
                break
        p = sample_patch(rng, imgs[k], phase, h, patch)
        if p is None:
            return None, k
        patches.append(p)
        return len(patches) - 1, k

    def draw():
        return cams[int(rng.integers(len(cams)))], (int(rng.integers(8)), int(rng.integers(8))), \
            EVAL_HISTORIES[int(rng.integers(len(EVAL_HISTORIES)))]

    n_same = 0
    while len(pairs) < 2 * n_pairs:
        cam, phase, h = draw()
        i, k = add(cam, phase, h)
        if i is None:
            continue
        if n_same < n_pairs:
            j, _ = add(cam, phase, h, exclude=k)
            kind = "same"
        else:
            kind = DIFFERS[len(pairs) % 3]
            cam2, phase2, h2 = cam, phase, h
            while (cam2, phase2, h2) == (cam, phase, h):
                c2, p2, hh2 = draw()
                cam2 = c2 if kind == "camera" else cam
                phase2 = p2 if kind == "position" else phase
                h2 = hh2 if kind == "history" else h
            j, _ = add(cam2, phase2, h2, exclude=k if cam2 == cam else None)
        if j is None:
            continue
        pairs.append((i, j, kind))
        n_same += kind == "same"
    return np.stack(patches), pairs


@torch.inference_mode()
def residuals(model: torch.nn.Module, patches: np.ndarray, batch: int = 64) -> torch.Tensor:
    return torch.cat([model(to_input(patches[k:k + batch])) for k in range(0, len(patches), batch)])


@torch.inference_mode()
def phase_features(model: torch.nn.Module, img: np.ndarray, crop: int = 512) -> np.ndarray:
    """Mean and std of the noiseprint on each of the 64 phases of the 8x8 grid, over a centre crop of up to ``crop`` px."""
    h, w = img.shape[:2]
    s = min(crop, h, w) // 8 * 8
    y0, x0 = (h - s) // 2 // 8 * 8, (w - s) // 2 // 8 * 8
    r = model(to_input(img[None, y0:y0 + s, x0:x0 + s]))[0, 0].numpy()
    blocks = r.reshape(s // 8, 8, s // 8, 8).transpose(1, 3, 0, 2).reshape(64, -1)  # (s, s) -> (phase, samples)
    return np.concatenate([blocks.mean(1), blocks.std(1)])


def camera_id_accuracy(model: torch.nn.Module, reference: Corpus, held_out: Corpus) -> float:
    cams = [c for c in held_out.cameras if c in reference.images]
    ref = {c: np.stack([phase_features(model, im) for im in reference.images[c]]) for c in cams}
    allref = np.concatenate(list(ref.values()))
    mu, sd = allref.mean(0), allref.std(0) + 1e-8
    centroids = np.stack([((ref[c] - mu) / sd).mean(0) for c in cams])
    hits = total = 0
    for ci, c in enumerate(cams):
        for im in held_out.images[c]:
            f = (phase_features(model, im) - mu) / sd
            hits += int(np.argmin(((centroids - f) ** 2).sum(1)) == ci)
            total += 1
    return hits / max(1, total)


def metrics_for(model: torch.nn.Module, patches: np.ndarray, pairs, reference: Corpus, held_out: Corpus) -> dict:
    model.eval()
    r = residuals(model, patches)
    i = torch.tensor([p[0] for p in pairs])
    j = torch.tensor([p[1] for p in pairs])
    d = ((r[i] - r[j]) ** 2).flatten(1).mean(1).numpy()
    kinds = np.array([p[2] for p in pairs])
    pos = -d[kinds == "same"]
    out = {"pair_auc": roc_auc(pos, -d[kinds != "same"])}
    for k in DIFFERS:
        out[f"pair_auc_vs_different_{k}"] = roc_auc(pos, -d[kinds == k])
    out["residual_rms"] = float(r.pow(2).mean().sqrt())
    out["camera_id_accuracy"] = camera_id_accuracy(model, reference, held_out)
    return out


@dataclass(frozen=True)
class NoiseprintEvalConfig(StorageOptions):
    """`trufor-scan noiseprint eval`; the command line is derived from these fields."""

    weights: str = field(metadata=opt("noiseprint++.th (or trufor.pth.tar) to evaluate"))
    corpus: str = field(metadata=opt("a corpus with <camera>/eval/ held-out images"))
    baseline: str | None = field(default=None, metadata=opt(
        "weights to compare with, side by side (e.g. the released noiseprint++.th)"))
    pairs: int = field(default=300, metadata=opt("positive pairs (and as many negative)"))
    seed: int = field(default=0, metadata=opt("everything is deterministic given the seed"))


def evaluate(weights: str, corpus: str, baseline: str | None = None, storage: StorageConfig | None = None,
             n_pairs: int = 300, patch: int = 64, seed: int = 0) -> dict:
    """Metrics of ``weights`` (and of ``baseline`` side by side) on the corpus's held-out split.

    Returns:
        {"weights": {...}, "baseline": {...} or None, "pairs": ..., "held_out_images": ..., "cameras": ...}
    """
    storage = storage or StorageConfig()
    held_out = load_corpus(corpus, "eval", storage)
    reference = load_corpus(corpus, "train", storage)
    if len(held_out.cameras) < 2:
        raise ValueError(f"evaluation needs held-out images ({corpus}/<camera>/eval/) of >= 2 cameras; "
                         f"found {held_out.report.text()}")
    patches, pairs = make_pairs(held_out, n_pairs, patch, seed)
    result = {"weights": metrics_for(build_dncnn(weights, storage), patches, pairs, reference, held_out),
              "baseline": metrics_for(build_dncnn(baseline, storage), patches, pairs, reference, held_out) if baseline else None,
              "weights_path": weights, "baseline_path": baseline, "pairs": len(pairs),
              "held_out_images": sum(held_out.report.cameras.values()), "cameras": len(held_out.cameras),
              "problems": held_out.report.problems + reference.report.problems}
    if baseline:
        result["gain"] = {k: result["weights"][k] - result["baseline"][k] for k in result["weights"]}
    return result
