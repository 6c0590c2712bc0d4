"""Turning a scan INPUT (directory, prefix, single file or manifest) into the list of files."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from trufor_core.image import IMAGE_EXTENSIONS

from .storage import StorageConfig

MANIFEST_EXTENSIONS = (".parquet", ".csv", ".txt", ".lst")


@dataclass
class ListedFile:
    """One input file; ``skip_reason`` set when it will not be scanned (it still gets a row)."""

    uri: str
    size_bytes: int | None = None
    etag_or_mtime: str | None = None
    skip_reason: str | None = None


def _version_tag(info: dict) -> str | None:
    for k in ("ETag", "etag"):
        if info.get(k):
            return str(info[k]).strip('"')
    for k in ("LastModified", "mtime", "last_modified", "updated"):
        if info.get(k) is not None:
            v = info[k]
            return v.isoformat() if hasattr(v, "isoformat") else str(v)
    return None


def _uri(fs, path: str, original: str) -> str:
    return fs.unstrip_protocol(path) if "://" in original else path


def classify(uri: str) -> str | None:
    """Why a file is skipped (not an allowed image extension), or None."""
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith(IMAGE_EXTENSIONS):
        return None
    ext = "." + name.rsplit(".", 1)[-1] if "." in name else "(no extension)"
    return f"skipped: {ext} is not an allowed image extension {IMAGE_EXTENSIONS}"


def read_manifest(uri: str, storage: StorageConfig) -> list[str]:
    """URIs from a Parquet/CSV manifest (column ``uri``, else the first column) or a text file."""
    fs, path = storage.filesystem(uri)
    low = path.lower()
    if low.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        col = "uri" if "uri" in table.column_names else table.column_names[0]
        return [str(v) for v in table.column(col).to_pylist() if v]
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8")
    if low.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        idx = header.index("uri") if "uri" in header else 0
        body = rows[1:] if "uri" in header else rows
        return [r[idx].strip() for r in body if r and r[idx].strip()]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def list_input(spec: str, storage: StorageConfig) -> list[ListedFile]:
    """Every file under ``spec`` (recursive), or in the manifest ``spec``, sorted by URI.

    Raises:
        FileNotFoundError: ``spec`` does not exist.
    """
    fs, path = storage.filesystem(spec)
    if fs.isfile(path):
        if path.lower().endswith(MANIFEST_EXTENSIONS):
            return [ListedFile(uri=u, skip_reason=classify(u)) for u in read_manifest(spec, storage)]
        info = fs.info(path)
        uri = _uri(fs, path, spec)
        return [ListedFile(uri, info.get("size"), _version_tag(info), classify(uri))]
    if not fs.isdir(path):
        raise FileNotFoundError(f"scan input {spec!r} is neither a file, a directory nor a prefix with objects")
    found = fs.find(path, detail=True)
    out = []
    for p, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        uri = _uri(fs, p, spec)
        out.append(ListedFile(uri, info.get("size"), _version_tag(info), classify(uri)))
    return out
