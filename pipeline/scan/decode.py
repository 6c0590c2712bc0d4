"""Stateless pre-processing (CPU tasks): read bytes, hash, decode, EXIF. One row in, one row out."""
from __future__ import annotations

import hashlib

import numpy as np

from pipeline.base.reading import ReadError, read_input
from pipeline.base.schema import (C2PA_COLUMNS, DECODED_COLUMNS, ERROR_INPUT, ERROR_TRANSIENT, STATUS_ERROR, STATUS_OK,
                                  STATUS_SKIPPED, coerce, py_value)
from pipeline.base.storage import StorageConfig, one_line, redact
from pipeline.scan.c2pa import read_credentials
from trufor_core.image import ImageDecodeError, decode_image

EMPTY_PIXELS = np.zeros((0, 0, 3), np.uint8)


def load_one(uri: str, size_bytes, etag_or_mtime, skip_reason, storage: StorageConfig, max_pixels: int,
             min_side: int, error: str | None = None, max_bytes: int | None = None,
             read_timeout_s: float | None = None, error_kind: str | None = None,
             c2pa_settings: str | None = None) -> dict:
    """Read and decode one file; never raises: failures become an error row with the reason."""
    row = {**dict.fromkeys(DECODED_COLUMNS), "uri": uri, "size_bytes": size_bytes, "etag_or_mtime": etag_or_mtime,
           "status": STATUS_OK, "pixels": EMPTY_PIXELS}
    if skip_reason:
        row.update(status=STATUS_SKIPPED, error=skip_reason)
        return row
    if error:  # found by the listing (special file, loop, too big): never opened
        row.update(status=STATUS_ERROR, error=error, error_kind=error_kind or ERROR_INPUT)
        return row
    try:
        data, tag = read_input(uri, storage, max_bytes, read_timeout_s)
        row["etag_or_mtime"] = etag_or_mtime or tag
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
        row["phash"] = phash_hex(img.rgb)
        row.update(read_credentials(data, img.format, c2pa_settings))
    except Exception as e:  # noqa: BLE001 - any failure of one file is that file's error row
        # The file's own fault is final for this version of it; anything else is retried by the next sweep.
        kind = e.kind if isinstance(e, ReadError) else ERROR_INPUT if isinstance(e, ImageDecodeError) else ERROR_TRANSIENT
        msg = str(e) if isinstance(e, (ImageDecodeError, ReadError)) else f"{type(e).__name__}: {e}"
        row.update(status=STATUS_ERROR, error=one_line(redact(msg.replace("<bytes>", uri))), error_kind=kind,
                   pixels=EMPTY_PIXELS, phash=None, **dict.fromkeys(C2PA_COLUMNS))
    return row


def load_batch(batch: dict[str, np.ndarray], storage: StorageConfig, max_pixels: int, min_side: int,
               max_bytes: int | None = None, read_timeout_s: float | None = None,
               c2pa_settings: str | None = None) -> dict:
    """Ray Data UDF: a batch of listed files -> decoded rows (``pixels`` holds the RGB arrays)."""
    rows = []
    for u, s, e, k, err, kind in zip(batch["uri"], batch["size_bytes"], batch["etag_or_mtime"], batch["skip_reason"],
                                     batch["error"], batch["error_kind"]):
        rows.append(load_one(str(u), coerce("size_bytes", s), coerce("etag_or_mtime", e), py_value(k), storage,
                             max_pixels, min_side, py_value(err), max_bytes, read_timeout_s, py_value(kind),
                             c2pa_settings))
    out = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
    if rows:
        pix = np.empty(len(rows), dtype=object)
        pix[:] = [r["pixels"] for r in rows]
        out["pixels"] = pix
    return out


def phash_hex(rgb: np.ndarray) -> str:
    """pHash (64 bits, imagehash) of decoded (H, W, 3) uint8 pixels, as 16 hex digits."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(rgb), hash_size=8))
