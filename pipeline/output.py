"""Durable scan output: result parts committed as the scan goes, each listed in its run's manifest.

Layout under OUTPUT::

    results/scan_date=YYYY-MM-DD/part-<run_id>-<seq>.parquet   one Parquet file per commit
    _runs/<run_id>.json                                        the run's manifest
    maps/..                                                    content-addressed maps (pipeline.maps)

A part is committed in two steps: the file is written whole (locally to a hidden temporary name,
then renamed into place; on object storage an object only appears once its upload completes),
then the manifest, rewritten the same way, lists it. Readers (``committed_parts``) read only the
parts a manifest lists, so a half-written or orphaned file (a run killed between the two steps)
can never break a query, and its rows are scanned again by the next ``sweep``.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import PARTITION_COLUMN, ROW_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED
from .storage import StorageConfig, is_remote, write_local_atomic

RESULTS_DIR, RUNS_DIR = "results", "_runs"
MANIFEST_VERSION = 1
STATE_RUNNING, STATE_COMPLETE, STATE_FAILED = "running", "complete", "failed"


class RunFailed(RuntimeError):
    """The job failed while running; its rows so far are committed and the next sweep completes it."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunManifest:
    """What one run did, rewritten at every commit (``_runs/<run_id>.json``).

    ``parts`` are paths relative to OUTPUT, so a copied or moved output stays readable.
    A run whose state is still ``running`` after its driver is gone was killed: its listed parts
    are complete and valid; whatever it had not committed is scanned again by the next sweep.
    """

    run_id: str
    command: str
    input: str
    code_version: str
    weights_sha256: str | None = None
    noiseprint_sha256: str | None = None
    state: str = STATE_RUNNING
    started_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    error: str | None = None
    counts: dict = field(default_factory=lambda: {"listed": 0, "to_scan": 0, "rows": 0, STATUS_OK: 0,
                                                  STATUS_ERROR: 0, STATUS_SKIPPED: 0, "dedup": 0})
    parts: list = field(default_factory=list)
    version: int = MANIFEST_VERSION


def _write_whole(fs, path: str, data: bytes, remote: bool) -> None:
    """Write ``data`` so that ``path`` is either absent/old or complete, never partial."""
    if remote:  # an object becomes visible only when its upload has completed
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    write_local_atomic(path, data)


class ResultWriter:
    """Buffers result rows and commits them as parts every ``rows_per_part`` rows or ``commit_every_s``
    seconds, whichever comes first; a killed run loses at most the rows of the last interval."""

    def __init__(self, output: str, manifest: RunManifest, scan_date: str, storage: StorageConfig,
                 rows_per_part: int, commit_every_s: float, resolver=None):
        if rows_per_part < 1 or commit_every_s <= 0:
            raise ValueError(f"rows_per_part must be >= 1 and commit_every_s > 0, got {rows_per_part}, {commit_every_s}")
        self.output = output.rstrip("/")
        self.remote = is_remote(self.output)
        self.manifest = manifest
        self.rows_per_part, self.commit_every_s = rows_per_part, commit_every_s
        self.fs, self.root = storage.filesystem(self.output)
        self.part_dir = f"{RESULTS_DIR}/{PARTITION_COLUMN}={scan_date}"
        if self.fs.exists(f"{self.root}/{RUNS_DIR}/{manifest.run_id}.json"):
            # Its part names would collide with (and replace) the committed parts of that run.
            raise ValueError(f"run id {manifest.run_id!r} already exists in {self.output}/{RUNS_DIR}/: choose another "
                             f"--run-id (or none: one is made from the time)")
        self.fs.makedirs(f"{self.root}/{self.part_dir}", exist_ok=True)
        self.fs.makedirs(f"{self.root}/{RUNS_DIR}", exist_ok=True)
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.last_commit = time.monotonic()
        self.files: list[str] = []
        self.resolver = resolver  # a dedup.DedupResolver: copies completed just before each commit
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest.updated_at = _now()
        data = json.dumps(asdict(self.manifest), indent=1).encode()
        _write_whole(self.fs, f"{self.root}/{RUNS_DIR}/{self.manifest.run_id}.json", data, self.remote)

    def add(self, table: pa.Table) -> None:
        """Take rows (any column order; cast to ``ROW_SCHEMA``); commit when an interval is full."""
        table = table.select(ROW_SCHEMA.names).cast(ROW_SCHEMA)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.maybe_commit()

    def maybe_commit(self) -> None:
        waiting = self.pending_rows + (len(self.resolver) if self.resolver else 0)
        if waiting >= self.rows_per_part or (waiting and time.monotonic() - self.last_commit >= self.commit_every_s):
            self.commit()

    def commit(self) -> None:
        """Write the buffered rows as one part, then list it in the manifest."""
        self.last_commit = time.monotonic()
        if self.resolver is not None and (done := self.resolver.release(self.pending)) is not None:
            self.pending.append(done)
            self.pending_rows += done.num_rows
        if not self.pending_rows:
            return
        table = pa.concat_tables(self.pending)
        rel = f"{self.part_dir}/part-{self.manifest.run_id}-{len(self.manifest.parts):05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        _write_whole(self.fs, f"{self.root}/{rel}", sink.getvalue().to_pybytes(), self.remote)
        status = table.column("status").to_pylist()
        c = self.manifest.counts
        c["rows"] += table.num_rows
        for s in (STATUS_OK, STATUS_ERROR, STATUS_SKIPPED):
            c[s] += status.count(s)
        c["dedup"] += table.num_rows - table.column("dedup_of").null_count
        self.manifest.parts.append({"path": rel, "rows": table.num_rows})
        self._write_manifest()
        self.files.append(f"{self.output}/{rel}")
        self.pending, self.pending_rows = [], 0

    def close(self, state: str, error: str | None = None) -> None:
        """Commit what is left and record how the run ended."""
        self.commit()
        if self.resolver is not None and (lost := self.resolver.give_up()) is not None:
            self.pending.append(lost)
            self.pending_rows += lost.num_rows
            self.commit()
        self.manifest.state, self.manifest.error = state, error
        self._write_manifest()


def read_manifests(output: str, storage: StorageConfig | None = None) -> list[RunManifest]:
    """Every run's manifest under OUTPUT, oldest first. A manifest that cannot be parsed is an error
    with its path (it is only ever replaced whole, so that means outside damage)."""
    fs, root = (storage or StorageConfig()).filesystem(output.rstrip("/"))
    runs = f"{root}/{RUNS_DIR}"
    if not fs.isdir(runs):
        return []
    out = []
    for p in sorted(fs.find(runs, maxdepth=1)):
        name = p.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.startswith("."):
            continue
        with fs.open(p, "rb") as f:
            raw = f.read()
        try:
            d = json.loads(raw)
            if d.get("version") != MANIFEST_VERSION:
                raise ValueError(f"manifest version {d.get('version')!r}, expected {MANIFEST_VERSION}")
            out.append(RunManifest(**d))
        except (ValueError, TypeError) as e:
            raise ValueError(f"run manifest {p} is unreadable: {e}") from None
    return sorted(out, key=lambda m: (m.started_at, m.run_id))


def committed_parts(output: str, storage: StorageConfig | None = None) -> list[str]:
    """Paths (inside OUTPUT's filesystem) of every committed part, in commit order."""
    fs, root = (storage or StorageConfig()).filesystem(output.rstrip("/"))
    return [f"{root}/{p['path']}" for m in read_manifests(output, storage) for p in m.parts]
