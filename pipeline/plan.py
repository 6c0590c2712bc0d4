"""What a run scans: the listing spooled to local Parquet, then (for a sweep) anti-joined in DuckDB
with the committed results, so that neither the listing nor the history is ever held in memory.

A sweep skips a listed uri whose latest committed row (view ``latest``) is for the same version of
the file (same size and etag/mtime, where the listing knows them) and is one of:

- ``ok`` (with ``--rescore``: only when scored with the current weights and Noiseprint++);
- ``skipped`` (not an image extension);
- ``error`` of kind ``input`` (the file's own fault: final for this version of the file).

Everything else is scanned: new uris, changed files, and ``transient`` errors (I/O, timeouts,
object store, inference, rows lost in the pipeline), which is how a sweep completes a killed run.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow.parquet as pq

from .dedup import HashSet, Scoring, known_hashes_sql, same_scoring_sql, scoring_params
from .listing import LISTING_SCHEMA, iter_listing, listing_batches
from .query import LATEST_SQL, QueryLimits, duck
from .storage import StorageConfig
from .store import parquet_sql, snapshot


# DuckDB spills the listing's sort and the anti-join to disk beyond this, so the driver's memory
# stays bounded whatever the size of the listing and of the history (BENCHMARKS.md, "Sweeps at scale").
PLAN_MEMORY_LIMIT = "256MB"
# A plan that takes longer than this is interrupted (the run fails with that line; nothing is lost).
PLAN_TIMEOUT_S = 3600.0


@dataclass
class Plan:
    listed: int
    to_scan: int
    path: str  # local Parquet file of the listed files to scan (LISTING_SCHEMA), sorted by uri
    known_hashes: list[np.ndarray] = field(default_factory=list)  # HashSet chunks (sweep only)


_DONE = """
    last.uri IS NOT NULL
    AND (l.size_bytes IS NULL OR last.size_bytes IS NOT DISTINCT FROM l.size_bytes)
    AND (l.etag_or_mtime IS NULL OR last.etag_or_mtime IS NOT DISTINCT FROM l.etag_or_mtime)
    AND (last.status = 'skipped'
         OR (last.status = 'error' AND last.error_kind = 'input')
         OR (last.status = 'ok' AND (NOT $rescore OR (""" + same_scoring_sql("last.") + "))))"


def _sql_str(path: str) -> str:
    """A local path of ours as an SQL string literal (DDL and COPY take no bound parameters)."""
    return "'" + path.replace("'", "''") + "'"


def plan_run(spec: str, output: str, storage: StorageConfig, workdir: str, *, incremental: bool, rescore: bool,
             max_bytes: int | None, scoring: Scoring) -> Plan:
    """List ``spec`` and decide what to scan; the files go under ``workdir`` (a local temporary folder)."""
    listing_path, todo_path = os.path.join(workdir, "listing.parquet"), os.path.join(workdir, "to_scan.parquet")
    listed = 0
    with pq.ParquetWriter(listing_path, LISTING_SCHEMA) as w:
        for batch in listing_batches(iter_listing(spec, storage, max_bytes)):
            w.write_batch(batch)
            listed += batch.num_rows
    snap = snapshot(output, storage) if incremental else None
    con = duck(storage, [snap.uri] if snap else [],
               limits=QueryLimits(memory_limit=PLAN_MEMORY_LIMIT, temp_dir=os.path.join(workdir, "duckdb.tmp")))
    timer = threading.Timer(PLAN_TIMEOUT_S, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        con.execute("SET preserve_insertion_order = false")
        # One row per uri even when a manifest names a file twice.
        con.execute(f"CREATE VIEW listing AS SELECT * FROM read_parquet({_sql_str(listing_path)}) "
                    "QUALIFY row_number() OVER (PARTITION BY uri) = 1")
        history = snap is not None
        params: dict = {}
        if history:
            con.execute(f"CREATE VIEW results AS SELECT * FROM {parquet_sql(snap)}")
            con.execute(f"CREATE VIEW latest AS {LATEST_SQL}")
            query = f"SELECT l.* FROM listing l LEFT JOIN latest last ON l.uri = last.uri WHERE NOT ({_DONE})"
            params = {"rescore": rescore, **scoring_params(scoring)}
        else:
            query = "SELECT * FROM listing"
        con.execute(f"COPY (SELECT * FROM ({query}) ORDER BY uri) TO {_sql_str(todo_path)} (FORMAT parquet)", params)
        chunks = []
        if history:
            reader = con.execute(known_hashes_sql(), scoring_params(scoring)).fetch_record_batch(1 << 16)
            chunks = HashSet.chunks_from_hex(reader)
    except duckdb.InterruptException:
        raise TimeoutError(f"planning the run took longer than {PLAN_TIMEOUT_S:g} s and was interrupted") from None
    finally:
        timer.cancel()
        con.close()
    return Plan(listed=listed, to_scan=pq.ParquetFile(todo_path).metadata.num_rows, path=todo_path,
                known_hashes=chunks)
