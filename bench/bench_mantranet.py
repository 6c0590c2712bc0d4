"""`make bench-mantranet`: seconds per image of ManTra-Net next to TruFor's, at 0.4 / 1 / 3 MP, in one run.

    python bench/bench_mantranet.py [--sizes 0.4 1 3] [--tile 512] [--trufor eager openvino]

Each (model, size) runs in a process of its own (peak RSS is per process). ManTra-Net: the eager
two-pass tiled forward (``mantranet_core.model``; its only path), timed once after a warm-up call on
a 256x256 image; TruFor: ``bench/bench_backends.py``'s own case runner (best of 2 after the first call).
FLOPs of ManTra-Net: ``torch.utils.flop_counter`` on one 128x128 tile-free forward, per pixel (the
network has no stride, so its work is linear in the pixels; the tiles' halos add more, counted apart
as the share of pixels computed twice). Weights: the parity fixture's synthesized file (speed does not
depend on the values); TruFor: synthesized untrained.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
H5 = Path(os.environ.get("TRUFOR_SHARED", REPO.parent / "shared")) / "fixtures" / "mantranet_parity" / \
    "mantranet_synth_ptrain4.h5"


def child(a: argparse.Namespace) -> None:
    import torch
    from bench_backends import shape

    from mantranet_core import load_mantranet

    h, w = shape(a.mp)
    model, _ = load_mantranet(a.h5)
    with torch.inference_mode():
        model(torch.rand(1, 3, 256, 256) * 2 - 1, tile=a.tile)
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
        t0 = time.perf_counter()
        out = model(x, tile=a.tile)
        s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"s_img": s, "peak": peak, "h": h, "w": w, "score": out.score.item()}))


def flops_per_pixel() -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mantranet_core import load_mantranet

    model, _ = load_mantranet(H5)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, 128, 128), tile=None)
    return fc.get_total_flops() / (128 * 128)


def halo_share(h: int, w: int, tile: int) -> float:
    """Pixels computed by Featex over the image's pixels (its 14-pixel halos), the head's are ~10% of the work."""
    from mantranet_core.featex import FEATEX_HALO
    from mantranet_core.model import tiles

    done = sum((min(r1 + FEATEX_HALO, h) - max(r0 - FEATEX_HALO, 0)) * (min(c1 + FEATEX_HALO, w) - max(c0 - FEATEX_HALO, 0))
               for r0, r1, c0, c1 in tiles(h, w, tile))
    return done / (h * w)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", type=float, default=[0.4, 1.0, 3.0])
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--trufor", nargs="*", default=["eager", "openvino"], help="TruFor backends to time beside it")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mp", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--h5", default=str(H5), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a)

    import torch
    from bench_backends import shape
    from flops import attainable

    from trufor_core.checkpoint import write_synthetic_checkpoint

    print(f"bench-mantranet: {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, tile {a.tile}", flush=True)
    limit = max(attainable().values())
    fpp = flops_per_pixel()
    print(f"CPU limit (this run): {limit / 1e9:.1f} GFLOP/s; ManTra-Net {fpp / 1e6:.2f} MFLOP per pixel "
          f"({fpp / 2e6:.2f} M multiply-adds)", flush=True)
    print(f"\n{'MP':>4s} {'HxW':>10s} {'model':>20s} {'s/img':>8s} {'x TruFor eager':>14s} {'GFLOP/s':>8s} "
          f"{'of limit':>8s} {'peak GiB':>8s}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(write_synthetic_checkpoint(os.path.join(tmp, "UNTRAINED.pth.tar")))
        for mp in a.sizes:
            h, w = shape(mp)
            base = None
            for backend in a.trufor:
                cmd = [sys.executable, str(REPO / "bench" / "bench_backends.py"), "--child", "--backend", backend,
                       "--case", f"{mp}x1", "--checkpoint", ckpt, "--save", os.path.join(tmp, "t.npz"), "--device", "cpu"]
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
                if p.returncode:
                    print(f"{mp:4.1f} TruFor {backend} failed: {p.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                r = json.loads(p.stdout.strip().splitlines()[-1])
                base = r["s_img"] if backend == "eager" else base
                print(f"{mp:4.1f} {h}x{w:<5d} {'TruFor ' + backend:>20s} {r['s_img']:8.2f} {'':>14s} {'':>8s} {'':>8s} "
                      f"{r['peak'] / 2**30:8.2f}", flush=True)
            cmd = [sys.executable, __file__, "--child", "--mp", str(mp), "--tile", str(a.tile), "--h5", a.h5]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            if p.returncode:
                print(f"{mp:4.1f} ManTra-Net failed: {p.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rate = fpp * h * w * halo_share(h, w, a.tile) / r["s_img"]
            ratio = f"{r['s_img'] / base:13.2f}x" if base else f"{'':>14s}"
            print(f"{mp:4.1f} {h}x{w:<5d} {'ManTra-Net':>20s} {r['s_img']:8.2f} {ratio} {rate / 1e9:8.1f} "
                  f"{rate / limit:8.1%} {r['peak'] / 2**30:8.2f}", flush=True)


if __name__ == "__main__":
    main()
