"""The options of `trufor-scan weights download|synthesize|licence` (the work is in trufor_core)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mantranet_core.weights import OFFICIAL_GIT_BLOB, OFFICIAL_URL
from pipeline.base.options import opt
from trufor_core.weights import CACHE_ENV, OFFICIAL_WEIGHTS_URL, OFFICIAL_ZIP_MD5


@dataclass(frozen=True)
class DownloadConfig:
    """`weights download`; the command line is derived from these fields."""

    dir: str | None = field(default=None, metadata=opt(
        f"destination directory (default: ${CACHE_ENV}, else $XDG_CACHE_HOME/trufor-scan or ~/.cache/trufor-scan)"))
    url: str = field(default=OFFICIAL_WEIGHTS_URL, metadata=opt("where the zip is fetched from (tests)", hidden=True))
    md5: str = field(default=OFFICIAL_ZIP_MD5, metadata=opt("the zip's expected MD5 (tests)", hidden=True))


@dataclass(frozen=True)
class GetConfig:
    """`weights get MODEL`: a second detector's official weights, checksum-verified, into the cache."""

    model: str = field(metadata=opt("which detector's weights", positional=True, choices=("mantranet",)))
    source: str | None = field(default=None, metadata=opt(
        "offline: a copy of the official file to verify and install instead of downloading", flag="--from"))
    dir: str | None = field(default=None, metadata=opt(
        f"destination directory (default: ${CACHE_ENV}/mantranet, else ~/.cache/trufor-scan/mantranet)"))
    url: str = field(default=OFFICIAL_URL, metadata=opt("where the file is fetched from (tests)", hidden=True))
    blob_sha1: str = field(default=OFFICIAL_GIT_BLOB, metadata=opt("the file's expected git blob id (tests)",
                                                                   hidden=True))


@dataclass(frozen=True)
class SynthesizeConfig:
    """`weights synthesize`; the command line is derived from these fields."""

    out: str = field(metadata=opt("output checkpoint path"))
    noiseprint: str | None = field(default=None, metadata=opt(
        "real noiseprint++.th for the dncnn.* weights (as the fixtures do)"))


@dataclass(frozen=True)
class LicenceConfig:
    """`weights licence` takes no options."""
