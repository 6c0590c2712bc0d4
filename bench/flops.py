"""`make bench-flops`: where TruFor's CPU time goes, against what this CPU can do.

    python bench/flops.py [--sizes 0.4 1 3] [--threads N]

Prints, in one run on this machine:
- attainable float32 FLOP/s: the DnCNN's 3x3 convolution (64 -> 64 channels) on a block that stays
  in cache, and a large matrix product (as in attention and the MLPs), best of 3, the threads torch
  uses; the best of them is "the limit";
- per image size: FLOPs of one forward (``torch.utils.flop_counter``: convolutions and matrix
  products, 2 per multiply-add), split by part (Noiseprint++ DnCNN, the dual MiT-B2 encoder, the
  two decoders); the model-only seconds per image and the FLOP/s that makes, as a share of the
  attainable conv rate; the seconds per part (timed in place);
- the DnCNN layer by layer (as the official code) vs its evaluation path (``DnCNN.forward_eval``);
- the top operators of the largest size (``torch.profiler``, self CPU time).

Weights: the synthesized untrained checkpoint (speed does not depend on the values).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trufor_core import EvalConfig, load_trufor  # noqa: E402
from trufor_core.checkpoint import write_synthetic_checkpoint  # noqa: E402

# The model's parts, by attribute of TruFor: what each costs is what this benchmark is for.
PARTS = {"dncnn": "Noiseprint++ DnCNN", "backbone": "dual MiT-B2 encoder + fusion",
         "decode_head": "anomaly decoder", "decode_head_conf": "confidence decoder"}


def best_of(fn, n: int = 3) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def attainable() -> dict[str, float]:
    """float32 FLOP/s of a DnCNN 3x3 convolution (64 -> 64 channels on a 128x128 block, which stays
    in cache: the arithmetic, not memory, bounds it), in both layouts, and of a large matrix product."""
    with torch.inference_mode():
        conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
        x = torch.randn(1, 64, 128, 128)
        conv_flops = 2 * 64 * 64 * 9 * 128 * 128
        conv_cl, x_cl = (t.to(memory_format=torch.channels_last) for t in (conv, x))
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        return {"conv3x3": conv_flops * 10 / best_of(lambda: [conv(x) for _ in range(10)]),
                "conv3x3 channels_last": conv_flops * 10 / best_of(lambda: [conv_cl(x_cl) for _ in range(10)]),
                "matmul 2048": 2 * 2048 ** 3 / best_of(lambda: a @ b)}


def image(mp: float) -> torch.Tensor:
    h = int(math.sqrt(mp * 1e6 * 3 / 4)) // 8 * 8
    w = int(h * 4 / 3) // 8 * 8
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU one that MiT's attention runs on
# here: without this, the encoder's attention (most of its FLOPs at 3 MP) would count as zero.
CPU_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def flops_by_part(model, x, ev) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward (2 per multiply-add), in total and per part of ``PARTS``."""
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=CPU_FLOPS) as fc:
        model(x, ev)
    counts = fc.get_flop_counts()
    by_part = {}
    for attr in PARTS:
        key = next((k for k in counts if k.split(".")[-1] == attr and k.count(".") == 1), None)
        by_part[attr] = sum(counts[key].values()) if key else 0
    return fc.get_total_flops(), by_part


@contextmanager
def timed_parts(model, seconds: dict[str, float]):
    """Wrap each part's entry point (the DnCNN is entered through forward_tiled) with a timer."""
    saved = {}
    for attr in PARTS:
        mod = getattr(model, attr)
        name = "forward_tiled" if attr == "dncnn" else "forward"
        saved[attr] = (mod, name, getattr(mod, name))

        def wrap(fn, attr=attr):
            def timed(*a, **k):
                t0 = time.perf_counter()
                out = fn(*a, **k)
                seconds[attr] += time.perf_counter() - t0
                return out
            return timed
        setattr(mod, name, wrap(getattr(mod, name)))
    try:
        yield
    finally:
        for mod, name, _ in saved.values():
            delattr(mod, name)  # back to the class's method


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="*", default=[0.4, 1, 3], help="megapixels")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--top", type=int, default=12, help="operators listed")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"bench-flops: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    peak = attainable()
    for k, v in peak.items():
        print(f"attainable {k:>22s}: {v / 1e9:7.1f} GFLOP/s")
    limit = max(peak.values())
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_trufor(write_synthetic_checkpoint(os.path.join(tmp, "UNTRAINED.pth.tar")))
    ev = EvalConfig()
    print(f"\n{'MP':>5s} {'HxW':>10s} {'GFLOP':>7s} " + " ".join(f"{p[:14]:>14s}" for p in PARTS)
          + f" {'s/img':>7s} {'GFLOP/s':>8s} {'of limit':>8s}  seconds per part")
    x = None
    for mp in a.sizes:
        x = image(mp)
        total, parts = flops_by_part(model, x, ev)
        seconds: dict[str, float] = defaultdict(float)
        with torch.inference_mode():
            model(x, ev)  # warm-up: oneDNN builds its kernels for this shape
            with timed_parts(model, seconds):
                t0 = time.perf_counter()
                model(x, ev)
                s = time.perf_counter() - t0
        split = " ".join(f"{100 * parts[p] / total:13.1f}%" for p in PARTS)
        secs = " ".join(f"{p} {seconds[p]:.2f}" for p in PARTS)
        print(f"{mp:5.2f} {x.shape[2]}x{x.shape[3]:<5d} {total / 1e9:7.1f} {split} {s:7.2f} {total / s / 1e9:8.1f} "
              f"{total / s / limit:8.1%}  {secs}; other {s - sum(seconds.values()):.2f}", flush=True)
    with torch.inference_mode():
        sequential = best_of(lambda: torch.nn.Sequential.forward(model.dncnn, x), 1)
        folded = best_of(lambda: model.dncnn(x), 1)
    print(f"\nDnCNN at {x.shape[2]}x{x.shape[3]}, whole image: layer by layer as nn.Sequential (NCHW, BN apart) "
          f"{sequential:.2f} s; forward_eval (BN folded, channels-last) {folded:.2f} s = {sequential / folded:.2f}x")
    print(f"\ntop operators at {x.shape[2]}x{x.shape[3]} (self CPU time):")
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x, ev)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    whole = sum(e.self_cpu_time_total for e in events)
    for e in events[:a.top]:
        print(f"  {e.key:40s} {e.self_cpu_time_total / 1e6:7.2f} s {100 * e.self_cpu_time_total / whole:5.1f}%  "
              f"x{e.count}")


if __name__ == "__main__":
    main()
