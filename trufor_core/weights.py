"""Finding and fetching the official TruFor weights (download, checksum, licence notice)."""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

OFFICIAL_WEIGHTS_URL = "https://www.grip.unina.it/download/prog/TruFor/TruFor_weights.zip"
OFFICIAL_ZIP_MD5 = "7bee48f3476c75616c3c5721ab256ff8"
CHECKPOINT_NAME = "trufor.pth.tar"
WEIGHTS_ENV = "TRUFOR_WEIGHTS"
CACHE_ENV = "TRUFOR_CACHE_DIR"

LICENCE_NOTICE = """\
TruFor weights (c) 2023 GRIP-UNINA (Image Processing Research Group, University Federico II of
Naples), all rights reserved, under the GRIP-UNINA licence (LICENSE.txt of grip-unina/TruFor):
reproduction, modification and use are allowed free of charge ONLY for informational and
non-profit purposes; unauthorized industrial or profit-oriented use is prohibited. Keep the
original notices and credit the original authors (Guillaro et al., CVPR 2023) when publishing
results. The software and weights are provided as-is."""


class WeightsError(RuntimeError):
    """Weights that cannot be found, fetched or verified."""


def cache_dir() -> Path:
    """Where downloaded weights live: $TRUFOR_CACHE_DIR, else $XDG_CACHE_HOME/trufor-scan."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trufor-scan"


def how_to_get_weights() -> str:
    return (f"pass --checkpoint PATH, set {WEIGHTS_ENV}=PATH, or run `trufor-scan weights download` "
            f"(fetches {OFFICIAL_WEIGHTS_URL} into {cache_dir()}); for tests only, "
            "`trufor-scan weights synthesize --out PATH` builds UNTRAINED weights")


def resolve_weights(checkpoint: str | None, allow_download: bool = False,
                    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                    url: str = OFFICIAL_WEIGHTS_URL, md5: str = OFFICIAL_ZIP_MD5) -> Path:
    """The checkpoint to use: ``checkpoint``, then $TRUFOR_WEIGHTS, then the cache dir, then a download.

    Raises:
        WeightsError: a named file is missing, or nothing is found and downloading is off or fails.
    """
    for origin, value in (("--checkpoint", checkpoint), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise WeightsError(f"{origin} points to {path}, which is not a file; {how_to_get_weights()}")
            return path
    cached = cache_dir() / CHECKPOINT_NAME
    if cached.is_file():
        return cached
    if not allow_download:
        raise WeightsError(f"no TruFor weights configured and none in {cached}; {how_to_get_weights()}")
    log(f"no TruFor weights configured: downloading the official weights into {cache_dir()}")
    return download_weights(cache_dir(), url=url, md5=md5, log=log)


def fetch_to(url: str, path: Path, timeout: float, hasher=None, max_bytes: int | None = None) -> None:
    """Stream ``url`` into ``path`` (each socket operation within ``timeout``), feeding ``hasher`` as it goes;
    past ``max_bytes`` it stops with WeightsError. Raises what urllib and the file raise; the caller removes
    ``path`` on failure."""
    n = 0
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(path, "wb") as f:
        while block := resp.read(1 << 20):
            n += len(block)
            if max_bytes is not None and n > max_bytes:
                raise WeightsError(f"{url} sent more than {max_bytes} bytes")
            if hasher is not None:
                hasher.update(block)
            f.write(block)


def download_weights(dest_dir: str | os.PathLike, url: str = OFFICIAL_WEIGHTS_URL, md5: str = OFFICIAL_ZIP_MD5,
                     timeout: float = 60.0, log: Callable[[str], None] = print) -> Path:
    """Fetch the weights zip, check its MD5, unpack ``trufor.pth.tar`` into ``dest_dir``.

    Nothing is left in ``dest_dir`` when the download or the checksum fails.

    Returns:
        The path of the unpacked checkpoint.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    zip_part = dest_dir / "TruFor_weights.zip.part"
    digest = hashlib.md5()
    try:
        fetch_to(url, zip_part, timeout, hasher=digest)
    except (urllib.error.URLError, OSError) as e:
        zip_part.unlink(missing_ok=True)
        raise WeightsError(f"could not download {url}: {e}; {how_to_get_weights()}") from e
    if digest.hexdigest() != md5:
        zip_part.unlink(missing_ok=True)
        raise WeightsError(f"checksum mismatch for {url}: MD5 {digest.hexdigest()}, expected {md5}; file discarded")
    out = dest_dir / CHECKPOINT_NAME
    try:
        with zipfile.ZipFile(zip_part) as zf:
            members = [m for m in zf.infolist() if m.filename.rsplit("/", 1)[-1] == CHECKPOINT_NAME]
            if len(members) != 1:
                raise WeightsError(f"{url} holds {len(members)} files named {CHECKPOINT_NAME}, expected 1: "
                                   f"{[m.filename for m in zf.infolist()]}")
            # Only the one member is read and written under our own name: no path from the zip is used.
            tmp = out.with_name(out.name + ".part")
            with zf.open(members[0]) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            tmp.replace(out)
    except zipfile.BadZipFile as e:
        raise WeightsError(f"{url} is not a valid zip: {e}") from e
    finally:
        zip_part.unlink(missing_ok=True)
    log(f"TruFor weights: {out}")
    log(LICENCE_NOTICE)
    return out
