"""`make bench-backends`: the model through each backend, side by side, in one run on this machine.

    python bench/bench_backends.py [--backends eager openvino inductor] [--cases 0.4x1 1x1 3x1 0.4x4]
                                   [--device cpu|cuda] [--threads N]

Each (backend, case) runs in a process of its own (peak memory is per process: model, backend,
one forward); a case is MPxBATCH (``0.4x4``: four 0.4 MP images of one shape, as the scan batches
them). Prints per row: seconds per image (best of 2 after the first call), GFLOP/s and its share of
this CPU's limit (``bench/flops.py``: the best of a cache-resident 3x3 convolution and a large
matrix product, measured in this run), the warm-up (building the backend: converting or compiling,
plus the first call), peak RSS, and the largest difference from eager's outputs on the same input
(score and stride-4 anomaly logits). FLOPs: ``torch.utils.flop_counter`` on the eager forward.

Weights: synthesized untrained (speed does not depend on the values).
"""
from __future__ import annotations

import argparse
import json
import math
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
sys.path.insert(0, str(REPO / "bench"))


def shape(mp: float) -> tuple[int, int]:
    """A 3:4 image of about ``mp`` megapixels, sides a multiple of 8 (as bench/flops.py)."""
    h = int(math.sqrt(mp * 1e6 * 3 / 4)) // 8 * 8
    return h, int(h * 4 / 3) // 8 * 8


def child(a: argparse.Namespace) -> None:
    import torch

    from trufor_core import EvalConfig, load_trufor
    from trufor_core.backends import make_runner

    if a.threads:
        torch.set_num_threads(a.threads)
    mp, batch = (float(v) for v in a.case.split("x"))
    h, w = shape(mp)
    x = torch.rand(int(batch), 3, h, w, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    model, info = load_trufor(a.checkpoint, device=a.device)
    x = x.to(a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: the warm-up includes the conversion
        runner = make_runner(model, a.backend, info.sha256, threads=a.threads, cache=Path(cache))
        with torch.inference_mode():
            out, path = runner(x, EvalConfig())
            sync()
            warm = time.perf_counter() - t0
            times = []
            for _ in range(2):
                t1 = time.perf_counter()
                out, path = runner(x, EvalConfig())
                sync()
                times.append(time.perf_counter() - t1)
    np.savez(a.save, det=out.det_logit.float().cpu().numpy(), loc=out.anomaly_logits_lowres.float().cpu().numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if a.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    print(json.dumps({"s_img": min(times) / batch, "warm": warm, "peak": peak, "path": path, "h": h, "w": w}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="*", default=["eager", "openvino", "inductor"])
    ap.add_argument("--cases", nargs="*", default=["0.4x1", "1x1", "3x1", "0.4x4"], help="MPxBATCH")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a)

    import torch

    from flops import attainable, flops_by_part
    from trufor_core import EvalConfig, load_trufor
    from trufor_core.checkpoint import write_synthetic_checkpoint

    if a.threads:
        torch.set_num_threads(a.threads)
    threads = a.threads or torch.get_num_threads()
    print(f"bench-backends: {os.cpu_count()} CPUs, {threads} threads, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, device {a.device}", flush=True)
    limit = max(attainable().values()) if a.device == "cpu" else None
    if limit:
        print(f"CPU limit (best of conv3x3 and matmul, this run): {limit / 1e9:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(write_synthetic_checkpoint(os.path.join(tmp, "UNTRAINED.pth.tar")))
        model, _ = load_trufor(ckpt)
        flops = {}
        for case in a.cases:
            mp, batch = (float(v) for v in case.split("x"))
            flops[case] = flops_by_part(model, torch.rand(1, 3, *shape(mp)), EvalConfig())[0]
        del model
        print(f"\n{'case':>7s} {'backend':>9s} {'HxW':>10s} {'s/img':>7s} {'vs eager':>8s} {'GFLOP/s':>8s} "
              f"{'of limit':>8s} {'warm-up s':>9s} {'peak GiB':>8s} {'|dscore|':>9s} {'|dlogit|':>9s}  path", flush=True)
        for case in a.cases:
            base = None
            for backend in a.backends:
                save = os.path.join(tmp, f"{case}-{backend}.npz")
                cmd = [sys.executable, __file__, "--child", "--backend", backend, "--case", case, "--checkpoint", ckpt,
                       "--save", save, "--device", a.device] + (["--threads", str(a.threads)] if a.threads else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
                if proc.returncode:
                    print(f"{case:>7s} {backend:>9s} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                got = np.load(save)
                if base is None and backend == "eager":
                    base = (r, got)
                ratio = f"{base[0]['s_img'] / r['s_img']:7.2f}x" if base else f"{'':>8s}"
                dscore = dlog = float("nan")
                if base:
                    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
                    dscore = float(np.abs(sig(got["det"]) - sig(base[1]["det"])).max())
                    dlog = float(np.abs(got["loc"] - base[1]["loc"]).max())
                rate = flops[case] / r["s_img"]
                share = f"{rate / limit:8.1%}" if limit else f"{'':>8s}"
                print(f"{case:>7s} {backend:>9s} {r['h']}x{r['w']:<5d} {r['s_img']:7.2f} {ratio} {rate / 1e9:8.1f} {share} "
                      f"{r['warm']:9.1f} {r['peak'] / 2**30:8.2f} {dscore:9.1e} {dlog:9.1e}  {r['path']}", flush=True)


if __name__ == "__main__":
    main()
