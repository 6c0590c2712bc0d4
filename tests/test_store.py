"""The results store (fast tier, no Ray): the Delta table read back, tampered with, queried under
limits, time-travelled, compacted beside writers, migrated from the old layout; the write lease."""
from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from pipeline.base.lease import Lease, LeaseBusy, LeaseLost
from pipeline.base.schema import ScanRow, rows_to_table
from pipeline.base.sql import QueryError, QueryTimeout, run_sql
from pipeline.base.storage import StorageConfig
from pipeline.base.store import (CompactConfig, QueryLimits, ResultWriter, RunRecord, StoreError, compact, open_table,
                                 read_runs, resolve_ref)
from pipeline.results.query import top

ST = StorageConfig()


def _rows(n: int, run: str, start: int = 0, score: float = 0.5, t0=None) -> pa.Table:
    t0 = t0 or dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    return rows_to_table([ScanRow(uri=f"/a/u{i:05d}.jpg", status="ok", score=score, run_id=run, weights_sha256="w",
                                  map_uri=f"maps/ab/{i:064x}.npz", scanned_at=t0 + dt.timedelta(seconds=i))
                          for i in range(start, start + n)])


def _write(out, run: str, tables: list[pa.Table], state: str = "complete") -> ResultWriter:
    w = ResultWriter(str(out), RunRecord(run_id=run, command="test", input="-", code_version="t"), "2026-11-01", ST,
                     rows_per_part=10**9, commit_every_s=3600)
    for t in tables:
        w.add(t)
        w.commit()
    w.close(state)
    return w


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def _tamper_log(out: Path, path: str) -> None:
    """Append a commit to the results log that adds ``path`` (what an edited log looks like)."""
    log = out / "results" / "_delta_log"
    n = max(int(p.stem) for p in log.glob("*.json")) + 1
    add = {"add": {"path": path, "partitionValues": {}, "size": 100, "modificationTime": 0, "dataChange": True}}
    (log / f"{n:020d}.json").write_text(json.dumps(add) + "\n")


@pytest.mark.parametrize("entry", ["../elsewhere/x.parquet", "/etc/passwd", "s3://other-bucket/x.parquet",
                                   "a/../../x.parquet", "%2E%2E/x.parquet"])
def test_a_log_entry_outside_the_table_is_refused_not_opened(tmp_path, entry):
    out = tmp_path / "out"
    _write(out, "r1", [_rows(3, "r1")])
    (tmp_path / "elsewhere").mkdir()
    pq.write_table(_rows(2, "evil"), tmp_path / "elsewhere" / "x.parquet")
    _tamper_log(out, entry)
    with pytest.raises(StoreError, match="lists a data file outside the table") as e:
        run_sql(str(out), "SELECT count(*) FROM results")
    assert entry in str(e.value) and "\n" not in str(e.value)
    p = _cli("query", str(out), "SELECT count(*) FROM results")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "outside the table" in p.stderr, p.stderr
    with pytest.raises(StoreError, match="outside the table"):
        compact(CompactConfig(output=str(out)))


def test_a_fifo_named_by_the_log_never_hangs(tmp_path):
    out = tmp_path / "out"
    _write(out, "r1", [_rows(3, "r1")])
    os.mkfifo(tmp_path / "fifo.parquet")
    _tamper_log(out, str(tmp_path / "fifo.parquet"))
    t0 = time.monotonic()
    with pytest.raises(StoreError):
        run_sql(str(out), "SELECT count(*) FROM results")
    assert time.monotonic() - t0 < 10


def test_map_references_are_relative_and_resolved_inside_output(tmp_path):
    assert resolve_ref(str(tmp_path), "maps/ab/x.npz") == f"{tmp_path}/maps/ab/x.npz"
    for bad in ("/etc/passwd", "../maps/ab/x.npz", "maps/../../x", "s3://b/maps/x.npz", "results/x.parquet", None):
        with pytest.raises(StoreError, match="refused, not opened"):
            resolve_ref(str(tmp_path), bad)


