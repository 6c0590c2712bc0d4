"""The results store at scale (Delta table): commit latency, planning, `top`, compaction, a year of nightly runs.

    python bench/bench_store.py [--rows 1000000 10000000] [--interval 10000] [--nightly 365]

Rows are GENERATED (labelled ``model_name = GENERATED``, no model ran), written through the
scan's own writer (``pipeline.base.store.ResultWriter``: one Delta transaction per interval), so what is
measured is the store alone. Every figure that includes memory is measured in a fresh child
process (peak RSS is per process):

- commit latency per interval (``--interval`` rows) as the table grows, median and p95;
- planning a sweep (``plan_run``: a listing of 10,000 files, half already committed, anti-joined
  with the history in DuckDB) against 1M and 10M committed rows: wall time and driver peak RSS;
- `top` (the `latest` view, 50 rows) over the table before and after `compact`;
- 365 small commits (a year of nightly runs of 200 rows): commit latency at the start and the end
  of the year, `top` before and after `compact`.
The slopes (per million rows, per commit) are what BENCHMARKS.md states.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

GENERATED = "GENERATED (no model: a store benchmark)"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


def generated(start: int, n: int, run_id: str):
    """``n`` generated ok rows (uris start..start+n), as an Arrow table of the row schema."""
    import numpy as np
    import pyarrow as pa

    from pipeline.base.schema import ROW_SCHEMA

    rng = np.random.default_rng(start)
    idx = np.arange(start, start + n)
    cols = {
        "uri": pa.array([f"s3://crawl/day{i // 100_000:04d}/img{i:09d}.jpg" for i in idx]),
        "status": pa.array(["ok"] * n),
        "size_bytes": pa.array(rng.integers(50_000, 5_000_000, n)),
        "etag_or_mtime": pa.array([f"e{i}" for i in idx]),
        "sha256": pa.array([f"{i:064x}" for i in idx]),
        "score": pa.array(rng.beta(1.2, 6.0, n)),
        "frac_anom_conf": pa.array(rng.random(n) * 0.1),
        "max_anom_conf": pa.array(rng.random(n)),
        "map_uri": pa.array([f"maps/{i % 256:02x}/{i:064x}.npz" for i in idx]),
        "model_name": pa.array([GENERATED] * n),
        "weights_sha256": pa.array(["w" * 64] * n),
        "weights_untrained": pa.array([True] * n),
        "run_id": pa.array([run_id] * n),
        "scanned_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)] * n,
                               pa.timestamp("us", tz="UTC")),
    }
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in ROW_SCHEMA}, schema=ROW_SCHEMA)


def _writer(out: str, run_id: str, interval: int):
    from pipeline.base.storage import StorageConfig
    from pipeline.base.store import ResultWriter, RunRecord

    return ResultWriter(out, RunRecord(run_id=run_id, command="bench", input="generated", code_version="bench"),
                        "2026-01-01", StorageConfig(), rows_per_part=10**12, commit_every_s=10**9)


def fill(out: str, rows: int, interval: int, start: int = 0) -> list[float]:
    """Commit ``rows`` generated rows in intervals; returns each commit's seconds."""
    w = _writer(out, f"fill-{start}", interval)
    times = []
    for k in range(start, start + rows, interval):
        w.add(generated(k, min(interval, start + rows - k), w.run.run_id))
        t0 = time.perf_counter()
        w.commit()
        times.append(time.perf_counter() - t0)
    w.close("complete")
    return times


def _stats(times: list[float]) -> dict:
    s = sorted(times)
    return {"commits": len(s), "median_ms": round(1000 * statistics.median(s), 1),
            "p95_ms": round(1000 * s[int(0.95 * (len(s) - 1))], 1)}


