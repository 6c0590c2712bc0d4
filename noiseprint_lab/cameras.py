"""`trufor-scan noiseprint make-corpus`: simulated cameras from real photographs, for training and evaluation.

Each source photo (scikit-image's bundled photographs: colour ones, and greyscale ones given a
per-scene colour cast) is downscaled 2x with area averaging, which wipes its own camera traces,
then cut into scenes. Every simulated camera has its own
pipeline: white balance, CFA pattern and demosaicing method, sensor noise, tone curve,
sharpening, JPEG quality and chroma subsampling. Scenes from held-out photos go to
``<camera>/eval/`` (never trained on); the rest to ``<camera>/train/``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pipeline.base.options import opt

CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
DEMOSAIC = ("bilinear", "nearest", "green-smooth")
# Bundled photographs of scikit-image (no download needed). Training scenes come from many photos
# so that scene content cannot tell groups apart; the last EVAL_SOURCES are held out.
SOURCE_PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle",
                 "camera", "moon", "brick", "grass", "gravel", "coins", "clock", "rocket", "chelsea")
EVAL_SOURCES = 2


@dataclass(frozen=True)
class CameraPipeline:
    name: str
    cfa: str
    demosaic: str
    wb_r: float
    wb_b: float
    noise_sigma: float
    gamma: float
    sharpen: float
    jpeg_quality: int
    subsampling: int  # Pillow: 0 = 4:4:4, 2 = 4:2:0


def random_pipeline(rng: np.random.Generator, index: int) -> CameraPipeline:
    return CameraPipeline(
        name=f"simcam{index:02d}", cfa=CFA_PATTERNS[index % 4], demosaic=DEMOSAIC[(index // 4) % 3],
        wb_r=float(rng.uniform(0.75, 1.3)), wb_b=float(rng.uniform(0.75, 1.3)),
        noise_sigma=float(rng.uniform(0.8, 3.0)), gamma=float(rng.uniform(1.8, 2.6)),
        sharpen=float(rng.uniform(0.0, 1.2)), jpeg_quality=int(rng.integers(72, 97)),
        subsampling=int(rng.choice([0, 2])))


def _conv3(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    p = np.pad(x, 1, mode="reflect")
    return sum(k[i, j] * p[i:i + x.shape[0], j:j + x.shape[1]] for i in range(3) for j in range(3))


def _cfa_masks(cfa: str, h: int, w: int) -> dict[str, np.ndarray]:
    masks = {c: np.zeros((h, w), bool) for c in "RGB"}
    for k, c in enumerate(cfa):
        masks[c][k // 2::2, k % 2::2] = True
    return masks


def demosaic(raw: np.ndarray, cfa: str, method: str) -> np.ndarray:
    """Mosaic (H, W) -> (H, W, 3) by one of three simple methods (each leaves its own traces)."""
    h, w = raw.shape
    m = _cfa_masks(cfa, h, w)
    out = np.zeros((h, w, 3), np.float64)
    if method == "nearest":
        for ci, c in enumerate("RGB"):
            ys, xs = np.nonzero(m[c][:2, :2])
            y, x = ys[0], xs[0]
            block = raw[y::2, x::2]
            out[..., ci] = np.repeat(np.repeat(block, 2, 0), 2, 1)[:h, :w]
        return out
    k_rb = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])
    k_g = np.array([[0, 0.25, 0], [0.25, 1.0, 0.25], [0, 0.25, 0]])
    g = _conv3(raw * m["G"], k_g)
    out[..., 1] = g
    for ci, c in ((0, "R"), (2, "B")):
        if method == "bilinear":
            out[..., ci] = _conv3(raw * m[c], k_rb)
        else:  # green-smooth: interpolate the colour difference c - G, add G back
            diff = np.where(m[c], raw - g, 0.0)
            out[..., ci] = g + _conv3(diff, k_rb)
    return out


def capture(scene: np.ndarray, cam: CameraPipeline, rng: np.random.Generator) -> Image.Image:
    """Render an sRGB scene (H, W, 3) uint8 through a simulated camera; returns the decoded JPEG image."""
    lin = (scene.astype(np.float64) / 255.0) ** 2.2
    lin = lin / np.array([cam.wb_r, 1.0, cam.wb_b])  # what the sensor saw before white balance
    h, w = lin.shape[:2]
    m = _cfa_masks(cam.cfa, h, w)
    raw = sum(lin[..., i] * m[c] for i, c in enumerate("RGB"))
    raw = raw + rng.normal(0, cam.noise_sigma / 255.0, raw.shape) * np.sqrt(np.clip(raw, 0.02, 1.0) * 4)
    rgb = demosaic(np.clip(raw, 0, 1), cam.cfa, cam.demosaic) * np.array([cam.wb_r, 1.0, cam.wb_b])
    rgb = np.clip(rgb, 0, 1) ** (1.0 / cam.gamma)
    im = Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))
    if cam.sharpen > 0.05:
        im = im.filter(ImageFilter.UnsharpMask(radius=1.2, percent=int(cam.sharpen * 100), threshold=0))
    return im


def source_photos() -> list[tuple[str, np.ndarray]]:
    """The bundled photos, each downscaled 2x by area averaging (wipes the source's own traces).

    Greyscale photos come back with one channel repeated; `scenes` gives each of their crops a colour cast.
    """
    import skimage.data as skd

    out = []
    for name in SOURCE_PHOTOS:
        try:
            img = getattr(skd, name)()
        except Exception:  # noqa: BLE001 - not bundled in this scikit-image version: use the others
            continue
        img = np.asarray(img[0] if isinstance(img, tuple) else img)  # stereo_motorcycle: (left, right, disparity)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
            continue
        img = img[..., :3].astype(np.float64)
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        small = img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        if min(small.shape[:2]) >= 128:
            out.append((name, np.clip(np.rint(small), 0, 255).astype(np.uint8)))
    if len(out) < EVAL_SOURCES + 2:
        raise RuntimeError(f"only {len(out)} usable source photos found in scikit-image; need {EVAL_SOURCES + 2}")
    return out


def scenes(rng: np.random.Generator, photo: np.ndarray, n: int, size: int) -> list[np.ndarray]:
    """n random crops (with flips and quarter turns; greyscale photos get a colour cast) of one photo."""
    out = []
    for _ in range(n):
        s = min(size, *photo.shape[:2]) // 8 * 8  # even for the CFA, whole 8x8 JPEG blocks
        y = int(rng.integers(0, photo.shape[0] - s + 1))
        x = int(rng.integers(0, photo.shape[1] - s + 1))
        crop = np.rot90(photo[y:y + s, x:x + s], int(rng.integers(4)))
        if np.array_equal(crop[..., 0], crop[..., 1]) and np.array_equal(crop[..., 1], crop[..., 2]):
            cast = rng.uniform(0.75, 1.0, 3)  # a greyscale photo: tint it so that the CFA sees colour
            crop = np.clip(np.rint(crop * cast), 0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.integers(2) else crop))
    return out


@dataclass(frozen=True)
class CameraCorpusConfig:
    """`trufor-scan noiseprint make-corpus`; the command line is derived from these fields, which are
    ``make_camera_corpus``'s arguments."""

    out: str = field(metadata=opt("corpus folder to write"))
    cameras: int = field(default=8, metadata=opt("simulated camera models"))
    images: int = field(default=24, metadata=opt("training images per camera"))
    size: int = field(default=192, metadata=opt("side of each (square) image"))
    eval_images: int | None = field(default=None, metadata=opt("held-out images per camera (default: images/2)"))
    seed: int = field(default=0, metadata=opt("everything is deterministic given the seed"))
    held_out_cameras: int = field(default=0, metadata=opt(
        "the last N cameras get no training images (for the splice benchmark's unseen subsets)"))


def make_camera_corpus(out: str | Path, cameras: int, images: int, size: int = 192, eval_images: int | None = None,
                       seed: int = 0, held_out_cameras: int = 0) -> dict:
    """Write ``out/<camera>/{train,eval}/*.jpg`` and ``out/cameras.json``; returns the description.

    Args:
        out: destination folder.
        cameras: number of simulated camera models.
        images: training images per camera (scenes from the training photos).
        size: side of each (square) image.
        eval_images: held-out images per camera (scenes from held-out photos); default images // 2.
        seed: everything is deterministic given the seed.
        held_out_cameras: the last this many cameras get no training images at all (only eval/):
            whole camera models the network never sees, for the splice benchmark's unseen subsets.
    """
    if cameras - held_out_cameras < 2 or images < 2 or held_out_cameras < 0:
        raise ValueError(f"need at least 2 training cameras and 2 images per camera, got {cameras} cameras "
                         f"({held_out_cameras} held out) and {images} images")
    eval_images = max(2, images // 2) if eval_images is None else eval_images
    rng = np.random.default_rng(seed)
    photos = source_photos()
    train_photos, eval_photos = photos[:-EVAL_SOURCES], photos[-EVAL_SOURCES:]
    out = Path(out)
    cams = [random_pipeline(rng, i) for i in range(cameras)]
    for i, cam in enumerate(cams):
        held_out = i >= cameras - held_out_cameras
        for split, pool, n in (("train", train_photos, images), ("eval", eval_photos, eval_images)):
            if held_out and split == "train":
                continue
            d = out / cam.name / split
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                name, photo = pool[int(rng.integers(len(pool)))]
                scene = scenes(rng, photo, 1, size)[0]
                capture(scene, cam, rng).save(d / f"{name}_{k:04d}.jpg", quality=cam.jpeg_quality,
                                              subsampling=cam.subsampling)
    desc = {"cameras": [asdict(c) for c in cams], "train_photos": [n for n, _ in train_photos],
            "eval_photos": [n for n, _ in eval_photos], "images_per_camera": images,
            "eval_images_per_camera": eval_images, "size": size, "seed": seed,
            "held_out_cameras": [c.name for c in cams[cameras - held_out_cameras:]] if held_out_cameras else []}
    (out / "cameras.json").write_text(json.dumps(desc, indent=1))
    return desc
