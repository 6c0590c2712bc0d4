"""How fast `trufor-scan evaluate` runs, and in how much driver memory, on a generated labelled set.

    python bench/bench_evaluate.py [--rows 10000] [--size 256x256] [--workers 1 2]

Writes a scan-shaped OUTPUT with ``--rows`` labelled images (half forged, each with a mask and a
stored map; ``evaluation_data.make_labelled_set``, no model), then runs `evaluate` in a fresh
process per setting and prints images/s and the peak memory of the driver (its own VmHWM) and of
its worker processes (the largest one). The same evaluation on a tenth of the rows, in the same
run, shows whether the driver's memory grows with the number of images (it should not hold maps).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def child(output: str, truth: str, out: str, workers: int, bootstrap: int) -> None:
    from pipeline.review.evaluation import EvaluateConfig, run_evaluate

    t0 = time.monotonic()
    res = run_evaluate(EvaluateConfig(output=output, truth=truth, out=out, workers=workers, bootstrap=bootstrap))
    wall = time.monotonic() - t0
    print(json.dumps({"wall_s": wall, "evaluated": res.evaluation["counts"]["evaluated"],
                      "pixel": res.evaluation["counts"]["forged_with_pixel_figures"],
                      "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def run(output: str, truth: str, out: str, workers: int, bootstrap: int) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", output, truth, out, str(workers), str(bootstrap)],
                       capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, output, truth, out, workers, bootstrap = sys.argv
        child(output, truth, out, int(workers), int(bootstrap))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--size", default="256x256", help="HxW of the images (maps and masks)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    a = ap.parse_args()
    from evaluation_data import make_labelled_set

    h, w = (int(v) for v in a.size.split("x"))
    work = Path(a.dir or tempfile.mkdtemp(prefix="bench-evaluate-"))
    sets = {}
    for n in (a.rows // 10, a.rows):
        t0 = time.monotonic()
        sets[n] = make_labelled_set(work / f"out{n}", n // 2, n - n // 2, size=(h, w), seed=1, write_images=False)
        print(f"generated {n} labelled rows + maps + masks ({h}x{w}) in {time.monotonic() - t0:.1f} s", flush=True)
    print(f"\n{'rows':>7} {'workers':>7} {'wall s':>8} {'img/s':>8} {'pixel img/s':>11} {'driver peak MiB':>15} "
          f"{'worker peak MiB':>15}")
    results = {}
    for n, info in sets.items():
        for workers in (a.workers if n == a.rows else a.workers[-1:]):
            r = run(str(work / f"out{n}"), info["truth"], str(work / f"ev{n}-{workers}"), workers, a.bootstrap)
            results[(n, workers)] = r
            print(f"{n:>7} {workers:>7} {r['wall_s']:>8.1f} {r['evaluated'] / r['wall_s']:>8.1f} "
                  f"{r['pixel'] / r['wall_s']:>11.1f} {r['driver_peak_mib']:>15.0f} {r['worker_peak_mib']:>15.0f}",
                  flush=True)
    small, big = results[(a.rows // 10, a.workers[-1])], results[(a.rows, a.workers[-1])]
    print(f"\ndriver peak at {a.rows} rows / at {a.rows // 10} rows: {big['driver_peak_mib'] / small['driver_peak_mib']:.2f}x "
          f"(maps are never held by the driver: it grows with the per-image figures only)")
    if len(a.workers) > 1:
        one, many = results[(a.rows, a.workers[0])], results[(a.rows, a.workers[-1])]
        print(f"speed-up {a.workers[-1]} vs {a.workers[0]} workers: {one['wall_s'] / many['wall_s']:.2f}x")
    print(f"work directory: {work}")


if __name__ == "__main__":
    main()
