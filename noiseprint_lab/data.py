"""Noiseprint++ training data: the camera corpus, the enumerated editing histories, grouped patch batches.

A corpus is ``URI/<camera_model>/**/<image>`` (files under an ``eval/`` folder are held out from
training), or a manifest with ``uri`` and ``camera_model`` columns (``camera_model = "exif"``
takes EXIF Make + Model). Images whose camera cannot be determined are reported, never guessed.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from PIL import Image, ImageFilter

from pipeline.base.listing import list_input
from pipeline.base.storage import StorageConfig
from trufor_core.image import IMAGE_EXTENSIONS, ImageDecodeError, decode_image

HELD_OUT_DIR = "eval"

# ---- editing histories (TruFor sec. 3.1: ~512 pipelines of resizing, compression, tone, filtering) ----

# Ratios of small integers, so that a whole number of the camera's 8x8 grid periods maps onto a whole
# number of output pixels (see grid_period).
RESIZE_FACTORS = (1.0, 0.9, 0.8, 0.75, 2 / 3, 0.5, 1.25, 1.5)
JPEG_QUALITIES = (None, 98, 95, 90, 85, 80, 75, 65)  # None: no recompression
# Photometric edits: (gamma, contrast, brightness, filter).
EDITS = (
    ("identity", 1.0, 1.0, 0.0, "none"),
    ("gamma0.8", 0.8, 1.0, 0.0, "none"),
    ("gamma1.25", 1.25, 1.0, 0.0, "none"),
    ("contrast1.2", 1.0, 1.2, 0.0, "none"),
    ("bright+12-contrast0.9", 1.0, 0.9, 12.0, "none"),
    ("blur", 1.0, 1.0, 0.0, "blur"),
    ("sharpen", 1.0, 1.0, 0.0, "sharpen"),
    ("gamma0.8-sharpen", 0.8, 1.0, 0.0, "sharpen"),
)


@dataclass(frozen=True)
class History:
    """One post-capture editing pipeline: photometric edit -> resize -> JPEG."""

    index: int
    resize: float
    jpeg: int | None
    edit: tuple


def _enumerate_histories() -> tuple[History, ...]:
    combos = itertools.product(RESIZE_FACTORS, JPEG_QUALITIES, EDITS)
    return tuple(History(i, r, q, e) for i, (r, q, e) in enumerate(combos))


HISTORIES: tuple[History, ...] = _enumerate_histories()  # 8 x 8 x 8 = 512


def held_out_history(h: History) -> bool:
    """One history in 8 is reserved for evaluation, spread over every edit, JPEG quality and resize.

    HISTORIES[0], no editing at all, is never held out: it is the camera's own output.
    """
    return (h.index + h.index // 8 + h.index // 64) % 8 == 1


def resize_ratio(resize: float) -> Fraction:
    """The resize factor as the exact ratio a/b of small integers it stands for."""
    f = Fraction(resize).limit_denominator(16)
    if abs(float(f) - resize) > 1e-9:
        raise ValueError(f"resize factor {resize} is not a ratio of small integers (nearest {f})")
    return f


def grid_period(h: History) -> tuple[int, int]:
    """(source px, output px) of one period of the camera's grids through ``h``'s resize.

    The camera's JPEG blocks and 2x2 CFA repeat every 8 source pixels. A resize by a/b maps 8b
    source pixels onto 8a output pixels (a multiple of 8), so output positions 8a apart share both
    the phase of the output's own 8x8 JPEG grid and the place relative to the camera's grids.
    """
    f = resize_ratio(h.resize)
    return 8 * f.denominator, 8 * f.numerator


TRAIN_HISTORIES = tuple(h for h in HISTORIES if not held_out_history(h))
EVAL_HISTORIES = tuple(h for h in HISTORIES if held_out_history(h))


def apply_history(rgb: np.ndarray, h: History) -> np.ndarray:
    """Apply one editing history to an (H, W, 3) uint8 crop; the JPEG grid starts at the crop origin."""
    _, gamma, contrast, bright, filt = h.edit
    x = rgb.astype(np.float32)
    if gamma != 1.0:
        x = 255.0 * (x / 255.0) ** gamma
    if contrast != 1.0 or bright:
        x = (x - 128.0) * contrast + 128.0 + bright
    im = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    if filt == "blur":
        im = im.filter(ImageFilter.GaussianBlur(0.7))
    elif filt == "sharpen":
        im = im.filter(ImageFilter.UnsharpMask(radius=1.0, percent=80, threshold=0))
    if h.resize != 1.0:
        w, hh = im.size
        f = resize_ratio(h.resize)  # exact sizes for whole grid periods (grid_period)
        im = im.resize((max(1, round(w * f)), max(1, round(hh * f))), Image.Resampling.BICUBIC)
    if h.jpeg is not None:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=h.jpeg)
        buf.seek(0)
        im = Image.open(buf)
        im.load()
    return np.asarray(im.convert("RGB"))


# ---- corpus ---------------------------------------------------------------------------------------


@dataclass
class CorpusReport:
    """What was found, and everything that was left out with the reason."""

    cameras: dict[str, int] = field(default_factory=dict)  # camera -> usable images
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"corpus: {len(self.cameras)} camera models, {sum(self.cameras.values())} images"]
        lines += [f"  {cam}: {n} images" for cam, n in sorted(self.cameras.items())]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass
class Corpus:
    """Decoded images per camera model for one split ("train" or "eval")."""

    images: dict[str, list[np.ndarray]]
    report: CorpusReport

    @property
    def cameras(self) -> list[str]:
        return sorted(self.images)


def _camera_entries(uri: str, storage: StorageConfig, report: CorpusReport) -> list[tuple[str, str | None]]:
    """(file URI, camera model or None for "from EXIF") for every file of the corpus."""
    fs, path = storage.filesystem(uri)
    if fs.isfile(path):  # a manifest
        import csv

        if path.lower().endswith(".csv"):
            with fs.open(path, "rb") as f:
                rows = list(csv.DictReader(io.StringIO(f.read().decode("utf-8"))))
        elif path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            with fs.open(path, "rb") as f:
                rows = pq.read_table(f).to_pylist()
        else:
            raise ValueError(f"a corpus manifest must be .csv or .parquet with uri and camera_model columns: {uri}")
        if rows and not {"uri", "camera_model"} <= set(rows[0]):
            raise ValueError(f"corpus manifest {uri} needs columns uri and camera_model, has {sorted(rows[0])}")
        out = []
        for r in rows:
            cam = (r.get("camera_model") or "").strip()
            if not cam:
                report.problems.append(f"{r['uri']}: no camera_model in the manifest (not guessed)")
                continue
            out.append((r["uri"], None if cam.lower() == "exif" else cam))
        return out
    if not fs.isdir(path):
        raise FileNotFoundError(f"corpus {uri!r} is neither a directory/prefix nor a manifest")
    root = path.rstrip("/")
    out = []
    for d in sorted(p for p in fs.ls(root, detail=False)):
        name = d.rstrip("/").rsplit("/", 1)[-1]
        if not fs.isdir(d):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                report.problems.append(f"{name}: an image at the corpus root has no camera folder (not guessed)")
            continue
        files = [f for f in list_input(fs.unstrip_protocol(d) if "://" in uri else d, storage) if not f.skip_reason]
        if not files:
            report.problems.append(f"{name}: camera folder has no images")
        out += [(f.uri, name) for f in files]
    return out


def load_corpus(uri: str, split: str, storage: StorageConfig | None = None, max_pixels: int = 4_000_000,
                min_images: int = 2) -> Corpus:
    """Decode the ``split`` images ("train": everything outside ``eval/``; "eval": inside it).

    Cameras with fewer than ``min_images`` usable images are dropped with a reason (a group needs
    two images of one camera for positives to exist).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    storage = storage or StorageConfig()
    report = CorpusReport()
    images: dict[str, list[np.ndarray]] = {}
    for file_uri, cam in _camera_entries(uri, storage, report):
        in_eval = f"/{HELD_OUT_DIR}/" in file_uri.replace("\\", "/")
        if in_eval != (split == "eval"):
            continue
        try:
            fs, p = storage.filesystem(file_uri)
            with fs.open(p, "rb") as f:
                img = decode_image(f.read(), max_pixels)
        except (ImageDecodeError, OSError) as e:
            report.problems.append(f"{file_uri}: unreadable, left out: {e}")
            continue
        if cam is None:
            if not (img.exif_make or img.exif_model):
                report.problems.append(f"{file_uri}: no EXIF Make/Model, camera unknown (not guessed)")
                continue
            cam = " ".join(v for v in (img.exif_make, img.exif_model) if v)
        if min(img.rgb.shape[:2]) < 64:
            report.problems.append(f"{file_uri}: {img.rgb.shape[1]}x{img.rgb.shape[0]} is too small for patches")
            continue
        images.setdefault(cam, []).append(img.rgb)
    for cam in sorted(images):
        if len(images[cam]) < min_images:
            report.problems.append(f"{cam}: only {len(images[cam])} usable {split} image(s), needs {min_images}; left out")
            del images[cam]
    report.cameras = {c: len(v) for c, v in images.items()}
    return Corpus(images=images, report=report)


