"""Reduced precision (`--precision bf16|fp16`) against fp32: how far the score and maps move.

    python bench/precision.py --checkpoint trufor.pth.tar [--n 50] [--modes bf16 fp16] [--device cuda]

For the fixture images (../shared/fixtures/images, when present) and a generated set of N images
(crops of scikit-image's photographs, 256-512 px, half with a pasted region from another photo,
re-saved as JPEG at random quality; seed 0), per mode: max and mean |score - fp32 score|, max and
99th-percentile |map - fp32 map| over all pixels, the same for the confidence map, the share of
images whose score falls on the other side of 0.5 than in fp32, and images/s of both.

fp16 on a CPU has no fast convolution kernels (about 30x slower than fp32 here): it is measured
only with ``--device cuda`` unless ``--fp16-on-cpu`` is given.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trufor_core import load_trufor  # noqa: E402
from trufor_core.image import decode_rgb, to_model_input  # noqa: E402
from trufor_core.model import autocast, describe_device  # noqa: E402

FIXTURE_IMAGES = os.path.join(REPO, "..", "shared", "fixtures", "images")


def generated_set(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    import skimage.data as skd

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle", "hubble_deep_field")
    photos = []
    for name in names:
        img = getattr(skd, name)()
        img = img[0] if isinstance(img, tuple) else img
        photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = photos[rng.integers(len(photos))]
        h, w = (int(rng.integers(256, min(512, s) + 1)) for s in src.shape[:2])
        y, x = rng.integers(0, src.shape[0] - h + 1), rng.integers(0, src.shape[1] - w + 1)
        img = src[y:y + h, x:x + w].copy()
        if i % 2:  # a splice from another photo
            other = photos[rng.integers(len(photos))]
            ph, pw = h // 3, w // 3
            oy, ox = rng.integers(0, other.shape[0] - ph + 1), rng.integers(0, other.shape[1] - pw + 1)
            ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
            img[ty:ty + ph, tx:tx + pw] = other[oy:oy + ph, ox:ox + pw]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(70, 98)))
        rgb, _ = decode_rgb(buf.getvalue())
        out.append((f"gen{i:02d}{'_spliced' if i % 2 else ''}", rgb))
    return out


def fixture_set() -> list[tuple[str, np.ndarray]]:
    if not os.path.isdir(FIXTURE_IMAGES):
        return []
    names = ("pristine1.jpg", "tampered2.png", "synthetic_odd_333x517.png")
    return [(n, decode_rgb(os.path.join(FIXTURE_IMAGES, n))[0]) for n in names
            if os.path.isfile(os.path.join(FIXTURE_IMAGES, n))]


def run(model, images, device, precision):
    res, t0 = [], time.perf_counter()
    for _, rgb in images:
        with torch.inference_mode(), autocast(device, precision):
            res.append(model(to_model_input(rgb).to(device)).results()[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return res, len(images) / (time.perf_counter() - t0)


def compare(ref, got) -> dict:
    ds = np.array([abs(g.score - r.score) for r, g in zip(ref, got)])
    dm = np.concatenate([np.abs(g.anomaly_map - r.anomaly_map).ravel() for r, g in zip(ref, got)])
    dc = np.concatenate([np.abs(g.confidence_map - r.confidence_map).ravel() for r, g in zip(ref, got)])
    cross = np.mean([(g.score >= 0.5) != (r.score >= 0.5) for r, g in zip(ref, got)])
    return {"score_max": ds.max(), "score_mean": ds.mean(), "map_max": dm.max(), "map_p99": np.quantile(dm, 0.99),
            "conf_max": dc.max(), "conf_p99": np.quantile(dc, 0.99), "crossing_0.5": cross}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=os.environ.get("TRUFOR_WEIGHTS"), required=not os.environ.get("TRUFOR_WEIGHTS"))
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--modes", nargs="*", default=["bf16", "fp16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fp16-on-cpu", action="store_true")
    a = ap.parse_args()
    device = torch.device(a.device)
    model, info = load_trufor(a.checkpoint, device=device)
    print(f"weights {info.path} (sha256 {info.sha256[:12]}{', UNTRAINED' if info.untrained else ''}), "
          f"device {describe_device(device)}, torch {torch.__version__}")
    if info.untrained:
        print("NOTE: untrained (synthesized) weights: their scores sit near 0.5, so 'crossing 0.5' is inflated; "
              "the deviations are of the same computation, the official weights may differ")
    sets = [("fixtures", fixture_set()), (f"generated ({a.n})", generated_set(a.n))]
    print(f"\n{'set':16s} {'mode':5s} {'img/s':>7s} {'fp32 img/s':>10s} {'|dscore| max':>12s} {'mean':>9s} "
          f"{'|dmap| max':>10s} {'p99':>9s} {'|dconf| max':>11s} {'p99':>9s} {'cross 0.5':>9s}")
    for label, images in sets:
        if not images:
            print(f"{label:16s} (none: ../shared absent)")
            continue
        ref, ref_rate = run(model, images, device, "fp32")
        for mode in a.modes:
            if mode == "fp16" and device.type == "cpu" and not a.fp16_on_cpu:
                print(f"{label:16s} {mode:5s} (not run on a CPU: no fast fp16 kernels; --fp16-on-cpu to force)")
                continue
            got, rate = run(model, images, device, mode)
            c = compare(ref, got)
            print(f"{label:16s} {mode:5s} {rate:7.2f} {ref_rate:10.2f} {c['score_max']:12.2e} {c['score_mean']:9.2e} "
                  f"{c['map_max']:10.2e} {c['map_p99']:9.2e} {c['conf_max']:11.2e} {c['conf_p99']:9.2e} "
                  f"{c['crossing_0.5']:9.1%}")


if __name__ == "__main__":
    main()