def test_sandbox_sees_only_the_table(tmp_path):
    out = tmp_path / "out"
    _write(out, "r1", [_rows(3, "r1")])
    (tmp_path / "secret.csv").write_text("a\n1\n")
    for sql in (f"SELECT * FROM read_csv('{tmp_path}/secret.csv')", "SELECT * FROM read_text('/etc/passwd')",
                f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", f"ATTACH '{tmp_path}/x.duckdb' AS x", "INSTALL httpfs",
                f"COPY (SELECT 1 AS a) TO '{next((out / 'results').glob('*.parquet'))}' (FORMAT parquet)",
                f"ATTACH '{out}/results/x.duckdb' AS y", "SELECT 1; SELECT 2", "CALL pragma_version()",
                "SET enable_external_access = true", "SET allowed_directories = ['/']",
                f"SELECT * FROM glob('{tmp_path}/*')"):
        with pytest.raises(QueryError):
            run_sql(str(out), sql)
    assert not (tmp_path / "x.csv").exists() and not (out / "results" / "x.duckdb").exists()
    assert run_sql(str(out), "SELECT count(*) FROM results")[1] == [(3,)]  # its files untouched
    assert run_sql(str(out), "SELECT run_id, state, ok, commits FROM runs")[1] == [("r1", "complete", 3, 1)]
    # Its own table it may read any way it likes.
    assert run_sql(str(out), f"SELECT count(*) FROM read_parquet('{out}/results/*.parquet')")[1] == [(3,)]


def test_query_time_and_memory_limits(tmp_path):
    """The cross join of the issue (1e11 x 1e11 rows; DuckDB 1.4 wants BIGINT bounds): interrupted by --timeout in seconds, exit 2, one line."""
    out = tmp_path / "out"
    _write(out, "r1", [_rows(3, "r1")])
    t0 = time.monotonic()
    with pytest.raises(QueryTimeout, match="time limit of 1 s"):
        run_sql(str(out), "SELECT count(*) FROM range(1e11::BIGINT) a, range(1e11::BIGINT) b",
                limits=QueryLimits(timeout_s=1, threads=1))
    assert time.monotonic() - t0 < 15
    p = _cli("query", str(out), "select count(*) from range(1e11::BIGINT) a, range(1e11::BIGINT) b", "--timeout", "2")
    assert p.returncode == 2 and p.stderr.startswith("trufor-scan: error: SQL interrupted") and p.stderr.count("\n") == 1
    # Memory: a statement that needs more than the limit spills, then fails with one line (never the machine).
    with pytest.raises(QueryError, match="SQL failed: .*(memory|Memory)"):
        run_sql(str(out), "SELECT list(i) FROM range(50000000) t(i)",
                limits=QueryLimits(timeout_s=60, memory_limit="64MB", threads=1))
    p = _cli("query", str(out), "SELECT count(*) FROM results", "--memory-limit", "200MB", "--threads", "1")
    assert p.returncode == 0 and "3" in p.stdout


def test_time_travel_by_version_and_time(tmp_path):
    out = tmp_path / "out"
    w = ResultWriter(str(out), RunRecord(run_id="r1", command="t", input="-", code_version="t"), "2026-11-01", ST,
                     rows_per_part=10**9, commit_every_s=3600)
    w.add(_rows(2, "r1"))
    w.commit()
    v1, t1 = open_table(str(out), ST).version(), dt.datetime.now(dt.timezone.utc)
    time.sleep(1.1)
    w.add(_rows(5, "r1", start=2, score=0.9))
    w.close("complete")
    assert run_sql(str(out), "SELECT count(*) FROM latest")[1] == [(7,)]
    assert run_sql(str(out), "SELECT count(*) FROM latest", as_of=str(v1))[1] == [(2,)]
    assert run_sql(str(out), "SELECT count(*) FROM latest", as_of=t1.isoformat())[1] == [(2,)]
    assert len(top(str(out), k=10, min_score=0.8, as_of=str(v1))[1]) == 0
    p = _cli("top", str(out), "--as-of", str(v1), "--min-score", "0", "--format", "csv")
    assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 3, p.stderr  # header + the 2 rows then
    with pytest.raises(ValueError, match="neither a table version"):
        run_sql(str(out), "SELECT 1", as_of="yesterday")


