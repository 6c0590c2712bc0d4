"""The one output-row schema: a typed dataclass that maps 1:1 to the Parquet (pyarrow) schema."""
from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from dataclasses import dataclass

import pyarrow as pa

from trufor_core.config import POOLED_FEATURE_NAMES

STATUS_OK, STATUS_ERROR, STATUS_SKIPPED = "ok", "error", "skipped"
ERROR_INPUT, ERROR_TRANSIENT = "input", "transient"


@dataclass
class ScanRow:
    """One row per input file. ``None`` means "not applicable" (e.g. no score on an error row).

    Provenance: uri, size_bytes, etag_or_mtime, sha256 (of the file bytes); phash (ok rows: the 64-bit
    perceptual hash of the decoded pixels, 16 hex digits, ``pipeline.results.duplicates``; near-copies, resized or
    recompressed, have close hashes: `trufor-scan duplicates`).
    Image: format, width, height, exif_* (as stored, orientation not applied: neither does TruFor).
    Content credentials (``pipeline.scan.c2pa``; ok rows of formats c2pa reads, else NULL): c2pa_state
    none / invalid / valid / trusted (trusted: chains to --c2pa-trust-anchors), c2pa_status (the
    failure codes, comma-separated), c2pa_claim_generator, c2pa_actions (declared, comma-separated).
    Read offline, kept apart from TruFor's score.
    Outcome: status (ok / error / skipped), error (one-line message), error_kind: "input" when the file
    itself is at fault (cannot decode, unsupported, too small or too big, not a regular file, a
    symlink loop): final for that version of the file; "transient" when the failure was the
    system's (I/O, timeout, object store, inference, lost in the pipeline): the next sweep retries it.
    Model outputs: score = sigmoid(det_logit); the 8 pooled features fed to the detector;
    frac_anom_conf = fraction of pixels with anomaly > 0.5 and confidence > 0.5;
    frac_anom = fraction with anomaly > 0.5; max_anom_conf = max of anomaly * confidence.
    Maps: map_uri (content-addressed by sha256, shared by identical files; relative to OUTPUT:
    ``pipeline.base.store.resolve_ref`` then ``pipeline.base.maps.load``), preview_uri (a PNG a person can
    open), map_codec.
    dedup_of: set when this file's bytes (sha256) had already been scored the same way (weights,
    Noiseprint++, noise-anomaly model: ``pipeline.scan.dedup.SCORING_COLUMNS``): the uri of that row,
    whose outcome and maps this row repeats (the file was not scored again).
    Run: model_name, weights_sha256, noiseprint_sha256 (when replaced), weights_untrained,
    code_version, torch_version, device, precision (fp32 / bf16 / fp16 autocast), ray_node_id, run_id,
    scanned_at, elapsed_ms.
    Second opinion (``scan --noise-anomaly MODEL``, else NULL): noise_anomaly_score = the largest value
    of the Noiseprint++ noise-anomaly heat map (``noiseprint_lab.localizers``), its map
    (noise_anomaly_map_uri, ``pipeline.base.maps.load_noise_anomaly``) and the sha256 of the fitted model
    file (noise_anomaly_model). Kept apart from TruFor's score.
    """

    uri: str
    status: str
    size_bytes: int | None = None
    etag_or_mtime: str | None = None
    sha256: str | None = None
    phash: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    exif_make: str | None = None
    exif_model: str | None = None
    exif_software: str | None = None
    exif_orientation: int | None = None
    c2pa_state: str | None = None
    c2pa_status: str | None = None
    c2pa_claim_generator: str | None = None
    c2pa_actions: str | None = None
    error: str | None = None
    error_kind: str | None = None
    score: float | None = None
    conf_softmin: float | None = None
    conf_softmax: float | None = None
    conf_mean: float | None = None
    conf_msq: float | None = None
    anom_softmin: float | None = None
    anom_softmax: float | None = None
    anom_mean: float | None = None
    anom_msq: float | None = None
    det_logit: float | None = None
    frac_anom: float | None = None
    frac_anom_conf: float | None = None
    max_anom_conf: float | None = None
    map_uri: str | None = None
    preview_uri: str | None = None
    map_codec: str | None = None
    dedup_of: str | None = None
    model_name: str | None = None
    weights_sha256: str | None = None
    noiseprint_sha256: str | None = None
    weights_untrained: bool | None = None
    code_version: str | None = None
    torch_version: str | None = None
    device: str | None = None
    precision: str | None = None
    ray_node_id: str | None = None
    run_id: str | None = None
    scanned_at: dt.datetime | None = None
    elapsed_ms: float | None = None
    noise_anomaly_score: float | None = None
    noise_anomaly_map_uri: str | None = None
    noise_anomaly_model: str | None = None


