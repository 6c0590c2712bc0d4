"""Calibrated verdicts per source: thresholds set on known-pristine images, so a score means the
same false-positive rate on a camera original and on a platform's recompressed repost.

`trufor-scan calibrate OUTPUT --reference MANIFEST --target-fpr 0.01 --source-of EXPR`: the
reference images (a manifest ``uri[, source]``, scanned into OUTPUT like any input) give, per
source, the threshold at the pristine-score quantile for the target false-positive rate, the
false-positive rate actually reached with its exact (Clopper-Pearson) 95% interval, and the
support of the reference (smallest side, bytes per pixel, pooled confidence) below which a verdict
is ``inconclusive``. Known-forged images (``--forged``) give the true-positive rate at that
threshold. The result is a versioned JSON file under ``OUTPUT/_calibrations/``, tied to the
weights (and Noiseprint++) it was measured with; applying it to rows scored otherwise is refused.

With a calibration, the SQL views ``results`` and ``latest`` get ``source``, ``threshold``,
``verdict`` (``flagged`` / ``inconclusive`` / ``clean``, NULL on rows without a score) and
``verdict_reason``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.base.listing import read_manifest_table
from pipeline.base.options import opt
from pipeline.base.storage import StorageConfig, StorageOptions
from pipeline.results.truth import FORGED, PRISTINE

CALIBRATION_VERSION = 1
CALIBRATIONS_DIR = "_calibrations"
VERDICTS = ("flagged", "inconclusive", "clean")
ALL_SOURCES = "all"  # the one source when no --source-of is given
# The three signs that the model has little to stand on, each measured on the source's reference
# images: the image is smaller, more compressed (fewer bytes per pixel) or less confident (pooled
# confidence, conf_mean) than all but --support-quantile of them. Column of the calibration table.
SUPPORT_COLUMNS = ("min_side", "min_bytes_per_pixel", "min_conf_mean")
CALIBRATION_SCHEMA = pa.schema([("source", pa.string()), ("threshold", pa.float64()), ("min_side", pa.float64()),
                                ("min_bytes_per_pixel", pa.float64()), ("min_conf_mean", pa.float64())])


class CalibrationError(ValueError):
    """A calibration that cannot be made or applied (with the offending values)."""


@dataclass(frozen=True)
class CalibrateConfig(StorageOptions):
    """Settings of one `calibrate`; the command line is derived from these fields."""

    output: str = field(metadata=opt("the scan's --output holding the reference images' rows", positional=True))
    reference: str = field(metadata=opt("known-pristine images, already scanned into OUTPUT: a manifest (CSV/Parquet: "
                                        "uri[, source]) or an `evaluate` TRUTH file (its pristine entries)"))
    target_fpr: float = field(default=0.01, metadata=opt("false-positive rate to aim for on pristine images"))
    source_of: str | None = field(default=None, metadata=opt(
        "how a row gets its source: a column or SQL expression over the row, e.g. exif_software or "
        "\"regexp_extract(uri, '^s3://crawl/([^/]+)/', 1)\" (default: one source for everything)"))
    sources: str | None = field(default=None, metadata=opt(
        "manifest (CSV/Parquet: uri, source; or an `evaluate` TRUTH file) naming the source of scanned rows: "
        "joined on uri as the column manifest_source (the default --source-of then)"))
    forged: str | None = field(default=None, metadata=opt(
        "known-forged images scanned into OUTPUT, for the true-positive rate: a manifest (uri[, source]) or an "
        "`evaluate` TRUTH file (its forged entries)"))
    support_quantile: float = field(default=0.05, metadata=opt(
        "a row smaller, more compressed or less confident than this quantile of its source's reference "
        "images is inconclusive (0: never)"))
    out: str | None = field(default=None, metadata=opt("also write the calibration to this file"))

    def __post_init__(self):
        if not 0 < self.target_fpr < 0.5:
            raise ValueError(f"--target-fpr must be in (0, 0.5), got {self.target_fpr}")
        if not 0 <= self.support_quantile < 0.5:
            raise ValueError(f"--support-quantile must be in [0, 0.5), got {self.support_quantile}")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials."""
    from scipy.stats import beta

    if n <= 0:
        raise ValueError(f"an interval needs n > 0 trials, got {n}")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def min_reference_size(target_fpr: float) -> int:
    """Pristine images needed before a run with no false positive bounds the rate at the target
    (rule of three: the 95% upper bound after 0 of n is about 3 / n)."""
    return math.ceil(3 / target_fpr)


