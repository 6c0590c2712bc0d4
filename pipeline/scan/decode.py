"""Stateless pre-processing (CPU tasks): read bytes, hash, decode, EXIF. One row in, one row out."""
from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading

import numpy as np

from pipeline.base.listing import local_version_tag, special_file_error, too_big, version_tag
from pipeline.base.schema import (C2PA_COLUMNS, DECODED_COLUMNS, ERROR_INPUT, ERROR_TRANSIENT, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED,
                                  coerce, py_value)
from pipeline.base.storage import StorageConfig, is_remote, local_path, one_line, redact
from pipeline.scan.c2pa import read_credentials
from trufor_core.image import ImageDecodeError, decode_image

EMPTY_PIXELS = np.zeros((0, 0, 3), np.uint8)


class ReadError(OSError):
    """A file that could not be read within the limits (kind, size: ``kind`` input; time: transient)."""

    def __init__(self, msg: str, kind: str = ERROR_INPUT):
        super().__init__(msg)
        self.kind = kind


def _read_local(path, max_bytes: int | None) -> tuple[bytes, str]:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever: never opened
        raise ReadError(special_file_error(st.st_mode))
    if (msg := too_big(st.st_size, max_bytes)):
        raise ReadError(msg)
    with open(path, "rb") as f:
        return _read_capped(f, max_bytes), local_version_tag(st)


def _read_remote(uri: str, storage: StorageConfig, max_bytes: int | None) -> tuple[bytes, str | None]:
    fs, path = storage.filesystem(uri)
    info = fs.info(path)
    if (msg := too_big(info.get("size"), max_bytes)):
        raise ReadError(msg)
    with fs.open(path, "rb") as f:
        data = _read_capped(f, max_bytes)
    return data, version_tag(info)


def _read_capped(f, max_bytes: int | None) -> bytes:
    """Read to the end, but never more than ``max_bytes`` (the size seen earlier may be stale)."""
    data = f.read(-1 if max_bytes is None else max_bytes + 1)
    if (msg := too_big(len(data), max_bytes)):
        raise ReadError(msg.replace("file of", "file of more than"))
    return data


def read_input(uri: str, storage: StorageConfig, max_bytes: int | None, timeout_s: float | None) -> tuple[bytes, str | None]:
    """(bytes, version tag) of one input, refused by kind and size before reading, within ``timeout_s``.

    The read runs in a daemon thread: a read that hangs (a stalled network mount, an object store
    that stops sending) becomes this file's error, and the thread is abandoned.
    """
    def read():
        if is_remote(uri):
            return _read_remote(uri, storage, max_bytes)
        return _read_local(local_path(uri), max_bytes)

    if timeout_s is None:
        return read()
    box: queue.Queue = queue.Queue(maxsize=1)

    def target():
        try:
            box.put((True, read()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box.put((False, e))

    threading.Thread(target=target, daemon=True, name="trufor-read").start()
    try:
        ok, value = box.get(timeout=timeout_s)
    except queue.Empty:
        raise ReadError(f"read timed out after {timeout_s:g} s (--read-timeout)", ERROR_TRANSIENT) from None
    if not ok:
        raise value
    return value


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
