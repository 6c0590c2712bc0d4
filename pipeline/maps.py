"""Compressed anomaly/confidence maps: one 8-bit grey+alpha PNG per distinct image.

L = round(255 * anomaly), A = round(255 * confidence): quantisation error <= 0.5/255. Any image
viewer opens it (the anomaly map, transparent where TruFor is not confident).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .storage import StorageConfig

MAP_CODEC = "png-la8:L=anomaly,A=confidence,v=round(255*x)"


def encode(anomaly: np.ndarray, confidence: np.ndarray) -> bytes:
    """Two (H, W) float maps in [0, 1] -> PNG bytes."""
    if anomaly.shape != confidence.shape or anomaly.ndim != 2:
        raise ValueError(f"maps must be two equal (H, W) arrays, got {anomaly.shape} and {confidence.shape}")
    la = np.stack([anomaly, confidence], axis=-1)  # (H, W, 2)
    q = np.rint(np.clip(la, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(q, mode="LA").save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """PNG bytes -> (anomaly, confidence) float32 (H, W) arrays."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
        if im.mode != "LA":
            raise ValueError(f"not a trufor-scan map: PNG mode {im.mode}, expected LA")
        q = np.asarray(im)
    la = q.astype(np.float32) / 255.0
    return la[..., 0], la[..., 1]


def map_path(maps_root: str, sha256: str) -> str:
    """Content-addressed location: identical files share one map."""
    return f"{maps_root.rstrip('/')}/{sha256[:2]}/{sha256}.png"


def save(maps_root: str, sha256: str, anomaly: np.ndarray, confidence: np.ndarray,
         storage: StorageConfig | None = None) -> str:
    """Write the map once per distinct sha256; returns its URI."""
    uri = map_path(maps_root, sha256)
    fs, path = (storage or StorageConfig()).filesystem(uri)
    if not fs.exists(path):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(encode(anomaly, confidence))
    return uri


def load(map_uri: str, storage: StorageConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a map written by a scan: returns (anomaly, confidence) as float32 arrays."""
    fs, path = (storage or StorageConfig()).filesystem(map_uri)
    with fs.open(path, "rb") as f:
        return decode(f.read())