def pick_threshold(scores: list[float], target_fpr: float) -> tuple[float, int]:
    """(threshold, false positives): the lowest threshold such that at most ``target_fpr`` of
    ``scores`` lie strictly above it; a verdict is ``flagged`` when score > threshold."""
    s = sorted(scores, reverse=True)
    allowed = math.floor(target_fpr * len(s))
    threshold = s[min(allowed, len(s) - 1)]
    return threshold, sum(x > threshold for x in s)


def _labelled_table(spec: str, label: str | None, storage: StorageConfig) -> pa.Table:
    """(uri, source) of the reference (pristine) or known-forged images, or (label None) of every image:
    a manifest, or an `evaluate` TRUTH file (its entries with that label)."""
    from pipeline.results.truth import is_truth_file, labelled_uris

    return labelled_uris(spec, label, storage) if is_truth_file(spec, storage) else read_manifest_table(spec, storage)


def _quantile(values: list[float], q: float) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.quantile(v, q, method="lower")) if v and q > 0 else None


def _source_manifest(uri: str | None, storage: StorageConfig) -> pa.Table:
    """The --sources manifest, or an empty one (the views join it either way)."""
    return _labelled_table(uri, None, storage) if uri else pa.table({"uri": pa.array([], pa.string()),
                                                                      "source": pa.array([], pa.string())})


def _with_manifest_source(rows: str) -> str:
    """``rows`` with the column manifest_source from the registered table ``source_manifest``."""
    return f"(SELECT x.*, sm.source AS manifest_source FROM {rows} x LEFT JOIN source_manifest sm ON x.uri = sm.uri)"


def _source_sql(source_of: str | None) -> str:
    return f"CAST(({source_of}) AS VARCHAR)" if source_of else f"'{ALL_SOURCES}'"


