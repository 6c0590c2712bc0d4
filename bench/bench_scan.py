"""Benchmark: the full `scan` pipeline vs a model-only forward loop on the same images, per backend, in one run.

For each backend (``--backends``, default eager then auto: today's eager path paired with the compiled
default) prints model-only img/s, scan img/s (end to end, and steady state after the first batch), their
ratio, each actor's share of its time spent in forward passes (its own timings), the peak RSS of all
processes (driver + Ray), compressed map bytes per image next to the official float32 .npz; then the
end-to-end pairing of each backend against eager. Each backend's scan starts cold: a fresh Ray, an
empty conversion cache (the warm-up is part of end to end).

    python bench/bench_scan.py --images 64 --mixed 8          # 64 JPEGs of 8 shapes, 0.1 to 0.5 MP
    python bench/bench_scan.py --images 32 --size 384x512 --backends auto
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_large import synthetic_image  # noqa: E402


def _proc(pid: str) -> tuple[str, int, float]:
    """(command line, RSS bytes, CPU seconds so far) of a process."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return cmd, rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _role(cmd: str, me: bool) -> str:
    """Which part of the scan a process is, from its title (Ray names its workers after their work)."""
    if me:
        return "driver (listing, commits, this benchmark)"
    for key, role in (("TruForPredictor", "model actor"), ("load_batch", "decode tasks"),
                      ("store_maps", "map tasks"), ("raylet", "Ray: raylet"), ("gcs_server", "Ray: GCS")):
        if key in cmd:
            return role
    return "Ray: other (idle workers, agents, log monitor)"


