"""`trufor-scan make-demo-archive`: the embedded default input of `make scan`, built offline.

Real photographs bundled with scikit-image, saved as a camera would (JPEG), plus what a crawl
brings: a splice (a region of one photo pasted into another, then re-saved as JPEG), a repost
(the same bytes under another name: scored once, recorded with dedup_of), a resized and
recompressed repost of the splice (a near-duplicate), a truncated file and a text file.
Deterministic: the same bytes on every machine with the same Pillow.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.base.options import opt

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle")


@dataclass(frozen=True)
class DemoArchiveConfig:
    """`trufor-scan make-demo-archive`; the command line is derived from these fields."""

    out: str = field(metadata=opt("folder to write the archive into"))


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_demo_archive(out: str | Path) -> list[Path]:
    """Write the demo archive under ``out``; returns the files written."""
    import skimage.data as skd

    out = Path(out)
    (out / "reposts").mkdir(parents=True, exist_ok=True)
    written = []

    def put(rel: str, data: bytes) -> None:
        (out / rel).write_bytes(data)
        written.append(out / rel)

    photos = {}
    for name in PHOTOS:
        img = getattr(skd, name)()
        img = img[0] if isinstance(img, tuple) else img
        photos[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
        put(f"{name}.jpg", _jpeg(photos[name], 90))
    # A splice: a 160x160 region of the rocket pasted into the coffee photo, saved again as JPEG
    # (a different compression history inside the region: what TruFor's noiseprint sees).
    host = _jpeg(photos["coffee"], 75)
    spliced = np.array(Image.open(io.BytesIO(host)))
    spliced[120:280, 200:360] = photos["rocket"][200:360, 100:260]
    put("coffee_spliced.jpg", _jpeg(spliced, 90))
    put("reposts/astronaut_repost.jpg", (out / "astronaut.jpg").read_bytes())
    # A platform's repost of the splice: resized to 75% and recompressed (new bytes, a near-duplicate:
    # `trufor-scan duplicates` clusters it with the splice).
    small = Image.fromarray(spliced).resize((spliced.shape[1] * 3 // 4, spliced.shape[0] * 3 // 4), Image.LANCZOS)
    put("reposts/coffee_spliced_resized.jpg", _jpeg(np.asarray(small), 80))
    put("truncated.jpg", (out / "chelsea.jpg").read_bytes()[:3000])
    put("README.txt", b"trufor-scan demo archive (scikit-image photographs); not an image: a skipped row\n")
    return written
