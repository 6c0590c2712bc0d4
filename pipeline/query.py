"""SQL over scan results with DuckDB: a ``results`` view over the hive-partitioned Parquet dataset."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from .schema import PARTITION_COLUMN, ROW_SCHEMA
from .storage import StorageConfig

TOP_COLUMNS = ("uri", "score", "frac_anom_conf", "max_anom_conf", "map_uri", "preview_uri", "scan_date", "run_id",
               "weights_untrained")


def results_dataset(output: str, storage: StorageConfig | None = None) -> pads.Dataset:
    """The Parquet dataset under ``OUTPUT/results`` (local or object storage), hive-partitioned by scan_date."""
    fs, path = (storage or StorageConfig()).filesystem(f"{output.rstrip('/')}/results")
    if not fs.isdir(path):
        raise FileNotFoundError(f"no scan results under {output!r} (expected {output.rstrip('/')}/results/)")
    part = pads.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    return pads.dataset(path, format="parquet", filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
                        partitioning=part, schema=ROW_SCHEMA.append(pa.field(PARTITION_COLUMN, pa.string())))


def connect(output: str, storage: StorageConfig | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the view ``results``; no path is pasted into SQL."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.register("results", results_dataset(output, storage))
    return con


def run_sql(output: str, sql: str, params: list | None = None,
            storage: StorageConfig | None = None) -> tuple[list[str], list[tuple]]:
    """Run SQL against ``results``; returns (column names, rows)."""
    con = connect(output, storage)
    try:
        cur = con.execute(sql, params or [])
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    finally:
        con.close()


def top(output: str, k: int = 50, min_score: float = 0.5, since: dt.date | None = None,
        storage: StorageConfig | None = None) -> tuple[list[str], list[tuple]]:
    """The highest-scoring images (latest scan of each URI), values bound as parameters."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sql = (f"SELECT {', '.join(TOP_COLUMNS)} FROM results WHERE status = 'ok' AND score >= ? "
           + ("AND scan_date >= ? " if since else "")
           + "QUALIFY row_number() OVER (PARTITION BY uri ORDER BY scanned_at DESC) = 1 "
           "ORDER BY score DESC, uri LIMIT ?")
    params: list = [min_score] + ([since.isoformat()] if since else []) + [k]
    return run_sql(output, sql, params, storage)


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
