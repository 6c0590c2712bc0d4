"""Ground truth for `evaluate` (and `calibrate --forged`): which images are forged, and where.

A TRUTH file is one of:

- a manifest, Parquet / CSV / JSON (a list of objects): ``uri``, ``label`` (``pristine`` or
  ``forged``), optional ``mask`` (path or URI of the forged-region mask of a forged image),
  optional ``source``;
- IMDL-BenCo's JSON list of pairs, ``[[image, mask_or_"Negative"], ...]``: "Negative" is a
  pristine image, anything else the mask of a forged one, so benchmark folders prepared for it
  (CASIA, Columbia, COVERAGE, IMD2020, ...) work as they are.

Local paths that are relative are taken relative to the TRUTH file's folder, then made absolute
with ``..`` and folder symlinks resolved, as `scan` writes the uris of a folder it lists
(``pipeline.base.storage.canonical_uri``). Every entry that cannot be
used (bad label, duplicate uri, missing mask) is a problem line, counted and listed, never a silent
drop. Masks are read within limits (regular files, a size cap, allowed formats, a pixel limit).
"""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from pipeline.base.reading import read_input
from pipeline.base.storage import StorageConfig, canonical_uri, is_remote, one_line
from trufor_core.config import DEFAULT_MAX_PIXELS
from trufor_core.image import allowed_formats

PRISTINE, FORGED = "pristine", "forged"
LABELS = (PRISTINE, FORGED)
IMDL_NEGATIVE = "Negative"  # IMDL-BenCo's mask entry of a pristine image
MAX_TRUTH_BYTES = 512 * 2**20
MAX_MASK_BYTES = 64 * 2**20
READ_TIMEOUT_S = 120.0


class TruthError(ValueError):
    """A TRUTH file that cannot be read at all (one line, naming it)."""


@dataclass(frozen=True)
class TruthEntry:
    uri: str
    label: str
    mask: str | None = None
    source: str | None = None


@dataclass
class Truth:
    """The usable entries, and a line for every given entry that is not usable."""

    path: str
    given: int = 0
    entries: list[TruthEntry] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (uri or "#line", why)

    def forged(self) -> list[TruthEntry]:
        return [e for e in self.entries if e.label == FORGED]


def _records(data: bytes, path: str) -> list[dict]:
    """The TRUTH file's entries as dicts with keys uri/label/mask/source (strings or None)."""
    low = path.lower()
    if low.endswith(".json"):
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise TruthError(f"truth {path!r}: not valid JSON ({one_line(str(e), 200)})") from None
        if not isinstance(doc, list):
            raise TruthError(f"truth {path!r}: expected a JSON list (objects, or IMDL-BenCo [image, mask] pairs)")
        out = []
        for i, item in enumerate(doc):
            if isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
                image, mask = item
                neg = mask == IMDL_NEGATIVE
                out.append({"uri": image, "label": PRISTINE if neg else FORGED, "mask": None if neg else mask,
                            "source": None})
            elif isinstance(item, dict):
                out.append({k: (None if item.get(k) is None else str(item.get(k)))
                            for k in ("uri", "label", "mask", "source")})
            else:
                out.append({"uri": None, "label": None, "mask": None, "source": None, "bad": f"#{i}: {item!r:.80}"})
        return out
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if low.endswith(".parquet"):
            t = pq.read_table(io.BytesIO(data))
        elif low.endswith(".csv"):
            t = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        else:
            raise TruthError(f"truth {path!r}: expected a .csv, .parquet or .json file")
    except pa.ArrowInvalid as e:
        raise TruthError(f"truth {path!r}: cannot read it ({one_line(str(e), 200)})") from None
    names = {n.strip().lower(): n for n in t.column_names}
    missing = [c for c in ("uri", "label") if c not in names]
    if missing:
        raise TruthError(f"truth {path!r} has no {' and no '.join(repr(m) for m in missing)} column "
                         f"(columns: {t.column_names})")
    cols = {k: (t.column(names[k]).cast(pa.string()).to_pylist() if k in names else [None] * t.num_rows)
            for k in ("uri", "label", "mask", "source")}
    return [{k: cols[k][i] for k in cols} for i in range(t.num_rows)]