# ---- grouped patch batches ------------------------------------------------------------------------


def sample_patch(rng: np.random.Generator, img: np.ndarray, phase: tuple[int, int], h: History, patch: int) -> np.ndarray | None:
    """One patch at grid phase ``phase`` after history ``h``; None if the image is too small.

    "Same position" means the same phase on the output's 8x8 JPEG grid and the same place relative
    to the camera's CFA and JPEG grids, also after a resize: the source crop starts on the camera's
    8x8 grid and spans whole grid periods, and the patch sits a whole number of periods from it.
    Patches of one phase therefore carry the same camera trace pattern; with a free choice of
    output offset, a resize by 0.75 would put them on three different camera phases, mixing what
    the fingerprint is meant to keep apart.
    """
    src_period, out_period = grid_period(h)
    py, px = phase
    H, W = img.shape[:2]
    # Enough periods for one period of room before the patch (away from the crop's border, where
    # filters and resampling see padding) and a few pixels after it, if the image has them.
    want = -(-(out_period + 7 + patch + 4) // out_period)
    periods = min(want, H // src_period, W // src_period)
    if periods < 1:
        return None
    src, out_size = periods * src_period, periods * out_period
    if py + patch > out_size or px + patch > out_size:
        return None
    y0 = 8 * int(rng.integers(0, (H - src) // 8 + 1))
    x0 = 8 * int(rng.integers(0, (W - src) // 8 + 1))
    out = apply_history(img[y0:y0 + src, x0:x0 + src], h)
    if out.shape[:2] != (out_size, out_size):
        raise RuntimeError(f"history {h} resized a {src}px crop to {out.shape[:2]}, expected {out_size}px")

    def offset(p: int) -> int:
        fits = [p + out_period * j for j in range((out_size - p - patch) // out_period + 1)]
        inner = [o for o in fits if o >= 8 and o + patch + 4 <= out_size] or [o for o in fits if o >= 8] or fits
        return inner[int(rng.integers(len(inner)))]

    y, x = offset(py), offset(px)
    return out[y:y + patch, x:x + patch]


@dataclass(frozen=True)
class BatchLayout:
    """How the groups of one batch are composed: every camera x every position x every history.

    Crossing the three factors puts hard negatives in every batch: groups that differ from each
    other in the camera only, the position only or the history only. Groups drawn independently
    almost always differ in all three (64 positions, 448 histories), which a network separates by
    the JPEG grid alone and never learns the camera (measured in TRAINING.md).
    """

    cameras: int
    positions: int
    histories: int
    per_group: int

    @property
    def groups(self) -> int:
        return self.cameras * self.positions * self.histories

    @classmethod
    def for_groups(cls, groups: int, cameras: int, positions: int, per_group: int, corpus_cameras: int) -> "BatchLayout":
        """``groups`` groups over min(``cameras``, corpus cameras) cameras and ``positions`` positions."""
        c = min(cameras, corpus_cameras)
        if c < 1 or positions < 1 or per_group < 2:
            raise ValueError(f"a batch needs >= 1 camera, >= 1 position and >= 2 patches per group, got "
                             f"{cameras}, {positions}, {per_group}")
        if groups < 2 or groups % (c * positions):
            valid = [c * positions * k for k in range(1, 5)]
            raise ValueError(f"--batch-groups {groups} must be a multiple of cameras x positions = {c} x {positions} "
                             f"(e.g. {valid}); the batch crosses cameras, positions and histories")
        if groups // (c * positions) > len(TRAIN_HISTORIES):
            raise ValueError(f"--batch-groups {groups} needs more histories than the {len(TRAIN_HISTORIES)} there are")
        return cls(c, positions, groups // (c * positions), per_group)


def sample_batch(rng: np.random.Generator, corpus: Corpus, layout: BatchLayout, patch: int,
                 histories: tuple[History, ...] = TRAIN_HISTORIES, unedited_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One batch of ``layout.groups`` groups of ``layout.per_group`` patches sharing camera, grid phase and history.

    Args:
        rng: the batch's random generator (seeded per step and rank for reproducible resumes).
        corpus: training images per camera.
        layout: cameras x positions x histories crossed into groups.
        patch: patch side in pixels.
        histories: the histories to draw from.
        unedited_share: probability that a history slot is "unedited" (the camera's own output,
            HISTORIES[0]), which is what camera identification sees.

    Returns:
        (patches (N, patch, patch, 3) uint8, group labels (N,)). Patches inside a group come from
        different images of the camera when it has enough.
    """
    cams = corpus.cameras
    pick_cams = [cams[i] for i in rng.choice(len(cams), size=layout.cameras, replace=False)]
    phases: list[tuple[int, int]] = []
    while len(phases) < layout.positions:
        ph = (int(rng.integers(8)), int(rng.integers(8)))
        if ph not in phases:
            phases.append(ph)
    hists: list[History] = []
    while len(hists) < layout.histories:
        unedited = rng.random() < unedited_share and HISTORIES[0] not in hists
        h = HISTORIES[0] if unedited else histories[int(rng.integers(len(histories)))]
        if h not in hists:
            hists.append(h)
    xs, labels = [], []
    for g, (cam, ph, h) in enumerate(itertools.product(pick_cams, phases, hists)):
        imgs = corpus.images[cam]
        for k in rng.choice(len(imgs), size=layout.per_group, replace=len(imgs) < layout.per_group):
            p = sample_patch(rng, imgs[k], ph, h, patch)
            tries = 0
            while p is None:  # too small for this resize: another image of the camera
                tries += 1
                if tries > 4 * len(imgs):
                    src, out = grid_period(h)
                    raise ValueError(
                        f"camera {cam}: no image is large enough for a {patch}px patch at phase {ph} after a resize "
                        f"by {h.resize:.3g} (needs {-(-(patch + 7) // out) * src}px per side; image sizes "
                        f"{sorted({im.shape[:2] for im in imgs})}); use a smaller --patch or larger images")
                p = sample_patch(rng, imgs[int(rng.integers(len(imgs)))], ph, h, patch)
            xs.append(p)
            labels.append(g)
    return np.stack(xs), np.asarray(labels)
