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
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow.parquet as pq

from pipeline.base.listing import LISTING_SCHEMA, iter_listing, listing_batches
from pipeline.base.storage import StorageConfig
from pipeline.base.store import QueryLimits, duck, parquet_sql, snapshot, sql_str
from pipeline.scan.dedup import SCORING_COLUMNS, HashSet, Scoring, known_hashes_sql, same_scoring_sql, scoring_params

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


# The newest committed row of each listed uri, ordered as the view `latest` orders them (newest
# scanned_at, then run_id), with the columns _DONE reads. An aggregate (arg_max), not a window:
# DuckDB's hash aggregate spills within PLAN_MEMORY_LIMIT, where the window over every row of a
# 10M-row table ran out of memory (BENCHMARKS.md, "The results store at scale").
_LAST_COLUMNS = ("size_bytes", "etag_or_mtime", "status", "error_kind") + SCORING_COLUMNS
_LAST = (
    "SELECT uri, unnest(r) FROM (SELECT uri, arg_max(r, k) AS r FROM ("
    f"SELECT uri, struct_pack({', '.join(_LAST_COLUMNS)}) AS r, "
    "struct_pack(t := coalesce(scanned_at, '-infinity'::TIMESTAMPTZ), run := coalesce(run_id, '')) AS k "
    "FROM results WHERE uri IN (SELECT uri FROM listing)) GROUP BY uri)")

_DONE = """
    last.uri IS NOT NULL
    AND (l.size_bytes IS NULL OR last.size_bytes IS NOT DISTINCT FROM l.size_bytes)
    AND (l.etag_or_mtime IS NULL OR last.etag_or_mtime IS NOT DISTINCT FROM l.etag_or_mtime)
    AND (last.status = 'skipped'
         OR (last.status = 'error' AND last.error_kind = 'input')
         OR (last.status = 'ok' AND (NOT $rescore OR (""" + same_scoring_sql("last.") + "))))"


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
    con = duck(storage, [snap.uri] if snap else [], limits=QueryLimits(
        timeout_s=PLAN_TIMEOUT_S, memory_limit=PLAN_MEMORY_LIMIT, temp_dir=os.path.join(workdir, "duckdb.tmp")))
    try:
        con.execute("SET preserve_insertion_order = false")
        # One row per uri even when a manifest names a file twice.
        con.execute(f"CREATE VIEW listing AS SELECT * FROM read_parquet({sql_str(listing_path)}) "
                    "QUALIFY row_number() OVER (PARTITION BY uri) = 1")
        history = snap is not None
        params: dict = {}
        if history:
            con.execute(f"CREATE VIEW results AS SELECT * FROM {parquet_sql(snap)}")
            query = f"SELECT l.* FROM listing l LEFT JOIN ({_LAST}) last ON l.uri = last.uri WHERE NOT ({_DONE})"
            params = {"rescore": rescore, **scoring_params(scoring)}
        else:
            query = "SELECT * FROM listing"
        con.execute(f"COPY (SELECT * FROM ({query}) ORDER BY uri) TO {sql_str(todo_path)} (FORMAT parquet)", params)
        chunks = []
        if history:
            reader = con.execute(known_hashes_sql(), scoring_params(scoring)).fetch_record_batch(1 << 16)
            chunks = HashSet.chunks_from_hex(reader)
    except duckdb.InterruptException:
        raise TimeoutError(f"planning the run took longer than {PLAN_TIMEOUT_S:g} s and was interrupted") from None
    finally:
        con.close()
    return Plan(listed=listed, to_scan=pq.ParquetFile(todo_path).metadata.num_rows, path=todo_path,
                known_hashes=chunks)
