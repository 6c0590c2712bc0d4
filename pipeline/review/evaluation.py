"""`trufor-scan evaluate`: how well the scanned rows agree with a ground truth, as JSON, PNGs and a page.

``DIR/evaluation.json`` holds every figure (``pipeline.results.evaluation``) keyed by detector,
level (image, pixel) and group (all, source=..., size=...); ``DIR/index.html`` shows them with ROC
curves per detector and source, the distribution of per-image F1, and the worst misses (forged
images with the lowest scores, pristine ones with the highest) with their maps. The page opens
from disk with no network; everything from the data is HTML-escaped (Jinja2 autoescape).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.base.options import opt
from pipeline.base.storage import StorageConfig, StorageOptions, one_line, redact
from pipeline.results import metrics
from pipeline.results.evaluation import ALL, DETECTORS, FPR_TARGETS, evaluate
from pipeline.results.truth import FORGED, PRISTINE, read_truth
from pipeline.review.figures import (SHA256_RE, encode_jpeg, fit_size, load_maps, overlay, read_original, resize_map,
                                     resize_rgb)

TEMPLATES = Path(__file__).with_name("templates")
MARKER = ".trufor-evaluation"  # a folder holding it may be replaced by the next evaluation
WORST = 12  # worst misses shown per side


@dataclass(frozen=True)
class EvaluateConfig(StorageOptions):
    """Settings of one `evaluate`; the command line is derived from these fields."""

    output: str = field(metadata=opt("the scan's --output holding the labelled images' rows", positional=True))
    truth: str = field(metadata=opt(
        "ground truth: a manifest (.csv/.parquet/.json: uri, label pristine|forged, optional mask, optional source) "
        "or IMDL-BenCo's JSON list of [image, mask or \"Negative\"] pairs; relative paths are relative to it"))
    out: str = field(metadata=opt("directory for evaluation.json, index.html and the PNGs"))
    calibration: str | None = field(default=None, metadata=opt(
        "also the balanced accuracy of this calibration's verdicts (its id, or 'latest')"))
    bootstrap: int = field(default=1000, metadata=opt("bootstrap resamples for the 95% intervals (0: none)"))
    seed: int = field(default=0, metadata=opt("seed of the bootstrap"))
    workers: int = field(default=0, metadata=opt("processes reading maps and masks (0: one per CPU; 1: none)"))
    inverted: bool = field(default=False, metadata=opt(
        "also report the inverted-map variant max(F1(map), F1(1 - map)), labelled f1_inverted_max"))

    def __post_init__(self):
        if self.bootstrap < 0 or self.workers < 0:
            raise ValueError(f"--bootstrap and --workers must be >= 0, got {self.bootstrap} and {self.workers}")


@dataclass
class EvaluateResult:
    out: Path
    evaluation: dict

    def text(self) -> str:
        c, ev = self.evaluation["counts"], self.evaluation
        lines = [f"evaluate: {c['evaluated']} of {c['given']} labelled images evaluated ({c['pristine']} pristine, "
                 f"{c['forged']} forged, {c['forged_with_pixel_figures']} with pixel figures); {c['problems']} "
                 f"problems (listed in evaluation.json and on the page)"]
        for name, det in ev["detectors"].items():
            img = det["image"].get(ALL, {})
            auc = img.get("roc_auc", {}).get("value")
            pix = det["pixel"].get(ALL, {})
            f1 = pix.get("f1", {}).get("mean")
            lines.append(f"  {name}: image ROC AUC {_fmt(auc)}" + (f", pixel F1@{det['threshold']:g} {_fmt(f1)}"
                                                                      if det["threshold"] is not None else "")
                         + f", pixel best-threshold F1 {_fmt(pix.get('f1_best', {}).get('mean'))}")
        lines += [f"warning: {w}" for w in ev["warnings"]]
        lines.append(f"page: {self.out / 'index.html'}")
        return "\n".join(lines)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def roc_png(title: str, curves: list[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
    """ROC curves (label, labels, scores), one line each, with the FPR targets marked."""
    fig = _figure()
    ax = fig.subplots()
    for label, y, s in curves:
        fpr, tpr, _ = metrics.roc_curve(y, s)
        auc = metrics.roc_auc(y, s)
        ax.plot(fpr, tpr, lw=1.6, label=f"{label} (AUC {_fmt(auc)}, n={len(y)})", drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":")
    for t in FPR_TARGETS:
        ax.axvline(t, color="#b2182b", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (pristine images flagged)")
    ax.set_ylabel("true-positive rate (forged images flagged)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return _png(fig)


def f1_png(title: str, values: dict[str, np.ndarray]) -> bytes:
    """Histogram of per-image F1 (fixed threshold and best threshold, never mixed)."""
    fig = _figure()
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    for label, v in values.items():
        ax.hist(v, bins=bins, alpha=0.6, label=f"{label} (mean {_fmt(float(v.mean()) if len(v) else None)})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 of one forged image")
    ax.set_ylabel("forged images")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def _worst(rows: list[dict], score: str) -> dict[str, list[dict]]:
    scored = [r for r in rows if r.get(score) is not None]
    forged = sorted((r for r in scored if r["label"] == FORGED), key=lambda r: (r[score], r["uri"]))[:WORST]
    pristine = sorted((r for r in scored if r["label"] == PRISTINE), key=lambda r: (-r[score], r["uri"]))[:WORST]
    return {"forged images with the lowest scores (missed)": forged,
            "pristine images with the highest scores (false alarms)": pristine}


def draw_miss(row: dict, output: str, out: Path, storage: StorageConfig) -> dict:
    """A thumbnail and a map overlay of one row (never raises: a problem line instead)."""
    pics: dict = {"problems": []}
    sha = row.get("sha256") or ""
    if not SHA256_RE.match(sha):  # it names a file: never a path from the data
        pics["problems"].append("no valid sha256 in the row: nothing drawn")
        return pics
    try:
        orig = read_original(row, storage)
        if orig.problem:
            pics["problems"].append(orig.problem)
        anomaly, _ = load_maps({**row, "map_uri": row.get("trufor_map")}, output, storage)
        size = fit_size(*anomaly.shape, 240)
        if orig.rgb is not None and orig.rgb.shape[:2] == anomaly.shape:
            rgb = resize_rgb(orig.rgb, size)
            (out / "pics" / f"{sha}.jpg").write_bytes(encode_jpeg(rgb, 85))
            (out / "pics" / f"{sha}-overlay.jpg").write_bytes(encode_jpeg(overlay(rgb, resize_map(anomaly, size)), 85))
            pics.update(thumb=f"pics/{sha}.jpg", overlay=f"pics/{sha}-overlay.jpg")
    except Exception as e:  # noqa: BLE001 - one bad image must not stop the page
        pics["problems"].append(one_line(redact(f"could not draw: {type(e).__name__}: {e}"), 300))
    return pics


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a trufor-scan evaluation: choose an empty or new "
                              "directory")
    shutil.rmtree(out / "pics", ignore_errors=True)  # pictures of an earlier evaluation: replaced, not mixed
    (out / "pics").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by trufor-scan evaluate; the next evaluation into this folder replaces it\n")


def run_evaluate(cfg: EvaluateConfig, log=lambda m: None) -> EvaluateResult:
    """Evaluate, then write evaluation.json, the PNGs and index.html under ``cfg.out``."""
    import jinja2

    from pipeline.base.version import code_version

    storage = cfg.storage()
    truth = read_truth(cfg.truth, storage)
    cal = None
    if cfg.calibration:
        from pipeline.results.calibration import load_calibration

        cal = load_calibration(cfg.calibration, cfg.output, storage)
    t0 = time.monotonic()
    evaluation, rows = evaluate(cfg.output, truth, storage, calibration=cal, workers=cfg.workers,
                                n_boot=cfg.bootstrap, seed=cfg.seed, inverted=cfg.inverted, log=log)
    out = Path(cfg.out)
    _prepare_out(out)
    evaluation["code_version"] = code_version()
    pngs: list[dict] = []
    for d in DETECTORS:
        if d.name not in evaluation["detectors"]:
            continue
        score = f"{d.name}_score"
        scored = [r for r in rows if r[score] is not None]
        groups = [(ALL, scored)] + [(f"source={s}", [r for r in scored if r["source"] == s])
                                    for s in sorted({r["source"] for r in scored if r["source"]})]
        curves = [(g, np.array([r["label"] == FORGED for r in sel]), np.array([r[score] for r in sel], np.float64))
                  for g, sel in groups if sel and len({r["label"] for r in sel}) == 2]
        if curves:
            name = f"roc-{d.name}.png"
            (out / name).write_bytes(roc_png(f"{d.label}: image level", curves))
            pngs.append({"file": name, "alt": f"ROC curves of {d.label} per source"})
        per = {k: np.array([r["pixel"][d.name][k] for r in rows if d.name in r["pixel"]
                            and r["pixel"][d.name].get(k) is not None], np.float64)
               for k in (("f1", "f1_best") if d.threshold is not None else ("f1_best",))}
        if any(len(v) for v in per.values()):
            name = f"f1-{d.name}.png"
            labels = {"f1": f"F1 at {d.threshold:g}" if d.threshold is not None else "", "f1_best": "best-threshold F1"}
            (out / name).write_bytes(f1_png(f"{d.label}: pixel level, per forged image",
                                            {labels[k]: v for k, v in per.items()}))
            pngs.append({"file": name, "alt": f"distribution of the per-image F1 of {d.label}"})
    misses = {side: [{"row": r, "pics": draw_miss(r, cfg.output, out, storage)} for r in sel]
              for side, sel in _worst(rows, "trufor_score").items()}
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=1, allow_nan=False))
    shutil.copyfile(TEMPLATES / "report.css", out / "report.css")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("evaluation.html.j2").render(
        cfg=cfg, ev=evaluation, pngs=pngs, misses=misses, fmt=_fmt,
        generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    (out / "index.html").write_text(html, encoding="utf-8")
    evaluation["seconds_total"] = round(time.monotonic() - t0, 3)
    return EvaluateResult(out=out, evaluation=evaluation)
