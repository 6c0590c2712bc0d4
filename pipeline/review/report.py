"""`trufor-scan report`: a static review page of a scan's top candidates, for people.

The page (``index.html``, its assets and pictures beside it) opens from disk with no network. The
candidates come from one DuckDB query over the latest row per uri (``ORDER BY score DESC LIMIT
k``); the summary from aggregate queries over the same rows; originals and maps are read only for
the candidates shown, on a thread pool, and each distinct image (sha256) is drawn once. Everything
that comes from the data (uris, EXIF strings, error messages) goes through Jinja2's autoescaping;
the page's script only sorts, filters and opens the detail views already in the page.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import io
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.base.options import opt
from pipeline.base.progress import progress
from pipeline.base.schema import COLUMNS, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED
from pipeline.base.sql import connect
from pipeline.base.storage import StorageConfig, StorageOptions, one_line, redact
from pipeline.results.query import parse_since
from pipeline.review.figures import (HOW_TO_READ, SCALES, SHA256_RE, colorize, css_gradient, encode_jpeg, encode_png,
                                     fit_size, load_mantranet_map, load_maps, overlay, read_original, resize_map,
                                     resize_rgb)
from trufor_core.config import SLOW_IMAGE_S

TEMPLATES = Path(__file__).with_name("templates")
ASSETS = ("report.css", "report.js")
MARKER = ".trufor-report"  # a folder holding it may be replaced by the next report
HIST_BINS = 20
# The card's statistics: (column, label, what it says); each is a sort key on the page.
STATS = (("score", "score", "integrity score (high = likely manipulated)"),
         ("frac_anom_conf", "anomalous & trusted", "fraction of pixels with anomaly > 0.5 and confidence > 0.5"),
         ("max_anom_conf", "max anomaly x conf.", "largest anomaly x confidence"),
         ("frac_anom", "anomalous", "fraction of pixels with anomaly > 0.5"),
         ("noise_anomaly_score", "noise anomaly", "second opinion: Noiseprint++ noise anomaly, max of its map "
          "(scan --noise-anomaly)"),
         ("mantranet_score", "ManTra-Net", "second opinion: ManTra-Net, an independent detector, max of its map "
          "(scan --mantranet)"))
# (The pooled features conf_mean, anom_mean, ... are statistics of logits, not of the maps: they are
# in the detail view's full row, not shown as if they were probabilities.)


@dataclass(frozen=True)
class ReportConfig(StorageOptions):
    """Settings of one `report`; the command line is derived from these fields."""

    output: str = field(metadata=opt("the scan's --output (local directory or s3:// prefix)", positional=True))
    out: str = field(metadata=opt("directory to write the page into (index.html with its pictures beside it)"))
    k: int = field(default=200, metadata=opt("how many candidates to show (highest scores first)"))
    min_score: float = field(default=0.0, metadata=opt("show only images scoring at least this"))
    since: str | None = field(default=None, metadata=opt("only images scanned on or after this date (YYYY-MM-DD)"))
    uri_glob: str | None = field(default=None, metadata=opt("only uris matching this glob, e.g. 's3://b/2026/*'"))
    make: str | None = field(default=None, metadata=opt("only images whose EXIF make contains this (any case)"))
    camera_model: str | None = field(default=None, metadata=opt("only images whose EXIF model contains this",
                                                                 flag="--model"))
    software: str | None = field(default=None, metadata=opt("only images whose EXIF software contains this"))
    run_id: str | None = field(default=None, metadata=opt("only rows written by this run"))
    thumb_side: int = field(default=320, metadata=opt("longer side of the card pictures, pixels"))
    detail_max_side: int = field(default=1536, metadata=opt(
        "longer side of the detail view's panels, pixels (0: the full map resolution)"))
    workers: int = field(default=0, metadata=opt("threads drawing pictures (0: one per CPU)"))

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.thumb_side < 16 or self.detail_max_side < 0:
            raise ValueError(f"--thumb-side must be >= 16 and --detail-max-side >= 0, got {self.thumb_side} "
                             f"and {self.detail_max_side}")
        parse_since(self.since)


def scope_filter(cfg: ReportConfig) -> tuple[str, list, list[str]]:
    """The WHERE clause choosing the rows a report covers, its values (bound as parameters) and
    how a person reads each condition."""
    conds, params, said = ["TRUE"], [], []
    if cfg.since:
        conds.append("scan_date >= ?")
        params.append(cfg.since)
        said.append(f"scanned on or after {cfg.since}")
    if cfg.uri_glob:
        conds.append("uri GLOB ?")
        params.append(cfg.uri_glob)
        said.append(f"uri matches {cfg.uri_glob}")
    for col, what, value in (("exif_make", "EXIF make", cfg.make), ("exif_model", "EXIF model", cfg.camera_model),
                             ("exif_software", "EXIF software", cfg.software)):
        if value:
            conds.append(f"contains(lower({col}), lower(?))")
            params.append(value)
            said.append(f"{what} contains {value!r}")
    if cfg.run_id:
        conds.append("run_id = ?")
        params.append(cfg.run_id)
        said.append(f"written by run {cfg.run_id}")
    return " AND ".join(conds), params, said


@dataclass
class Summary:
    images: int = 0  # latest rows in scope (one per uri)
    rows_all: int = 0  # every row ever written, all runs
    by_status: dict = field(default_factory=dict)
    hist: list = field(default_factory=list)  # counts of ok scores in HIST_BINS bins over [0, 1]
    candidates_total: int = 0  # ok rows at or above min_score (before LIMIT k)
    errors: list = field(default_factory=list)  # (kind, message, count, example uri)
    error_messages: int = 0
    runs: list = field(default_factory=list)
    untrained: int = 0
    slow: list = field(default_factory=list)  # images whose forward ran past SLOW_IMAGE_S or out of its budget


def query_report(cfg: ReportConfig, storage: StorageConfig) -> tuple[list[dict], Summary]:
    """The candidates (one query, LIMIT k) and the summary of the rows in scope."""
    where, params, _ = scope_filter(cfg)
    con = connect(cfg.output, storage)
    try:
        con.execute(f"CREATE TEMP TABLE scope AS SELECT * FROM latest WHERE {where}", params)
        cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM scope WHERE status = ? AND score >= ? "
                          "ORDER BY score DESC, uri LIMIT ?", [STATUS_OK, cfg.min_score, cfg.k])
        candidates = [dict(zip(COLUMNS, r)) for r in cur.fetchall()]
        s = Summary()
        s.by_status = dict(con.execute("SELECT status, count(*) FROM scope GROUP BY status ORDER BY status").fetchall())
        s.images = sum(s.by_status.values())
        s.rows_all = con.execute("SELECT count(*) FROM results").fetchone()[0]
        bins = dict(con.execute(f"SELECT least(floor(score * {HIST_BINS}), {HIST_BINS - 1})::INT, count(*) FROM scope "
                                "WHERE status = ? AND score IS NOT NULL GROUP BY ALL", [STATUS_OK]).fetchall())
        s.hist = [bins.get(i, 0) for i in range(HIST_BINS)]
        s.candidates_total = con.execute("SELECT count(*) FROM scope WHERE status = ? AND score >= ?",
                                         [STATUS_OK, cfg.min_score]).fetchone()[0]
        # Messages name their file: grouped with the uri taken out, so one cause is one line.
        s.errors = con.execute("SELECT error_kind, replace(error, uri, '<file>') AS msg, count(*) AS n, min(uri) "
                               "FROM scope WHERE status = ? GROUP BY ALL ORDER BY n DESC, msg LIMIT 50",
                               [STATUS_ERROR]).fetchall()
        s.error_messages = con.execute("SELECT count(DISTINCT replace(error, uri, '<file>')) FROM scope "
                                       "WHERE status = ?", [STATUS_ERROR]).fetchone()[0]
        s.runs = [dict(zip(("run_id", "weights_sha256", "noiseprint_sha256", "untrained", "code_version", "precision",
                            "first", "last", "rows", "backends"), r)) for r in con.execute(
            "SELECT run_id, weights_sha256, noiseprint_sha256, weights_untrained, code_version, precision, "
            "min(scanned_at), max(scanned_at), count(*), string_agg(DISTINCT backend, ', ' ORDER BY backend) "
            "FROM scope WHERE run_id IS NOT NULL GROUP BY ALL "
            "ORDER BY min(scanned_at) NULLS LAST, run_id LIMIT 200").fetchall()]
        # Images that took minutes, or ran out of their budget (--max-seconds-per-image): how far each got.
        s.slow = [dict(zip(("uri", "status", "seconds", "steps", "backend", "error", "width", "height"), r))
                  for r in con.execute(
            "SELECT uri, status, elapsed_ms / 1000, steps, backend, error, width, height FROM scope "
            "WHERE elapsed_ms >= ? OR (status = ? AND error LIKE 'out of time: %') "
            "ORDER BY elapsed_ms DESC NULLS FIRST, uri LIMIT 50", [SLOW_IMAGE_S * 1000, STATUS_ERROR]).fetchall()]
        s.untrained = con.execute("SELECT count(*) FROM scope WHERE weights_untrained").fetchone()[0]
    finally:
        con.close()
    return candidates, s


@dataclass
class Drawn:
    """The pictures of one distinct image (paths relative to the page), or why some are missing."""

    thumb: str | None = None
    overlay: str | None = None
    conf_thumb: str | None = None
    panels: dict = field(default_factory=dict)  # image / anomaly / confidence / product -> path
    detail_size: tuple[int, int] | None = None
    problems: list = field(default_factory=list)


def draw_candidate(row: dict, out: Path, cfg: ReportConfig, storage: StorageConfig) -> Drawn:
    """Read one candidate's original and maps and write its card and detail pictures (never raises)."""
    d = Drawn()
    if not SHA256_RE.match(row.get("sha256") or ""):  # it names a folder: never a path from the data
        d.problems.append(f"no valid sha256 in the row ({str(row.get('sha256'))[:80]!r}): nothing drawn")
        return d
    rel = f"c/{row['sha256'][:2]}/{row['sha256']}"
    (out / rel).mkdir(parents=True, exist_ok=True)
    try:
        orig = read_original(row, storage)
        if orig.problem:
            d.problems.append(orig.problem)
        try:
            anomaly, confidence = load_maps(row, cfg.output, storage)
        except Exception as e:  # noqa: BLE001 - shown on the card
            anomaly = confidence = None
            d.problems.append(one_line(redact(f"maps not readable: {type(e).__name__}: {e}"), 300))
        shape = anomaly.shape if anomaly is not None else orig.rgb.shape[:2] if orig.rgb is not None else None
        if shape is None:
            return d
        if orig.rgb is not None and orig.rgb.shape[:2] != shape:
            d.problems.append(f"image is {orig.rgb.shape[1]}x{orig.rgb.shape[0]} but its maps "
                              f"{shape[1]}x{shape[0]}: not overlaid")
            orig.rgb = None
        files: dict[str, bytes] = {}
        tsize, dsize = fit_size(*shape, cfg.thumb_side), fit_size(*shape, cfg.detail_max_side)
        d.detail_size = dsize
        if orig.rgb is not None:
            files["thumb.jpg"] = encode_jpeg(resize_rgb(orig.rgb, tsize), 85)
            files["image.jpg"] = encode_jpeg(resize_rgb(orig.rgb, dsize), 92)
        if anomaly is not None:
            a_t = resize_map(anomaly, tsize)
            if orig.rgb is not None:
                files["overlay.jpg"] = encode_jpeg(overlay(resize_rgb(orig.rgb, tsize), a_t), 85)
            files["conf_thumb.png"] = encode_png(colorize(resize_map(confidence, tsize), "confidence"))
            a_d, c_d = resize_map(anomaly, dsize), resize_map(confidence, dsize)
            # JPEG 4:4:4 at q90 for the viewing panels: 20x faster to write than PNG and half the size
            # (measured at 1 MP); the exact maps are the evidence bundle's PNGs.
            files["anomaly.jpg"] = encode_jpeg(colorize(a_d, "anomaly"), 90, subsampling=0)
            files["confidence.jpg"] = encode_jpeg(colorize(c_d, "confidence"), 90, subsampling=0)
            files["product.jpg"] = encode_jpeg(colorize(a_d * c_d, "product"), 90, subsampling=0)
        try:
            mt = load_mantranet_map(row, cfg.output, storage)
            if mt is not None:
                files["mantranet.jpg"] = encode_jpeg(colorize(resize_map(mt, dsize), "mantranet"), 90, subsampling=0)
        except Exception as e:  # noqa: BLE001 - shown on the card
            d.problems.append(one_line(redact(f"ManTra-Net map not readable: {type(e).__name__}: {e}"), 300))
        for name, data in files.items():
            (out / rel / name).write_bytes(data)
        d.thumb = f"{rel}/thumb.jpg" if "thumb.jpg" in files else None
        d.overlay = f"{rel}/overlay.jpg" if "overlay.jpg" in files else None
        d.conf_thumb = f"{rel}/conf_thumb.png" if "conf_thumb.png" in files else None
        d.panels = {k: f"{rel}/{k}.jpg" for k in ("image", "anomaly", "confidence", "product", "mantranet") if f"{k}.jpg" in files}
    except Exception as e:  # noqa: BLE001 - one bad image must not stop the page
        d.problems.append(one_line(redact(f"could not draw: {type(e).__name__}: {e}"), 300))
    return d


