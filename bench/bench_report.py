"""How long `trufor-scan report` takes on a large results set (generated: no model needed).

    python bench/bench_report.py [--rows 100000] [--images 200] [--size 768x1024] [--k 200 50]

Writes a scan-shaped output (``report_data.make_results``: committed parts, run manifest, real
JPEGs and maps for the ``--images`` best rows), then builds the page for each k and prints the
time of the query (DuckDB over every row: latest per uri, summary, top k) and of the pictures
(read, verify and draw only the k rows shown), and the page's size on disk.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.review.report import ReportConfig, build_report  # noqa: E402
from report_data import make_results  # noqa: E402


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=200, help="rows with a real image and maps (the best scores)")
    ap.add_argument("--size", default="768x1024", help="HxW of those images")
    ap.add_argument("--k", type=int, nargs="+", default=[200, 50])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    work = Path(a.dir or tempfile.mkdtemp(prefix="bench-report-"))
    t0 = time.monotonic()
    make_results(work / "out", a.rows, a.images, size=(h, w))
    print(f"generated {a.rows} rows ({a.images} with {w}x{h} images and maps) in {time.monotonic() - t0:.1f} s; "
          f"{os.cpu_count()} CPUs")
    print(f"{'k':>5} {'query s':>8} {'pictures s':>10} {'total s':>8} {'ms/shown':>9} {'page MB':>8}")
    for k in a.k:
        page = work / f"page-{k}"
        res = build_report(ReportConfig(output=str(work / "out"), out=str(page), k=k, workers=a.workers))
        print(f"{k:>5} {res.query_s:>8.2f} {res.draw_s:>10.2f} {res.total_s:>8.2f} "
              f"{1000 * res.draw_s / max(1, res.shown):>9.0f} {du(page) / 2**20:>8.1f}")


if __name__ == "__main__":
    main()
