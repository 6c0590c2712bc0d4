"""SQL over scan results with DuckDB: views ``results`` (every row) and ``latest`` (one per uri), read-only."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json

from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from .options import opt
from .output import RESULTS_DIR, RUNS_DIR, committed_parts
from .schema import PARTITION_COLUMN, ROW_SCHEMA
from .storage import StorageConfig, StorageOptions

DEFAULT_MIN_SCORE = 0.5  # "flagged" for top/contradictions without a calibration
TOP_COLUMNS = ("uri", "score", "frac_anom_conf", "max_anom_conf", "map_uri", "preview_uri", "scan_date", "run_id",
               "weights_untrained")


@dataclass(frozen=True)
class ReadConfig(StorageOptions):
    """Settings of the commands that read results (`query`, `top`, `contradictions`); the command
    line is derived from these fields."""

    output: str = field(metadata=opt("the scan's --output (local directory or s3:// prefix)", positional=True))
    sql: str = field(default="", metadata=opt('e.g. "SELECT uri, score FROM results ORDER BY score DESC LIMIT 10"',
                                              positional=True, commands=("query",)))
    k: int = field(default=50, metadata=opt("how many rows", commands=("top", "contradictions")))
    min_score: float | None = field(default=None, metadata=opt(
        f"flagged: score at least this (default {DEFAULT_MIN_SCORE}; with a calibration its verdict decides)",
        commands=("top", "contradictions")))
    since: str | None = field(default=None, metadata=opt("only scans on or after this date (YYYY-MM-DD)",
                                                          commands=("top",)))
    calibrated: bool = field(default=False, metadata=opt(
        "use the newest calibration under OUTPUT: only what its verdict flags", commands=("top", "contradictions")))
    calibration: str | None = field(default=None, metadata=opt(
        "a calibration file ('latest': the newest under OUTPUT): the views get source, threshold, verdict, "
        "verdict_reason"))
    format: str = field(default="table", metadata=opt("printed format", choices=("table", "csv", "json")))

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.since:
            try:
                dt.date.fromisoformat(self.since)
            except ValueError as e:
                raise ValueError(f"--since {self.since!r} is not a date YYYY-MM-DD: {e}") from None

    def calibration_spec(self) -> str | None:
        """The calibration to apply: a file, "latest", or None."""
        return self.calibration or ("latest" if self.calibrated else None)

    def flag_score(self) -> float:
        """--min-score as given, else the default without a calibration, else 0 (the verdict decides)."""
        if self.min_score is not None:
            return self.min_score
        return 0.0 if self.calibration_spec() else DEFAULT_MIN_SCORE

    def since_date(self) -> dt.date | None:
        return dt.date.fromisoformat(self.since) if self.since else None


def results_dataset(output: str, storage: StorageConfig | None = None) -> pads.Dataset:
    """The committed result parts under OUTPUT (local or object storage), hive-partitioned by scan_date.

    Only parts listed in a run manifest (``pipeline.output``) are read: a file being written, or
    orphaned by a killed run, is never seen.
    """
    fs, root = (storage or StorageConfig()).filesystem(output.rstrip("/"))
    if not fs.isdir(f"{root}/{RUNS_DIR}"):
        raise FileNotFoundError(f"no scan results under {output!r} (expected run manifests in "
                                f"{output.rstrip('/')}/{RUNS_DIR}/)")
    return parts_dataset(committed_parts(output, storage), fs, f"{root}/{RESULTS_DIR}")


def parts_dataset(paths: list[str], fs, base_dir: str) -> pads.Dataset:
    """Result part files (paths inside ``fs``) as one dataset with ``scan_date`` from their folder."""
    part = pads.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    return pads.dataset(paths, format="parquet", filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
                        partitioning=part, partition_base_dir=base_dir,
                        schema=ROW_SCHEMA.append(pa.field(PARTITION_COLUMN, pa.string())))


# One answer per image: its most recent row of any status, so a file whose latest scan failed
# never shows an older score.
def latest_sql(table: str = "results") -> str:
    return (f"SELECT * FROM {table} QUALIFY row_number() OVER "
            "(PARTITION BY uri ORDER BY scanned_at DESC NULLS LAST, run_id DESC) = 1")


LATEST_SQL = latest_sql()


class QueryError(ValueError):
    """User SQL that DuckDB refused or could not run (one line, with DuckDB's reason)."""


def connect(output: str, storage: StorageConfig | None = None, tables: dict[str, pa.Table | None] | None = None,
            views=None, rows_name: str = "results") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that sees the views ``results`` and ``latest`` and nothing else.

    ``results`` holds every row ever written; ``latest`` one row per uri (its most recent scan).
    ``tables``: more Arrow tables to see (e.g. a manifest to join). ``views(con)``, when given,
    defines the views instead, over the dataset registered as ``rows_name``
    (``pipeline.calibration`` adds verdicts this way).

    The data is registered from Python (pyarrow reads it), then external access is switched off
    and the configuration locked, and only then are the views defined (so any SQL in them runs
    sandboxed too): user SQL cannot read or write files (read_csv, COPY ... TO, glob), ATTACH
    databases, or INSTALL/LOAD extensions, nor switch this back on.
    """
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.register(rows_name, results_dataset(output, storage))
    for name, table in (tables or {}).items():
        if table is not None:
            con.register(name, table)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    try:
        if views is None:
            con.execute(f"CREATE VIEW latest AS {LATEST_SQL}")
        else:
            views(con)
    except Exception:
        con.close()
        raise
    return con


def run_sql(output: str, sql: str, params: list | None = None, storage: StorageConfig | None = None,
            connector=None) -> tuple[list[str], list[tuple]]:
    """Run SQL against ``results`` (sandboxed, see ``connect``; ``connector(output, storage)`` in its
    place, e.g. ``pipeline.calibration.connector``); returns (column names, rows).

    Raises:
        QueryError: DuckDB refused or failed the statement.
    """
    con = (connector or connect)(output, storage)
    try:
        cur = con.execute(sql, params or [])
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QueryError(f"SQL failed: {first}") from None
    finally:
        con.close()


def top(output: str, k: int = 50, min_score: float = DEFAULT_MIN_SCORE, since: dt.date | None = None,
        storage: StorageConfig | None = None, columns: tuple[str, ...] = TOP_COLUMNS, where: str = "",
        order: str = "score DESC", connector=None) -> tuple[list[str], list[tuple]]:
    """The highest-scoring images by their latest scan (view ``latest``), values bound as parameters.

    An image whose latest scan failed is left out, whatever an earlier scan scored. ``columns``,
    ``where`` (more conditions: fixed SQL, never values), ``order`` and ``connector`` serve views
    with more columns (``pipeline.calibration.top_calibrated``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sql = (f"SELECT {', '.join(columns)} FROM latest WHERE status = 'ok' AND score >= ? {where} "
           + ("AND scan_date >= ? " if since else "")
           + f"ORDER BY {order}, uri LIMIT ?")
    params: list = [min_score] + ([since.isoformat()] if since else []) + [k]
    return run_sql(output, sql, params, storage, connector)


def _plain(v):
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return v


def format_rows(cols: list[str], rows: list[tuple], fmt: str) -> str:
    """Render as an aligned text table, CSV or JSON (a list of objects)."""
    if fmt == "json":
        return json.dumps([{c: _plain(v) for c, v in zip(cols, r)} for r in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows([[_plain(v) for v in r] for r in rows])
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; expected table, csv or json")
    cells = [[("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(_plain(v))) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    lines.append(f"({len(rows)} rows)")
    return "\n".join(lines)