def read_truth(spec: str, storage: StorageConfig | None = None) -> Truth:
    """The TRUTH file ``spec`` (see the module docstring), validated entry by entry."""
    storage = storage or StorageConfig()
    try:
        data, _ = read_input(spec, storage, MAX_TRUTH_BYTES, READ_TIMEOUT_S)
    except FileNotFoundError:
        raise TruthError(f"truth {spec!r} does not exist") from None
    except OSError as e:
        raise TruthError(f"truth {spec!r}: {one_line(str(e), 300)}") from None
    base_dir = None if is_remote(spec) else os.path.dirname(os.path.realpath(spec))
    truth = Truth(path=spec)
    seen: dict[str, TruthEntry] = {}
    for i, r in enumerate(_records(data, spec)):
        truth.given += 1
        where = f"#{i + 1}"
        if r.get("bad"):
            truth.problems.append((r["bad"], "neither an object nor an [image, mask] pair"))
            continue
        if not r["uri"] or not r["uri"].strip():
            truth.problems.append((where, "no uri"))
            continue
        uri = canonical_uri(r["uri"].strip(), base_dir)
        label = (r["label"] or "").strip().lower()
        if label not in LABELS:
            truth.problems.append((uri, f"label {r['label']!r} is neither {PRISTINE!r} nor {FORGED!r}"))
            continue
        mask = r["mask"].strip() if r["mask"] and r["mask"].strip() else None
        entry = TruthEntry(uri, label, canonical_uri(mask, base_dir) if mask else None,
                           r["source"].strip() if r["source"] else None)
        if uri in seen:
            same = seen[uri] == entry
            truth.problems.append((uri, "listed again" + (" (same label and mask: counted once)" if same else
                                                          f" with another label or mask (kept the first: "
                                                          f"{seen[uri].label}, mask {seen[uri].mask})")))
            continue
        seen[uri] = entry
        truth.entries.append(entry)
    return truth


def is_truth_file(spec: str, storage: StorageConfig | None = None) -> bool:
    """Whether ``spec`` is a TRUTH file (JSON, or a table with a ``label`` column) rather than a plain
    uri manifest."""
    if spec.lower().endswith(".json"):
        return True
    fs, path = (storage or StorageConfig()).filesystem(spec)
    if fs.info(path).get("type") != "file":
        return False  # the manifest reader refuses it with its own line
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            names = pq.ParquetFile(f).schema_arrow.names
        else:
            names = f.readline(65536).decode("utf-8", "replace").split(",")
    return "label" in {n.strip().strip('"').lower() for n in names}


def labelled_uris(spec: str, label: str | None, storage: StorageConfig | None = None):
    """(uri, source) of a TRUTH file's entries with ``label`` (None: all), as an Arrow table
    (`calibrate --reference` takes its pristine entries, `--forged` its forged ones, `--sources` all)."""
    import pyarrow as pa

    entries = [e for e in read_truth(spec, storage).entries if label is None or e.label == label]
    return pa.table({"uri": pa.array([e.uri for e in entries], pa.string()),
                     "source": pa.array([e.source for e in entries], pa.string())})


def mask_array(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask's pixels as booleans (True = forged = white): any mode Pillow opens, binarised at half of
    its range (8-bit: > 127.5; 16-bit: > 32767.5; float: > 0.5; 1-bit as is; colour through luma)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=allowed_formats()) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ValueError(f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
                mode = im.mode
                if mode == "1":
                    return np.asarray(im, bool).copy()
                if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                    return np.asarray(im).astype(np.float64) > 32767.5
                if mode == "F":
                    return np.asarray(im, np.float64) > 0.5
                if mode in ("L", "LA"):
                    return np.asarray(im.getchannel(0)) > 127.5
                return np.asarray(im.convert("L")) > 127.5
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is this mask's one-line error
        raise ValueError(f"cannot decode mask {name!r}: {type(e).__name__}: {one_line(str(e), 200)}") from None


def load_mask(uri: str, storage: StorageConfig, shape: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """(mask resized to ``shape`` with nearest neighbour when its size differs, a note saying so or None)."""
    data, _ = read_input(uri, storage, MAX_MASK_BYTES, READ_TIMEOUT_S)
    m = mask_array(data, uri)
    if m.shape == tuple(shape):
        return m, None
    from PIL import Image

    resized = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)) > 127
    return resized, f"mask {m.shape[1]}x{m.shape[0]} resized to the image's {shape[1]}x{shape[0]} (nearest)"
