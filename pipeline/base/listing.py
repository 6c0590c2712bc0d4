"""Turning a scan INPUT (directory, prefix, single file or manifest) into a stream of files.

Listing streams: a local tree is walked directory by directory, an S3 prefix page by page
(ListObjectsV2, 1000 keys a page), a manifest line by line or row group by row group; nothing
holds the whole listing. Every entry becomes a ``ListedFile`` (one output row), including those
that will not be read: not an image extension (skipped), not a regular file, a symlink loop or
a broken link, over ``max_bytes`` (error rows, never opened).
"""
from __future__ import annotations

import collections
import csv
import errno
import io
import itertools
import os
import stat
from dataclasses import dataclass, fields
from typing import Iterator

import pyarrow as pa

from pipeline.base.schema import ERROR_INPUT, ERROR_TRANSIENT
from pipeline.base.storage import StorageConfig, canonical_uri, is_remote, local_path, local_uri
from trufor_core.config import IMAGE_EXTENSIONS

MANIFEST_EXTENSIONS = (".parquet", ".csv", ".txt", ".lst")
_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDOOR if hasattr(stat, "S_ISDOOR") else (lambda m: False), "a door"))


@dataclass
class ListedFile:
    """One input; ``skip_reason`` when it will not be scanned, ``error`` when it cannot be (it still gets a row)."""

    uri: str
    size_bytes: int | None = None
    etag_or_mtime: str | None = None
    skip_reason: str | None = None
    error: str | None = None
    error_kind: str | None = None  # schema.ERROR_INPUT or ERROR_TRANSIENT when ``error`` is set

    def __post_init__(self):
        if self.error and not self.error_kind:
            self.error_kind = ERROR_INPUT


LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("size_bytes", pa.int64()), ("etag_or_mtime", pa.string()),
                            ("skip_reason", pa.string()), ("error", pa.string()), ("error_kind", pa.string())])
if tuple(f.name for f in fields(ListedFile)) != tuple(LISTING_SCHEMA.names):
    raise ImportError("ListedFile and LISTING_SCHEMA are out of step")


def classify(uri: str) -> str | None:
    """Why a file is skipped (not an allowed image extension), or None."""
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith(IMAGE_EXTENSIONS):
        return None
    ext = "." + name.rsplit(".", 1)[-1] if "." in name else "(no extension)"
    return f"skipped: {ext} is not an allowed image extension {IMAGE_EXTENSIONS}"


def too_big(size: int | None, max_bytes: int | None) -> str | None:
    if size is not None and max_bytes is not None and size > max_bytes:
        return f"file of {size} bytes is over --max-bytes {max_bytes}: refused before reading"
    return None


def special_file_error(mode: int) -> str | None:
    """The error for anything that is not a regular file (never opened: a FIFO would block the reader)."""
    for test, kind in _KINDS:
        if test(mode):
            return f"not a regular file: {kind}; never opened"
    return None if stat.S_ISREG(mode) else "not a regular file; never opened"


def _entry(uri: str, st: os.stat_result, max_bytes: int | None) -> ListedFile:
    if not stat.S_ISREG(st.st_mode):
        return ListedFile(uri, error=special_file_error(st.st_mode))
    skip = classify(uri)
    return ListedFile(uri, st.st_size, local_version_tag(st), skip, None if skip else too_big(st.st_size, max_bytes))


