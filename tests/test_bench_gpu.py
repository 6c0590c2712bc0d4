"""`make bench-gpu` on a machine without CUDA, and all its code paths on the CPU as a bare GPU machine has them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_without_cuda_it_says_so_and_exits_0():
    p = subprocess.run([sys.executable, "bench/bench_gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)})
    assert p.returncode == 0 and "no CUDA device on this machine; nothing measured" in p.stdout, p.stderr[-2000:]


def test_every_code_path_runs_without_ray_duckdb_or_fsspec():
    """The GPU machines have torch, numpy, Pillow and pyarrow only: the model loop, the official loop
    and the predictor fed from a decode thread pool must all run with nothing else importable."""
    code = ("import sys\n"
            "for m in ('fsspec', 's3fs', 'duckdb', 'ray', 'tqdm', 'botocore', 'boto3', 'skimage'): sys.modules[m] = None\n"
            "sys.path.insert(0, 'bench')\nimport bench_gpu\n"
            "sys.exit(bench_gpu.main(['--cpu-dry-run', '--precisions', 'fp32']))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    row = [ln.split() for ln in p.stdout.splitlines() if ln.strip().startswith("0.02")]
    assert len(row) == 1 and row[0][2:4] == ["fp32", "eager"], p.stdout
    model, predictor, official = float(row[0][4]), float(row[0][7]), float(row[0][9])
    in_forward = float(row[0][8].rstrip("%"))  # the predictor's timings, read back from its JSON lines
    assert model > 0 and predictor > 0 and official > 0 and 0 < in_forward <= 100
