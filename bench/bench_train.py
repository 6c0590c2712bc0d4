"""Benchmark: Noiseprint++ training throughput with 1 vs 2 Ray Train workers (same corpus, same settings).

    python bench/bench_train.py --corpus corpus/ --steps 10
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--init", default="scratch")
    ap.add_argument("--batch-groups", type=int, default=16)
    args = ap.parse_args()
    from jobs.noiseprint_train import run_training
    from noiseprint_lab.training import TrainConfig

    rows = []
    for workers in (1, 2):
        out = tempfile.mkdtemp(prefix=f"trufor-bench-train-{workers}w-")
        s = run_training(TrainConfig(corpus=args.corpus, output=out, init=args.init, workers=workers, batch_groups=args.batch_groups,
                                     steps=args.steps, checkpoint_every=args.steps, eval_pairs=0),
                         log=lambda m: None)
        rows.append((workers, s["patches_per_s_worker"], s["patches_per_s_total"], s["wall_s"]))
    print(f"{'workers':>7} {'patches/s/worker':>16} {'patches/s total':>15} {'wall s':>7}")
    for w, pw, pt, wall in rows:
        print(f"{w:>7} {pw:16.2f} {pt:15.2f} {wall:7.1f}")
    print(f"speed-up 2 vs 1 workers: {rows[1][2] / rows[0][2]:.2f}x (total patches/s)")


if __name__ == "__main__":
    main()