def _walk_local(root: bytes, max_bytes: int | None) -> Iterator[ListedFile]:
    """Depth-first, names sorted bytewise. Real directories first; then directory symlinks, each
    followed unless it points back to one of its ancestors (a loop: error row) or to a directory
    already listed (skipped row naming the first path), so a file has one uri whatever links exist."""
    st = os.stat(root)
    seen_dirs: dict[tuple[int, int], bytes] = {(st.st_dev, st.st_ino): root}
    links: list[tuple[bytes, tuple[int, int], frozenset]] = []

    def walk(d: bytes, ancestors: frozenset) -> Iterator[ListedFile]:
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield ListedFile(local_uri(d), error=f"cannot list directory: {e.strerror}", error_kind=ERROR_TRANSIENT)
            return
        for e in entries:
            path = e.path
            try:
                lst = e.stat(follow_symlinks=False)
                st = os.stat(path) if stat.S_ISLNK(lst.st_mode) else lst
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOENT):
                    yield ListedFile(local_uri(path), error="symlink loop: the link never resolves to a file"
                                     if err.errno == errno.ELOOP else "broken symlink: its target does not exist")
                else:
                    yield ListedFile(local_uri(path), error=f"cannot stat: {err.strerror}", error_kind=ERROR_TRANSIENT)
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if stat.S_ISLNK(lst.st_mode):
                    links.append((path, key, ancestors))
                elif key not in seen_dirs:  # (a bind mount seen twice is listed once)
                    seen_dirs[key] = path
                    yield from walk(path, ancestors | {key})
                continue
            yield _entry(local_uri(path), st, max_bytes)

    yield from walk(root, frozenset(seen_dirs))
    while links:
        path, key, ancestors = links.pop(0)
        if key in ancestors:
            yield ListedFile(local_uri(path), error=f"symlink loop: points back to its ancestor directory "
                                                    f"{local_uri(seen_dirs[key])}")
        elif key in seen_dirs:
            yield ListedFile(local_uri(path), skip_reason=f"skipped: a link to a directory already listed as "
                                                          f"{local_uri(seen_dirs[key])}")
        else:
            seen_dirs[key] = path
            yield from walk(path, ancestors | {key})


def _s3_pages(spec: str, storage: StorageConfig, max_bytes: int | None) -> Iterator[ListedFile]:
    """Every object under an s3:// prefix, one ListObjectsV2 page at a time (key order)."""
    # botocore (which s3fs already brings, through aiobotocore) rather than boto3: same client,
    # same credential chain, one dependency fewer to resolve against aiobotocore's botocore pin.
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    bucket, _, prefix = spec.split("://", 1)[1].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=storage.endpoint_url, config=Config(signature_version=UNSIGNED) if storage.anon else None)
    scheme = spec.split("://", 1)[0]
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue  # a "folder" marker object
            uri = f"{scheme}://{bucket}/{obj['Key']}"
            skip = classify(uri)
            yield ListedFile(uri, obj["Size"], str(obj["ETag"]).strip('"'), skip,
                             None if skip else too_big(obj["Size"], max_bytes))


def local_version_tag(st: os.stat_result) -> str:
    """The version of a local file: its modification time in ns (with its size, what a sweep compares)."""
    return f"{st.st_mtime_ns}"


def version_tag(info: dict) -> str | None:
    """The version of an object from its fsspec info: the ETag, else the modification time."""
    for k in ("ETag", "etag"):
        if info.get(k):
            return str(info[k]).strip('"')
    for k in ("LastModified", "mtime", "last_modified", "updated"):
        if info.get(k) is not None:
            v = info[k]
            return v.isoformat() if hasattr(v, "isoformat") else str(v)
    return None


def _manifest_uris(uri: str, storage: StorageConfig) -> Iterator[str]:
    """URIs from a Parquet/CSV manifest (column ``uri``, else the first column) or a text file, streamed."""
    fs, path = storage.filesystem(uri)
    low = path.lower()
    with fs.open(path, "rb") as f:
        if low.endswith(".parquet"):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            col = "uri" if "uri" in pf.schema_arrow.names else pf.schema_arrow.names[0]
            for batch in pf.iter_batches(columns=[col], batch_size=65536):
                yield from (str(v) for v in batch.column(0).to_pylist() if v)
            return
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        if low.endswith(".csv"):
            reader = csv.reader(text)
            first = next(reader, None)
            if first is None:
                return
            header = [h.strip().lower() for h in first]
            idx = header.index("uri") if "uri" in header else 0
            rows = reader if "uri" in header else itertools.chain([first], reader)
            yield from (r[idx].strip() for r in rows if len(r) > idx and r[idx].strip())
            return
        yield from (ln.strip() for ln in text if ln.strip() and not ln.lstrip().startswith("#"))


def read_manifest(uri: str, storage: StorageConfig) -> list[str]:
    return list(_manifest_uris(uri, storage))