def child(kind: str, out: str, arg: str) -> dict:
    """One measurement in this (fresh) process (its peak RSS above the baseline after the imports)."""
    import importlib

    for m in ("pipeline.scan.plan", "pipeline.results.query", "pipeline.base.store"):  # before the baseline: the growth is the work's
        importlib.import_module(m)

    base = _rss_mb()
    t0 = time.perf_counter()
    if kind == "plan":
        from pipeline.base.storage import StorageConfig
        from pipeline.scan.plan import plan_run

        with tempfile.TemporaryDirectory() as work:
            plan = plan_run(arg, out, StorageConfig(), work, incremental=True, rescore=False, max_bytes=None,
                            scoring=("w" * 64, None, None, None))
        extra = {"listed": plan.listed, "to_scan": plan.to_scan}
    elif kind == "top":
        from pipeline.results.query import top

        extra = {"rows": len(top(out, k=50, min_score=0.0)[1])}
    elif kind == "compact":
        from pipeline.base.store import CompactConfig, compact

        extra = compact(CompactConfig(output=out))["results"]
    else:
        raise ValueError(kind)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 3), "rss_growth_mb": round(_rss_mb() - base), **extra}


def run_child(kind: str, out: str, arg: str = "-") -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", kind, out, arg], capture_output=True, text=True,
                       timeout=3600)
    if p.returncode:
        raise RuntimeError(f"child {kind} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def manifest(tmp: str, committed: int, n: int = 10_000) -> str:
    """A listing of ``n`` files, half of them already committed (so the plan must anti-join)."""
    path = os.path.join(tmp, f"listing-{committed}.txt")
    with open(path, "w") as f:
        f.writelines(f"s3://crawl/day{i // 100_000:04d}/img{i:09d}.jpg\n"
                     for i in list(range(committed - n // 2, committed)) + list(range(10**10, 10**10 + n // 2)))
    return path


def bench_rows(sizes: list[int], interval: int, tmp: str) -> list[dict]:
    out_dir, have, results = os.path.join(tmp, "big"), 0, []
    for n in sorted(sizes):
        times = fill(out_dir, n - have, interval, start=have)
        have = n
        r = {"what": f"commit {interval} rows into a table growing to {n:,} rows", **_stats(times),
             "last_100_median_ms": round(1000 * statistics.median(times[-100:]), 1)}
        results.append(r)
        print(json.dumps(r), flush=True)
        for what, kind, arg in ((f"plan a sweep of 10,000 files against {n:,} rows", "plan", manifest(tmp, n)),
                                (f"top 50 over {n:,} rows ({len(times)}+ files)", "top", "-"),
                                (f"compact {n:,} rows", "compact", "-"),
                                (f"top 50 over {n:,} rows after compact", "top", "-"),
                                (f"plan a sweep of 10,000 files against {n:,} rows after compact", "plan",
                                 manifest(tmp, n))):
            results.append({"what": what, **run_child(kind, out_dir, arg)})
            print(json.dumps(results[-1]), flush=True)
    return results


def bench_nightly(nights: int, rows_per_night: int, tmp: str) -> list[dict]:
    out_dir, times = os.path.join(tmp, "year"), []
    for night in range(nights):
        times += fill(out_dir, rows_per_night, rows_per_night, start=night * rows_per_night)
    results = [{"what": f"{nights} nightly commits of {rows_per_night} rows: first 30", **_stats(times[:30])},
               {"what": f"{nights} nightly commits of {rows_per_night} rows: last 30", **_stats(times[-30:])}]
    for what, kind in ((f"top 50 after {nights} nightly commits", "top"), ("compact", "compact"),
                       (f"top 50 after {nights} nightly commits, compacted", "top")):
        results.append({"what": what, **run_child(kind, out_dir)})
    for r in results:
        print(json.dumps(r), flush=True)
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:5])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--interval", type=int, default=10_000, help="rows per commit (the scan's --rows-per-part)")
    ap.add_argument("--nightly", type=int, default=365, help="nightly runs (0: skip)")
    ap.add_argument("--rows-per-night", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        rows = bench_rows(args.rows, args.interval, tmp) if args.rows else []
        nightly = bench_nightly(args.nightly, args.rows_per_night, tmp) if args.nightly else []
    print("\n| measurement | figures |\n|---|---|")
    for r in rows + nightly:
        print(f"| {r['what']} | " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "what") + " |")


if __name__ == "__main__":
    main()
