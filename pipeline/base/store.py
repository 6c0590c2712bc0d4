"""The results store: two Delta Lake tables under OUTPUT, written with delta-rs, read by DuckDB natively.

Layout under OUTPUT (a local folder or an object-store prefix)::

    results/   Delta table: one row per scanned file and run (``TABLE_SCHEMA``: the row schema + scan_date)
    runs/      Delta table: run records, appended (``RUN_SCHEMA``); a run's state is its newest record
    maps/      content-addressed maps (``pipeline.base.maps``); rows refer to them relative to OUTPUT
    _lease/    who may write now (``pipeline.base.lease``)

Each interval commit of a run is one Delta transaction on ``results``, tagged with the run id and
a sequence number as a Delta application transaction (``txn``): a commit whose answer was lost (a
flaky object store) is never repeated, because the retry first asks the log whether that
(run id, sequence) is already in. Readers see a commit whole or not at all.

Nothing read back from the log is trusted: every data file it names must lie inside its table
(``_validated_files``: no absolute path, no ``..``, no other bucket), or the read is refused with
one line naming the entry, before anything is opened. DuckDB then reads exactly those Parquet
files with its own reader (local files, or S3 through its httpfs extension, installed from PyPI
with DuckDB itself); no Python filesystem sits between DuckDB and the data.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field, fields

import duckdb
import pyarrow as pa

from pipeline.base.maps import MAPS_DIR
from pipeline.base.options import opt
from pipeline.base.schema import ROW_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, col
from pipeline.base.storage import StorageConfig, StorageOptions, is_remote, one_line, redact

RESULTS_DIR, RUNS_DIR = "results", "runs"
LEGACY_RUNS_DIR = "_runs"  # the layout before the Delta table: Parquet parts listed in _runs/*.json
SCAN_DATE = "scan_date"
SCAN_DATE_DOC = "the UTC date of the run's start (YYYY-MM-DD), added by the store to every row it commits"
TABLE_SCHEMA: pa.Schema = ROW_SCHEMA.append(pa.field(SCAN_DATE, pa.string()))
STATE_RUNNING, STATE_COMPLETE, STATE_FAILED = "running", "complete", "failed"
# How often a commit is tried before the run fails (object store unreachable, conflicts).
COMMIT_TRIES = 5
COMMIT_BACKOFF_S = 2.0
# Failures a commit does not retry.
FINAL_ERRORS = ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded")
# delta-rs: requests to object storage give up after this long (a store that hangs becomes an error).
OBJECT_STORE_TIMEOUT = "60s"


class StoreError(RuntimeError):
    """The store cannot be read or written as asked (one line, with the offending value)."""


class RunFailed(RuntimeError):
    """The job failed while running; its rows so far are committed and the next sweep completes it."""


class LegacyLayoutError(StoreError):
    """OUTPUT holds results in the layout before the Delta table."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class RunRecord:
    """What one run did: appended to ``runs`` when it starts and when it ends (its newest record wins).

    A run whose newest record still says ``running`` after its driver is gone was killed: its
    committed rows are complete and valid; whatever it had not committed is scanned again by the
    next sweep (and its lease expires, ``pipeline.base.lease``).
    """

    run_id: str = col("run", "the run's identifier, written into each of its rows")
    command: str = col("run", "scan / sweep / migrate")
    input: str = col("run", "what it listed (folder, prefix or manifest; credentials redacted)")
    code_version: str = col("run", "trufor-scan version (+ git commit)")
    weights_sha256: str | None = col("run", "sha256 of the TruFor weights", default=None)
    noiseprint_sha256: str | None = col("run", "sha256 of the replacement Noiseprint++ weights", default=None)
    weights_untrained: bool | None = col("run", "true when the weights are marked UNTRAINED (`weights synthesize`): "
                                         "its scores mean nothing (NULL in records written before this column)",
                                         default=None)
    state: str = col("state", "running / complete / failed; a run still `running` after its driver is gone was "
                     "killed (the next sweep completes it)", default=STATE_RUNNING)
    started_at: dt.datetime = col("state", "when it started (UTC)", default_factory=_now)
    updated_at: dt.datetime = col("state", "when this record was written (UTC)", default_factory=_now)
    error: str | None = col("state", "one line: why it failed", default=None)
    listed: int = col("counts", "files listed", default=0)
    to_scan: int = col("counts", "files it had to scan (sweep: not yet in the results)", default=0)
    rows: int = col("counts", "rows committed", default=0)
    ok: int = col("counts", "ok rows", default=0)
    errors: int = col("counts", "error rows", default=0)
    skipped: int = col("counts", "skipped rows (not images)", default=0)
    dedup: int = col("counts", "rows that repeat an earlier row of the same bytes (dedup_of)", default=0)
    commits: int = col("counts", "transactions it committed to the results table", default=0)
    results_version: int | None = col("counts", "the results table's version after its last commit", default=None)


