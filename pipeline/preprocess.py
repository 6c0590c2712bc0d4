"""Stateless pre-processing (CPU tasks): read bytes, hash, decode, EXIF. One row in, one row out."""
from __future__ import annotations

import hashlib

import numpy as np

from trufor_core.image import ImageDecodeError, decode_image

from .schema import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, coerce, py_value
from .storage import StorageConfig, redact

EMPTY_PIXELS = np.zeros((0, 0, 3), np.uint8)


def load_one(uri: str, size_bytes, etag_or_mtime, skip_reason, storage: StorageConfig, max_pixels: int,
             min_side: int) -> dict:
    """Read and decode one file; never raises: failures become an error row with the reason."""
    row = {"uri": uri, "size_bytes": size_bytes, "etag_or_mtime": etag_or_mtime, "status": STATUS_OK,
           "error": None, "sha256": None, "format": None, "width": None, "height": None, "exif_make": None,
           "exif_model": None, "exif_software": None, "exif_orientation": None, "pixels": EMPTY_PIXELS}
    if skip_reason:
        row.update(status=STATUS_SKIPPED, error=skip_reason)
        return row
    try:
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            data = f.read()
        if etag_or_mtime is None:
            info = fs.info(path)
            row["etag_or_mtime"] = str(info.get("ETag") or info.get("mtime") or info.get("LastModified") or "") or None
        row["size_bytes"] = len(data)
        row["sha256"] = hashlib.sha256(data).hexdigest()
        if not data:
            raise ImageDecodeError(f"{uri}: empty file (0 bytes)")
        img = decode_image(data, max_pixels)
        h, w = img.rgb.shape[:2]
        row.update(format=img.format, width=w, height=h, exif_make=img.exif_make, exif_model=img.exif_model,
                   exif_software=img.exif_software, exif_orientation=img.exif_orientation)
        if min(h, w) < min_side:
            raise ImageDecodeError(f"{uri}: image of {h}x{w} px is too small: TruFor needs at least "
                                   f"{min_side} px on each side")
        row["pixels"] = img.rgb
    except Exception as e:  # noqa: BLE001 - any failure of one file is that file's error row
        msg = str(e) if isinstance(e, ImageDecodeError) else f"{type(e).__name__}: {e}"
        row.update(status=STATUS_ERROR, error=redact(msg.replace("<bytes>", uri)), pixels=EMPTY_PIXELS)
    return row


def load_batch(batch: dict[str, np.ndarray], storage: StorageConfig, max_pixels: int, min_side: int) -> dict:
    """Ray Data UDF: a batch of listed files -> decoded rows (``pixels`` holds the RGB arrays)."""
    rows = []
    for u, s, e, k in zip(batch["uri"], batch["size_bytes"], batch["etag_or_mtime"], batch["skip_reason"]):
        rows.append(load_one(str(u), coerce("size_bytes", s), coerce("etag_or_mtime", e), py_value(k), storage,
                             max_pixels, min_side))
    out = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
    if rows:
        pix = np.empty(len(rows), dtype=object)
        pix[:] = [r["pixels"] for r in rows]
        out["pixels"] = pix
    return out
