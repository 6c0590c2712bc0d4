"""How well the scanned rows agree with a ground truth: image- and pixel-level figures per detector.

Nothing is scored again: the rows (scores, map references) come from OUTPUT's ``latest`` view,
joined on uri with the TRUTH entries (``pipeline.results.truth``). Pixel figures need each forged
image's map and mask: those are read and compared in worker processes, a bounded number in flight,
each returning a few numbers, so the driver never holds maps (100k images run in bounded memory).
The conventions are those of ``pipeline.results.metrics``.
"""
from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import time
from dataclasses import dataclass

import numpy as np

from pipeline.base import maps
from pipeline.base.storage import StorageConfig, one_line, redact
from pipeline.base.store import resolve_ref
from pipeline.results import metrics
from pipeline.results.truth import FORGED, PRISTINE, Truth, load_mask

EVALUATION_VERSION = 1
FPR_TARGETS = (0.01, 0.05)
ALL = "all"
# Image size bands (pixels): a detector can do well on large camera originals and poorly on small reposts.
SIZE_BANDS = ((0, 1_000_000, "< 1 MP"), (1_000_000, 4_000_000, "1-4 MP"), (4_000_000, math.inf, ">= 4 MP"))
PIXEL_FIGURES = ("f1", "f1_best", "mcc", "iou", "pixel_auc")
STALL_S = 300.0  # no worker finished an image for this long: the rest are reported, never waited on
UNTRAINED_WARNING = ("UNTRAINED weights (weights synthesize): these figures check the mechanics only; they are not "
                     "TruFor's accuracy")


@dataclass(frozen=True)
class Detector:
    """A detector whose outputs are in the rows: its image-level score column, its map column, how its
    map is read, and its fixed operating point (None: only threshold-free figures)."""

    name: str
    label: str
    score: str
    map_ref: str
    threshold: float | None

    def load_map(self, output: str, ref: str, storage: StorageConfig) -> np.ndarray:
        uri = resolve_ref(output, ref)
        if self.name == "trufor":
            return maps.load(uri, storage)[0]
        return maps.load_lowres_map(uri, storage)


DETECTORS = (
    Detector("trufor", "TruFor", "score", "map_uri", 0.5),
    # Its heat map is not a probability and its fixed threshold lives in the fitted model file,
    # not in the rows: threshold-free figures only.
    Detector("noise_anomaly", "Noiseprint++ noise anomaly (second opinion)", "noise_anomaly_score",
             "noise_anomaly_map_uri", None),
    # Its map is a sigmoid output (a likelihood), so 0.5 is its own decision point, as TruFor's; its image
    # score is the map's maximum (mantranet_core.image_score).
    Detector("mantranet", "ManTra-Net (second detector)", "mantranet_score", "mantranet_map_uri", 0.5),
)
DETECTOR_BY_NAME = {d.name: d for d in DETECTORS}

ROW_SQL = """
SELECT t.uri, t.label, t.mask, t.source, l.status, l.error, l.width, l.height, l.weights_untrained,
       l.weights_sha256, l.sha256, l.preview_uri, {detector_columns}{verdict}
FROM truth t LEFT JOIN latest l USING (uri)
ORDER BY t.uri
"""


def size_band(width, height) -> str | None:
    if width is None or height is None:
        return None
    px = int(width) * int(height)
    return next(name for lo, hi, name in SIZE_BANDS if lo <= px < hi)


