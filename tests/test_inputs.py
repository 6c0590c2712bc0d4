"""Fast tier: every kind of hostile input gets its one row, durable output, options declared once.

No Ray, no model: the listing, the reading side of the decode stage, the writer and the readers.
"""
from __future__ import annotations

import hashlib
import io
import os
import resource
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.base.listing import iter_listing
from pipeline.base.reading import ReadError, read_input
from pipeline.base.schema import ERROR_INPUT, ERROR_TRANSIENT, ScanRow, rows_to_table
from pipeline.base.sql import run_sql
from pipeline.base.storage import StorageConfig, local_path, local_uri
from pipeline.base.store import ResultWriter, RunRecord, open_table, read_runs
from pipeline.scan.decode import load_one

ST = StorageConfig()
MB = 2**20


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def hostile_tree(tmp_path):
    """Every kind of entry a crawl can contain (the issue's probes), built for real."""
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "good.png").write_bytes(_png())
    (d / "notes.txt").write_text("not an image")
    os.mkfifo(d / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.png"))
    os.symlink("/dev/null", d / "dev.jpg")  # a character device behind an image name
    os.symlink("self.jpg", d / "self.jpg")  # resolves to itself: ELOOP
    os.symlink("..", d / "sub" / "up")  # a directory loop
    os.symlink("sub", d / "alias")  # the same directory by a second name
    os.symlink("nowhere.jpg", d / "gone.jpg")
    with open(os.fsencode(str(d)) + b"/caf\xe9.png", "wb") as f:  # Latin-1 bytes: not UTF-8
        f.write(_png(1))
    with open(d / "huge.jpg", "wb") as f:  # 3 GB, sparse: costs nothing on disk
        f.truncate(3 * 2**30)
    (d / "sub" / "inner.png").write_bytes(_png(2))
    yield d
    sock.close()


def test_listing_gives_every_entry_one_reasoned_row(hostile_tree):
    d = hostile_tree
    files = {os.path.basename(os.fsdecode(local_path(f.uri))): f for f in iter_listing(str(d), ST, max_bytes=200 * MB)}
    assert sorted(files) == sorted(["good.png", "notes.txt", "pipe.jpg", "sock.png", "dev.jpg", "self.jpg", "up",
                                    "alias", "gone.jpg", "caf\udce9.png", "huge.jpg", "inner.png"])
    err = {k: (f.error, f.error_kind) for k, f in files.items() if f.error}
    assert err["pipe.jpg"] == ("not a regular file: a named pipe (FIFO); never opened", ERROR_INPUT)
    assert err["sock.png"][0] == "not a regular file: a socket; never opened"
    assert err["dev.jpg"][0] == "not a regular file: a character device; never opened"
    assert err["self.jpg"][0].startswith("symlink loop")
    assert err["up"][0] == f"symlink loop: points back to its ancestor directory {d}"
    assert err["gone.jpg"][0].startswith("broken symlink")
    assert err["huge.jpg"][0] == f"file of {3 * 2**30} bytes is over --max-bytes {200 * MB}: refused before reading"
    assert files["alias"].skip_reason.startswith("skipped: a link to a directory already listed")
    assert files["notes.txt"].skip_reason.startswith("skipped: .txt")
    assert not (files["good.png"].error or files["inner.png"].error or files["caf\udce9.png"].error)
    # The listing of a directory one can reach through `..` spellings is the canonical absolute one.
    again = [f.uri for f in iter_listing(f"{d}/sub/../", ST)]
    assert again == [f.uri for f in iter_listing(str(d), ST)] and f"{d}/good.png" in again


def test_non_utf8_name_round_trips_to_its_file(hostile_tree):
    raw = os.fsencode(str(hostile_tree)) + b"/caf\xe9.png"
    uri = local_uri(raw)
    assert uri.startswith("file://") and uri.endswith("/caf%E9.png") and local_path(uri) == raw
    pa.array([uri])  # valid UTF-8: an Arrow string (a surrogate-escaped str is not)
    row = load_one(uri, None, None, None, ST, 10**8, 29, max_bytes=MB, read_timeout_s=10)
    assert row["status"] == "ok" and row["sha256"] == hashlib.sha256(_png(1)).hexdigest()
    assert local_uri(os.fsencode(str(hostile_tree)) + b"/good.png") == f"{hostile_tree}/good.png"  # plain when UTF-8


def test_reading_side_refuses_by_kind_and_size_without_reading(hostile_tree):
    """Manifest entries are not stat'ed by the listing: the decode stage checks kind and size first."""
    d = hostile_tree
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = {n: load_one(str(d / n), None, None, None, ST, 10**8, 29, max_bytes=200 * MB, read_timeout_s=5)
            for n in ("huge.jpg", "pipe.jpg", "dev.jpg", "sock.png")}
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mb < 50, f"peak RSS grew by {grown_mb:.0f} MB: the 3 GB file was read"
    assert rows["huge.jpg"]["error"] == f"file of {3 * 2**30} bytes is over --max-bytes {200 * MB}: refused before reading"
    for n in ("pipe.jpg", "dev.jpg", "sock.png"):
        assert rows[n]["status"] == "error" and rows[n]["error"].startswith("not a regular file"), rows[n]
        assert rows[n]["error_kind"] == ERROR_INPUT and rows[n]["sha256"] is None
    # A listing-time refusal is passed through without touching the file.
    row = load_one(str(d / "pipe.jpg"), None, None, None, ST, 10**8, 29, error="not a regular file: x")
    assert row["error"] == "not a regular file: x" and row["error_kind"] == ERROR_INPUT


@pytest.fixture()
def black_hole():
    """An endpoint that accepts connections and never answers (a stalled object store)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_read_timeout_turns_a_stalled_read_into_a_transient_error(black_hole, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    st = StorageConfig(endpoint_url=black_hole)
    t0 = time.monotonic()
    with pytest.raises(ReadError, match=r"read timed out after 1 s \(--read-timeout\)") as e:
        read_input("s3://bucket/stalled.jpg", st, MB, 1.0)
    assert e.value.kind == ERROR_TRANSIENT and time.monotonic() - t0 < 5
    row = load_one("s3://bucket/stalled.jpg", 10, "etag", None, st, 10**8, 29, max_bytes=MB, read_timeout_s=1.0)
    assert (row["status"], row["error_kind"]) == ("error", ERROR_TRANSIENT) and "timed out" in row["error"]


def _rows(n: int, run: str, start: int = 0) -> pa.Table:
    return rows_to_table([ScanRow(uri=f"u{i}.jpg", status="ok", score=0.5, run_id=run) for i in range(start, start + n)])


def _writer(out, run: str, **kw) -> ResultWriter:
    kw = {"rows_per_part": 10**6, "commit_every_s": 3600.0, **kw}
    return ResultWriter(str(out), RunRecord(run_id=run, command="test", input="-", code_version="t"), "2026-11-23",
                        ST, **kw)


def _commit_sizes(out, run: str) -> list[int]:
    """Rows of each of a run's commits, read from the Delta log (commit metadata names the run)."""
    hist = open_table(str(out), ST).history()
    return [h["operationMetrics"]["num_added_rows"] for h in sorted(hist, key=lambda h: h["version"])
            if h.get("trufor_scan.run_id") == run]


def test_writer_commits_by_rows_and_by_time(tmp_path):
    w = _writer(tmp_path, "rows", rows_per_part=3)
    for i in range(7):
        w.add(_rows(1, "rows", i))
    assert _commit_sizes(tmp_path, "rows") == [3, 3]  # the 7th waits
    w.close("complete")
    r = read_runs(str(tmp_path))[0]
    assert _commit_sizes(tmp_path, "rows") == [3, 3, 1] and r.state == "complete" and r.ok == 7 and r.commits == 3
    w = _writer(tmp_path, "time", commit_every_s=0.2)
    w.add(_rows(1, "time", 100))
    time.sleep(0.3)
    w.add(_rows(1, "time", 101))  # the interval has passed: both rows are committed now
    assert _commit_sizes(tmp_path, "time") == [2]
    assert read_runs(str(tmp_path))[1].state == "running"
    with pytest.raises(ValueError, match="run id 'rows' already exists"):  # its commits would mix with that run's
        _writer(tmp_path, "rows")


def test_readers_see_only_committed_rows(tmp_path):
    """A killed run leaves a run record saying ``running`` (its commits count) and maybe a half-written
    or orphaned data file that no commit lists: no query can fail on it and no row is read twice."""
    w = _writer(tmp_path, "killed")
    w.add(_rows(4, "killed"))
    w.commit()  # ... then SIGKILL: no close(), the run record says "running"
    table_dir = tmp_path / "results"
    good = next(p for p in table_dir.iterdir() if p.suffix == ".parquet").read_bytes()
    (table_dir / "part-00001-killed-c000.snappy.parquet").write_bytes(good[: len(good) // 2])  # never committed
    (table_dir / "_delta_log" / ".00000000000000000009.json.tmp").write_text('{"trunc')
    assert read_runs(str(tmp_path))[0].state == "running"
    assert run_sql(str(tmp_path), "SELECT count(*), count(DISTINCT uri) FROM results")[1] == [(4, 4)]
    assert run_sql(str(tmp_path), "SELECT count(*) FROM latest")[1] == [(4,)]


def test_query_and_top_do_not_import_torch_or_ray(tmp_path):
    w = _writer(tmp_path, "r")
    w.add(_rows(2, "r"))
    w.close("complete")
    code = ("import sys; from jobs.cli import main; "
            f"rc = main(['top', {str(tmp_path)!r}, '--min-score', '0']) + main(['query', {str(tmp_path)!r}, 'SELECT 1']); "
            "heavy = [m for m in ('torch', 'ray') if m in sys.modules]; "
            "print('heavy', heavy); sys.exit(rc or bool(heavy))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "heavy []" in p.stdout and "u0.jpg" in p.stdout, p.stdout + p.stderr


def test_scan_options_are_declared_once_on_the_config():
    """Every ScanConfig field marked for the CLI is an option of `scan`/`sweep` and comes back unchanged."""
    import dataclasses

    from jobs.cli import build_parser
    from pipeline.base.options import cli_fields, from_args
    from pipeline.scan.driver import ScanConfig

    argv = ["sweep", "in/", "--output", "out/", "--rescore", "--checkpoint", "c.pth", "--noiseprint-weights", "n.th",
            "--noise-anomaly", "na.pt", "--c2pa-trust-anchors", "ca.pem", "--actors", "3", "--gpus-per-actor", "0.5", "--cpus-per-actor", "2", "--batch-size", "7",
            "--batch-max-pixels", "123", "--max-pixels", "456", "--max-bytes", "789", "--read-timeout", "9.5",
            "--rows-per-part", "11", "--commit-every", "12.5", "--run-id", "R", "--wait", "30", "--lease-ttl", "60", "--ray-address", "ray://h:1",
            "--s3-endpoint", "http://e", "--anon", "--variant", "train_test", "--precision", "bf16", "--no-download", "--progress-every", "3",
            "--backend", "eager", "--max-seconds-per-image", "600", "--compiled-max-pixels", "5", "--mantranet", "m.h5"]
    cfg = from_args(ScanConfig, build_parser("sweep").parse_args(argv), "sweep", incremental=True)
    changed = {f.name for f in dataclasses.fields(ScanConfig) if getattr(cfg, f.name) != f.default}
    assert changed == {f.name for f in cli_fields(ScanConfig, "sweep")} | {"incremental"}
    assert (cfg.read_timeout_s, cfg.commit_every_s, cfg.allow_download, cfg.anon) == (9.5, 12.5, False, True)
    with pytest.raises(SystemExit):  # --rescore belongs to sweep only
        build_parser("scan").parse_args(["scan", "in/", "--output", "o", "--rescore"])
