"""How far ManTra-Net's float32 results are from the official float64 ones, per field and fixture, on
this CPU's kernels or another set (``--kernels``), for the float32 tolerances (tests/tolerances.py,
docs/numerics.md "ManTra-Net").

    python bench/mantranet_float.py --kernels native,sse41,avx2
Each kernel set runs in its own process (the environment picks oneDNN's and ATen's code paths).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRUFOR_SHARED", REPO.parent / "shared"))
FIX = SHARED / "fixtures" / "mantranet_parity"
NAMES = ("tiny_synthetic_25x37", "tampered1_crop256", "pristine1", "synthetic_odd_333x517")
KERNELS = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
           "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}}


def measure(names: list[str]) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from mantranet_harness import fields

    from mantranet_core import load_mantranet

    model, _ = load_mantranet(FIX / "mantranet_synth_ptrain4.h5")
    out = {}
    for name in names:
        z = np.load(FIX / f"{name}.npz")
        x = torch.from_numpy(z["input"]).permute(0, 3, 1, 2)  # (1, 3, H, W)
        got = fields(model, x)
        row = {}
        for f in ("logits", "mask", "glbstd", "featex_tl", "divstd_tl", "clstm_tl", "featex_chmean", "bnorm_chmean",
                  "divstd_chmean", "clstm_chmean"):
            ref = z["f64_" + f] if "f64_" + f in z else None
            if ref is None and f.endswith("_tl") and "f64_" + f[:-3] in z:  # tiny: full tensors only
                ref = z["f64_" + f[:-3]][..., :16, :16, :]
            if f == "mask":
                ref = 1 / (1 + np.exp(-z["f64_logits"]))
            if ref is not None:
                row[f] = float(np.abs(got[f] - ref).max())
        row["mask_vs_official_f32"] = float(np.abs(got["mask"] - z["mask"]).max())
        row["official_f32_mask_vs_f64"] = float(np.abs(z["mask"] - 1 / (1 + np.exp(-z["f64_logits"]))).max())
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", default="native,sse41")
    ap.add_argument("--names", default=",".join(NAMES))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    names = a.names.split(",")
    if a.child:
        print(json.dumps(measure(names)))
        return
    results = {}
    for k in a.kernels.split(","):
        env = {**os.environ, **KERNELS[k]}
        r = subprocess.run([sys.executable, __file__, "--child", "--names", a.names], env=env, capture_output=True,
                           text=True, timeout=3600)
        if r.returncode:
            raise SystemExit(f"{k}: {r.stderr.strip().splitlines()[-1:]}")
        results[k] = json.loads(r.stdout.strip().splitlines()[-1])
    fields_ = list(next(iter(next(iter(results.values())).values())))
    print("| kernels | input | " + " | ".join(fields_) + " |")
    print("|---|---|" + "---:|" * len(fields_))
    for k, per in results.items():
        for name, row in per.items():
            print(f"| {k} | {name} | " + " | ".join(f"{row[f]:.1e}" for f in fields_) + " |")
    print("worst over kernels and inputs: " + ", ".join(
        f"{f} {max(r[f] for per in results.values() for r in per.values()):.1e}" for f in fields_))


if __name__ == "__main__":
    main()
