"""`make bench-gpu`: TruFor's speed per GPU, ready for the first GPU machine (no install needed).

    PYTHONPATH=. python bench/bench_gpu.py [--sizes 0.5 1 3 12] [--precisions fp32 bf16 fp16] [--n 8]
                                           [--backends eager inductor]

Runs with the repository on PYTHONPATH and only torch, numpy, Pillow and pyarrow (no Ray, DuckDB
or fsspec), on generated JPEGs and the synthesized (untrained) checkpoint unless --checkpoint is
given; speed does not depend on the weights' values. Per image size, precision and backend
(``trufor_core.backends``: eager and torch.compile's Inductor on CUDA, where OpenVINO does not run;
the first call of each shape, compilation included, is the warm-up, reported apart) it prints:

- model: images/s of the forward alone (batch 1, inputs already on the GPU), the GPU busy share
  (sum of CUDA-event times of the forwards / wall time) and the peak GPU memory;
- official: the official script's loop on the same GPU and images, reimplemented as it runs
  (decode, batch 1, fp32, cuDNN off as in trufor.yaml, maps copied back, .npz written), fp32 only;
- predictor: ``pipeline.scan.predictor.TruForPredictor`` fed as a scan actor is (decode, hashing in a
  thread pool, batches of 4; maps stored by a second pool, as the scan's map stage), images/s, and
  "in forward": the share of the predictor's wall time spent in its forward passes (the rest is the
  model waiting: batch assembly, row building, or decode not keeping up).

Ray's own cost per image is measured on the CPU (BENCHMARKS.md, "Sweeps at scale"); predictor
images/s x that overhead ratio gives a scan's expected throughput on this GPU.
Without CUDA it says so and exits 0; --cpu-dry-run runs every code path on the CPU at a tiny size
(what the test suite does).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trufor_core import EvalConfig, load_trufor  # noqa: E402
from trufor_core.checkpoint import write_synthetic_checkpoint  # noqa: E402
from trufor_core.image import decode_rgb, to_model_input  # noqa: E402
from trufor_core.backends import make_runner  # noqa: E402
from trufor_core.model import PRECISIONS, autocast, describe_device  # noqa: E402


def make_jpegs(mp: float, n: int, seed: int = 0) -> list[bytes]:
    """n JPEGs of about ``mp`` megapixels (4:3), smooth content plus sensor-like noise."""
    h = max(64, int(round((mp * 1e6 * 3 / 4) ** 0.5)))
    w = h * 4 // 3
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = np.stack([np.sin(xx / (40 + 7 * i)) + np.cos(yy / (55 + 3 * c)) for c in range(3)], -1) * 60 + 128
        img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_model(runner, jpegs, dev, precision) -> dict:
    xs = [to_model_input(decode_rgb(j)[0]).to(dev) for j in jpegs]
    ev = EvalConfig()
    model = lambda x, ev: runner(x, ev)[0]  # noqa: E731 - the backend's forward
    with torch.inference_mode(), autocast(dev, precision):
        t0 = time.perf_counter()
        model(xs[0], ev)  # warm-up (compilation, cuDNN autotune, allocator)
        _sync(dev)
        warm = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        busy, t0 = 0.0, time.perf_counter()
        for x in xs:
            if dev.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                model(x, ev).det_logit.cpu()
                b.record()
                b.synchronize()
                busy += a.elapsed_time(b) / 1000
            else:
                model(x, ev).det_logit.cpu()
        wall = time.perf_counter() - t0
    return {"img_s": len(xs) / wall, "warm": warm, "busy": busy / wall if dev.type == "cuda" else None,
            "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}


def bench_official(model, jpegs, dev) -> float:
    """The official test script's loop: decode, batch 1, fp32, cuDNN off, maps to the host, .npz."""
    cudnn = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        t0 = time.perf_counter()
        for j in jpegs:
            rgb, _ = decode_rgb(j)
            with torch.no_grad():
                out = model(to_model_input(rgb).to(dev)).results()[0]
            buf = io.BytesIO()
            np.savez(buf, map=out.anomaly_map, conf=out.confidence_map, score=out.score,
                     imgsize=np.asarray(out.anomaly_map.shape))
        _sync(dev)
        return len(jpegs) / (time.perf_counter() - t0)
    finally:
        torch.backends.cudnn.enabled = cudnn


