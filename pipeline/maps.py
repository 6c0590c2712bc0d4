"""Compressed anomaly/confidence maps, stored once per distinct image (content-addressed by sha256).

TruFor's full-resolution maps are a fixed function of its stride-4 logits: anomaly =
sigmoid(upsample(l1 - l0)), confidence = sigmoid(upsample(c)) (bilinear, align_corners=False; the
upsampling is linear, so the 2-class softmax only needs the margin). So a map is stored as

- ``<sha256>.npz``: the stride-4 margin and confidence logits in float16 (zlib-compressed) plus
  the image size. ``load`` rebuilds the float32 maps; the error is float16 rounding (~1e-4,
  far under 1/255). With the preview, 3.4% of the official float32 ``.npz`` (BENCHMARKS.md).
- ``<sha256>.png``: a preview a person can open: 8-bit grey + alpha at stride 4, grey = anomaly,
  alpha = confidence (so the anomaly shows where TruFor is confident).
"""
from __future__ import annotations

import io
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .storage import StorageConfig, is_remote, write_local_atomic

MAP_CODEC = "npz-f16-stride4-logits+png-preview"


def encode(margin_lowres: np.ndarray, conf_lowres: np.ndarray, size: tuple[int, int]) -> tuple[bytes, bytes]:
    """Stride-4 logits (h, w) of one image of ``size`` (H, W) -> (npz bytes, preview PNG bytes)."""
    if margin_lowres.shape != conf_lowres.shape or margin_lowres.ndim != 2:
        raise ValueError(f"logits must be two equal (h, w) arrays, got {margin_lowres.shape} and {conf_lowres.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, margin=margin_lowres.astype(np.float16), conf=conf_lowres.astype(np.float16),
                        size=np.asarray(size, np.int64))
    sig = 1.0 / (1.0 + np.exp(-np.stack([margin_lowres, conf_lowres], axis=-1).astype(np.float64)))
    png = io.BytesIO()
    Image.fromarray(np.rint(sig * 255).astype(np.uint8), mode="LA").save(png, format="PNG")
    return buf.getvalue(), png.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """npz bytes -> (anomaly, confidence) float32 (H, W) maps, as TruFor's post-processing makes them."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        if not {"margin", "conf", "size"} <= set(z.files):
            raise ValueError(f"not a trufor-scan map: fields {z.files}")
        logits = torch.from_numpy(np.stack([z["margin"], z["conf"]]).astype(np.float32))[None]  # (1, 2, h, w)
        h, w = (int(v) for v in z["size"])
    full = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False))[0].numpy()
    return full[0], full[1]


def map_path(maps_root: str, sha256: str, ext: str = "npz") -> str:
    """Content-addressed location: identical files share one map."""
    return f"{maps_root.rstrip('/')}/{sha256[:2]}/{sha256}.{ext}"


def save(maps_root: str, sha256: str, margin_lowres: np.ndarray, conf_lowres: np.ndarray, size: tuple[int, int],
         storage: StorageConfig | None = None) -> str:
    """Write the map (and its preview) once per distinct sha256; returns the map URI.

    Each file appears whole or not at all (local: a temporary name, then a rename; object storage:
    an object appears when its upload completes), the preview first: the npz's presence means both
    are complete, so an actor killed mid-write never leaves a map that a later scan would trust.
    Local maps need only the standard library (the GPU benchmark runs where fsspec is absent).
    """
    uri = map_path(maps_root, sha256)
    if not is_remote(uri):
        if not os.path.exists(uri):
            npz, png = encode(margin_lowres, conf_lowres, size)
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            write_local_atomic(uri[:-3] + "png", png)
            write_local_atomic(uri, npz)
        return uri
    fs, path = (storage or StorageConfig()).filesystem(uri)
    if not fs.exists(path):
        npz, png = encode(margin_lowres, conf_lowres, size)
        with fs.open(path[:-3] + "png", "wb") as f:
            f.write(png)
        with fs.open(path, "wb") as f:
            f.write(npz)
    return uri


def load(map_uri: str, storage: StorageConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a map written by a scan: returns (anomaly, confidence) as float32 (H, W) arrays."""
    fs, path = (storage or StorageConfig()).filesystem(map_uri)
    with fs.open(path, "rb") as f:
        return decode(f.read())


def preview_uri(map_uri: str) -> str:
    return map_uri[: -len("npz")] + "png"
