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


def col(group: str, doc: str, **kw) -> dataclasses.Field:
    """A column: its group and meaning, declared once here (docs/schema.md is generated from them)."""
    return dataclasses.field(metadata={"group": group, "doc": doc}, **kw)


def _opt(group: str, doc: str) -> dataclasses.Field:
    return col(group, doc, default=None)


@dataclass
class ScanRow:
    """One row per input file. ``None`` (NULL) means "not applicable" (e.g. no score on an error row).

    Model outputs, maps and run fields are NULL on error and skipped rows. Content credentials and the
    second opinion are kept apart from TruFor's score. The meaning of each column is on its field.
    """

    uri: str = col("provenance", "the file: `/abs/path` (made absolute, `..` and symlinks resolved), `s3://bucket/key`, "
                   "or `file://` + percent-encoded bytes for a name that is not UTF-8")
    status: str = col("outcome", "ok / error / skipped")
    size_bytes: int | None = _opt("provenance", "file size in bytes")
    etag_or_mtime: str | None = _opt("provenance", "the version tag the listing saw (object ETag or local mtime): "
                                     "a changed tag is a changed file for `sweep`")
    sha256: str | None = _opt("provenance", "sha256 of the file bytes")
    phash: str | None = _opt("provenance", "ok rows: 64-bit perceptual hash of the decoded pixels, 16 hex digits; "
                             "near-copies (resized, recompressed) have close hashes (`trufor-scan duplicates`)")
    format: str | None = _opt("image", "decoded format (JPEG, PNG, ...)")
    width: int | None = _opt("image", "width in pixels, as stored (EXIF orientation not applied: neither does TruFor)")
    height: int | None = _opt("image", "height in pixels, as stored")
    exif_make: str | None = _opt("image", "EXIF camera make")
    exif_model: str | None = _opt("image", "EXIF camera model")
    exif_software: str | None = _opt("image", "EXIF software")
    exif_orientation: int | None = _opt("image", "EXIF orientation tag (not applied)")
    c2pa_state: str | None = _opt("content credentials", "ok rows of formats c2pa reads: none / invalid / valid / "
                                  "trusted (chains to --c2pa-trust-anchors); read offline (``pipeline.scan.c2pa``)")
    c2pa_status: str | None = _opt("content credentials", "the validation failure codes, comma-separated")
    c2pa_claim_generator: str | None = _opt("content credentials", "the claim generator the manifest names")
    c2pa_actions: str | None = _opt("content credentials", "the declared actions, comma-separated")
    error: str | None = _opt("outcome", "why an error or skipped row has no score (one line, credentials redacted)")
    error_kind: str | None = _opt("outcome", "input: the file itself is at fault (cannot decode, unsupported, too "
                                  "small or too big, not a regular file, a symlink loop), final for that version "
                                  "of the file; transient: the system's fault (I/O, timeout, object store, "
                                  "inference, lost in the pipeline), retried by the next sweep")
    score: float | None = _opt("model output", "integrity score = sigmoid(det_logit); high = likely manipulated")
    conf_softmin: float | None = _opt("model output", "pooled feature fed to the detector (``trufor_core.pooling``): "
                                      "soft-min of the confidence logits (uniform weights)")
    conf_softmax: float | None = _opt("model output", "pooled feature: soft-max of the confidence logits")
    conf_mean: float | None = _opt("model output", "pooled feature: mean of the confidence logits")
    conf_msq: float | None = _opt("model output", "pooled feature: mean square of the confidence logits")
    anom_softmin: float | None = _opt("model output", "pooled feature: soft-min of the anomaly margin "
                                      "(logit1 - logit0) weighted by sigmoid(confidence)")
    anom_softmax: float | None = _opt("model output",
                                      "pooled feature: confidence-weighted soft-max of the anomaly margin")
    anom_mean: float | None = _opt("model output", "pooled feature: confidence-weighted mean of the anomaly margin")
    anom_msq: float | None = _opt("model output",
                                  "pooled feature: confidence-weighted mean square of the anomaly margin")
    det_logit: float | None = _opt("model output", "the detector's logit")
    frac_anom: float | None = _opt("model output", "fraction of pixels with anomaly > 0.5")
    frac_anom_conf: float | None = _opt("model output", "fraction of pixels with anomaly > 0.5 and confidence > 0.5")
    max_anom_conf: float | None = _opt("model output", "max of anomaly x confidence")
    map_uri: str | None = _opt("maps", "the compressed anomaly and confidence maps, content-addressed by sha256 "
                               "(shared by identical files), relative to OUTPUT: ``pipeline.base.store.resolve_ref`` "
                               "then ``pipeline.base.maps.load``")
    preview_uri: str | None = _opt("maps", "a PNG of the anomaly map a person can open")
    map_codec: str | None = _opt("maps", "how map_uri is encoded")
    dedup_of: str | None = _opt("provenance", "set when these bytes (sha256) had already been scored the same way "
                                "(weights, Noiseprint++, noise-anomaly model: "
                                "``pipeline.scan.dedup.SCORING_COLUMNS``): "
                                "the uri of that row, whose outcome and maps this row repeats (not scored again)")
    model_name: str | None = _opt("run", "the detector")
    weights_sha256: str | None = _opt("run", "sha256 of the TruFor weights file")
    noiseprint_sha256: str | None = _opt("run", "sha256 of the replacement Noiseprint++ weights, when replaced")
    weights_untrained: bool | None = _opt("run", "true when the weights are the UNTRAINED test weights")
    code_version: str | None = _opt("run", "trufor-scan version (+ git commit)")
    torch_version: str | None = _opt("run", "torch version")
    device: str | None = _opt("run", "the kernel family float32 rounding depends on, e.g. `cpu (AVX512, 2 threads)`, "
                              "`cuda:0 (<GPU name>, sm_90)` (docs/numerics.md)")
    precision: str | None = _opt("run", "fp32 / bf16 / fp16 (autocast)")
    backend: str | None = _opt("run", "what computed the forward (``trufor_core.backends``): `eager`, `openvino "
                               "<version>`, `inductor`, or `eager (bounded: over N px)` for an image too large for a "
                               "compiled graph")
    ray_node_id: str | None = _opt("run", "the Ray node that scored it")
    run_id: str | None = _opt("run", "the run that wrote the row (``runs`` table)")
    scanned_at: dt.datetime | None = _opt("run", "when the row was made (UTC)")
    elapsed_ms: float | None = _opt("run", "the row's share of its batch's forward, in ms")
    steps: int | None = _opt("run", "pieces of work its forward took (``trufor_core.progress``): the tiles, chunks and "
                             "bands of the bounded-memory path, or 1 for a compiled graph; progress lines and the "
                             "review's slow images count them")
    noise_anomaly_score: float | None = _opt("second opinion", "``scan --noise-anomaly MODEL``: the largest value of "
                                             "the Noiseprint++ noise-anomaly heat map (``noiseprint_lab.localizers``)")
    noise_anomaly_map_uri: str | None = _opt("second opinion", "its map (``pipeline.base.maps.load_lowres_map``)")
    noise_anomaly_model: str | None = _opt("second opinion", "sha256 of the fitted model file")
    mantranet_score: float | None = _opt("second opinion", "``scan --mantranet FILE.h5``: ManTra-Net's image score, the "
                                         "largest value of its map (``mantranet_core.image_score``)")
    mantranet_map_uri: str | None = _opt("second opinion", "its map (``pipeline.base.maps.load_lowres_map``)")
    mantranet_weights: str | None = _opt("second opinion", "sha256 of the ManTra-Net weights file")


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
                                         "max_anom_conf", "noise_anomaly_score", "noise_anomaly_model", "mantranet_score",
                                         "mantranet_weights")
MAP_COLUMNS: tuple[str, ...] = ("map_uri", "preview_uri", "map_codec", "noise_anomaly_map_uri", "mantranet_map_uri")
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
