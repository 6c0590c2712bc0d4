"""The pipeline's own cost at archive scale: listing, planning and a stand-in sweep (no model).

    python bench/bench_sweep.py [--s3 10000 100000] [--manifest 100000 1000000] [--pipeline 10000]

Every figure is measured in a fresh child process (peak RSS is per process):

- listing: ``plan_run`` (stream the listing to local Parquet, plan in DuckDB) over N objects on
  the local S3 endpoint (moto's server, ListObjectsV2 pages of 1000) and over a manifest of N
  lines; entries/s and the driver's peak RSS above its baseline after imports;
- pipeline: ``run_scan`` in sweep mode over N small PNGs with the STAND-IN predictor (no model,
  no score: ``pipeline.scan.standin``; clearly not a result), so what is measured is listing, reading,
  hashing, decoding, Ray Data, dedup marks, Delta commits and the run records: rows/s, commits
  written, driver peak RSS; then a second sweep over the same N (nothing new): the anti-join's time.
The slope (RSS per 1000 entries) between the two sizes is what tells whether the driver holds
the listing.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the parent's peak at exec)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


def child(kind: str, spec: str, out: str, ckpt: str, endpoint: str | None) -> dict:
    from pipeline.base.storage import StorageConfig
    from pipeline.scan.driver import ScanConfig, run_scan
    from pipeline.scan.plan import plan_run
    from pipeline.scan.standin import StandInPredictor

    base = _rss_mb()
    t0 = time.perf_counter()
    if kind == "listing":
        with tempfile.TemporaryDirectory() as work:
            plan = plan_run(spec, out, StorageConfig(endpoint_url=endpoint), work, incremental=False, rescore=False,
                            max_bytes=None, scoring=("x", None, None, None))
        n, extra = plan.listed, {}
    else:
        s = run_scan(ScanConfig(input=spec, output=out, checkpoint=ckpt, incremental=True, allow_download=False,
                                progress_every_s=3600, rows_per_part=10_000, commit_every_s=60.0),
                     log=lambda m: None, predictor_cls=StandInPredictor)
        n, extra = s.listed, {"ok": s.ok, "errors": s.errors, "commits": s.commits, "to_scan": s.to_scan}
    wall = time.perf_counter() - t0
    return {"n": n, "wall_s": round(wall, 2), "per_s": round(n / wall, 1), "rss_base_mb": round(base),
            "rss_peak_mb": round(_rss_mb()), "rss_growth_mb": round(_rss_mb() - base), **extra}


def run_child(*args: str, env: dict | None = None) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=3600)
    if p.returncode:
        raise RuntimeError(f"child {args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _png(i: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bench_s3(sizes: list[int], tmp: str) -> list[dict]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="crawl")
    # Objects go straight into the server's in-process store (HTTP PUTs run at ~110/s here, 15 min
    # for 100k); the listing being measured still goes over HTTP through the real server.
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    out, have = [], 0
    for n in sorted(sizes):
        t0 = time.perf_counter()
        for i in range(have, n):
            backend.put_object("crawl", f"p/{i // 1000:04d}/img{i:07d}.jpg", b"x")
        have = n
        put_s = time.perf_counter() - t0
        r = run_child("listing", "s3://crawl/p", os.path.join(tmp, "o"), "-", endpoint, env=env)
        out.append({"what": f"list s3 prefix ({n} objects)", "put_s": round(put_s, 1), **r})
        print(json.dumps(out[-1]), flush=True)
    server.stop()
    return out


def bench_manifest(sizes: list[int], tmp: str) -> list[dict]:
    out = []
    for n in sizes:
        path = os.path.join(tmp, f"m{n}.txt")
        with open(path, "w") as f:
            f.writelines(f"s3://crawl/p/{i // 1000:04d}/img{i:07d}.jpg\n" for i in range(n))
        r = run_child("listing", path, os.path.join(tmp, "o"), "-", "")
        out.append({"what": f"read manifest ({n} lines)", **r})
        print(json.dumps(out[-1]), flush=True)
    return out


def bench_pipeline(sizes: list[int], tmp: str, ckpt: str) -> list[dict]:
    out = []
    for n in sizes:
        d = os.path.join(tmp, f"arc{n}")
        for i in range(n):
            sub = os.path.join(d, f"{i // 1000:04d}")
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, f"img{i:07d}.png"), "wb") as f:
                f.write(_png(i % 5000))  # 5000 distinct images: the rest are copies (dedup)
        o = os.path.join(tmp, f"out{n}")
        first = run_child("pipeline", d, o, ckpt, "")
        out.append({"what": f"stand-in sweep ({n} files, first)", **first})
        print(json.dumps(out[-1]), flush=True)
        again = run_child("pipeline", d, o, ckpt, "")
        out.append({"what": f"stand-in sweep ({n} files, nothing new)", **again})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, spec, out, ckpt, endpoint = sys.argv[2:7]
        print(json.dumps(child(kind, spec, out, ckpt, endpoint or None)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--s3", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--manifest", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--pipeline", type=int, nargs="*", default=[10_000])
    ap.add_argument("--checkpoint", default=os.environ.get("TRUFOR_WEIGHTS"),
                    help="any TruFor checkpoint: the stand-in only hashes it (default $TRUFOR_WEIGHTS)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        rows += bench_manifest(a.manifest, tmp)
        rows += bench_s3(a.s3, tmp)
        if a.pipeline:
            if not a.checkpoint:
                raise SystemExit("--pipeline needs --checkpoint or $TRUFOR_WEIGHTS (the stand-in records its sha256)")
            rows += bench_pipeline(a.pipeline, tmp, a.checkpoint)
    print(f"\n{'what':45s} {'n':>8s} {'wall s':>8s} {'per s':>9s} {'RSS base MB':>11s} {'peak MB':>8s} {'growth MB':>9s}")
    for r in rows:
        print(f"{r['what']:45s} {r['n']:8d} {r['wall_s']:8.1f} {r['per_s']:9.1f} {r['rss_base_mb']:11d} "
              f"{r['rss_peak_mb']:8d} {r['rss_growth_mb']:9d}" + (f"  commits {r['commits']}, ok {r['ok']}, to_scan "
                                                                  f"{r['to_scan']}" if "commits" in r else ""))


if __name__ == "__main__":
    main()
