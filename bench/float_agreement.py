"""How far float32 TruFor is from the exact (float64) result, per field, on several CPU kernel sets.

float32 outputs depend on which kernels oneDNN and ATen pick (AVX-512, AVX2, SSE4.1/scalar): they
sum in another order. This measures max |float32 - float64| for every output field on each kernel
set, next to the tolerance the tests use for that field (tests/tolerances.py), so the tolerances
stay measured figures rather than guesses.

References: the official float64 outputs where ../shared has them (pristine1, synthetic_odd);
for the other inputs (tampered1 1536x2048, tampered2) our own float64 bounded-memory path, which
the float64 parity tier proves equal to the official code to 1e-10 (cached: it is CPU-independent).

Each kernel set runs in its own process, because the variables must be set before torch loads:

    python bench/float_agreement.py [--kernels native,avx2,sse41] [--images pristine1.jpg,...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import FIXTURES_F64, IMAGES, NOISEPRINT, SHARED  # noqa: E402 - the tests' paths to ../shared

KERNELS = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"},
    # The compiled path (trufor_core.backends): OpenVINO's own kernels for the encoder and decoders,
    # eager torch for the rest; and limited to AVX2 (OpenVINO fails under SSE4.1), as `make test` runs it.
    "openvino": {},
    "openvino-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
DEFAULT_IMAGES = "pristine1.jpg,synthetic_odd_333x517.png,tampered2.png,tampered1.png"
# Derived by the harness, not stored in any fixture.
SKIP = {"imgsize", "alt_anomaly_maxabsdiff"}


def _models(checkpoint: str, dtype):
    from trufor_core import load_trufor

    model, _ = load_trufor(checkpoint, dtype=dtype)
    alt, _ = load_trufor(checkpoint, variant="train_test", dtype=dtype)
    return model, alt


def make_reference(image: Path, checkpoint: str, out: Path) -> None:
    """Our float64 outputs for one image (default bounded path), saved as an npz."""
    import torch

    from parity_harness import run_fixture_image
    from trufor_core import EvalConfig

    model, alt = _models(checkpoint, torch.float64)
    got = run_fixture_image(model, image, EvalConfig(), alt)
    tmp = out.with_name(out.name + ".part.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in got.items() if k not in SKIP})
    tmp.replace(out)


def measure(kernel: str, refs: dict[str, str], checkpoint: str) -> dict:
    """float32 run of every image under this process's kernels: max |diff| per field vs its reference.

    Where the reference is the official float64 output, our float64 model runs too (its max |diff|
    over all fields is the exactness figure, which must not depend on the kernels).
    """
    import tempfile

    import torch

    from parity_harness import run_backend_image, run_fixture_image
    from tolerances import maxdiff
    from trufor_core import EvalConfig
    from trufor_core.backends import make_runner
    from trufor_core.model import describe_device

    model, alt = _models(checkpoint, torch.float32)
    runner = None
    if kernel.startswith("openvino"):
        runner = make_runner(model, "openvino", "float-agreement", cache=Path(tempfile.mkdtemp()))
    model64 = alt64 = None
    result = {"kernel": kernel, "device": describe_device(torch.device("cpu")), "images": {}}
    for image, ref_path in refs.items():
        with np.load(ref_path) as z:
            ref = {k: z[k] for k in z.files}
        t0 = time.perf_counter()
        if runner is None:
            got = run_fixture_image(model, IMAGES / image, EvalConfig(), alt)
        else:
            got, path = run_backend_image(runner, IMAGES / image)
            if path != runner.name:
                raise RuntimeError(f"{image} took the path {path!r}, not {runner.name}")
        secs = time.perf_counter() - t0
        diffs = {f: maxdiff(got[f], ref[f]) for f in sorted(set(ref) - SKIP) if f in got}
        result["images"][image] = {"seconds": secs, "reference": Path(ref_path).name, "maxdiff": diffs}
        if Path(ref_path).parent == FIXTURES_F64 and runner is None:
            if model64 is None:
                model64, alt64 = _models(checkpoint, torch.float64)
            got = run_fixture_image(model64, IMAGES / image, EvalConfig(), alt64)
            result["images"][image]["f64_maxdiff"] = max(maxdiff(got[f], ref[f]) for f in set(ref) - SKIP)
    return result


def _run_child(args: list[str], env_extra: dict[str, str]) -> None:
    # "native" must mean the CPU's own choice even when the caller runs under the kernel variables.
    env = {k: v for k, v in os.environ.items() if k not in KERNELS["sse41"]}
    env.update(env_extra)
    subprocess.run([sys.executable, __file__, *args], env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated, from {sorted(KERNELS)}")
    ap.add_argument("--images", default=DEFAULT_IMAGES, help=f"comma-separated names under {IMAGES}")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "trufor-scan" / "float_agreement"))
    ap.add_argument("--json", help="also write the measurements here")
    ap.add_argument("--child-make-ref", nargs=3, metavar=("IMAGE", "CHECKPOINT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--child-measure", nargs=4, metavar=("KERNEL", "REFS_JSON", "CHECKPOINT", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_make_ref:
        image, ckpt, out = args.child_make_ref
        make_reference(Path(image), ckpt, Path(out))
        return
    if args.child_measure:
        kernel, refs_json, ckpt, out = args.child_measure
        Path(out).write_text(json.dumps(measure(kernel, json.loads(refs_json), ckpt)))
        return

    from tolerances import F32_ATOL, f32_kind
    from trufor_core.checkpoint import sha256_file, write_synthetic_checkpoint

    kernels = args.kernels.split(",")
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise SystemExit(f"unknown kernel set(s) {unknown}; choose from {sorted(KERNELS)}")
    if not NOISEPRINT.is_file():
        raise SystemExit(f"needs ../shared (Noiseprint++ weights) at {SHARED}")
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    ckpt = cache / "UNTRAINED-fixture.pth.tar"
    if not ckpt.is_file():
        write_synthetic_checkpoint(ckpt, NOISEPRINT)
    wsha = sha256_file(ckpt)[:16]

    refs: dict[str, str] = {}
    for image in args.images.split(","):
        official = FIXTURES_F64 / f"{Path(image).stem}.npz"
        if official.is_file():
            refs[image] = str(official)
            continue
        key = hashlib.sha256((IMAGES / image).read_bytes()).hexdigest()[:16]
        ours = cache / f"f64-{Path(image).stem}-{key}-{wsha}.npz"
        if not ours.is_file():
            print(f"computing our float64 reference for {image} (once; cached in {cache})", file=sys.stderr)
            t0 = time.perf_counter()
            _run_child(["--child-make-ref", str(IMAGES / image), str(ckpt), str(ours)], {})
            print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        refs[image] = str(ours)

    runs = []
    for k in kernels:
        out = cache / f"measure-{k}.json"
        print(f"float32 under kernel set {k} {KERNELS[k] or '(this CPU as it is)'}", file=sys.stderr)
        _run_child(["--child-measure", k, json.dumps(refs), str(ckpt), str(out)], KERNELS[k])
        runs.append(json.loads(out.read_text()))

    # Worst field of each tolerance kind, over all images, per kernel set.
    kinds = sorted(F32_ATOL, key=list(F32_ATOL).index)
    worst = {r["kernel"]: {k: None for k in kinds} for r in runs}  # None: not computed by that path
    for r in runs:
        for img in r["images"].values():
            for field, d in img["maxdiff"].items():
                kind = f32_kind(field)
                worst[r["kernel"]][kind] = max(worst[r["kernel"]][kind] or 0.0, d)
    print("\nmax |float32 - float64| over", ", ".join(refs), "(references:",
          ", ".join(f"{i}: {'official' if 'f64-' not in Path(p).name else 'ours'}" for i, p in refs.items()) + ")")
    head = "| field | " + " | ".join(f"{r['kernel']}: {r['device']}" for r in runs) + " | tolerance | worst / tolerance |"
    print(head)
    print("|" + "---|" * (len(runs) + 3))
    for kind in kinds:
        vals = [worst[r["kernel"]][kind] for r in runs]
        seen = [v for v in vals if v is not None]
        print(f"| {kind} | " + " | ".join("-" if v is None else f"{v:.1e}" for v in vals)
              + f" | {F32_ATOL[kind]:.1g} | {max(seen) / F32_ATOL[kind]:.2f} |")
    f64 = [(r["kernel"], i, v["f64_maxdiff"]) for r in runs for i, v in r["images"].items() if "f64_maxdiff" in v]
    if f64:
        print("\nour float64 vs the official float64, max |diff| over every field: "
              + "; ".join(f"{k} {i} {d:.1e}" for k, i, d in f64))
    print("\nper image, score |diff| and seconds for the float32 forward (+ alt decoders):")
    for image in refs:
        print(f"  {image}: " + "; ".join(
            f"{r['kernel']} {r['images'][image]['maxdiff']['score']:.1e} in {r['images'][image]['seconds']:.1f} s"
            for r in runs))
    if args.json:
        Path(args.json).write_text(json.dumps({"references": refs, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
