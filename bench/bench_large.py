"""Benchmark: TruFor at large image sizes, bounded-memory path vs the naive whole-image forward.

Each (size, mode) runs in its own process so peak RSS is measured per run (model build + weights
+ one forward, like the official perf anchors). Prints image size, seconds, peak RSS, the speed
ratio bounded/naive where the naive forward fits, and the max |difference| between the two.

    python bench/bench_large.py --sizes 1536x2048,3000x4000 --naive-max-mpix 3.2
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like test image: ramps, a sinusoid, noise and a noisier rectangle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([80 + 100 * xx / w, 60 + 120 * yy / h, 120 + 60 * np.sin((xx + yy) / 37.0)], axis=-1)
    img = base + rng.normal(0, 4, (h, w, 3)).astype(np.float32)
    r0, c0 = h // 3, w // 3
    img[r0:r0 + h // 3, c0:c0 + w // 4] += rng.normal(0, 14, (h // 3, w // 4, 3)).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def child(args: argparse.Namespace) -> None:
    import torch

    from trufor_core import EvalConfig, load_trufor
    from trufor_core.image import to_model_input

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    model, info = load_trufor(args.checkpoint)
    x = to_model_input(synthetic_image(h, w))
    ev = EvalConfig.naive() if args.mode == "naive" else EvalConfig(attention=args.attention)
    t0 = time.perf_counter()
    with torch.inference_mode():
        res = model(x, ev).results()[0]
    secs = time.perf_counter() - t0
    np.savez(args.save, map=res.anomaly_map, conf=res.confidence_map, score=res.score)
    print(json.dumps({"seconds": secs, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "score": res.score, "untrained": info.untrained}))


def run_one(args: argparse.Namespace, size: str, mode: str, save: str) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--size", size, "--mode", mode, "--checkpoint", args.checkpoint,
           "--threads", str(args.threads), "--attention", args.attention, "--save", save]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = p.stderr.strip().splitlines()[-1:] or [f"exit {p.returncode}"]
        print(f"  {size} {mode}: FAILED ({tail[0]})", flush=True)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512x768,1536x2048,3000x4000", help="comma-separated HxW")
    ap.add_argument("--naive-max-mpix", type=float, default=3.2,
                    help="run the naive forward only up to this many megapixels (it needs ~35 GB at 12 MP)")
    ap.add_argument("--checkpoint", help="weights (default: synthesize untrained fixture-recipe weights)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "math"])
    ap.add_argument("--extrapolate", default="", help="comma-separated MP: with 3+ bounded sizes, the seconds and "
                    "memory of a fit (seconds: a + b MP + c MP^2, the attention being quadratic; memory: linear) "
                    "at these sizes, printed as a fit, not a measurement")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    tmp = tempfile.mkdtemp(prefix="trufor-bench-")
    if not args.checkpoint:
        from trufor_core.checkpoint import write_synthetic_checkpoint

        npf = REPO.parent / "shared" / "weights" / "noiseprint++.th"
        args.checkpoint = str(write_synthetic_checkpoint(Path(tmp) / "UNTRAINED.pth.tar",
                                                         npf if npf.is_file() else None))
        print(f"weights: UNTRAINED fixture recipe ({args.checkpoint}); timing and memory do not depend on them")
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, attention={args.attention}, "
          f"cpu count {os.cpu_count()}")
    print(f"{'image':>11} {'MPix':>5} {'mode':>8} {'seconds':>8} {'peak RSS GiB':>12} {'speed vs naive':>14} "
          f"{'max|dmap|':>9} {'|dscore|':>8}")
    bounded = []  # (MP, seconds, peak GiB)
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        mpix = h * w / 1e6
        results = {}
        modes = ["naive", "bounded"] if mpix <= args.naive_max_mpix else ["bounded"]
        for mode in modes:
            save = os.path.join(tmp, f"{size}-{mode}.npz")
            r = run_one(args, size, mode, save)
            if r is None:
                continue
            results[mode] = (r, save)
            if mode == "bounded":
                bounded.append((mpix, r["seconds"], r["peak_rss_kb"] / 2**20))
            ratio = dmap = dscore = ""
            if mode == "bounded" and "naive" in results:
                ratio = f"{results['naive'][0]['seconds'] / r['seconds']:.2f}x"
                with np.load(results["naive"][1]) as a, np.load(save) as b:
                    dmap = f"{np.abs(a['map'] - b['map']).max():.1e}"
                    dscore = f"{abs(float(a['score']) - float(b['score'])):.1e}"
            print(f"{size:>11} {mpix:5.1f} {mode:>8} {r['seconds']:8.1f} {r['peak_rss_kb'] / 2**20:12.2f} "
                  f"{ratio:>14} {dmap:>9} {dscore:>8}", flush=True)
        if "naive" not in modes:
            print(f"{size:>11} {mpix:5.1f} {'naive':>8}  skipped: stage-1 attention alone would need "
                  f"{(h // 4) * (w // 4) * (h // 32) * (w // 32) * 4 / 2**30:.0f} GiB")
    if args.extrapolate and len(bounded) >= 3:
        mp, secs, gib = (np.array(v) for v in zip(*bounded))
        a, b, c = np.linalg.lstsq(np.stack([np.ones_like(mp), mp, mp ** 2], 1), secs, rcond=None)[0]
        m1, m0 = np.polyfit(mp, gib, 1)
        print(f"\nfit over the bounded sizes: seconds = {a:.1f} + {b:.2f} MP + {c:.3f} MP^2; "
              f"peak GiB = {m0:.2f} + {m1:.3f} MP (a fit, not a measurement:)")
        for x in (float(v) for v in args.extrapolate.split(",")):
            print(f"  {x:5.0f} MP: ~{a + b * x + c * x * x:7.0f} s, ~{m0 + m1 * x:5.1f} GiB")


if __name__ == "__main__":
    main()
