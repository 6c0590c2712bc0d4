"""Sandboxed SQL over the results store: the views ``results``, ``latest`` and ``runs``, one reading
statement at a time, under a deadline and a memory limit (``connect``, ``run_sql``)."""
from __future__ import annotations

import dataclasses

import duckdb
import pyarrow as pa

from pipeline.base.storage import StorageConfig
from pipeline.base.store import (RESULTS_DIR, RUN_SCHEMA, RUNS_DIR, QueryLimits, Snapshot, TimedConnection, duck,
                                 parquet_sql, parse_as_of, runs_sql, snapshot, spill_dir, table_uri)


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
    ``rows_name`` (``pipeline.results.calibration`` adds verdicts this way).

    DuckDB reads the table's Parquet files itself, exactly those its log lists, each checked to lie
    inside the table (``pipeline.base.store``). The connection is sandboxed (``duck``) before any view
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
    in its place, e.g. ``pipeline.results.calibration.connector``); returns (column names, rows).

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