_NAMES = [f.name for f in dataclasses.fields(ScanRow)]
if tuple(POOLED_FEATURE_NAMES) != tuple(_NAMES[_NAMES.index(POOLED_FEATURE_NAMES[0]):][:len(POOLED_FEATURE_NAMES)]):
    raise ImportError("ScanRow's pooled-feature columns are out of step with trufor_core.POOLED_FEATURE_NAMES")

_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
                dt.datetime: pa.timestamp("us", tz="UTC")}


def _arrow_field(f: dataclasses.Field, hints: dict) -> pa.Field:
    t = hints[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)] if isinstance(t, types.UnionType) else [t]
    return pa.field(f.name, _ARROW_TYPES[args[0]], nullable=isinstance(t, types.UnionType))


ROW_SCHEMA: pa.Schema = pa.schema([_arrow_field(f, typing.get_type_hints(ScanRow)) for f in dataclasses.fields(ScanRow)])
COLUMNS: tuple[str, ...] = tuple(ROW_SCHEMA.names)
# What the model gives an ok row, and where its maps went: all of them NULL on an error row.
MODEL_OUTPUT_COLUMNS: tuple[str, ...] = ("score", *POOLED_FEATURE_NAMES, "det_logit", "frac_anom", "frac_anom_conf",
                                         "max_anom_conf", "noise_anomaly_score", "noise_anomaly_model")
MAP_COLUMNS: tuple[str, ...] = ("map_uri", "preview_uri", "map_codec", "noise_anomaly_map_uri")
C2PA_COLUMNS: tuple[str, ...] = ("c2pa_state", "c2pa_status", "c2pa_claim_generator", "c2pa_actions")
# What the decode stage fills and the model stage passes through unchanged (``pipeline.scan``).
DECODED_COLUMNS: tuple[str, ...] = ("uri", "status", "size_bytes", "etag_or_mtime", "sha256", "phash", "format", "width",
                                    "height", "exif_make", "exif_model", "exif_software", "exif_orientation",
                                    *C2PA_COLUMNS, "error", "error_kind")


_HINTS = typing.get_type_hints(ScanRow)


def _base_type(name: str) -> type:
    t = _HINTS[name]
    return [a for a in typing.get_args(t) if a is not type(None)][0] if isinstance(t, types.UnionType) else t


def py_value(v):
    """A batch cell as a plain Python value: numpy scalars unwrapped, NaN/NaT nulls -> None."""
    if v is None:
        return None
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def coerce(name: str, v):
    """A batch cell converted to the schema type of column ``name``."""
    v = py_value(v)
    if v is None:
        return None
    t = _base_type(name)
    return v if t is dt.datetime else t(v)


def rows_to_table(rows: list[ScanRow]) -> pa.Table:
    """Rows -> a table with exactly ``ROW_SCHEMA``."""
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=ROW_SCHEMA)


def table_to_rows(table: pa.Table) -> list[ScanRow]:
    return [ScanRow(**d) for d in table.select(list(COLUMNS)).to_pylist()]