def bench_predictor(ckpt, jpegs, dev, precision, workdir, backend) -> tuple[float, float]:
    """TruForPredictor as a scan actor runs it: decoded batches of 4 from a thread pool, maps stored by
    a second pool (the scan's map stage). Returns (images/s, share of the wall time in forwards)."""
    from pipeline.base.maps import store_maps
    from pipeline.base.storage import StorageConfig
    from pipeline.scan.decode import load_batch
    from pipeline.scan.predictor import PredictorConfig, TruForPredictor

    files = []
    for i, j in enumerate(jpegs):
        path = os.path.join(workdir, f"in_{precision}_{backend}_{i}.jpg")
        with open(path, "wb") as f:
            f.write(j + bytes([i % 251]))  # distinct bytes: each image scored and its map written
        files.append(path)
    out_root = os.path.join(workdir, f"out_{precision}_{backend}")
    timings = os.path.join(workdir, f"timings_{precision}_{backend}")
    os.makedirs(timings)
    pred = TruForPredictor(PredictorConfig(checkpoint=ckpt, output_root=out_root, run_id="bench-gpu",
                                           code_version="bench", device=str(dev), batch_size=4,
                                           precision=precision, backend=backend, timings_dir=timings))
    batches = [files[k:k + 4] for k in range(0, len(files), 4)]

    def decode(paths):
        n = len(paths)
        return load_batch({"uri": np.array(paths, dtype=object), "size_bytes": np.full(n, None),
                           "etag_or_mtime": np.full(n, None), "skip_reason": np.full(n, None),
                           "error": np.full(n, None), "error_kind": np.full(n, None)},
                          StorageConfig(), 10**9, 29)

    pred(decode(batches[0]))  # warm-up (its map is never stored: the timed images are other bytes)
    for f in os.listdir(timings):
        os.remove(os.path.join(timings, f))
    t0 = time.perf_counter()
    # Decode runs ahead of the model and maps are stored behind it, as the scan's CPU stages do.
    with ThreadPoolExecutor(4) as decoders, ThreadPoolExecutor(2) as writers:
        stored = [writers.submit(store_maps, t, out_root) for t in map(pred, decoders.map(decode, batches))]
        ok = sum(f.result().column("status").to_pylist().count("ok") for f in stored)
    _sync(dev)
    wall = time.perf_counter() - t0
    forward_s = 0.0
    for name in os.listdir(timings):
        with open(os.path.join(timings, name)) as f:
            forward_s += sum(json.loads(line)["forward_s"] for line in f)
    if ok != len(files):
        raise RuntimeError(f"predictor scored {ok} of {len(files)} images")
    return len(files) / wall, forward_s / wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="*", default=[0.5, 1, 3, 12], help="megapixels")
    ap.add_argument("--precisions", nargs="*", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--n", type=int, default=8, help="images per case")
    ap.add_argument("--checkpoint", help="default: the synthesized fixture-recipe checkpoint (speed only)")
    ap.add_argument("--backends", nargs="*", default=None,
                    help="default: eager and inductor on CUDA; eager in --cpu-dry-run (a CPU compile takes minutes)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="every code path on the CPU at 0.02 MP (tests)")
    a = ap.parse_args(argv)
    if a.cpu_dry_run:
        dev, a.sizes, a.n = torch.device("cpu"), [0.02], 2
        a.backends = a.backends or ["eager"]
    elif not torch.cuda.is_available():
        print("bench-gpu: no CUDA device on this machine; nothing measured (run it on a GPU machine: "
              "PYTHONPATH=. python bench/bench_gpu.py)")
        return 0
    else:
        dev = torch.device("cuda:0")
        a.backends = a.backends or ["eager", "inductor"]
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as work:
        ckpt = a.checkpoint or str(write_synthetic_checkpoint(os.path.join(work, "UNTRAINED.pth.tar")))
        model, info = load_trufor(ckpt, device=dev)
        print(f"bench-gpu: {describe_device(dev)}, torch {torch.__version__}, weights sha256 {info.sha256[:12]}"
              f"{' (untrained: speed only)' if info.untrained else ''}, {a.n} images per case")
        print(f"{'MP':>5s} {'HxW':>11s} {'prec':5s} {'backend':>8s} {'model img/s':>11s} {'GPU busy':>8s} {'peak GiB':>8s} "
              f"{'predictor img/s':>15s} {'in forward':>10s} {'official img/s':>14s} {'model/official':>14s} "
              f"{'warm-up s':>9s}")
        for mp in a.sizes:
            jpegs = make_jpegs(mp, a.n)
            with Image.open(io.BytesIO(jpegs[0])) as im:
                hw = f"{im.height}x{im.width}"
            official = bench_official(model, jpegs, dev)
            for p in a.precisions:
                if p == "fp16" and dev.type == "cpu":
                    print(f"{mp:5.2f} {hw:>11s} {p:5s} (not on a CPU: no fast fp16 kernels)")
                    continue
                for backend in a.backends:
                    runner = make_runner(model, backend, info.sha256, p)
                    m = bench_model(runner, jpegs, dev, p)
                    pr, in_forward = bench_predictor(ckpt, jpegs, dev, p, work, backend)
                    busy = "-" if m["busy"] is None else f"{m['busy']:.0%}"
                    peak = "-" if m["peak_gib"] is None else f"{m['peak_gib']:.2f}"
                    print(f"{mp:5.2f} {hw:>11s} {p:5s} {backend:>8s} {m['img_s']:11.2f} {busy:>8s} {peak:>8s} {pr:15.2f} "
                          f"{in_forward:10.0%} {official:14.2f} {m['img_s'] / official:14.2f} {m['warm']:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