class RssSampler:
    """Peak of the summed RSS of this process and every Ray process on the machine, and each one's
    CPU seconds, grouped by role (Linux /proc, sampled every ``every_s``)."""

    def __init__(self, every_s: float = 2.0):
        self.every_s, self.peak = every_s, 0
        self.cpu: dict[str, tuple[str, float]] = {}  # pid -> (role, CPU seconds at its last sample)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = str(os.getpid())
        start = {}
        while not self._stop.is_set():
            total = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmd, rss, cpu = _proc(pid)
                except (OSError, IndexError, ValueError):
                    continue
                if pid == me or "ray" in cmd:
                    total += rss
                    start.setdefault(pid, cpu if pid == me else 0.0)
                    role = _role(cmd, pid == me)
                    # A worker renames itself by its work: keep the most specific role it had.
                    if pid in self.cpu and self.cpu[pid][0] != role and role.startswith("Ray: other"):
                        role = self.cpu[pid][0]
                    self.cpu[pid] = (role, cpu - start[pid])
            self.peak = max(self.peak, total)
            time.sleep(self.every_s)

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for role, sec in self.cpu.values():
            out[role] = out.get(role, 0.0) + sec
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def mixed_shapes(n: int) -> list[tuple[int, int]]:
    """``n`` image shapes from about 0.1 to 0.5 MP, portrait and landscape, none a multiple of another
    (as an archive's: every shape is new to a compiler)."""
    out = []
    for k in range(n):
        mp = 0.1 + 0.4 * k / max(1, n - 1)
        h = int((mp * 1e6 * 3 / 4) ** 0.5) + 7 * k
        w = int(mp * 1e6 / h)
        out.append((h, w) if k % 2 == 0 else (w, h))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="384x512", help="HxW of the generated JPEGs (without --mixed)")
    ap.add_argument("--mixed", type=int, default=8, help="this many shapes, 0.1 to 0.5 MP (0: all --size)")
    ap.add_argument("--backends", nargs="*", default=["eager", "auto"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--checkpoint", help="weights (default: synthesize untrained fixture-recipe weights)")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from pipeline.base.sql import run_sql
    from pipeline.scan.driver import ScanConfig, run_scan
    from pipeline.scan.predictor import group_batches
    from trufor_core import EvalConfig, load_trufor
    from trufor_core.backends import make_runner
    from trufor_core.checkpoint import write_synthetic_checkpoint
    from trufor_core.image import decode_rgb

    tmp = Path(tempfile.mkdtemp(prefix="trufor-bench-scan-"))
    if not args.checkpoint:
        npf = REPO.parent / "shared" / "weights" / "noiseprint++.th"
        args.checkpoint = str(write_synthetic_checkpoint(tmp / "UNTRAINED.pth.tar", npf if npf.is_file() else None))
        print("weights: UNTRAINED fixture recipe; speed and sizes do not depend on the values")
    shapes = mixed_shapes(args.mixed) if args.mixed else [tuple(int(v) for v in args.size.split("x"))]
    src = tmp / "images"
    src.mkdir()
    for i in range(args.images):
        h, w = shapes[i % len(shapes)]
        Image.fromarray(synthetic_image(h, w, seed=i)).save(src / f"img{i:04d}.jpg", quality=90)
    mp = sum(h * w for h, w in shapes) / len(shapes) / 1e6
    print(f"{args.images} JPEGs of {len(shapes)} shape(s) ({', '.join(f'{h}x{w}' for h, w in shapes)}; mean {mp:.2f} MP), "
          f"batch size {args.batch_size}, {os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    xs = [torch.from_numpy(decode_rgb(p)[0].transpose(2, 0, 1).copy()).float() / 256 for p in sorted(src.iterdir())]
    groups = group_batches([tuple(x.shape[1:]) for x in xs], args.batch_size, 2_000_000)
    ends = {}
    for backend in args.backends:
        print(f"\n== backend {backend}", flush=True)
        os.environ["TRUFOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="trufor-bench-cache-")  # cold: conversion counted
        # Model only: decoded tensors in memory, the scan's batching, all cores; the backend built first (timed).
        t0 = time.perf_counter()
        model, info = load_trufor(args.checkpoint)
        runner = make_runner(model, backend, info.sha256, cache=Path(os.environ["TRUFOR_CACHE_DIR"]))
        ev = EvalConfig()
        official_bytes = 0
        with torch.inference_mode():
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for g in groups:
                for res in runner(torch.stack([xs[i] for i in g]), ev)[0].results():
                    buf = io.BytesIO()
                    np.savez(buf, map=res.anomaly_map, conf=res.confidence_map, score=res.score, imgsize=res.imgsize)
                    official_bytes += buf.getbuffer().nbytes
            model_s = time.perf_counter() - t0
        del model, runner
        model_ips = len(xs) / model_s
        print(f"model only : {model_s:7.1f} s  {model_ips:6.3f} img/s (path {backend}; built in {build_s:.1f} s, "
              "not counted; first calls per shape counted)", flush=True)

        os.environ["TRUFOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="trufor-bench-cache-")
        out, timings = tmp / f"out-{backend}", tmp / f"actor-timings-{backend}"
        timings.mkdir()
        with RssSampler() as rss:
            t0 = time.perf_counter()
            run_scan(ScanConfig(input=str(src), output=str(out), checkpoint=args.checkpoint, actors=args.actors,
                                batch_size=args.batch_size, allow_download=False, actor_timings_dir=str(timings),
                                backend=backend, ray_temp_dir=tempfile.mkdtemp(prefix="tfr", dir="/tmp")),
                     log=lambda m: None)
            scan_s = time.perf_counter() - t0
        ends[backend] = scan_s
        cols, rows = run_sql(str(out), "SELECT epoch(max(scanned_at)) - epoch(min(scanned_at)), "
                                       "count(DISTINCT scanned_at), count(*) FILTER (WHERE status = 'ok'), "
                                       "string_agg(DISTINCT backend, ', ') FROM results")
        span, batches, ok, paths = rows[0]
        per_batch = args.images / max(1, batches)
        steady_ips = (args.images - per_batch) / span if span else float("nan")
        npz_bytes = sum(f.stat().st_size for f in (out / "maps").rglob("*.npz"))  # the maps themselves
        png_bytes = sum(f.stat().st_size for f in (out / "maps").rglob("*.png"))  # the previews
        map_bytes = npz_bytes + png_bytes
        print(f"scan       : {scan_s:7.1f} s  {args.images / scan_s:6.3f} img/s end to end (Ray start, model load and "
              f"conversion included), {steady_ips:6.3f} img/s steady state; {ok}/{args.images} ok; rows' backend: {paths}")
        print(f"ratio scan/model-only: {steady_ips / model_ips:.2f} steady state, "
              f"{args.images / scan_s / model_ips:.2f} end to end (target >= 0.95)")
        for path in sorted(timings.iterdir()):
            calls = [json.loads(line) for line in path.read_text().splitlines()]
            busy = calls[-1]["end"] - calls[0]["start"]
            fwd = sum(c["forward_s"] for c in calls)
            print(f"actor {calls[0]['pid']}: {sum(c['images'] for c in calls)} images in {len(calls)} calls; forward "
                  f"{fwd:.1f} s of {busy:.1f} s from its first batch to its last = {fwd / busy:.3f} in forward "
                  f"(target >= 0.95); model loaded {calls[0]['start'] - calls[0]['ready']:.1f} s before its first batch")
        print(f"CPU seconds during the scan ({scan_s:.0f} s x {os.cpu_count()} CPUs = {scan_s * os.cpu_count():.0f}), "
              "by role:")
        for role, sec in rss.cpu_by_role().items():
            print(f"  {role:48s} {sec:7.1f}")
        print(f"peak RSS (driver + Ray processes): {rss.peak / 2**30:.2f} GiB")
        print(f"maps: npz {npz_bytes / args.images / 1024:.1f} + preview png {png_bytes / args.images / 1024:.1f} = "
              f"{map_bytes / args.images / 1024:.1f} KiB/image vs official float32 npz "
              f"{official_bytes / args.images / 1024:.1f} KiB/image = {100 * map_bytes / official_bytes:.1f}% "
              "(target <= 5%)", flush=True)
    if "eager" in ends:
        print()
        for backend, s in ends.items():
            if backend != "eager":
                print(f"end to end, {args.images} images: {backend} {s:.1f} s vs eager {ends['eager']:.1f} s = "
                      f"{ends['eager'] / s:.2f}x (target >= 1.3)")


if __name__ == "__main__":
    main()