def histogram_png(counts: list[int], min_score: float) -> bytes:
    """The score histogram of the rows in scope (matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.0, 3.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    edges = np.linspace(0, 1, HIST_BINS + 1)
    ax.bar(edges[:-1], counts, width=1 / HIST_BINS, align="edge", color="#4a78b5", edgecolor="white")
    ax.axvline(0.5, color="#b2182b", lw=1.2, ls="--", label="0.5 (paper's threshold)")
    if min_score > 0:
        ax.axvline(min_score, color="#444", lw=1, ls=":", label=f"--min-score {min_score:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("integrity score (latest scan of each image)")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if max(counts, default=0) > 50 * max(1, min((c for c in counts if c), default=1)):
        ax.set_yscale("symlog")
    ax.legend(fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a trufor-scan report: choose an empty or new "
                              "directory")
    for sub in ("c", "assets"):
        shutil.rmtree(out / sub, ignore_errors=True)  # pictures of an earlier report: replaced, not mixed
    (out / "assets").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by trufor-scan report; the next report into this folder replaces it\n")


@dataclass
class ReportResult:
    index: Path
    shown: int
    candidates_total: int
    images: int
    query_s: float
    draw_s: float
    total_s: float
    problems: int

    def text(self) -> str:
        return (f"report: {self.shown} candidates shown of {self.candidates_total} at or above the minimum score "
                f"({self.images} images in scope); query {self.query_s:.1f} s, pictures {self.draw_s:.1f} s, "
                f"total {self.total_s:.1f} s" + (f"; {self.problems} candidates with missing pictures (see page)"
                                                 if self.problems else "") + f"\npage: {self.index}")


def build_report(cfg: ReportConfig) -> ReportResult:
    """Write the review page for ``cfg`` and return where it is and what it took."""
    import jinja2

    from pipeline.base.version import code_version

    t0 = time.monotonic()
    storage = cfg.storage()
    candidates, summary = query_report(cfg, storage)
    t1 = time.monotonic()
    out = Path(cfg.out)
    _prepare_out(out)
    distinct = {r["sha256"]: r for r in reversed(candidates)}  # one drawing per image bytes, by its best row
    workers = cfg.workers or os.cpu_count() or 1
    bar = progress(len(distinct), "report pictures")
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {sha: pool.submit(draw_candidate, r, out, cfg, storage) for sha, r in distinct.items()}
        for _ in cf.as_completed(futures.values()):
            bar.update(1)
    bar.close()
    drawn = {sha: f.result() for sha, f in futures.items()}
    t2 = time.monotonic()
    (out / "assets" / "histogram.png").write_bytes(histogram_png(summary.hist, cfg.min_score))
    for name in ASSETS:
        shutil.copyfile(TEMPLATES / name, out / "assets" / name)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)
    cards = [{"i": i, "row": r, "drawn": drawn[r["sha256"]]} for i, r in enumerate(candidates)]
    html = env.get_template("report.html.j2").render(
        cfg=cfg, cards=cards, summary=summary, stats=STATS, how_to_read=HOW_TO_READ,
        scales={k: (css_gradient(k), v[1]) for k, v in SCALES.items()},
        filters=scope_filter(cfg)[2],
        generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), code_version=code_version(),
        statuses=(STATUS_OK, STATUS_ERROR, STATUS_SKIPPED), hist_bins=HIST_BINS, slow_image_s=SLOW_IMAGE_S)
    (out / "index.html").write_text(html, encoding="utf-8")
    t3 = time.monotonic()
    res = ReportResult(index=out / "index.html", shown=len(cards), candidates_total=summary.candidates_total,
                       images=summary.images, query_s=t1 - t0, draw_s=t2 - t1, total_s=t3 - t0,
                       problems=sum(bool(d.problems) for d in drawn.values()))
    return res