def test_plain_tools_read_the_table(tmp_path):
    """deltalake reads the table as it is, with no project code (its own SQL engine, as the README shows)."""
    out = tmp_path / "out"
    _write(out, "r1", [_rows(3, "r1"), _rows(2, "r1", start=3)])
    code = ("import sys, deltalake; t = deltalake.DeltaTable(sys.argv[1] + '/results'); "
            "r = deltalake.QueryBuilder().register('results', t).execute('SELECT count(*) AS n FROM results').read_all(); "
            "print(r.to_pylist()[0]['n'] if hasattr(r, 'to_pylist') else __import__('pyarrow').table(r).to_pylist()[0]['n'], "
            "t.version())")
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60, cwd="/")
    assert p.returncode == 0 and p.stdout.split()[0] == "5", p.stderr


def test_300_queries_and_100_plans_in_one_process_never_hang(tmp_path):
    """The old pyarrow-dataset bridge hung after 12-97 queries in one process; DuckDB's own reader
    must not. A deadline fails this test (never the suite)."""
    from pipeline.scan.plan import plan_run

    out, arc = tmp_path / "out", tmp_path / "arc"
    arc.mkdir()
    for i in range(20):
        (arc / f"u{i}.jpg").write_bytes(b"x")
    _write(out, "r1", [_rows(50, "r1") for _ in range(1)])
    _write(out, "r2", [_rows(50, "r2", start=50)])
    done, errors = [0, 0], []

    def work():
        try:
            for i in range(300):
                run_sql(str(out), "SELECT count(*), max(score) FROM latest WHERE score >= ?", [0.1])
                done[0] += 1
            for i in range(100):
                work_dir = tmp_path / f"plan{i % 2}"
                work_dir.mkdir(exist_ok=True)
                p = plan_run(str(arc), str(out), ST, str(work_dir), incremental=True, rescore=False, max_bytes=None,
                             scoring=("w", None, None, None))
                assert p.listed == 20
                done[1] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout=240)
    assert not t.is_alive(), f"hung after {done[0]} queries and {done[1]} plans"
    assert not errors and done == [300, 100], errors