_RUN_TYPES = {str: pa.string(), int: pa.int64(), bool: pa.bool_(), dt.datetime: pa.timestamp("us", tz="UTC")}


def _run_schema() -> pa.Schema:
    import typing

    hints = typing.get_type_hints(RunRecord)
    out = []
    for f in fields(RunRecord):
        t = hints[f.name]
        base = [a for a in typing.get_args(t) if a is not type(None)][0] if typing.get_args(t) else t
        out.append(pa.field(f.name, _RUN_TYPES[base]))
    return pa.schema(out)


RUN_SCHEMA: pa.Schema = _run_schema()


# -- where things are -------------------------------------------------------------------------------

def root_of(output: str) -> str:
    """OUTPUT as the store names it: an object-store URI as given (no trailing /), a local path absolute."""
    return output.rstrip("/") if is_remote(output) else os.path.abspath(output)


def table_uri(output: str, name: str) -> str:
    return f"{root_of(output)}/{name}"


def delta_options(storage: StorageConfig, uri: str) -> dict:
    """delta-rs storage options for ``uri``: the endpoint, conditional puts (safe concurrent commits on
    S3 without a lock service), timeouts, and credentials from the standard chain (never stored)."""
    if not is_remote(uri):
        return {}
    if not uri.startswith(("s3://", "s3a://")):
        raise StoreError(f"OUTPUT {uri!r}: the results table supports local folders and s3:// prefixes")
    opts = {"AWS_CONDITIONAL_PUT": "etag", "timeout": OBJECT_STORE_TIMEOUT, "connect_timeout": "10s",
            "max_retries": "3", "retry_timeout": "30s"}  # then our own tries (COMMIT_TRIES) take over
    if storage.endpoint_url:
        opts["AWS_ENDPOINT_URL"] = storage.endpoint_url
        if storage.endpoint_url.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    opts["AWS_REGION"] = _region()
    if storage.anon:
        opts["AWS_SKIP_SIGNATURE"] = "true"
    else:
        creds = _credentials()
        if creds:
            opts.update(AWS_ACCESS_KEY_ID=creds[0], AWS_SECRET_ACCESS_KEY=creds[1])
            if creds[2]:
                opts["AWS_SESSION_TOKEN"] = creds[2]
    return opts


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _credentials() -> tuple[str, str, str | None] | None:
    """(key, secret, token) from botocore's standard chain (environment, ~/.aws, instance role)."""
    try:
        import botocore.session

        c = botocore.session.get_session().get_credentials()
    except Exception:  # noqa: BLE001 - no chain: unsigned requests then fail with the store's own message
        return None
    if c is None:
        return None
    c = c.get_frozen_credentials()
    return c.access_key, c.secret_key, c.token


# -- DuckDB over the tables ---------------------------------------------------------------------------

MEMORY_FRACTION = 0.5  # default DuckDB memory limit: this share of the machine's memory


def extension_directory() -> str:
    """Where DuckDB's delta and httpfs extensions were installed from PyPI (``duckdb-ext-*`` packages,
    matching this DuckDB release): loaded from there, never downloaded."""
    import duckdb_ext

    return os.path.join(list(duckdb_ext.__path__)[0], "extensions")


