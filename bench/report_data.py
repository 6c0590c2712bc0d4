"""A generated results set (no model): rows, images and maps shaped like a scan's, for the review page.

``make_results`` writes OUTPUT exactly as a scan does (committed Parquet parts listed in a run
manifest, content-addressed maps) so that ``trufor-scan report`` / ``show`` / ``export`` can be
measured at 100k+ rows and tested without running TruFor. Every row says what it is:
``model_name`` = ``GENERATED_MODEL`` and ``weights_untrained`` = True. The ``n_images`` best scores
belong to real generated JPEG files (with EXIF) and real maps; the other rows point to uris that
do not exist (they are never shown while k <= n_images) or are error / skipped rows.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.base import maps
from pipeline.base.schema import (ERROR_INPUT, ERROR_TRANSIENT, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, ScanRow,
                                  rows_to_table)
from pipeline.base.storage import StorageConfig
from pipeline.base.store import STATE_COMPLETE, ResultWriter, RunRecord

GENERATED_MODEL = "GENERATED (no model: bench/report_data.py)"
WEIGHTS_SHA = "0" * 64
ERRORS = (("{uri}: cannot decode: OSError: image file is truncated", ERROR_INPUT),
          ("{uri}: empty file (0 bytes)", ERROR_INPUT),
          ("read timed out after 60 s (--read-timeout)", ERROR_TRANSIENT))


def jpeg_with_exif(rgb: np.ndarray, make: str, model: str, software: str, quality: int = 90) -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = make, model, software
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def smooth_field(rng: np.random.Generator, h: int, w: int, cells: int = 6) -> np.ndarray:
    """A smooth random field in about [-1, 1] (bilinear upsampling of a coarse grid)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BILINEAR))


def generated_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.stack([smooth_field(rng, h, w, 5) for _ in range(3)], -1)
    noise = rng.standard_normal((h, w, 3)).astype(np.float32) * 0.08
    return np.clip((base * 0.35 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)


def generated_logits(rng: np.random.Generator, h: int, w: int, forged: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stride-4 (margin, confidence) logits: a bright square where ``forged``, low noise elsewhere."""
    lh, lw = -(-h // 4), -(-w // 4)
    margin = smooth_field(rng, lh, lw) * 1.5 - 2.5
    if forged:
        y, x = rng.integers(0, lh // 2), rng.integers(0, lw // 2)
        margin[y: y + lh // 3, x: x + lw // 3] += 6.0
    conf = smooth_field(rng, lh, lw, 4) * 2.0 + 1.0
    return margin, conf


def make_results(output: str | Path, n_rows: int, n_images: int, seed: int = 0, size: tuple[int, int] = (192, 256),
                 run_id: str = "generated", rows_per_part: int = 25_000, extra: list[dict] | None = None,
                 uri_prefix: str | None = None) -> dict:
    """Write a generated results set; returns {"images": [paths], "rows": n, "top": [uris by score]}.

    ``extra``: more rows (ScanRow fields) appended as they are, after the generated ones, for tests.
    ``uri_prefix``: the image rows' uris are ``<uri_prefix>/<file name>`` (e.g. an s3:// prefix the
    caller uploads ``<output>-images/`` to) instead of the local paths.
    """
    rng = np.random.default_rng(seed)
    out = Path(output)
    img_dir, maps_root = out.parent / f"{out.name}-images", str(out / "maps")
    img_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    now = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.timezone.utc)
    writer = ResultWriter(str(out), RunRecord(run_id=run_id, command="generated", input=str(img_dir),
                                              code_version="generated", weights_sha256=WEIGHTS_SHA),
                          "2026-11-23", StorageConfig(), rows_per_part, 1e9)
    common = dict(model_name=GENERATED_MODEL, weights_sha256=WEIGHTS_SHA, weights_untrained=True,
                  code_version="generated", torch_version="-", device="cpu", precision="fp32", run_id=run_id)
    # The real images get the best scores, so that a top-k page with k <= n_images shows only them.
    top_scores = np.sort(rng.uniform(0.6, 1.0, n_images))[::-1]
    rest_scores = rng.beta(1.2, 6.0, max(0, n_rows - n_images)) * 0.6
    images, top, batch = [], [], []
    for i in range(n_rows):
        t = now + dt.timedelta(seconds=i)
        if i < n_images:
            rgb = generated_image(rng, h, w)
            data = jpeg_with_exif(rgb, ("Canon", "NIKON", "Apple")[i % 3], f"Model {i % 7}",
                                  ("", "Adobe Photoshop 25.0", "GIMP 2.10")[i % 3])
            path = img_dir / f"img_{i:05d}.jpg"
            path.write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            margin, conf = generated_logits(rng, h, w, forged=i % 2 == 0)
            uri = maps.save(maps_root, sha, margin, conf, (h, w))[len(str(out)) + 1:]  # relative to OUTPUT
            score = float(top_scores[i])
            row = ScanRow(uri=f"{uri_prefix}/{path.name}" if uri_prefix else str(path), status=STATUS_OK, size_bytes=len(data), etag_or_mtime="g", sha256=sha,
                          format="JPEG", width=w, height=h, exif_make=("Canon", "NIKON", "Apple")[i % 3],
                          exif_model=f"Model {i % 7}", exif_software=("", "Adobe Photoshop 25.0", "GIMP 2.10")[i % 3] or None,
                          score=score, det_logit=float(np.log(score / (1 - score))), frac_anom=0.1, frac_anom_conf=0.05 + 0.01 * (i % 5),
                          max_anom_conf=0.5 + 0.001 * i, conf_mean=0.7, map_uri=uri, preview_uri=maps.preview_uri(uri),
                          map_codec=maps.MAP_CODEC, scanned_at=t, elapsed_ms=1.0, **common)
            images.append(str(path))
            top.append(row.uri)
        else:
            uri = f"s3://generated-archive/day{i % 30:02d}/{i:07d}.jpg"
            kind = rng.random()
            if kind < 0.05:
                msg, ek = ERRORS[i % len(ERRORS)]
                row = ScanRow(uri=uri, status=STATUS_ERROR, error=msg.format(uri=uri), error_kind=ek, scanned_at=t,
                              **common)
            elif kind < 0.06:
                row = ScanRow(uri=uri, status=STATUS_SKIPPED, error="not an image extension", scanned_at=t, **common)
            else:
                score = float(rest_scores[i - n_images])
                sha = hashlib.sha256(uri.encode()).hexdigest()
                row = ScanRow(uri=uri, status=STATUS_OK, size_bytes=100_000, sha256=sha, format="JPEG", width=w,
                              height=h, score=score, frac_anom=0.01, frac_anom_conf=0.0, max_anom_conf=0.1,
                              conf_mean=0.5, map_uri=maps.map_path(maps.MAPS_DIR, sha), scanned_at=t, **common)
        batch.append(row)
        if len(batch) >= 10_000:
            writer.add(rows_to_table(batch))
            batch = []
    for d in extra or []:
        batch.append(ScanRow(**{**common, "scanned_at": now, **d}))
    if batch:
        writer.add(rows_to_table(batch))
    writer.close(STATE_COMPLETE)
    return {"images": images, "rows": n_rows + len(extra or []), "top": top}
