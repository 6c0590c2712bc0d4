"""A generated labelled set (no model) for `evaluate`: rows, images, masks and maps shaped like a scan's.

Each forged image has a rectangular mask (a PNG, white = forged) and a stored map whose anomaly
logits are high inside a rectangle that overlaps the mask; pristine images get low logits with a
little noise. Scores are drawn so that forged images tend to score higher, with overlap. Every row
says ``weights_untrained`` = True (no model ran). Returns the TRUTH manifest's path and what was made.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.base import maps
from pipeline.base.schema import STATUS_OK, ScanRow, rows_to_table
from pipeline.base.storage import StorageConfig
from pipeline.base.store import STATE_COMPLETE, ResultWriter, RunRecord
from report_data import GENERATED_MODEL, WEIGHTS_SHA, generated_image

SOURCES = ("camera", "platform")


def _rect(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    rh, rw = int(rng.integers(h // 6, h // 2)), int(rng.integers(w // 6, w // 2))
    y, x = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
    return y, x, rh, rw


def make_labelled_set(output: str | Path, n_pristine: int, n_forged: int, size: tuple[int, int] = (96, 128),
                      seed: int = 0, write_images: bool = True, rows_per_part: int = 5000) -> dict:
    """Write OUTPUT (results table + maps), the images, the masks and ``<output>-truth.csv``."""
    rng = np.random.default_rng(seed)
    out = Path(output)
    img_dir, mask_dir, maps_root = out.parent / f"{out.name}-images", out.parent / f"{out.name}-masks", str(out / "maps")
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    lh, lw = -(-h // 4), -(-w // 4)
    now = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.timezone.utc)
    writer = ResultWriter(str(out), RunRecord(run_id="labelled", command="generated", input=str(img_dir),
                                              code_version="generated", weights_sha256=WEIGHTS_SHA),
                          "2026-12-05", StorageConfig(), rows_per_part, 1e9)
    common = dict(model_name=GENERATED_MODEL, weights_sha256=WEIGHTS_SHA, weights_untrained=True,
                  code_version="generated", torch_version="-", device="cpu", precision="fp32", run_id="labelled")
    truth_rows, batch = [], []
    for i in range(n_pristine + n_forged):
        forged = i >= n_pristine
        name = f"{'forged' if forged else 'pristine'}_{i:06d}"
        if write_images:
            rgb = generated_image(rng, h, w)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
            data = buf.getvalue()
            (img_dir / f"{name}.jpg").write_bytes(data)
        else:
            data = name.encode()
        sha = hashlib.sha256(data).hexdigest()
        margin = rng.standard_normal((lh, lw)).astype(np.float32) * 0.8 - 3.0
        mask_path = None
        if forged:
            y, x, rh, rw = _rect(rng, h, w)
            mask = np.zeros((h, w), np.uint8)
            mask[y:y + rh, x:x + rw] = 255
            mask_path = mask_dir / f"{name}.png"
            Image.fromarray(mask).save(mask_path)
            # The detector's region: the mask shifted a little (partial overlap, so F1 is between 0 and 1).
            dy, dx = int(rng.integers(-rh // 3, rh // 3 + 1)), int(rng.integers(-rw // 3, rw // 3 + 1))
            ys, xs = max(0, (y + dy) // 4), max(0, (x + dx) // 4)
            margin[ys:ys + max(1, rh // 4), xs:xs + max(1, rw // 4)] += 6.0
        conf = np.full((lh, lw), 2.0, np.float32)
        map_uri = maps.save(maps_root, sha, margin, conf, (h, w))[len(str(out)) + 1:]  # relative to OUTPUT
        score = float(rng.beta(5, 2) if forged else rng.beta(2, 5))
        source = SOURCES[i % len(SOURCES)]
        uri = str((img_dir / f"{name}.jpg").resolve())
        batch.append(ScanRow(uri=uri, status=STATUS_OK, size_bytes=len(data), etag_or_mtime="g", sha256=sha,
                             format="JPEG", width=w, height=h, score=score,
                             det_logit=float(np.log(score / (1 - score))), map_uri=map_uri,
                             preview_uri=maps.preview_uri(map_uri), map_codec=maps.MAP_CODEC,
                             scanned_at=now + dt.timedelta(seconds=i), elapsed_ms=1.0, **common))
        truth_rows.append({"uri": uri, "label": "forged" if forged else "pristine",
                           "mask": str(mask_path.resolve()) if mask_path else "", "source": source})
        if len(batch) >= rows_per_part:
            writer.add(rows_to_table(batch))
            batch = []
    if batch:
        writer.add(rows_to_table(batch))
    writer.close(STATE_COMPLETE)
    truth = out.parent / f"{out.name}-truth.csv"
    with open(truth, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["uri", "label", "mask", "source"])
        wr.writeheader()
        wr.writerows(truth_rows)
    return {"truth": str(truth), "images": str(img_dir), "masks": str(mask_dir), "rows": len(truth_rows)}