def _default_memory_limit() -> str:
    """Half the machine's memory: one query can never take the whole machine."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "4GB"
    return f"{max(256, int(total * MEMORY_FRACTION / 2**20))}MB"


@dataclass(frozen=True)
class QueryLimits:
    """Bounds of one DuckDB connection: wall time per statement, memory (beyond it DuckDB spills to
    ``temp_dir``, then fails the statement), threads."""

    timeout_s: float = 300.0
    memory_limit: str | None = None  # default: MEMORY_FRACTION of the machine
    threads: int | None = None
    temp_dir: str | None = None

    def config(self) -> dict:
        out = {"memory_limit": self.memory_limit or _default_memory_limit()}
        if self.threads:
            out["threads"] = self.threads
        if self.temp_dir:
            out["temp_directory"] = self.temp_dir
        return out


def _s3_secret(con, storage: StorageConfig) -> None:
    """An S3 secret for DuckDB's own reader: endpoint and credentials from the standard chain (DuckDB
    shows secrets redacted; they never reach a row or a log)."""
    parts = ["TYPE s3", f"REGION {sql_str(_region())}"]
    if storage.endpoint_url:
        u = urllib.parse.urlparse(storage.endpoint_url)
        parts += [f"ENDPOINT {sql_str(u.netloc)}", "URL_STYLE 'path'", f"USE_SSL {str(u.scheme == 'https').lower()}"]
    creds = None if storage.anon else _credentials()
    if creds:
        parts += [f"KEY_ID {sql_str(creds[0])}", f"SECRET {sql_str(creds[1])}"]
        if creds[2]:
            parts.append(f"SESSION_TOKEN {sql_str(creds[2])}")
    con.execute(f"CREATE SECRET trufor_s3 ({', '.join(parts)})")


def duck(storage: StorageConfig | None, roots: list[str], sandbox: bool = False,
         limits: QueryLimits | None = None) -> TimedConnection:
    """A DuckDB connection that reads the tables at ``roots`` with its own readers (httpfs for s3://),
    under ``limits`` (its statements are interrupted ``limits.timeout_s`` after it was opened).

    ``sandbox``: afterwards only files under ``roots`` can be read (DuckDB's allowed directories),
    external access is off and the configuration locked, so user SQL cannot read or write other
    files (read_csv, COPY ... TO, glob), ATTACH databases, or INSTALL/LOAD extensions, nor switch this
    back on.
    """
    limits = limits or QueryLimits()
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
              "extension_directory": extension_directory(), **limits.config()}
    con = TimedConnection(duckdb.connect(config=config), limits.timeout_s)
    try:
        if any(is_remote(r) for r in roots):
            con.execute("LOAD httpfs")
            _s3_secret(con, storage or StorageConfig())
        if sandbox:
            dirs = ", ".join(sql_str(r.rstrip("/") + "/") for r in roots)
            con.execute(f"SET allowed_directories = [{dirs}]")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
    except Exception:
        con.close()
        raise
    return con


class TimedConnection:
    """A DuckDB connection with a deadline: whatever statement runs ``timeout_s`` seconds after it was
    opened is interrupted (``duckdb.InterruptException``), so no caller can hang on it. Everything
    else is the connection's own; ``close`` also disarms the deadline."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float):
        self._con, self.timeout_s = con, timeout_s
        self._timer = threading.Timer(timeout_s, self._interrupt)
        self._timer.daemon = True
        self._timer.start()

    def _interrupt(self) -> None:
        try:
            self._con.interrupt()
        except duckdb.Error:  # already closed
            pass

    def close(self) -> None:
        self._timer.cancel()
        self._con.close()

    def __getattr__(self, name: str):
        return getattr(self._con, name)


_SPILL: list[str] = []


def spill_dir() -> str:
    """One temporary folder per process where DuckDB spills what does not fit its memory limit
    (DuckDB removes its files when a connection closes; the folder goes at exit)."""
    if not _SPILL:
        import atexit
        import shutil
        import tempfile

        _SPILL.append(tempfile.mkdtemp(prefix="trufor-duckdb-spill-"))
        atexit.register(shutil.rmtree, _SPILL[0], True)
    return _SPILL[0]


# -- reading the log, validated ---------------------------------------------------------------------

def check_layout(output: str, storage: StorageConfig) -> None:
    """Refuse an OUTPUT of the old layout (parts + ``_runs/*.json``) with the command that converts it."""
    fs, root = storage.filesystem(root_of(output))
    if fs.isdir(f"{root}/{LEGACY_RUNS_DIR}"):  # also a migration that was interrupted: run it again
        raise LegacyLayoutError(f"{output} holds results in the old layout (Parquet parts listed in "
                                f"{LEGACY_RUNS_DIR}/*.json): convert it once with `trufor-scan migrate {output}`")


def has_table(output: str, storage: StorageConfig, name: str = RESULTS_DIR, migrating: bool = False) -> bool:
    """Whether OUTPUT holds the table ``name`` (refusing the old layout, unless ``migrating`` it)."""
    if not migrating:
        check_layout(output, storage)
    fs, root = storage.filesystem(root_of(output))
    return fs.isdir(f"{root}/{name}/_delta_log")


def open_table(output: str, storage: StorageConfig, name: str = RESULTS_DIR, as_of=None):
    """The ``deltalake.DeltaTable`` ``name`` under OUTPUT, at its newest version or ``as_of`` (a version
    number or a datetime). Raises StoreError (one line) when it is absent or unreadable."""
    from deltalake import DeltaTable

    uri = table_uri(output, name)
    try:
        t = DeltaTable(uri, storage_options=delta_options(storage, uri))
        if as_of is not None:
            t.load_as_version(as_of)
    except Exception as e:  # noqa: BLE001 - delta-rs raises several types; one line with the cause
        raise StoreError(one_line(redact(f"cannot read the {name} table at {uri}: {type(e).__name__}: {e}"))) from None
    return t


def _inside(path: str) -> str | None:
    """``path`` (a log entry, URL-encoded) as a relative path inside the table, or None if it leaves it."""
    rel = urllib.parse.unquote(path)
    if (not rel or "://" in rel or rel.startswith(("/", "\\")) or ":" in rel.split("/", 1)[0] or "\x00" in rel
            or "\\" in rel or any(seg in ("", ".", "..") for seg in rel.split("/"))):
        return None
    return rel


def validated_files(table, uri: str) -> list[str]:
    """Every data file of ``table``'s snapshot as a full URI, each checked to lie inside ``uri``.

    Raises:
        StoreError: an entry of the log points outside the table (it is never opened).
    """
    actions = pa.table(table.get_add_actions(flatten=False))
    out = []
    for p in actions.column("path").to_pylist():
        rel = _inside(p)
        if rel is None:
            raise StoreError(one_line(f"the table log at {uri} lists a data file outside the table: {p!r} "
                                      "(refused, not opened: the log was edited or damaged)"))
        out.append(f"{uri}/{rel}")
    return out


@dataclass(frozen=True)
class Snapshot:
    """One version of a table: its data files (validated, full URIs) and its schema."""

    uri: str
    version: int
    files: tuple[str, ...]
    schema: pa.Schema


def snapshot(output: str, storage: StorageConfig, name: str = RESULTS_DIR, as_of=None,
             migrating: bool = False) -> Snapshot | None:
    """The files of table ``name`` (None when OUTPUT has no such table yet)."""
    if not has_table(output, storage, name, migrating):
        if as_of is not None:
            raise StoreError(f"no {name} table under {output}: nothing to read as of {as_of}")
        return None
    t = open_table(output, storage, name, as_of)
    uri = table_uri(output, name)
    return Snapshot(uri=uri, version=t.version(), files=tuple(validated_files(t, uri)),
                    schema=TABLE_SCHEMA if name == RESULTS_DIR else RUN_SCHEMA)


def parse_as_of(text: str | None):
    """``--as-of``: a table version (an integer) or an ISO 8601 time (UTC when no zone is given)."""
    if text is None or text == "":
        return None
    if text.strip().isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--as-of {text!r} is neither a table version (integer) nor a time (ISO 8601)") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def resolve_ref(output: str, ref: str) -> str:
    """A map reference from a row (relative to OUTPUT, under ``maps/``) as a full URI; anything else
    (absolute, ``..``, another bucket: an edited row) is refused with one line, never opened."""
    rel = _inside(ref) if isinstance(ref, str) else None
    if rel is None or not rel.startswith(MAPS_DIR + "/"):
        raise StoreError(one_line(f"map reference {ref!r} is not a path under {MAPS_DIR}/ inside OUTPUT (refused, not opened)"))
    return f"{root_of(output)}/{rel}"


# -- writing ----------------------------------------------------------------------------------------

def _commit(uri: str, table: pa.Table, storage: StorageConfig, app_id: str | None = None, seq: int | None = None,
            metadata: dict | None = None, sleep=time.sleep, merge_schema: bool = False) -> None:
    """Append ``table`` to the Delta table at ``uri`` as one transaction, exactly once.

    With ``app_id``/``seq`` the commit carries a Delta application transaction: before each retry the
    log is asked whether (app_id, seq) is already in, so a commit whose answer was lost is never
    written twice. Raises StoreError after COMMIT_TRIES failures.
    """
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    opts = delta_options(storage, uri)
    props = CommitProperties(custom_metadata={k: str(v) for k, v in (metadata or {}).items()},
                             app_transactions=[Transaction(app_id=app_id, version=seq)] if app_id else None)
    last: Exception | None = None
    for attempt in range(COMMIT_TRIES):
        if attempt and app_id:
            try:
                done = DeltaTable(uri, storage_options=opts).transaction_version(app_id)
                if done is not None and done >= seq:
                    return  # the earlier try went through; its answer was lost
            except Exception as e:  # noqa: BLE001 - still unreachable: try again below
                last = e
        try:
            write_deltalake(uri, table, mode="append", storage_options=opts, commit_properties=props,
                            schema_mode="merge" if merge_schema else None)
            return
        except Exception as e:  # noqa: BLE001 - retried, then one line
            last = e
            if any(m in str(e) for m in FINAL_ERRORS):  # trying again cannot help
                break
        sleep(COMMIT_BACKOFF_S * (attempt + 1))
    raise StoreError(one_line(redact(f"committing to {uri} failed after {attempt + 1} tries: "
                                     f"{type(last).__name__}: {last}")))


def record_run(output: str, storage: StorageConfig, run: RunRecord) -> None:
    """Append the run's current record to ``runs`` (its newest record is its state)."""
    run.updated_at = _now()
    # merge: a runs table written before a column was added (weights_untrained) takes it on first use.
    _commit(table_uri(output, RUNS_DIR), pa.Table.from_pylist([asdict(run)], schema=RUN_SCHEMA), storage,
            merge_schema=True)


def mark_abandoned(output: str, storage: StorageConfig, run_id: str, why: str) -> None:
    """Record as failed a run whose driver died while its record said ``running`` (lease taken over)."""
    for r in read_runs(output, storage):
        if r.run_id == run_id and r.state == STATE_RUNNING:
            r.state, r.error = STATE_FAILED, one_line(why)
            record_run(output, storage, r)


def runs_sql(records: str) -> str:
    """Each run's newest record from the table expression ``records`` (the run's state)."""
    return (f"SELECT * FROM {records} QUALIFY row_number() OVER "
            "(PARTITION BY run_id ORDER BY updated_at DESC, state <> 'running' DESC) = 1")


def read_runs(output: str, storage: StorageConfig | None = None, migrating: bool = False) -> list[RunRecord]:
    """Every run's newest record, oldest run first."""
    storage = storage or StorageConfig()
    snap = snapshot(output, storage, RUNS_DIR, migrating=migrating)
    if snap is None:
        return []
    con = duck(storage, [snap.uri])
    try:
        cur = con.execute(f"{runs_sql(parquet_sql(snap))} ORDER BY started_at, run_id")
        cols = [d[0] for d in cur.description]
        return [RunRecord(**{c: v for c, v in zip(cols, r) if c in RunRecord.__dataclass_fields__})
                for r in cur.fetchall()]
    finally:
        con.close()


def sql_str(s: str) -> str:
    """A string literal for SQL text that takes no bound parameter (DDL, table functions in views)."""
    return "'" + s.replace("'", "''") + "'"


def parquet_sql(snap: Snapshot) -> str:
    """A DuckDB table expression over a snapshot's validated files (typed and empty when it has none)."""
    cols = ", ".join(f"NULL::{_duck_type(f.type)} AS \"{f.name}\"" for f in snap.schema)
    if not snap.files:
        return f"(SELECT {cols} LIMIT 0)"
    files = ", ".join(sql_str(f) for f in snap.files)
    # BY NAME after the typed empty select: every column of the schema is there (NULL in files written
    # before it existed, e.g. mantranet_score), so SQL may name it whatever the table's age.
    return f"(SELECT {cols} WHERE false UNION ALL BY NAME SELECT * FROM read_parquet([{files}], union_by_name = true))"


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    return {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}[t]


class ResultWriter:
    """Buffers result rows and commits them to ``results`` every ``rows_per_part`` rows or
    ``commit_every_s`` seconds, whichever comes first; a killed run loses at most the rows of the
    last interval. Each commit is one Delta transaction (``_commit``)."""

    def __init__(self, output: str, run: RunRecord, scan_date: str, storage: StorageConfig,
                 rows_per_part: int, commit_every_s: float, resolver=None, lease=None):
        if rows_per_part < 1 or commit_every_s <= 0:
            raise ValueError(f"rows_per_part must be >= 1 and commit_every_s > 0, got {rows_per_part}, {commit_every_s}")
        self.output, self.storage, self.run = root_of(output), storage, run
        self.rows_per_part, self.commit_every_s, self.scan_date = rows_per_part, commit_every_s, scan_date
        check_layout(self.output, storage)
        if has_table(self.output, storage, RUNS_DIR) and any(r.run_id == run.run_id for r in read_runs(self.output, storage)):
            raise ValueError(f"run id {run.run_id!r} already exists in {self.output}/{RUNS_DIR}: choose another "
                             f"--run-id (or none: one is made from the time)")
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.last_commit = time.monotonic()
        self.resolver = resolver  # a dedup.DedupResolver: copies completed just before each commit
        self.lease = lease  # a pipeline.base.lease.Lease: checked before every commit (never write without it)
        record_run(self.output, storage, run)

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
        """Append the buffered rows to ``results`` as one transaction."""
        self.last_commit = time.monotonic()
        if self.resolver is not None and (done := self.resolver.release(self.pending)) is not None:
            self.pending.append(done)
            self.pending_rows += done.num_rows
        if not self.pending_rows:
            return
        if self.lease is not None:
            self.lease.check()
        table = pa.concat_tables(self.pending)
        table = table.append_column(pa.field(SCAN_DATE, pa.string()), pa.array([self.scan_date] * table.num_rows,
                                                                                 pa.string()))
        _commit(table_uri(self.output, RESULTS_DIR), table, self.storage, app_id=self.run.run_id,
                seq=self.run.commits, metadata={"trufor_scan.run_id": self.run.run_id,
                                                "trufor_scan.commit": self.run.commits},
                merge_schema=True)  # a table written before a column was added (mantranet_*) takes it
        status = table.column("status").to_pylist()
        r = self.run
        r.rows += table.num_rows
        r.ok += status.count(STATUS_OK)
        r.errors += status.count(STATUS_ERROR)
        r.skipped += status.count(STATUS_SKIPPED)
        r.dedup += table.num_rows - table.column("dedup_of").null_count
        r.commits += 1
        self.pending, self.pending_rows = [], 0

    def committed_uris(self) -> pa.Table:
        """(uri) of every row this run has committed, from the table itself."""
        snap = snapshot(self.output, self.storage)
        if snap is None:
            return pa.table({"uri": pa.array([], pa.string())})
        con = duck(self.storage, [snap.uri])
        try:
            return con.execute(f"SELECT DISTINCT uri FROM {parquet_sql(snap)} WHERE run_id = ?",
                               [self.run.run_id]).fetch_arrow_table()
        finally:
            con.close()

    def close(self, state: str, error: str | None = None) -> None:
        """Commit what is left and record how the run ended."""
        self.commit()
        if self.resolver is not None and (lost := self.resolver.give_up()) is not None:
            self.pending.append(lost)
            self.pending_rows += lost.num_rows
            self.commit()
        self.finish(state, error)

    def finish(self, state: str, error: str | None = None) -> None:
        """Record the run's end (nothing more is committed)."""
        self.run.state, self.run.error = state, error
        if has_table(self.output, self.storage):
            self.run.results_version = open_table(self.output, self.storage).version()
        record_run(self.output, self.storage, self.run)


# -- housekeeping -----------------------------------------------------------------------------------

# Files a compaction or a newer commit replaced stay this long (time travel and readers that
# started before it keep working); `--retain` may not go lower.
MIN_RETAIN_DAYS = 7.0


@dataclass(frozen=True)
class CompactConfig(StorageOptions):
    """Settings of one `compact`; the command line is derived from these fields."""

    output: str = field(metadata=opt("the scan's --output (local directory or s3:// prefix)", positional=True))
    vacuum: bool = field(default=False, metadata=opt(
        "also delete files no version younger than --retain needs (replaced by compaction, never committed)"))
    retain: float = field(default=MIN_RETAIN_DAYS, metadata=opt(
        f"days that replaced files are kept for time travel (at least {MIN_RETAIN_DAYS:g})"))
    target_mb: int = field(default=256, metadata=opt("size of a compacted file"))

    def __post_init__(self):
        if not self.retain >= MIN_RETAIN_DAYS:
            raise ValueError(f"--retain {self.retain:g} days is below the safe minimum of {MIN_RETAIN_DAYS:g} days "
                             "(readers and --as-of still need those files)")
        if self.target_mb < 1:
            raise ValueError(f"--target-mb must be >= 1, got {self.target_mb}")


def compact(cfg: CompactConfig, min_retain_days: float = MIN_RETAIN_DAYS) -> dict:
    """Delta optimize (many small files into few) of both tables, then optionally vacuum.

    Runs beside a sweep and beside queries: the compaction is one more Delta transaction (a sweep's
    appends commute with it), and readers keep the files they planned with until the vacuum, which
    keeps every file a version younger than the retention needs. ``min_retain_days`` exists for
    tests only. Returns per table: files before/after, files compacted, files deleted.
    """
    from deltalake import CommitProperties

    if cfg.retain < min_retain_days:
        raise ValueError(f"retain {cfg.retain} days is below the minimum {min_retain_days}")
    storage, out = cfg.storage(), {}
    for name in (RESULTS_DIR, RUNS_DIR):
        if not has_table(cfg.output, storage, name):
            continue
        uri = table_uri(cfg.output, name)
        t = open_table(cfg.output, storage, name)
        before = len(validated_files(t, uri))  # a tampered log is refused before anything is rewritten
        try:
            m = t.optimize.compact(target_size=cfg.target_mb * 2**20, commit_properties=CommitProperties(
                custom_metadata={"trufor_scan.operation": "compact"}))
            deleted = t.vacuum(retention_hours=int(round(cfg.retain * 24)), dry_run=False,
                               enforce_retention_duration=False) if cfg.vacuum else []
        except Exception as e:  # noqa: BLE001 - delta-rs raises several types; one line with the cause
            raise StoreError(one_line(redact(f"compacting {uri} failed: {type(e).__name__}: {e}"))) from None
        t = open_table(cfg.output, storage, name)
        out[name] = {"version": t.version(), "files_before": before, "files_after": len(validated_files(t, uri)),
                     "compacted": m.get("numFilesRemoved", 0), "written": m.get("numFilesAdded", 0),
                     "deleted": len(deleted)}
    if not out:
        raise FileNotFoundError(f"no results table under {cfg.output!r}")
    return out