def image_task(output: str, storage: StorageConfig, uri: str, mask_uri: str, refs: dict[str, str],
               shape: tuple[int, int], inverted: bool) -> dict:
    """One forged image's pixel figures per detector (runs in a worker process); never raises."""
    out: dict = {"uri": uri, "pixel": {}, "notes": [], "problems": []}
    try:
        mask, note = load_mask(mask_uri, storage, shape)
    except Exception as e:  # noqa: BLE001 - this mask's one line
        out["problems"].append(f"mask {mask_uri}: {one_line(redact(str(e) or type(e).__name__), 300)}")
        return out
    if note:
        out["notes"].append(note)
    frac = float(mask.mean())
    out["mask_forged_fraction"] = frac
    if frac in (0.0, 1.0):
        out["problems"].append(f"mask {mask_uri} is all {'forged (white)' if frac else 'pristine (black)'} for a "
                               "forged image: no pixel figures (check the mask and the white = forged convention)")
        return out
    for name, ref in refs.items():
        det = DETECTOR_BY_NAME[name]
        try:
            values = det.load_map(output, ref, storage)
            if values.shape != mask.shape:
                raise ValueError(f"map of {values.shape[1]}x{values.shape[0]} vs image {shape[1]}x{shape[0]}")
            out["pixel"][name] = metrics.pixel_metrics(mask, values, det.threshold, inverted)
        except Exception as e:  # noqa: BLE001 - this map's one line
            out["problems"].append(f"{det.label} map: {one_line(redact(str(e) or type(e).__name__), 300)}")
    return out


def _one_thread() -> None:
    """Worker processes use one thread each (torch upsamples the maps): the pool is the parallelism."""
    import torch

    torch.set_num_threads(1)


def _run_tasks(tasks: list[tuple], workers: int, log) -> list[dict]:
    """``image_task`` over ``tasks``: inline with workers <= 1, else on a spawned process pool with at
    most 4 x workers images in flight; a stall of STALL_S turns what is left into problem lines."""
    if not tasks:
        return []
    if workers <= 1:
        return [image_task(*t) for t in tasks]
    results, pending, it, started = [], {}, iter(tasks), time.monotonic()
    done_count, last_log = 0, time.monotonic()
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_one_thread)
    try:
        while True:
            while len(pending) < 4 * workers:
                t = next(it, None)
                if t is None:
                    break
                pending[pool.submit(image_task, *t)] = t
            if not pending:
                break
            done, _ = cf.wait(pending, timeout=STALL_S, return_when=cf.FIRST_COMPLETED)
            if not done:
                stalled = list(pending.values()) + list(it)
                log(f"evaluate: no image finished in {STALL_S:g} s: {len(stalled)} images not evaluated at pixel level")
                results += [{"uri": t[2], "pixel": {}, "notes": [], "problems": [
                    f"reading its map or mask did not finish within {STALL_S:g} s (not evaluated at pixel level)"]}
                    for t in stalled]
                break
            for f in done:
                t = pending.pop(f)
                try:
                    results.append(f.result())
                except Exception as e:  # noqa: BLE001 - a worker that died: this image's line
                    results.append({"uri": t[2], "pixel": {}, "notes": [], "problems": [
                        f"worker failed: {type(e).__name__}: {one_line(str(e), 200)}"]})
                done_count += 1
            if time.monotonic() - last_log > 10:
                log(f"evaluate: {done_count}/{len(tasks)} masked images ({time.monotonic() - started:.0f} s)")
                last_log = time.monotonic()
    finally:
        for p in list(getattr(pool, "_processes", {}).values()):  # a stalled worker is not waited for
            if pending and p.is_alive():
                p.kill()
        pool.shutdown(wait=not pending, cancel_futures=True)
    return results


