"""`trufor-scan migrate OUTPUT`: the layout before the Delta table (Parquet parts listed in
``_runs/*.json``) converted in place into the ``results`` and ``runs`` tables.

Every committed row is kept: a manifest's parts are read (each path checked to lie under
``results/``, nothing else is opened), map references are made relative to OUTPUT, and each run
becomes one Delta commit tagged ``migrate:<run_id>`` (an application transaction), so a migration
that is interrupted and run again never copies a run twice. Rows are counted before and after; the
old manifests then move to ``_runs.migrated/`` and every command reads the table.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.base.lease import Lease
from pipeline.base.maps import MAPS_DIR
from pipeline.base.options import opt
from pipeline.base.schema import MAP_COLUMNS, ROW_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED
from pipeline.base.storage import StorageConfig, StorageOptions
from pipeline.base.store import (LEGACY_RUNS_DIR, RESULTS_DIR, SCAN_DATE, RunRecord, StoreError, _commit, _inside,
                                 open_table, read_runs, record_run, root_of, table_uri)

MIGRATED_DIR = LEGACY_RUNS_DIR + ".migrated"
LEGACY_MANIFEST_VERSION = 1
_DATE_DIR = re.compile(r"(?:^|/)scan_date=(\d{4}-\d{2}-\d{2})/")
_MAP_REF = re.compile(rf"(?:^|/)({MAPS_DIR}/[0-9a-f]{{2}}/[^/]+)$")
MAX_MANIFEST_BYTES = 64 * 2**20


@dataclass(frozen=True)
class MigrateConfig(StorageOptions):
    """Settings of one `migrate`; the command line is derived from these fields."""

    output: str = field(metadata=opt("an OUTPUT written before the Delta table (with _runs/*.json)", positional=True))
    wait: float = field(default=0.0, metadata=opt("seconds to wait while a run holds OUTPUT's write lease"))


@dataclass
class MigrateResult:
    runs: int
    rows_before: int
    rows_after: int
    already: int  # runs an earlier, interrupted migration had copied

    def text(self, output: str) -> str:
        return (f"migrate: {self.runs} runs, {self.rows_before} committed rows before, {self.rows_after} rows in "
                f"{output.rstrip('/')}/{RESULTS_DIR} after ({self.already} runs were already in from an earlier try); "
                f"old manifests moved to {MIGRATED_DIR}/")


def _relative_ref(ref: str | None) -> str | None:
    """An old absolute map reference -> ``maps/ab/<file>`` (also when OUTPUT has moved since)."""
    if ref is None:
        return None
    m = _MAP_REF.search(ref)
    return m.group(1) if m else ref  # anything else stays as it was; reading it is refused (store.resolve_ref)


def _read_file(fs, path: str, what: str, limit: int | None = None) -> bytes:
    info = fs.info(path)
    if info.get("type") != "file":  # never a FIFO, a device or a folder
        raise StoreError(f"{what} {path} is not a regular file (refused)")
    with fs.open(path, "rb") as f:
        data = f.read(limit + 1 if limit else -1)
    if limit and len(data) > limit:
        raise StoreError(f"{what} {path} is larger than {limit} bytes (refused)")
    return data


def legacy_manifests(output: str, storage: StorageConfig) -> list[dict]:
    """The old run manifests, each checked: its parts must lie under ``results/``."""
    fs, root = storage.filesystem(root_of(output))
    runs_dir = f"{root}/{LEGACY_RUNS_DIR}"
    out = []
    for p in sorted(fs.find(runs_dir, maxdepth=1)):
        name = p.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            d = json.loads(_read_file(fs, p, "run manifest", MAX_MANIFEST_BYTES))
            if d.get("version") != LEGACY_MANIFEST_VERSION:
                raise ValueError(f"version {d.get('version')!r}, expected {LEGACY_MANIFEST_VERSION}")
            for part in d["parts"]:
                rel = _inside(part["path"]) if isinstance(part.get("path"), str) else None
                if rel is None or not rel.startswith(RESULTS_DIR + "/") or not _DATE_DIR.search(rel):
                    raise ValueError(f"it lists a part outside {RESULTS_DIR}/: {part.get('path')!r} (refused, not opened)")
            out.append(d)
        except (ValueError, TypeError, KeyError) as e:
            raise StoreError(f"run manifest {p} cannot be migrated: {e}") from None
    return sorted(out, key=lambda d: (d.get("started_at", ""), d["run_id"]))


def _run_rows(fs, root: str, manifest: dict) -> pa.Table:
    tables = []
    for part in manifest["parts"]:
        rel = _inside(part["path"])
        t = pq.read_table(io.BytesIO(_read_file(fs, f"{root}/{rel}", "result part")))
        missing = [c for c in ROW_SCHEMA.names if c not in t.column_names]
        for c in missing:  # older parts lack newer columns: NULL there
            t = t.append_column(ROW_SCHEMA.field(c), pa.nulls(t.num_rows, ROW_SCHEMA.field(c).type))
        t = t.select(ROW_SCHEMA.names).cast(ROW_SCHEMA)
        for c in MAP_COLUMNS:
            if c != "map_codec":
                t = t.set_column(t.schema.get_field_index(c), ROW_SCHEMA.field(c),
                                 pa.array([_relative_ref(v) for v in t.column(c).to_pylist()], pa.string()))
        date = _DATE_DIR.search(rel).group(1)
        tables.append(t.append_column(pa.field(SCAN_DATE, pa.string()), pa.array([date] * t.num_rows, pa.string())))
    return pa.concat_tables(tables) if tables else None


def _count(output: str, storage: StorageConfig) -> int:
    return sum(int(n) for n in pa.table(open_table(output, storage).get_add_actions(flatten=True))
               .column("num_records").to_pylist())


def migrate(output: str, storage: StorageConfig | None = None, wait_s: float = 0.0) -> MigrateResult:
    """Convert OUTPUT in place (see the module docstring). Refuses an OUTPUT with no old layout."""
    storage = storage or StorageConfig()
    root_uri = root_of(output)
    fs, root = storage.filesystem(root_uri)
    if not fs.isdir(f"{root}/{LEGACY_RUNS_DIR}"):
        raise StoreError(f"{output} has no {LEGACY_RUNS_DIR}/ folder: nothing to migrate")
    with Lease(root_uri, storage, f"migrate-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}").acquire(wait_s):
        manifests = legacy_manifests(output, storage)
        before = sum(p["rows"] for m in manifests for p in m["parts"])
        t = open_table(output, storage) if fs.isdir(f"{root}/{RESULTS_DIR}/_delta_log") else None
        known = {r.run_id for r in read_runs(output, storage, migrating=True)}
        already = 0
        for m in manifests:
            app = f"migrate:{m['run_id']}"
            if t is not None and t.transaction_version(app) is not None:
                already += 1
            else:
                rows = _run_rows(fs, root, m)
                if rows is not None and rows.num_rows:
                    if rows.num_rows != sum(p["rows"] for p in m["parts"]):
                        raise StoreError(f"run {m['run_id']}: its parts hold {rows.num_rows} rows, its manifest says "
                                         f"{sum(p['rows'] for p in m['parts'])}: not migrated")
                    _commit(table_uri(output, RESULTS_DIR), rows, storage, app_id=app, seq=0,
                            metadata={"trufor_scan.run_id": m["run_id"], "trufor_scan.migrated": "1"})
            if m["run_id"] not in known:
                c = m.get("counts", {})
                record_run(output, storage, RunRecord(
                    run_id=m["run_id"], command=m.get("command", "?"), input=m.get("input", ""),
                    code_version=m.get("code_version", ""), weights_sha256=m.get("weights_sha256"),
                    noiseprint_sha256=m.get("noiseprint_sha256"), state=m.get("state", "running"),
                    started_at=_time(m.get("started_at")), error=m.get("error"), listed=c.get("listed", 0),
                    to_scan=c.get("to_scan", 0), rows=c.get("rows", 0), ok=c.get(STATUS_OK, 0),
                    errors=c.get(STATUS_ERROR, 0), skipped=c.get(STATUS_SKIPPED, 0), dedup=c.get("dedup", 0),
                    commits=len(m["parts"])))
        after = _count(output, storage)
        if after != before:  # the table holds nothing but migrated rows (every command refuses a half-migrated OUTPUT)
            raise StoreError(f"migration of {output} counted {before} committed rows before and {after} after: "
                             f"the old manifests are left in {LEGACY_RUNS_DIR}/")
        fs.mv(f"{root}/{LEGACY_RUNS_DIR}", f"{root}/{MIGRATED_DIR}", recursive=True)
    return MigrateResult(runs=len(manifests), rows_before=before, rows_after=after, already=already)


def _time(s: str | None) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(s) if s else None
    except ValueError:
        t = None
    return t or dt.datetime.now(dt.timezone.utc)