def read_manifest_table(uri: str, storage: StorageConfig) -> pa.Table:
    """(uri, source) from a CSV or Parquet manifest; ``source`` NULL when the manifest has none."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"manifest {uri!r} does not exist")
    if fs.info(path).get("type") != "file":  # a FIFO or a device would block or never end
        raise ValueError(f"manifest {uri!r} is not a regular file (refused)")
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".parquet"):
            t = pq.read_table(f)
        elif path.lower().endswith(".csv"):
            t = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        else:
            raise ValueError(f"manifest {uri!r}: expected a .csv or .parquet file with a uri column")
    names = {n.strip().lower(): n for n in t.column_names}
    if "uri" not in names:
        raise ValueError(f"manifest {uri!r} has no 'uri' column (columns: {t.column_names})")
    src = t.column(names["source"]).cast(pa.string()) if "source" in names else pa.nulls(t.num_rows, pa.string())
    out = pa.table({"uri": t.column(names["uri"]).cast(pa.string()), "source": src})
    counts = collections.Counter(out.column("uri").to_pylist())
    if len(counts) != out.num_rows:
        dup = next(u for u, c in counts.items() if c > 1)
        raise ValueError(f"manifest {uri!r} lists {dup!r} more than once")
    return out


def _manifest_entry(u: str) -> ListedFile:
    """A manifest line: size, kind and version are checked on the reading side (``pipeline.scan.decode``),
    not here (that would be one request per line on object storage). A local path gets the uri the
    folder walker would give it (``canonical_uri``: `a/../b.jpg` and `b.jpg` are one file)."""
    u = canonical_uri(u)
    return ListedFile(u, skip_reason=classify(u))


def iter_listing(spec: str, storage: StorageConfig, max_bytes: int | None = None) -> Iterator[ListedFile]:
    """Every file under ``spec`` (recursive), or in the manifest ``spec``, streamed.

    Local paths become canonical absolute uris (``..`` and a symlinked INPUT resolved), so one
    file reached by two spellings of INPUT is one uri; names that are not UTF-8 keep their bytes
    (``storage.local_uri``).

    Raises:
        FileNotFoundError: ``spec`` does not exist.
    """
    if not is_remote(spec):
        root = os.path.realpath(os.fsencode(local_path(spec)))
        try:
            st = os.stat(root)
        except OSError:
            raise FileNotFoundError(f"scan input {spec!r} does not exist") from None
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_local(root, max_bytes)
        elif stat.S_ISREG(st.st_mode) and root.lower().endswith(tuple(e.encode() for e in MANIFEST_EXTENSIONS)):
            yield from (_manifest_entry(u) for u in _manifest_uris(local_uri(root), storage))
        else:
            yield _entry(local_uri(root), st, max_bytes)
        return
    fs, path = storage.filesystem(spec)
    if fs.isfile(path):
        if path.lower().endswith(MANIFEST_EXTENSIONS):
            yield from (_manifest_entry(u) for u in _manifest_uris(spec, storage))
            return
        info = fs.info(path)
        uri = fs.unstrip_protocol(path)
        skip = classify(uri)
        yield ListedFile(uri, info.get("size"), version_tag(info), skip, None if skip else too_big(info.get("size"), max_bytes))
        return
    if spec.split("://", 1)[0] in ("s3", "s3a"):
        first = True
        for f in _s3_pages(spec, storage, max_bytes):
            first = False
            yield f
        if not first:
            return
    elif fs.isdir(path):
        # Other fsspec protocols: their own recursive listing (not paged).
        for p, info in sorted(fs.find(path, detail=True).items()):
            if info.get("type") != "directory":
                uri = fs.unstrip_protocol(p)
                skip = classify(uri)
                yield ListedFile(uri, info.get("size"), version_tag(info), skip,
                                 None if skip else too_big(info.get("size"), max_bytes))
        return
    raise FileNotFoundError(f"scan input {spec!r} is neither a file, a directory nor a prefix with objects")


def list_input(spec: str, storage: StorageConfig, max_bytes: int | None = None) -> list[ListedFile]:
    """``iter_listing`` as a list (small inputs, tests, the training corpus)."""
    return list(iter_listing(spec, storage, max_bytes))


def listing_batches(files: Iterator[ListedFile], rows: int = 8192) -> Iterator[pa.RecordBatch]:
    """Listed files as Arrow record batches of ``LISTING_SCHEMA`` (the driver holds one batch)."""
    buf: list[dict] = []
    for f in files:
        buf.append(f.__dict__)
        if len(buf) >= rows:
            yield pa.RecordBatch.from_pylist(buf, schema=LISTING_SCHEMA)
            buf = []
    if buf:
        yield pa.RecordBatch.from_pylist(buf, schema=LISTING_SCHEMA)