def _labelled_rows(con, table: str, source_of: str | None) -> list[dict]:
    """Each manifest line with its latest row (or none), its manifest source and its rule source."""
    cur = con.execute(
        f"SELECT m.uri, m.source AS manifest_source, l.status, l.score, l.width, l.height, l.size_bytes, l.conf_mean, "
        f"l.weights_sha256, l.noiseprint_sha256, l.weights_untrained, l.rule_source FROM {table} m LEFT JOIN "
        f"(SELECT *, {_source_sql(source_of)} AS rule_source FROM {_with_manifest_source('latest')}) l USING (uri) "
        "ORDER BY m.uri")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def calibrate(cfg: CalibrateConfig) -> dict:
    """Measure a calibration from the reference (and forged) images' rows; returns its JSON object
    (also written under ``OUTPUT/_calibrations/``, path in ``["path"]``)."""
    import duckdb

    from pipeline.base.sql import QueryError, connect

    storage = cfg.storage()
    try:
        ref = _labelled_table(cfg.reference, PRISTINE, storage)
        forged = _labelled_table(cfg.forged, FORGED, storage) if cfg.forged else None
        source_table = _source_manifest(cfg.sources, storage)
    except ValueError as e:  # a manifest without a uri column, or listing one twice
        raise CalibrationError(str(e)) from None
    named = sorted({s for s in ref.column("source").to_pylist() if s is not None})
    source_of = cfg.source_of or ("manifest_source" if cfg.sources else None)
    notes: list[str] = []
    if len(named) == 1 and not source_of:
        # One source named: every row belongs to it (an SQL literal, quoted as SQL quotes them).
        source_of = "'" + named[0].replace("'", "''") + "'"
        notes.append(f"the reference names one source, {named[0]!r}: every scanned row is calibrated as that source "
                     "(--source-of to tell several apart)")
    elif named and not source_of:
        raise CalibrationError(f"the reference manifest names {len(named)} sources ({', '.join(named[:5])}), so "
                               "--source-of (or --sources) must say how scanned rows get theirs (a column or SQL "
                               "expression, e.g. exif_software)")
    con = connect(cfg.output, storage, tables={"reference_images": ref, "forged_images": forged,
                                               "source_manifest": source_table})
    try:
        rows = _labelled_rows(con, "reference_images", source_of)
        frows = _labelled_rows(con, "forged_images", source_of) if forged is not None else []
    except duckdb.Error as e:  # a bad --source-of
        raise QueryError(f"--source-of {source_of!r} failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        con.close()
    warnings: list[str] = notes
    if any(r["weights_untrained"] for r in rows + frows):
        warnings.append("the reference rows were scored with UNTRAINED weights (weights synthesize): these "
                        "thresholds mean nothing; scan with the released TruFor weights")

    def scored(r):
        return r["status"] == "ok" and r["score"] is not None

    usable = [r for r in rows if scored(r)]
    if len(usable) < len(rows):
        missing = [r["uri"] for r in rows if not scored(r)]
        warnings.append(f"{len(missing)} of {len(rows)} reference images have no ok row in OUTPUT (not scanned, or "
                        f"error rows) and are left out, e.g. {missing[:3]}")
    if not usable:
        raise CalibrationError(f"none of the {len(rows)} reference images has an ok row in {cfg.output!r}: "
                               "scan the reference manifest into OUTPUT first")
    scorings = {(r["weights_sha256"], r["noiseprint_sha256"]) for r in usable + [f for f in frows if f["status"] == "ok"]}
    if len(scorings) != 1:
        raise CalibrationError(f"the reference images were scored with {len(scorings)} different weights "
                               f"{sorted(str(s[0])[:12] for s in scorings)}: rescan them with one model")
    (weights, noiseprint), = scorings
    if named:
        agree = sum(r["manifest_source"] == r["rule_source"] for r in usable)
        if agree < len(usable):
            warnings.append(f"--source-of gives the manifest's source for only {agree} of {len(usable)} reference "
                            "images: scanned rows will be labelled by --source-of")
    source = (lambda r: r["manifest_source"] or r["rule_source"]) if named else (lambda r: r["rule_source"])
    by_source: dict[str, list[dict]] = {}
    for r in usable:
        by_source.setdefault(source(r) or "", []).append(r)
    need = min_reference_size(cfg.target_fpr)
    sources = []
    for name, rs in sorted(by_source.items()):
        scores = [r["score"] for r in rs]
        threshold, fp = pick_threshold(scores, cfg.target_fpr)
        lo, hi = clopper_pearson(fp, len(rs))
        entry = {"source": name, "n": len(rs), "threshold": threshold, "false_positives": fp,
                 "fpr": fp / len(rs), "fpr_ci95": [lo, hi], "too_small_for_target": len(rs) < need,
                 "pristine_score_median": _quantile(scores, 0.5),
                 "min_side": _quantile([min(r["width"], r["height"]) for r in rs], cfg.support_quantile),
                 "min_bytes_per_pixel": _quantile([r["size_bytes"] / (r["width"] * r["height"]) for r in rs],
                                                  cfg.support_quantile),
                 "min_conf_mean": _quantile([r["conf_mean"] for r in rs], cfg.support_quantile)}
        if len(rs) < need:
            warnings.append(f"source {name!r}: {len(rs)} pristine images cannot show a false-positive rate of "
                            f"{cfg.target_fpr:g} (needs >= {need}); reached {entry['fpr']:.4f}, 95% interval up to {hi:.4f}")
        fs_ = [f for f in frows if f["status"] == "ok" and (source(f) or "") == name]
        if fs_:
            tp = sum(f["score"] > threshold for f in fs_)
            entry.update(forged_n=len(fs_), true_positives=tp, tpr=tp / len(fs_), tpr_ci95=list(clopper_pearson(tp, len(fs_))))
        sources.append(entry)
    body = {"calibration_version": CALIBRATION_VERSION,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "weights_sha256": weights, "noiseprint_sha256": noiseprint, "target_fpr": cfg.target_fpr,
            "source_of": source_of, "sources_manifest": _keep_sources(source_table, cfg.output, storage) if cfg.sources else None,
            "support_quantile": cfg.support_quantile,
            "reference": cfg.reference, "forged": cfg.forged, "sources": sources, "warnings": warnings}
    body["id"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    text = json.dumps(body, indent=1)
    fs, root = storage.filesystem(cfg.output.rstrip("/"))
    stamp = body["created_at"].replace(":", "").replace("-", "")[:15]
    path = f"{root}/{CALIBRATIONS_DIR}/cal-{stamp}-{body['id']}.json"
    fs.makedirs(f"{root}/{CALIBRATIONS_DIR}", exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)
    if cfg.out:
        ofs, opath = storage.filesystem(cfg.out)
        with ofs.open(opath, "w") as f:
            f.write(text)
    body["path"] = fs.unstrip_protocol(path) if "://" in cfg.output else path
    return body


def _keep_sources(table: pa.Table, output: str, storage: StorageConfig) -> str:
    """The --sources manifest copied under OUTPUT/_calibrations/ (content-addressed): the calibration
    refers to that copy by a path relative to OUTPUT, never to a file elsewhere."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    rel = f"{CALIBRATIONS_DIR}/sources-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
    fs, root = storage.filesystem(output.rstrip("/"))
    fs.makedirs(f"{root}/{CALIBRATIONS_DIR}", exist_ok=True)
    fs.pipe_file(f"{root}/{rel}", data)
    return rel


def content_id(cal: dict) -> str:
    """The id a calibration's content hashes to (everything but ``id`` and ``path``)."""
    body = {k: v for k, v in cal.items() if k not in ("id", "path")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def load_calibration(spec: str, output: str, storage: StorageConfig) -> dict:
    """A calibration file (``spec`` a path), or the newest one stored under OUTPUT (``spec`` "latest").

    Refused when edited (its content no longer hashes to its id), when its sources manifest is not a
    file under OUTPUT/_calibrations/, or when it is not a regular file (never a FIFO or a device).
    Raises CalibrationError (one line).
    """
    if spec == "latest":
        fs, root = storage.filesystem(output.rstrip("/"))
        files = sorted(fs.glob(f"{root}/{CALIBRATIONS_DIR}/cal-*.json")) if fs.isdir(f"{root}/{CALIBRATIONS_DIR}") else []
        if not files:
            raise FileNotFoundError(f"no calibration under {output.rstrip('/')}/{CALIBRATIONS_DIR}/: run `trufor-scan "
                                    "calibrate` first")
        path = files[-1]
    else:
        fs, path = storage.filesystem(spec)
    if fs.info(path).get("type") != "file":
        raise CalibrationError(f"calibration {spec!r} is not a regular file (refused)")
    with fs.open(path, "rb") as f:
        raw = f.read(MAX_CALIBRATION_BYTES + 1)
    try:
        if len(raw) > MAX_CALIBRATION_BYTES:
            raise ValueError(f"larger than {MAX_CALIBRATION_BYTES} bytes")
        cal = json.loads(raw)
        if not isinstance(cal, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise CalibrationError(f"calibration {spec!r} is not a calibration: {e}") from None
    if cal.get("calibration_version") != CALIBRATION_VERSION:
        raise CalibrationError(f"calibration {spec!r} has version {cal.get('calibration_version')!r}; this code reads "
                               f"version {CALIBRATION_VERSION}")
    if cal.get("id") != content_id(cal):
        raise CalibrationError(f"calibration {spec!r} was edited after it was made: its content hashes to "
                               f"{content_id(cal)}, its id says {cal.get('id')!r} (refused; run `trufor-scan calibrate` "
                               "again)")
    try:
        sources_manifest(cal, output)
        for s_ in cal["sources"]:
            for c in CALIBRATION_SCHEMA.names[1:]:
                if s_.get(c) is not None and not isinstance(s_[c], (int, float)):
                    raise ValueError(f"{c} {s_[c]!r} is not a number")
    except (ValueError, TypeError, KeyError) as e:
        raise CalibrationError(f"calibration {spec!r} cannot be applied: {e}") from None
    return cal


MAX_CALIBRATION_BYTES = 16 * 2**20


def sources_manifest(cal: dict, output: str) -> str | None:
    """The full path of a calibration's sources manifest: only a file under OUTPUT/_calibrations/."""
    from pipeline.base.store import _inside, root_of

    rel = cal.get("sources_manifest")
    if rel is None:
        return None
    inside = _inside(rel) if isinstance(rel, str) else None
    if inside is None or not inside.startswith(CALIBRATIONS_DIR + "/"):
        raise ValueError(f"its sources manifest {rel!r} is not a file under OUTPUT/{CALIBRATIONS_DIR}/ (refused)")
    return f"{root_of(output)}/{inside}"


def calibration_table(cal: dict) -> pa.Table:
    return pa.Table.from_pylist([{c: s.get(c) for c in CALIBRATION_SCHEMA.names} for s in cal["sources"]],
                                schema=CALIBRATION_SCHEMA)


def check_scoring(con, cal: dict) -> None:
    """Refuse a calibration measured with other weights than the rows it would label."""
    (n, shas), = con.execute(
        "SELECT count(*), list(DISTINCT weights_sha256) FROM latest WHERE status = 'ok' AND (weights_sha256 IS DISTINCT "
        "FROM $w OR noiseprint_sha256 IS DISTINCT FROM $np)",
        {"w": cal["weights_sha256"], "np": cal["noiseprint_sha256"]}).fetchall()
    if n:
        raise CalibrationError(f"calibration {cal['id']} was measured with weights {str(cal['weights_sha256'])[:12]} "
                               f"(Noiseprint++ {str(cal['noiseprint_sha256'])[:12]}), but {n} rows were scored with "
                               f"{sorted(str(s)[:12] for s in shas)}: calibrate again with those weights")


def verdict_sql(rows: str, source_of: str | None) -> str:
    """``rows`` (a view or subquery) with source, threshold, verdict and verdict_reason, joined with
    the registered table ``calibration``. Inconclusive comes first: a high score on an image the
    model has little to stand on is not a finding."""
    outside = ("least(r.width, r.height) < c.min_side", "r.size_bytes / (r.width * r.height) < c.min_bytes_per_pixel",
               "r.conf_mean < c.min_conf_mean")
    why = ("'smaller than the reference images of its source'", "'more compressed than the reference images of its source'",
           "'less confident than the reference images of its source'")
    reasons = " ".join(f"WHEN {o} THEN {w}" for o, w in zip(outside, why))
    return (f"SELECT r.*, c.threshold, CASE WHEN r.status <> 'ok' OR r.score IS NULL THEN NULL "
            f"WHEN c.source IS NULL THEN 'inconclusive' WHEN {' OR '.join(outside)} THEN 'inconclusive' "
            f"WHEN r.score > c.threshold THEN 'flagged' ELSE 'clean' END AS verdict, "
            f"CASE WHEN r.status <> 'ok' OR r.score IS NULL THEN NULL "
            f"WHEN c.source IS NULL THEN 'no calibration for source ' || coalesce(r.source, 'NULL') {reasons} "
            f"WHEN r.score > c.threshold THEN printf('score %.3f > %.3f', r.score, c.threshold) "
            f"ELSE printf('score %.3f <= %.3f', r.score, c.threshold) END AS verdict_reason "
            f"FROM (SELECT *, {_source_sql(source_of)} AS source FROM {_with_manifest_source(rows)}) r "
            f"LEFT JOIN calibration c ON r.source = c.source")


def connector(cal: dict):
    """``connector(output, storage, **connect_options)`` for ``pipeline.base.sql.run_sql``/``top``: the views ``results``
    and ``latest`` with verdicts; refuses rows scored with other weights than the calibration's."""
    import duckdb

    from pipeline.base.sql import QueryError, connect, latest_sql

    def views(con):
        try:
            con.execute(f"CREATE VIEW latest_rows AS {latest_sql('scan_rows')}")
            con.execute(f"CREATE VIEW results AS {verdict_sql('scan_rows', cal['source_of'])}")
            con.execute(f"CREATE VIEW latest AS {verdict_sql('latest_rows', cal['source_of'])}")
        except duckdb.Error as e:
            raise QueryError(f"calibration {cal.get('id')}: source expression {cal['source_of']!r} failed: "
                             f"{str(e).strip().splitlines()[0]}") from None
        check_scoring(con, cal)

    def connect_calibrated(output: str, storage: StorageConfig | None = None, **kw):
        manifest = _source_manifest(sources_manifest(cal, output), storage or StorageConfig())
        return connect(output, storage, tables={"calibration": calibration_table(cal), "source_manifest": manifest},
                       views=views, rows_name="scan_rows", **kw)

    return connect_calibrated


CALIBRATED_TOP_COLUMNS = ("uri", "source", "score", "threshold", "verdict", "verdict_reason", "map_uri", "preview_uri",
                          "scan_date", "run_id", "weights_untrained")


def top_calibrated(output: str, cal: dict, k: int = 50, min_score: float = 0.0, since: dt.date | None = None,
                   storage: StorageConfig | None = None, as_of=None) -> tuple[list[str], list[tuple]]:
    """The images the calibration flags, by how far they pass their source's threshold."""
    from pipeline.results.query import top

    return top(output, k, min_score, since, storage, columns=CALIBRATED_TOP_COLUMNS, where="AND verdict = 'flagged'",
               order="score - threshold DESC", connector=connector(cal), as_of=as_of)
