"""Reading one file within limits: refused by kind (FIFO, device) and size before any byte is read,
and within a time limit (a stalled mount or object store becomes an error, never a hang)."""
from __future__ import annotations

import os
import queue
import stat
import threading

from pipeline.base.listing import local_version_tag, special_file_error, too_big, version_tag
from pipeline.base.schema import ERROR_INPUT, ERROR_TRANSIENT
from pipeline.base.storage import StorageConfig, is_remote, local_path


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
