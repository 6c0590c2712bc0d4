"""Filesystems for local paths and object storage (fsspec), with credentials kept out of sight."""
from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass, field

from pipeline.base.options import opt

_SECRET_RE = re.compile(r"(?i)(aws_secret_access_key|aws_access_key_id|secret|signature|credential|"
                        r"x-amz-[a-z-]+|token)=([^&\s]+)")


@dataclass(frozen=True)
class StorageConfig:
    """How to reach object storage. Credentials are never stored here: each process takes them
    from the standard chain (environment, ~/.aws, instance role), so they cannot leak into rows,
    logs or task arguments.

    Attributes:
        endpoint_url: an S3-compatible endpoint (MinIO, a local moto server, ...); None = AWS.
        anon: unsigned requests (public buckets).
    """

    endpoint_url: str | None = None
    anon: bool = False

    @classmethod
    def from_env(cls, endpoint_url: str | None = None, anon: bool = False) -> "StorageConfig":
        return cls(endpoint_url=endpoint_url or os.environ.get("TRUFOR_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"),
                   anon=anon)

    def options(self, protocol: str) -> dict:
        if protocol in ("s3", "s3a"):
            opts: dict = {"anon": self.anon}
            if self.endpoint_url:
                opts["endpoint_url"] = self.endpoint_url
            return opts
        return {}

    def filesystem(self, uri: str):
        """(fsspec filesystem, path inside it) for a local path or a URI such as s3://bucket/key."""
        import fsspec  # here, not at import: the predictor runs without it on local paths

        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        return fsspec.core.url_to_fs(uri, **self.options(protocol))


@dataclass(frozen=True, kw_only=True)
class StorageOptions:
    """The object-store options of every command config that reads or writes storage, declared once
    (keyword-only: they come after each config's own fields)."""

    s3_endpoint: str | None = field(default=None, metadata=opt("S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)"))
    anon: bool = field(default=False, metadata=opt("unsigned object-store requests (public buckets)"))

    def storage(self) -> StorageConfig:
        return StorageConfig.from_env(self.s3_endpoint, self.anon)


def local_copy(uri: str, storage: StorageConfig) -> str:
    """A local path for ``uri``: itself when local, else a copy on this node's disk, made once per ETag.

    torch.load needs a file; weights on object storage are fetched by every node that needs them.
    """
    if not is_remote(uri):
        return uri
    fs, path = storage.filesystem(uri)
    local = os.path.join(tempfile.gettempdir(), "trufor-scan-weights", fs.info(path).get("ETag", "x").strip('"'),
                         os.path.basename(path))
    if not os.path.isfile(local):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fs.get(path, local + ".part")
        os.replace(local + ".part", local)
    return local


def local_uri(path: bytes | str) -> str:
    """The uri of a local file: its path when the name is UTF-8, else a ``file://`` URI with the raw
    bytes percent-encoded (RFC 8089), which round-trips to the file (``local_path``)."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "file://" + urllib.parse.quote(raw, safe="/")


def canonical_uri(ref: str, base_dir: str | None = None) -> str:
    """The uri `scan` gives a local file typed as ``ref`` (relative to ``base_dir``, else the working
    directory): absolute, with ``..`` and the symlinks of its folders resolved, its own name kept (as
    the folder walker lists a symlinked file). Remote and ``file://`` uris are returned as they are."""
    if is_remote(ref) or ref.startswith("file://"):
        return ref
    raw = os.fsencode(ref)
    if not os.path.isabs(raw):
        raw = os.path.join(os.fsencode(base_dir) if base_dir is not None else os.getcwdb(), raw)
    raw = os.path.normpath(raw)
    return local_uri(os.path.join(os.path.realpath(os.path.dirname(raw)), os.path.basename(raw)))


def local_path(uri: str) -> bytes | str:
    """The path to open for a local uri (bytes when ``local_uri`` had to percent-encode it)."""
    if uri.startswith("file://"):
        raw = urllib.parse.unquote_to_bytes(uri[len("file://"):])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return uri


def write_local_atomic(path: str, data: bytes) -> None:
    """Write a local file so that ``path`` is either absent/old or complete, never partial: a hidden
    temporary name beside it, fsync, then a rename (atomic on POSIX)."""
    tmp = f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: no temporary file is left behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def redact(text: str) -> str:
    """Remove anything that looks like a credential from a message before it is stored or shown."""
    text = _SECRET_RE.sub(lambda m: f"{m.group(1)}=***", text)
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        val = os.environ.get(var)
        if val and len(val) >= 4:
            text = text.replace(val, "***")
    return text


_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(text: str, limit: int = 1000) -> str:
    """A message fit for a row or a log line: no ANSI codes, no line breaks, at most ``limit`` characters."""
    text = " ".join(_ANSI_RE.sub("", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