def _image_figures(labels: np.ndarray, scores: np.ndarray, threshold: float | None, verdicts: np.ndarray | None,
                   n_boot: int, seed: int) -> dict:
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    out: dict = {"pristine": n_neg, "forged": n_pos}
    if n_pos == 0 or n_neg == 0:
        out["note"] = "needs both pristine and forged images"
        return out

    def ci(fn):
        return metrics.bootstrap_ci(fn, (labels, scores), n_boot, seed, strata=labels)

    out["roc_auc"] = {"value": metrics.roc_auc(labels, scores), "ci95": ci(metrics.roc_auc)}
    if threshold is not None:
        def bacc(y, s):
            return metrics.balanced_accuracy(y, s >= threshold)
        out[f"balanced_accuracy_at_{threshold:g}"] = {"value": bacc(labels, scores), "ci95": ci(bacc)}
    if verdicts is not None:
        def bacc_cal(y, v):
            return metrics.balanced_accuracy(y, v)
        out["balanced_accuracy_calibrated"] = {
            "value": bacc_cal(labels, verdicts),
            "ci95": metrics.bootstrap_ci(bacc_cal, (labels, verdicts), n_boot, seed, strata=labels)}
    for target in FPR_TARGETS:
        at = metrics.tpr_at_fpr(labels, scores, target)

        def tpr(y, s, target=target):
            r = metrics.tpr_at_fpr(y, s, target)
            return None if r is None else r["tpr"]
        out[f"tpr_at_fpr_{target:g}"] = {**at, "ci95": ci(tpr)}
    return out


def _pixel_figures(per_image: list[dict], inverted: bool, n_boot: int, seed: int) -> dict:
    names = PIXEL_FIGURES + (("f1_inverted_max",) if inverted else ())
    out: dict = {"forged_images": len(per_image)}
    for name in names:
        vals = np.array([p[name] for p in per_image if p.get(name) is not None], np.float64)
        if not len(vals):
            continue
        out[name] = {"mean": float(vals.mean()), "n": int(len(vals)),
                     "ci95": metrics.bootstrap_ci(lambda v: float(v.mean()), (vals,), n_boot, seed)}
    return out


def _groups(rows: list[dict]) -> dict[str, list[int]]:
    """Row indices by group: all, each source (when more than one), each size band (when more than one)."""
    groups = {ALL: list(range(len(rows)))}
    for key, prefix in (("source", "source="), ("band", "size=")):
        values = sorted({r[key] for r in rows if r[key] is not None})
        if len(values) > 1:
            for v in values:
                groups[prefix + v] = [i for i, r in enumerate(rows) if r[key] == v]
    return groups