def test_compaction_beside_a_writer_and_readers_then_vacuum(tmp_path):
    """Compaction commits while another process appends and this one queries: no row lost or doubled,
    older versions still readable until the vacuum (which deletes only what no version needs)."""
    out = tmp_path / "out"
    _write(out, "seed", [_rows(10, "seed", start=i * 10) for i in range(12)])  # 12 small files
    v_before = open_table(str(out), ST).version()
    code = (
        "import sys, datetime as dt\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_store import _rows\n"
        "from pipeline.base.store import ResultWriter, RunRecord\n"
        "from pipeline.base.storage import StorageConfig\n"
        "w = ResultWriter(sys.argv[1], RunRecord(run_id='writer', command='t', input='-', code_version='t'),"
        " '2026-11-02', StorageConfig(), rows_per_part=10**9, commit_every_s=3600)\n"
        "for i in range(15):\n"
        "    w.add(_rows(7, 'writer', start=1000 + i * 7)); w.commit()\n"
        "w.close('complete')\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(out), str(REPO / "tests")], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    counts = []
    try:
        res = compact(CompactConfig(output=str(out)))
        for _ in range(10):
            counts.append(run_sql(str(out), "SELECT count(*), count(DISTINCT (uri, run_id)) FROM results")[1][0])
    finally:
        assert writer.wait(timeout=120) == 0, writer.stdout.read().decode()[-2000:]
    assert res["results"]["compacted"] >= 12 and res["results"]["files_after"] < res["results"]["files_before"]
    assert all(n == d for n, d in counts)  # never a row twice, whatever moment a query saw
    assert run_sql(str(out), "SELECT count(*), count(DISTINCT (uri, run_id)) FROM results")[1] == [(225, 225)]
    assert run_sql(str(out), "SELECT count(*) FROM results", as_of=str(v_before))[1] == [(120,)]  # still there
    with pytest.raises(ValueError, match="below the safe minimum"):
        CompactConfig(output=str(out), vacuum=True, retain=1)
    kept = compact(CompactConfig(output=str(out), vacuum=True))  # 7 days: the replaced files stay
    assert kept["results"]["deleted"] == 0
    cfg = CompactConfig(output=str(out), vacuum=True)
    object.__setattr__(cfg, "retain", 0.0)  # tests only: what the vacuum deletes once the retention has passed
    gone = compact(cfg, min_retain_days=0)
    assert gone["results"]["deleted"] >= 12
    assert run_sql(str(out), "SELECT count(*) FROM results")[1] == [(225,)]
    p = _cli("compact", str(out))
    assert p.returncode == 0 and "files ->" in p.stderr, p.stderr


# -- the lease ------------------------------------------------------------------------------------------

def _race(root: str, storage: StorageConfig, n: int = 6) -> list[bool]:
    barrier, got = threading.Barrier(n), []

    def one(i):
        lease = Lease(root, storage, f"run{i}", ttl_s=30)
        barrier.wait()
        ok = lease.try_acquire()
        got.append(ok)
        if ok:
            time.sleep(0.5)
            lease.release()

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    [t.start() for t in ts]
    [t.join(timeout=60) for t in ts]
    return got


def _lease_cases(root: str, storage: StorageConfig) -> None:
    assert sorted(_race(root, storage)) == [False] * 5 + [True]  # exactly one of six racing runs
    a = Lease(root, storage, "holder", ttl_s=30).acquire()
    with pytest.raises(LeaseBusy, match=r"run holder on .* last heartbeat \d+ s ago") as e:
        Lease(root, storage, "second", ttl_s=30).acquire(wait_s=0.3, poll_s=0.1)
    assert "\n" not in str(e.value)
    a.release()
    b = Lease(root, storage, "after", ttl_s=30).acquire()  # released: taken at once
    assert b.took_over is None
    # A holder that died (no release, no heartbeat): the next run takes over after the expiry.
    b._stop.set()
    b._thread.join()
    b.record.ttl_s = 1.0
    b.backend.overwrite(f"{b.record.generation:012d}.json", json.dumps(b.record.__dict__).encode())
    time.sleep(1.2)
    c = Lease(root, storage, "next", ttl_s=30).acquire(wait_s=5, poll_s=0.1)
    assert c.took_over is not None and c.took_over.run_id == "after"
    with pytest.raises(LeaseLost, match="lost the write lease to run next"):
        b.check()  # the dead holder, were it to wake, stops at its next commit
    c.release()


def test_lease_local(tmp_path):
    _lease_cases(str(tmp_path / "out"), ST)


def test_lease_on_s3(moto_endpoint, monkeypatch):
    import s3fs

    from conftest import S3_KEY, S3_SECRET

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=moto_endpoint).mkdir("lease-bucket")
    _lease_cases("s3://lease-bucket/out", StorageConfig(endpoint_url=moto_endpoint))


def test_the_store_on_s3_reads_natively_and_refuses_tampering(moto_endpoint, monkeypatch):
    """Commits on the moto S3 endpoint (conditional puts), 6 concurrent writers, read back by DuckDB's httpfs."""
    import s3fs

    from conftest import S3_KEY, S3_SECRET

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=moto_endpoint)
    fs.mkdir("store-bucket")
    st, out = StorageConfig(endpoint_url=moto_endpoint), "s3://store-bucket/out"
    errors = []

    def writer(i):
        try:
            w = ResultWriter(out, RunRecord(run_id=f"w{i}", command="t", input="-", code_version="t"), "2026-11-01",
                             st, rows_per_part=10**9, commit_every_s=3600)
            for k in range(3):
                w.add(_rows(4, f"w{i}", start=i * 100 + k * 4))
                w.commit()
            w.close("complete")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    [t.start() for t in ts]
    [t.join(timeout=120) for t in ts]
    assert not errors, errors
    assert run_sql(out, "SELECT count(*), count(DISTINCT (uri, run_id)) FROM results", storage=st)[1] == [(72, 72)]
    assert len(read_runs(out, st)) == 6 and {r.state for r in read_runs(out, st)} == {"complete"}
    log = sorted(fs.ls("store-bucket/out/results/_delta_log"))
    n = max(int(p.rsplit("/", 1)[-1][:20]) for p in log if p.endswith(".json")) + 1
    fs.pipe_file(f"store-bucket/out/results/_delta_log/{n:020d}.json", json.dumps(
        {"add": {"path": "s3://another-bucket/x.parquet", "partitionValues": {}, "size": 1, "modificationTime": 0,
                 "dataChange": True}}).encode())
    with pytest.raises(StoreError, match="another-bucket"):
        run_sql(out, "SELECT count(*) FROM results", storage=st)
    assert S3_SECRET not in json.dumps([r.__dict__ for r in read_runs(out, st)], default=str)


