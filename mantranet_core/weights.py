"""Getting the official ManTra-Net weights (``ManTraNet_Ptrain4.h5``, github ISICV/ManTraNet): download
or an offline copy, checked against the official repository's own checksum, and the licence.

The checksum is the file's git object id in the official repository at the pinned commit: git names a
file by ``sha1(b"blob <size>\\0" + content)``, so the repository's tree certifies the exact bytes (no
other published checksum exists). The verified file goes into the weights cache
(``trufor_core.weights.cache_dir()``/mantranet); its sha256 is what rows record.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import urllib.error
from pathlib import Path
from typing import Callable

from trufor_core.weights import WeightsError, cache_dir, fetch_to

OFFICIAL_COMMIT = "59436db177eba11cacba846d53eb7b44b6d482ea"  # the snapshot the parity fixtures come from
FILE_NAME = "ManTraNet_Ptrain4.h5"
OFFICIAL_URL = f"https://raw.githubusercontent.com/ISICV/ManTraNet/{OFFICIAL_COMMIT}/pretrained_weights/{FILE_NAME}"
OFFICIAL_GIT_BLOB = "1f46864d32778df35208c6e1ae1af511aaf33a66"  # `git ls-tree 59436db pretrained_weights/`
MAX_BYTES = 256 << 20

LICENCE_NOTICE = """\
ManTra-Net software and weights (Wu, AbdAlmageed, Natarajan, CVPR 2019; github ISICV/ManTraNet),
University of Southern California: made available for ACADEMIC OR NON-COMMERCIAL purposes only;
commercial use needs a paid licence from the USC Stevens Institute for Innovation (1150 S. Olive
Street, Suite 2300, Los Angeles, CA 90115, USA). Provided as-is: USC disclaims every warranty and
liability (see the Licence section of the official Readme.md). Credit the authors when publishing."""


def git_blob_sha1(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The git object id of a file's bytes (what a repository's tree lists for it)."""
    size = os.stat(path).st_size
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def mantranet_cache() -> Path:
    return cache_dir() / "mantranet"


def resolve_weights(path: str | os.PathLike | None) -> Path:
    """The ManTra-Net weights to use: ``path``, else the cached official file (``weights get mantranet``)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsError(f"ManTra-Net weights {p} is not a file")
        return p
    cached = mantranet_cache() / FILE_NAME
    if not cached.is_file():
        raise WeightsError(f"no ManTra-Net weights given and none in {cached}: run `trufor-scan weights get mantranet` "
                           "(or `--from FILE` offline), or pass the .h5 file")
    return cached


def _install(tmp: Path, dest_dir: Path, expected: str, origin: str) -> Path:
    got = git_blob_sha1(tmp)
    if got != expected:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"checksum mismatch for {origin}: git blob {got}, expected {expected} (official "
                           f"{FILE_NAME} at {OFFICIAL_COMMIT[:12]}); file discarded")
    out = dest_dir / FILE_NAME
    tmp.replace(out)
    return out


def get_weights(dest_dir: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
                url: str = OFFICIAL_URL, blob_sha1: str = OFFICIAL_GIT_BLOB, timeout: float = 60.0,
                log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:
    """Download the official file (or copy ``source``, a file you obtained offline), verify its git blob id,
    and put it in ``dest_dir`` (default: the cache). Nothing is left behind when a step fails.

    Returns:
        The verified file's path.
    """
    dest = Path(dest_dir) if dest_dir else mantranet_cache()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / (FILE_NAME + ".part")
    if source is not None:
        src = Path(source)
        if not src.exists() or not stat.S_ISREG(src.stat().st_mode):
            raise WeightsError(f"{src} is not a regular file (point at a copy of the official {FILE_NAME})")
        if src.stat().st_size > MAX_BYTES:
            raise WeightsError(f"{src} is {src.stat().st_size} bytes, over {MAX_BYTES} (the official file is ~15 MB)")
        shutil.copyfile(src, tmp)
        origin = str(src)
    else:
        origin = url
        try:
            fetch_to(url, tmp, timeout, max_bytes=MAX_BYTES)
        except (urllib.error.URLError, OSError, WeightsError) as e:
            tmp.unlink(missing_ok=True)
            raise WeightsError(f"could not download {url}: {e}; offline, copy {FILE_NAME} here and run "
                               f"`trufor-scan weights get mantranet --from FILE`") from None
    out = _install(tmp, dest, blob_sha1, origin)
    log(f"ManTra-Net weights: {out} (git blob {blob_sha1} verified)")
    log(LICENCE_NOTICE)
    return out