def evaluate(output: str, truth: Truth, storage: StorageConfig | None = None, calibration: dict | None = None,
             workers: int = 0, n_boot: int = 1000, seed: int = 0, inverted: bool = False,
             log=lambda m: None) -> tuple[dict, list[dict]]:
    """(evaluation: every figure keyed by detector, level and group; the per-image records)."""
    import pyarrow as pa

    from pipeline.base.sql import connect

    storage = storage or StorageConfig()
    t0 = time.monotonic()
    table = pa.table({k: pa.array([getattr(e, k) for e in truth.entries], pa.string())
                      for k in ("uri", "label", "mask", "source")})
    det_cols = ", ".join(f"l.{d.score} AS {d.name}_score, l.{d.map_ref} AS {d.name}_map" for d in DETECTORS)
    if calibration is not None:
        from pipeline.results.calibration import connector

        con = connector(calibration)(output, storage)
        con.register("truth", table)
        verdict = ", l.verdict, l.threshold AS calibrated_threshold"
    else:
        con = connect(output, storage, tables={"truth": table})
        verdict = ""
    try:
        cur = con.execute(ROW_SQL.format(detector_columns=det_cols, verdict=verdict))
        names = [d[0] for d in cur.description]
        fetched = [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()
    problems = list(truth.problems)
    rows, untrained, weights = [], False, set()
    for r in fetched:
        if r["status"] is None:
            problems.append((r["uri"], "never scanned into OUTPUT (no row)"))
            continue
        if r["status"] != "ok":
            problems.append((r["uri"], f"its latest scan is an {r['status']} row: {r['error']}"))
            continue
        untrained |= bool(r["weights_untrained"])
        weights.add(r["weights_sha256"])
        r["band"] = size_band(r["width"], r["height"])
        rows.append(r)
    present = [d for d in DETECTORS if any(r[f"{d.name}_score"] is not None for r in rows)]
    # Pixel level: forged images with a mask, on worker processes.
    tasks = [(output, storage, r["uri"], r["mask"],
              {d.name: r[f"{d.name}_map"] for d in present if r[f"{d.name}_map"]},
              (int(r["height"]), int(r["width"])), inverted)
             for r in rows if r["label"] == FORGED and r["mask"]]
    workers = workers or (os.cpu_count() or 1)
    log(f"evaluate: {len(rows)} labelled images scanned ok, {len(tasks)} forged with a mask; {workers} workers")
    by_uri = {p["uri"]: p for p in _run_tasks(tasks, workers, log)}
    notes = []
    mask_fracs = []
    for r in rows:
        p = by_uri.get(r["uri"])
        r["pixel"] = p["pixel"] if p else {}
        if p:
            problems += [(r["uri"], why) for why in p["problems"]]
            notes += [(r["uri"], n) for n in p["notes"]]
            if p.get("mask_forged_fraction") is not None:
                mask_fracs.append(p["mask_forged_fraction"])
    warnings = []
    if untrained:
        warnings.append(UNTRAINED_WARNING)
    if mask_fracs and float(np.median(mask_fracs)) > 0.5:
        warnings.append(f"the median forged fraction of the masks is {float(np.median(mask_fracs)):.2f}: more than "
                        "half of each image marked forged; check that white means forged in these masks")
    forged_no_mask = sum(1 for r in rows if r["label"] == FORGED and not r["mask"])
    figures: dict = {}
    for d in present:
        det: dict = {"label": d.label, "threshold": d.threshold, "image": {}, "pixel": {}}
        scored = [r for r in rows if r[f"{d.name}_score"] is not None]
        for group, idx in _groups(scored).items():
            sel = [scored[i] for i in idx]
            labels = np.array([r["label"] == FORGED for r in sel], bool)
            scores = np.array([r[f"{d.name}_score"] for r in sel], np.float64)
            verdicts = (np.array([r.get("verdict") == "flagged" for r in sel], bool)
                        if calibration is not None and d.name == "trufor" else None)
            det["image"][group] = _image_figures(labels, scores, d.threshold, verdicts, n_boot, seed)
            per_image = [r["pixel"][d.name] for r in sel if d.name in r["pixel"]]
            if per_image:
                det["pixel"][group] = _pixel_figures(per_image, inverted, n_boot, seed)
        figures[d.name] = det
    evaluation = {
        "version": EVALUATION_VERSION, "output": redact(output), "truth": redact(truth.path),
        "weights_sha256": sorted(w for w in weights if w), "untrained_weights": untrained, "warnings": warnings,
        "calibration": None if calibration is None else calibration.get("id"),
        "counts": {"given": truth.given, "usable_entries": len(truth.entries), "evaluated": len(rows),
                   "pristine": sum(r["label"] == PRISTINE for r in rows), "forged": sum(r["label"] == FORGED for r in rows),
                   "forged_with_pixel_figures": sum(1 for r in rows if r["pixel"]),
                   "forged_without_mask": forged_no_mask, "problems": len(problems), "masks_resized": len(notes)},
        "conventions": {"image_flagged_when": "score >= threshold", "pixel_forged_when": "map > threshold",
                        "pixel_average": "per forged image, then the mean over forged images",
                        "f1_best": "the best F1 over all thresholds of each image (oracle), reported apart",
                        "bootstrap": {"resamples": n_boot, "seed": seed, "interval": "percentile 95%",
                                      "image_level": "stratified by label"},
                        "size_bands": [name for _, _, name in SIZE_BANDS]},
        "pixel_figures": list(PIXEL_FIGURES) + (["f1_inverted_max"] if inverted else []),
        "detectors": figures,
        "problems": [{"uri": u, "why": w} for u, w in problems],
        "notes": [{"uri": u, "note": n} for u, n in notes],
        "seconds": round(time.monotonic() - t0, 3),
    }
    return evaluation, rows