# -- migration --------------------------------------------------------------------------------------

def _legacy(out: Path, runs: dict[str, list[pa.Table]]) -> int:
    """An OUTPUT in the layout before the Delta table: parts + _runs/<run_id>.json (as that code wrote them)."""
    (out / "_runs").mkdir(parents=True)
    total = 0
    for run_id, tables in runs.items():
        parts = []
        for k, t in enumerate(tables):
            rel = f"results/scan_date=2026-11-0{k + 1}/part-{run_id}-{k:05d}.parquet"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            t = t.set_column(t.schema.get_field_index("map_uri"), "map_uri",
                             pa.array([f"/old/place/out/maps/ab/{i}.npz" for i in range(t.num_rows)]))
            pq.write_table(t, out / rel)
            parts.append({"path": rel, "rows": t.num_rows})
            total += t.num_rows
        (out / "_runs" / f"{run_id}.json").write_text(json.dumps({
            "run_id": run_id, "command": "sweep", "input": "/in", "code_version": "0.1.0", "weights_sha256": "w",
            "noiseprint_sha256": None, "state": "complete", "started_at": "2026-11-01T00:00:00+00:00",
            "updated_at": "2026-11-01T00:00:00+00:00", "error": None,
            "counts": {"listed": 9, "to_scan": 9, "rows": sum(p["rows"] for p in parts), "ok": 9, "error": 0,
                       "skipped": 0, "dedup": 0}, "parts": parts, "version": 1}))
    return total


def test_migrate_the_old_layout_keeps_every_row(tmp_path):
    out = tmp_path / "old"
    n = _legacy(out, {"a": [_rows(4, "a"), _rows(3, "a", start=4)], "b": [_rows(5, "b", start=20)]})
    p = _cli("query", str(out), "SELECT count(*) FROM results")
    assert p.returncode == 2 and f"trufor-scan migrate {out}" in p.stderr and p.stderr.count("\n") == 1
    p = _cli("migrate", str(out))
    assert p.returncode == 0 and f"{n} committed rows before, {n} rows in" in p.stderr, p.stderr
    assert run_sql(str(out), "SELECT count(*) FROM results")[1] == [(n,)]
    assert run_sql(str(out), "SELECT DISTINCT map_uri LIKE 'maps/ab/%' FROM results")[1] == [(True,)]
    assert run_sql(str(out), "SELECT scan_date, count(*) FROM results GROUP BY 1 ORDER BY 1")[1] == [
        ("2026-11-01", 9), ("2026-11-02", 3)]
    assert [r.run_id for r in read_runs(str(out))] == ["a", "b"] and (out / "_runs.migrated" / "a.json").is_file()
    assert _cli("migrate", str(out)).returncode == 2  # nothing left to migrate, said in one line


def test_migrate_refuses_a_manifest_naming_a_file_outside(tmp_path):
    out = tmp_path / "old"
    _legacy(out, {"a": [_rows(2, "a")]})
    m = json.loads((out / "_runs" / "a.json").read_text())
    m["parts"].append({"path": "../../../../../etc/passwd", "rows": 1})
    (out / "_runs" / "a.json").write_text(json.dumps(m))
    p = _cli("migrate", str(out))
    assert p.returncode == 2 and "outside results/" in p.stderr and "/etc/passwd" in p.stderr
    assert not (out / "results" / "_delta_log").exists()


def test_migrate_twice_after_an_interruption_copies_nothing_twice(tmp_path):
    """A migration killed after some runs were committed: the next one skips those (application
    transactions), and the count still matches."""
    from pipeline.base import migrate as mig

    out = tmp_path / "old"
    n = _legacy(out, {"a": [_rows(4, "a")], "b": [_rows(5, "b", start=20)]})
    class Stop(Exception):
        pass

    calls = []
    orig_record = mig.record_run

    def record_then_die(*a, **kw):  # dies after the first run's rows and record are in
        orig_record(*a, **kw)
        calls.append(1)
        raise Stop()

    mig.record_run = record_then_die
    try:
        with pytest.raises(Stop):
            mig.migrate(str(out), ST)
    finally:
        mig.record_run = orig_record
    assert calls == [1] and (out / "_runs").is_dir()
    res = mig.migrate(str(out), ST)
    assert res.already == 1 and res.rows_before == res.rows_after == n


