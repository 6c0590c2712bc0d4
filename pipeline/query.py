"""SQL over scan results with DuckDB: views ``results`` (every row) and ``latest`` (one per uri), read-only."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from .options import opt
from .storage import StorageConfig, StorageOptions
from .store import (MEMORY_FRACTION, RESULTS_DIR, RUN_SCHEMA, RUNS_DIR, QueryLimits, Snapshot, duck, parquet_sql,
                    TimedConnection, parse_as_of, runs_sql, snapshot, spill_dir, table_uri)

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
    as_of: str | None = field(default=None, metadata=opt(
        "answer from the table as it was: a version number, or a time (ISO 8601, UTC unless a zone is given)",
        commands=("query", "top")))
    timeout: float = field(default=300.0, metadata=opt("seconds before the statement is interrupted (exit status 2)",
                                                       commands=("query",)))
    memory_limit: str | None = field(default=None, metadata=opt(
        f"DuckDB memory limit, e.g. 2GB (default: {MEMORY_FRACTION:.0%} of this machine's memory; beyond it DuckDB "
        "spills to a temporary folder, then fails the statement)", commands=("query",)))
    threads: int | None = field(default=None, metadata=opt("DuckDB threads (default: all cores)", commands=("query",)))

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if not self.timeout > 0 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"--timeout must be > 0 and --threads >= 1, got {self.timeout}, {self.threads}")
        parse_as_of(self.as_of)
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

    def limits(self) -> "QueryLimits":
        return QueryLimits(timeout_s=self.timeout, memory_limit=self.memory_limit, threads=self.threads)

    def since_date(self) -> dt.date | None:
        return dt.date.fromisoformat(self.since) if self.since else None


# One answer per image: its most recent row of any status, so a file whose latest scan failed
# never shows an older score.
def latest_sql(table: str = "results") -> str:
    return (f"SELECT * FROM {table} QUALIFY row_number() OVER "
            "(PARTITION BY uri ORDER BY scanned_at DESC NULLS LAST, run_id DESC) = 1")


LATEST_SQL = latest_sql()


class QueryError(ValueError):
    """User SQL that DuckDB refused or could not run (one line, with DuckDB's reason)."""


class QueryTimeout(QueryError):
    """A statement ran past its time limit and was interrupted."""


def connect(output: str, storage: StorageConfig | None = None, tables: dict[str, pa.Table | None] | None = None,
            views=None, rows_name: str = "results", as_of=None,
            limits: QueryLimits | None = None) -> TimedConnection:
    """An in-memory DuckDB connection that sees the views ``results``, ``latest`` and ``runs`` and nothing else.

    ``results`` holds every row in the table (``as_of``: as it was at that version or time);
    ``latest`` one row per uri (its most recent scan); ``runs`` each run's newest record (its state,
    counts, weights; always the newest, whatever ``as_of``). ``tables``: more Arrow tables to see (e.g. a
    manifest to join). ``views(con)``, when given, defines the views instead, over the rows view
    ``rows_name`` (``pipeline.calibration`` adds verdicts this way).

    DuckDB reads the table's Parquet files itself, exactly those its log lists, each checked to lie
    inside the table (``pipeline.store``). The connection is sandboxed (``duck``) before any view
    exists, so SQL in the views runs sandboxed too.
    """
    storage = storage or StorageConfig()
    snap = snapshot(output, storage, RESULTS_DIR, parse_as_of(as_of) if isinstance(as_of, str) else as_of)
    if snap is None:
        raise FileNotFoundError(f"no scan results under {output!r} (expected a Delta table in "
                                f"{output.rstrip('/')}/{RESULTS_DIR}/)")
    limits = limits or QueryLimits()
    if limits.temp_dir is None:
        limits = dataclasses.replace(limits, temp_dir=spill_dir())
    runs = snapshot(output, storage, RUNS_DIR) or Snapshot(uri=table_uri(output, RUNS_DIR), version=-1, files=(),
                                                           schema=RUN_SCHEMA)
    con = duck(storage, [snap.uri, runs.uri], sandbox=True, limits=limits)
    try:
        for name, table in (tables or {}).items():
            if table is not None:
                con.register(name, table)
        con.execute(f"CREATE VIEW {rows_name} AS SELECT * FROM {parquet_sql(snap)}")
        con.execute(f"CREATE VIEW runs AS {runs_sql(parquet_sql(runs))}")
        if views is None:
            con.execute(f"CREATE VIEW latest AS {LATEST_SQL}")
        else:
            views(con)
    except Exception:
        con.close()
        raise
    return con


# What user SQL may be: one statement that only reads. The sandbox already keeps DuckDB inside the
# table's folder; this keeps it from writing there (COPY ... TO over a committed file, ATTACH a new
# database file, EXPORT).
READ_STATEMENTS = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)


def read_only(con: TimedConnection, sql: str) -> None:
    """Refuse anything but one reading statement (QueryError, one line)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QueryError(f"SQL failed: {first}") from None
    if len(statements) != 1 or statements[0].type not in READ_STATEMENTS:
        kinds = ", ".join(st.type.name for st in statements) or "nothing"
        raise QueryError(f"SQL refused: one SELECT (or EXPLAIN) statement is read here, got {kinds}")


def run_sql(output: str, sql: str, params: list | None = None, storage: StorageConfig | None = None,
            connector=None, as_of=None, limits: QueryLimits | None = None) -> tuple[list[str], list[tuple]]:
    """Run SQL against ``results`` (sandboxed, see ``connect``; ``connector(output, storage, as_of=, limits=)``
    in its place, e.g. ``pipeline.calibration.connector``); returns (column names, rows).

    The statement is interrupted after ``limits.timeout_s`` seconds.

    Raises:
        QueryTimeout: it ran past the time limit.
        QueryError: DuckDB refused or failed the statement.
    """
    limits = limits or QueryLimits()
    con = (connector or connect)(output, storage, as_of=as_of, limits=limits)  # interrupted past timeout_s
    try:
        read_only(con, sql)
        cur = con.execute(sql, params or [])
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    except duckdb.InterruptException:
        raise QueryTimeout(f"SQL interrupted after its time limit of {limits.timeout_s:g} s (--timeout)") from None
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QueryError(f"SQL failed: {first}") from None
    finally:
        con.close()


def top(output: str, k: int = 50, min_score: float = DEFAULT_MIN_SCORE, since: dt.date | None = None,
        storage: StorageConfig | None = None, columns: tuple[str, ...] = TOP_COLUMNS, where: str = "",
        order: str = "score DESC", connector=None, as_of=None,
        limits: QueryLimits | None = None) -> tuple[list[str], list[tuple]]:
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
    return run_sql(output, sql, params, storage, connector, as_of, limits)


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
