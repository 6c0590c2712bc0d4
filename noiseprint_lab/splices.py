"""A spliced benchmark from a camera corpus (`trufor-scan noiseprint make-splice-benchmark`), as the SBMD set of
"Noise-based anomaly detection for image forgery localization" (PoliMi 2023).

Each spliced image: a background image from camera A, a rectangle from an image of camera B (area
1/16..1/4 of the image, at a random place; half of them on the 8x8 grid, source and destination,
half off it), then one held-out editing history (``data.EVAL_HISTORIES``: resize, JPEG,
tone/filter) applied to the whole composite; the mask goes through the same resize. Each subset
also holds as many pristine images (a camera's held-out image through the same histories) for
false positives. Subsets by whether the corpus's training split holds the cameras:
``both_seen``, ``one_seen``, ``none_seen`` (the corpus needs held-out cameras: ``noiseprint make-corpus
--held-out-cameras``). Only held-out (eval/) images are used. Deterministic from the seed.

Layout: ``<out>/<subset>/<id>.png`` (+ ``<id>.mask.png`` for spliced ones, 255 = spliced) and
``<out>/benchmark.json`` (every item, the cameras seen and unseen, the corpus and the seed).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.base.options import opt
from pipeline.base.storage import StorageConfig

from .data import EVAL_HISTORIES, HISTORIES, apply_history, load_corpus

SUBSETS = ("both_seen", "one_seen", "none_seen")
AREA = (1 / 16, 1 / 4)
BENCHMARK_FILE = "benchmark.json"


@dataclass(frozen=True)
class BenchmarkConfig:
    """`trufor-scan noiseprint make-splice-benchmark`; the command line is derived from these fields."""

    corpus: str = field(metadata=opt("a camera corpus with held-out images (and cameras: `noiseprint make-corpus` "
                                     "--held-out-cameras 2)"))
    out: str = field(metadata=opt("benchmark folder to write"))
    per_subset: int = field(default=20, metadata=opt("spliced images per subset (and as many pristine ones)"))
    seed: int = field(default=0, metadata=opt("everything is deterministic given the seed"))


@dataclasses.dataclass
class Item:
    id: str
    subset: str
    spliced: bool
    image: str  # path relative to the benchmark folder
    mask: str | None
    camera: str  # the background's (or the pristine image's) camera
    donor: str | None  # the spliced region's camera
    history: int  # index into data.HISTORIES
    aligned: bool | None  # region on the 8x8 grid (source and destination)
    box: tuple[int, int, int, int] | None  # y, x, h, w in the composite (before the history's resize)


def _box(rng: np.random.Generator, h: int, w: int, aligned: bool) -> tuple[int, int, int, int]:
    area = rng.uniform(*AREA) * h * w
    aspect = rng.uniform(0.6, 1.6)
    bh = int(np.clip(round(np.sqrt(area * aspect)), 16, h - 8))
    bw = int(np.clip(round(area / bh), 16, w - 8))
    if aligned:
        bh, bw = max(8, bh // 8 * 8), max(8, bw // 8 * 8)
        y, x = 8 * int(rng.integers(0, (h - bh) // 8 + 1)), 8 * int(rng.integers(0, (w - bw) // 8 + 1))
    else:
        while True:  # off the grid: not a multiple of 8 in at least one direction
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            if y % 8 or x % 8:
                break
    return y, x, bh, bw


def _source_offset(rng: np.random.Generator, h: int, w: int, bh: int, bw: int, aligned: bool) -> tuple[int, int]:
    if aligned:
        return 8 * int(rng.integers(0, (h - bh) // 8 + 1)), 8 * int(rng.integers(0, (w - bw) // 8 + 1))
    while True:
        sy, sx = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        if sy % 8 or sx % 8:
            return sy, sx


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.NEAREST))


def make_splice_benchmark(corpus: str, out: str | Path, per_subset: int = 20, seed: int = 0,
                          storage: StorageConfig | None = None) -> dict:
    """Write ``per_subset`` spliced and ``per_subset`` pristine images per subset; returns the description."""
    if per_subset < 1:
        raise ValueError(f"per_subset must be >= 1, got {per_subset}")
    storage = storage or StorageConfig()
    seen = set(load_corpus(corpus, "train", storage).cameras)
    held_out = load_corpus(corpus, "eval", storage, min_images=1)
    cams_seen = [c for c in held_out.cameras if c in seen]
    cams_unseen = [c for c in held_out.cameras if c not in seen]
    need = {"both_seen": (len(cams_seen) >= 2, "2 cameras seen in training"),
            "one_seen": (cams_seen and cams_unseen, "a seen and an unseen camera"),
            "none_seen": (len(cams_unseen) >= 2, "2 cameras held out of training (`noiseprint make-corpus` --held-out-cameras 2)")}
    missing = [f"{s}: needs {why}" for s, (ok, why) in need.items() if not ok]
    if missing:
        raise ValueError(f"corpus {corpus} cannot make every subset ({len(cams_seen)} cameras seen, "
                         f"{len(cams_unseen)} unseen with held-out images): {'; '.join(missing)}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    items: list[Item] = []
    for subset in SUBSETS:
        (out / subset).mkdir(parents=True, exist_ok=True)
        for k in range(per_subset):
            if subset == "both_seen":
                a, b = rng.choice(cams_seen, 2, replace=False)
            elif subset == "none_seen":
                a, b = rng.choice(cams_unseen, 2, replace=False)
            else:
                pair = [rng.choice(cams_seen), rng.choice(cams_unseen)]
                a, b = pair if rng.integers(2) else pair[::-1]
            a, b = str(a), str(b)
            bg = held_out.images[a][int(rng.integers(len(held_out.images[a])))]
            donor = held_out.images[b][int(rng.integers(len(held_out.images[b])))]
            h, w = min(bg.shape[0], donor.shape[0]), min(bg.shape[1], donor.shape[1])
            bg, donor = bg[:h, :w], donor[:h, :w]  # both from the origin: their 8x8 grids stay at (0, 0)
            aligned = k % 2 == 0
            y, x, bh, bw = _box(rng, h, w, aligned)
            sy, sx = _source_offset(rng, h, w, bh, bw, aligned)
            comp = bg.copy()
            comp[y: y + bh, x: x + bw] = donor[sy: sy + bh, sx: sx + bw]
            mask = np.zeros((h, w), np.uint8)
            mask[y: y + bh, x: x + bw] = 255
            hist = EVAL_HISTORIES[int(rng.integers(len(EVAL_HISTORIES)))]
            img = apply_history(comp, hist)
            sid = f"{subset}-{k:04d}-spliced"
            Image.fromarray(img).save(out / subset / f"{sid}.png")
            Image.fromarray(_resize_mask(mask, img.shape[:2])).save(out / subset / f"{sid}.mask.png")
            items.append(Item(sid, subset, True, f"{subset}/{sid}.png", f"{subset}/{sid}.mask.png", a, b,
                              hist.index, aligned, (y, x, bh, bw)))
            # A pristine image of one of the subset's cameras through the same history.
            cam = a if rng.integers(2) else b
            pristine = held_out.images[cam][int(rng.integers(len(held_out.images[cam])))]
            pid = f"{subset}-{k:04d}-pristine"
            Image.fromarray(apply_history(pristine, hist)).save(out / subset / f"{pid}.png")
            items.append(Item(pid, subset, False, f"{subset}/{pid}.png", None, cam, None, hist.index, None, None))
    desc = {"corpus": corpus, "seed": seed, "per_subset": per_subset, "cameras_seen": cams_seen,
            "cameras_unseen": cams_unseen, "items": [dataclasses.asdict(i) for i in items]}
    (out / BENCHMARK_FILE).write_text(json.dumps(desc, indent=1))
    return desc


def load_benchmark(path: str | Path) -> tuple[dict, list[Item]]:
    """(description, items) of a benchmark folder."""
    path = Path(path)
    f = path / BENCHMARK_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a splice benchmark (no {BENCHMARK_FILE}; make one with "
                                "noiseprint make-splice-benchmark)")
    desc = json.loads(f.read_text())
    items = [Item(**{**d, "box": tuple(d["box"]) if d["box"] else None}) for d in desc["items"]]
    for it in items:
        if not 0 <= it.history < len(HISTORIES):
            raise ValueError(f"{f}: item {it.id} names history {it.history}, not one of the {len(HISTORIES)}")
    return desc, items