# -- generated scripts ------------------------------------------------------------------------------

def test_reproduce_sh_quotes_every_value_from_the_row(tmp_path):
    """Shell metacharacters planted in every row field the script uses never run."""
    from pipeline.review.evidence import _reproduce_sh

    marker = tmp_path / "PWNED"
    evil = f'0"; touch {marker}; echo "0\'$(touch {marker})`touch {marker}`'
    row = {"sha256": evil, "weights_sha256": evil, "noiseprint_sha256": evil, "precision": evil, "score": 0.5,
           "code_version": f"1.0\ntouch {marker}\n# {evil}"}  # it also stands in a comment line
    script = tmp_path / "reproduce.sh"
    script.write_text(_reproduce_sh(row, "original.jpg"))
    (tmp_path / "original.jpg").write_bytes(b"x")
    for env in ({}, {"TRUFOR_WEIGHTS": str(tmp_path / "original.jpg"), "TRUFOR_NOISEPRINT": str(tmp_path / "original.jpg")}):
        p = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30,
                           env={**os.environ, **env})
        assert p.returncode != 0 and not marker.exists(), p.stderr
    assert shlex.quote(evil) in script.read_text()


def test_an_unreachable_store_is_one_line_never_a_traceback(tmp_path):
    """OUTPUT on an S3 endpoint where nothing listens: one line, exit 1 (the job could not run), no traceback."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    p = subprocess.run([sys.executable, "-m", "jobs.cli", "query", "s3://nothing-here/out", "SELECT 1",
                        "--s3-endpoint", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env=env)
    assert p.returncode == 1 and p.stderr.startswith("trufor-scan: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr and "Could not connect" in p.stderr


def test_every_store_connection_has_a_deadline(tmp_path):
    """Not only `query`: the connections report, show, export, duplicates, calibrate and the sweep's
    dedup open are interrupted past their deadline too (a statement that would run for hours)."""
    import duckdb

    from pipeline.base.sql import connect

    out = tmp_path / "out"
    _write(out, "r1", [_rows(3, "r1")])
    con = connect(str(out), limits=QueryLimits(timeout_s=1, threads=1))
    t0 = time.monotonic()
    try:
        with pytest.raises(duckdb.InterruptException):
            con.execute("SELECT count(*) FROM range(1e11::BIGINT) a, range(1e11::BIGINT) b").fetchall()
    finally:
        con.close()
    assert time.monotonic() - t0 < 15


def test_a_runs_table_from_before_a_new_column_takes_it(tmp_path):
    """A runs table written before `weights_untrained` existed: the next record adds the column (schema
    merge), the old records read back with NULL there, and SQL sees both."""
    from deltalake import write_deltalake

    from pipeline.base.store import RUN_SCHEMA, RUNS_DIR, read_runs, record_run, table_uri

    out = str(tmp_path / "out")
    old_schema = pa.schema([f for f in RUN_SCHEMA if f.name != "weights_untrained"])
    old = RunRecord(run_id="old", command="sweep", input="in", code_version="v0", state="complete")
    row = {k: v for k, v in old.__dict__.items() if k != "weights_untrained"}
    write_deltalake(table_uri(out, RUNS_DIR), pa.Table.from_pylist([row], schema=old_schema), mode="append")
    writer = ResultWriter(out, RunRecord(run_id="new", command="sweep", input="in", code_version="v1",
                                         weights_untrained=True), "2026-12-05", StorageConfig(), 10, 60.0)
    writer.add(rows_to_table([ScanRow(uri="a", status="ok", run_id="new")]))
    record_run(out, StorageConfig(), writer.run)
    writer.close("complete")
    runs = {r.run_id: r for r in read_runs(out)}
    assert runs["old"].weights_untrained is None and runs["new"].weights_untrained is True
    assert run_sql(out, "SELECT run_id, weights_untrained FROM runs ORDER BY run_id")[1] == [("new", True),
                                                                                                ("old", None)]
