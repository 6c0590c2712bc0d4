"""Score shift under platform-like recompression, and the thresholds a calibration picks
(`make bench-calibration`).

Pristine pictures (crops of the fixture photographs and scikit-image's) go through platform-like
chains: resize to 1080 px of an 1800 px original (x0.6), JPEG at one quality, then JPEG again at a
second (the chain applied twice: the second resize is a no-op). Each chain is one source; the
originals (JPEG 95) another. All are scanned with the real pipeline (`run_scan`, local Ray), then
`calibrate` sets each source's threshold for the target false-positive rate. Printed: the paired
score shift per chain (chain minus original, same picture), each source's threshold with the
false-positive rate reached and its exact 95% interval, and the share of verdicts that the
support rule makes inconclusive.

With untrained weights (the default: synthesized, like the tests) the scores mean nothing
forensically: this measures the mechanics and the spread only; run it with the official weights
(--checkpoint) for figures that mean something.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared"
# source -> (first JPEG quality, second JPEG quality); None: the camera original (JPEG 95 once)
CHAINS = {"camera": None, "platform_q85_80": (85, 80), "platform_q80_75": (80, 75), "platform_q75_70": (75, 70)}
PLATFORM_SCALE = 0.6  # 1800 px -> 1080 px


def photographs() -> list[np.ndarray]:
    import skimage.data as sd

    out = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SHARED / "fixtures" / "images").glob("pristine*"))]
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "colorwheel"):
        try:
            a = getattr(sd, name)()
        except (AttributeError, ModuleNotFoundError, OSError):
            continue
        out.append(np.ascontiguousarray((np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]).astype(np.uint8)))
    return out


def _jpeg(a: np.ndarray, q: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def _chain(a: np.ndarray, chain: tuple[int, int] | None) -> bytes:
    if chain is None:
        return _jpeg(a, 95)
    im = Image.fromarray(a)
    small = np.asarray(im.resize((round(im.width * PLATFORM_SCALE), round(im.height * PLATFORM_SCALE)),
                                 Image.Resampling.BICUBIC))
    once = np.asarray(Image.open(io.BytesIO(_jpeg(small, chain[0]))).convert("RGB"))
    return _jpeg(once, chain[1])


def make_set(root: Path, per_source: int, side: int, seed: int) -> Path:
    """``per_source`` crops, each through every chain; returns the reference manifest (uri, source)."""
    rng = np.random.default_rng(seed)
    photos = [p for p in photographs() if min(p.shape[:2]) >= side]
    lines = ["uri,source"]
    for i in range(per_source):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - side + 1), rng.integers(0, p.shape[1] - side + 1)
        crop = np.ascontiguousarray(p[y:y + side, x:x + side])
        for source, chain in CHAINS.items():
            f = root / source / f"img{i:04d}.jpg"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(_chain(crop, chain))
            lines.append(f"{f},{source}")
    manifest = root / "reference.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-source", type=int, default=60)
    ap.add_argument("--side", type=int, default=384, help="crop side of the originals, pixels")
    ap.add_argument("--target-fpr", type=float, default=0.05)
    ap.add_argument("--checkpoint", default=os.environ.get("TRUFOR_WEIGHTS"),
                    help="TruFor weights (default $TRUFOR_WEIGHTS, else untrained weights synthesized here)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from pipeline.base.sql import run_sql
    from pipeline.results.calibration import CalibrateConfig, calibrate, connector
    from pipeline.scan.driver import ScanConfig, run_scan

    with tempfile.TemporaryDirectory(prefix="bench-cal-") as tmp:
        tmp = Path(tmp)
        ckpt = a.checkpoint
        if not ckpt:
            from jobs.cli import main as cli

            ckpt = str(tmp / "synth.pth.tar")
            cli(["weights", "synthesize", "--out", ckpt, "--noiseprint", str(SHARED / "weights" / "noiseprint++.th")])
        manifest = make_set(tmp / "set", a.per_source, a.side, a.seed)
        out = str(tmp / "out")
        t = time.perf_counter()
        s = run_scan(ScanConfig(input=str(manifest), output=out, checkpoint=ckpt, allow_download=False),
                     log=lambda m: None)
        scan_s = time.perf_counter() - t
        source_of = "regexp_extract(uri, '/set/([^/]+)/img', 1)"
        cal = calibrate(CalibrateConfig(output=out, reference=str(manifest), target_fpr=a.target_fpr,
                                        source_of=source_of))
        _, rows = run_sql(out, "SELECT source, regexp_extract(uri, 'img[0-9]+', 0) AS pic, score, verdict FROM latest "
                               "WHERE status = 'ok'", connector=connector(cal))
    by = {}
    for src, pic, score, verdict in rows:
        by.setdefault(src, {})[pic] = (score, verdict)
    base = by["camera"]
    summary = {"images": s.ok, "scan_s": round(scan_s, 1), "weights_untrained": not a.checkpoint,
               "target_fpr": a.target_fpr, "per_source": a.per_source, "side": a.side, "sources": []}
    for e in cal["sources"]:
        src = e["source"]
        shift = [by[src][p][0] - base[p][0] for p in by[src] if p in base]
        summary["sources"].append({
            "source": src, "n": e["n"], "score_median": round(e["pristine_score_median"], 4),
            "shift_vs_camera_median": round(float(np.median(shift)), 4),
            "shift_vs_camera_iqr": [round(float(np.percentile(shift, 25)), 4), round(float(np.percentile(shift, 75)), 4)],
            "threshold": round(e["threshold"], 4), "false_positives": e["false_positives"],
            "fpr": round(e["fpr"], 4), "fpr_ci95": [round(x, 4) for x in e["fpr_ci95"]],
            "inconclusive": sum(v == "inconclusive" for _, v in by[src].values()),
            "flagged_by_camera_threshold": sum(sc > next(x["threshold"] for x in cal["sources"] if x["source"] == "camera")
                                               for sc, _ in by[src].values())})
    summary["warnings"] = cal["warnings"]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
