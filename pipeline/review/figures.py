"""What a person looks at: one scanned image's row, its original and its maps, as pictures.

Shared by the review page (``pipeline.review.report``), ``trufor-scan show`` and the evidence bundles
(``pipeline.review.evidence``). Colours follow the official TruFor visualisation: anomaly on ``RdBu_r``
(blue 0 -> red 1), confidence on ``gray`` (black 0 = do not trust the map -> white 1); the
anomaly x confidence product on ``inferno`` (black where either is low). matplotlib is imported
only where a figure or a colour map is made (Agg backend: no display needed).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import re

import numpy as np
from PIL import Image

from pipeline.base import maps
from pipeline.base.reading import read_input
from pipeline.base.schema import COLUMNS, STATUS_OK
from pipeline.base.sql import connect
from pipeline.base.storage import StorageConfig, canonical_uri, one_line, redact
from pipeline.base.store import resolve_ref
from trufor_core.image import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

# name -> (matplotlib colour map, what a person reads from it)
SCALES = {
    "anomaly": ("RdBu_r", "anomaly: blue 0 (no trace) to red 1 (manipulation trace)"),
    "confidence": ("gray", "confidence: black 0 (do not trust the map here) to white 1"),
    "product": ("inferno", "anomaly x confidence: black 0 to yellow 1 (a trusted anomaly)"),
    "mantranet": ("magma", "ManTra-Net (second detector): black 0 to light yellow 1 (forgery likelihood)"),
}
# What the integrity score means, said once for the page, the figure and the bundles (TruFor paper).
HOW_TO_READ = (
    "score = integrity score in [0, 1]: high means the image is likely manipulated (0.5 is the "
    "paper's decision threshold, not a calibrated one).",
    "anomaly map = where: red marks regions whose camera traces differ from the rest of the image.",
    "confidence map = how far to trust the anomaly map: dark regions should not be trusted "
    "(false alarms are expected there).",
    "On a pristine image the anomaly map shows only random, scattered anomalies; a manipulation "
    "shows as a compact red region where the confidence is high.",
)
READ_TIMEOUT_S = 120.0
SHA_RE = re.compile(r"^[0-9a-f]{8,64}$")  # a sha256 or a prefix of one, as a person types it
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class NotScanned(ValueError):
    """No latest row for that uri or sha256 in the output."""


def find_row(output: str, uri_or_sha256: str, storage: StorageConfig | None = None) -> dict:
    """The latest row (view ``latest``) of one image, by its uri or by its sha256 (or a unique prefix of 8+).

    Raises:
        NotScanned: nothing matches, or a sha256 prefix matches several images.
    """
    # As typed, else as `scan` writes a local path typed this way (relative, `..`, folder symlinks).
    spellings = list(dict.fromkeys([uri_or_sha256, canonical_uri(uri_or_sha256)]))
    con = connect(output, storage)
    try:
        rows = []
        for spelling in spellings:
            rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM latest WHERE uri = ? ORDER BY uri",
                               [spelling]).fetchall()
            if rows:
                break
        key = uri_or_sha256.lower()
        if not rows and SHA_RE.match(key):
            cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM latest WHERE starts_with(sha256, ?) "
                              "ORDER BY (status = 'ok') DESC, (dedup_of IS NULL) DESC, uri", [key])
            rows = cur.fetchall()
            if len({r[COLUMNS.index("sha256")] for r in rows}) > 1:
                raise NotScanned(f"sha256 prefix {key!r} matches {len(rows)} different images: give more digits")
    finally:
        con.close()
    if not rows:
        raise NotScanned(f"no scanned image with uri or sha256 {uri_or_sha256!r} in {output!r}")
    return dict(zip(COLUMNS, rows[0]))


def plain_row(row: dict) -> dict:
    """A row as JSON-ready values (timestamps in ISO 8601)."""
    return {k: (v.isoformat() if isinstance(v, (dt.datetime, dt.date)) else v) for k, v in row.items()}


@dataclasses.dataclass
class Original:
    """The scanned file as it is now: its bytes and pixels, or why they cannot be shown."""

    data: bytes | None = None
    rgb: np.ndarray | None = None
    problem: str | None = None  # one line: missing, changed since the scan, cannot decode


def read_original(row: dict, storage: StorageConfig | None = None, max_bytes: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True) -> Original:
    """Read the file a row was scanned from (local or object storage) and check it is the same bytes.

    A file that changed since the scan (sha256 differs) is not shown: its maps belong to other pixels.
    """
    storage = storage or StorageConfig()
    try:
        data, _ = read_input(row["uri"], storage, max_bytes, READ_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - shown to the person instead of the image
        return Original(problem=one_line(redact(f"original not readable: {type(e).__name__}: {e}"), 300))
    digest = hashlib.sha256(data).hexdigest()
    if row.get("sha256") and digest != row["sha256"]:
        return Original(problem=f"the file changed since it was scanned (sha256 now {digest[:12]}, "
                                f"scanned {row['sha256'][:12]}): not shown")
    if not decode:
        return Original(data=data)
    try:
        return Original(data=data, rgb=decode_image(data, max_pixels).rgb)
    except ImageDecodeError as e:
        return Original(data=data, problem=one_line(str(e).replace("<bytes>", "original"), 300))


def load_maps(row: dict, output: str, storage: StorageConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly, confidence) float32 full-resolution maps of an ok row (its map reference is resolved
    under OUTPUT and refused if it points anywhere else)."""
    if row.get("status") != STATUS_OK or not row.get("map_uri"):
        raise ValueError(f"{row.get('uri')!r} has no maps: its latest scan is {row.get('status')!r}"
                         + (f" ({row['error']})" if row.get("error") else ""))
    return maps.load(resolve_ref(output, row["map_uri"]), storage)


def load_mantranet_map(row: dict, output: str, storage: StorageConfig | None = None) -> np.ndarray | None:
    """ManTra-Net's float32 full-resolution map of a row scanned with ``--mantranet`` (None without one)."""
    if row.get("status") != STATUS_OK or not row.get("mantranet_map_uri"):
        return None
    return maps.load_lowres_map(resolve_ref(output, row["mantranet_map_uri"]), storage)


def fit_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) scaled down (never up) so the longer side is at most ``max_side`` (None or 0: unchanged)."""
    if not max_side or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float map resized to (h, w) by area averaging (Pillow BOX on float32)."""
    if m.shape == size:
        return m
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((size[1], size[0]), Image.BOX))


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.LANCZOS))


def colorize(m: np.ndarray, scale: str) -> np.ndarray:
    """A [0, 1] map -> (h, w, 3) uint8 through the scale's colour map (values clipped, as clim=[0, 1])."""
    import matplotlib

    lut = (matplotlib.colormaps[SCALES[scale][0]](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return lut[np.clip(np.rint(m * 255), 0, 255).astype(np.uint8)]


def css_gradient(scale: str, stops: int = 11) -> str:
    """The scale as a CSS linear-gradient, for legends in HTML."""
    import matplotlib

    cols = matplotlib.colormaps[SCALES[scale][0]](np.linspace(0, 1, stops))
    return "linear-gradient(to right, " + ", ".join(
        f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)}) {100 * i / (stops - 1):.0f}%"
        for i, (r, g, b, _) in enumerate(cols)) + ")"


def overlay(rgb: np.ndarray, anomaly: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The anomaly heat map blended over the image (same size)."""
    heat = colorize(anomaly, "anomaly").astype(np.float32)
    return np.rint((1 - alpha) * rgb.astype(np.float32) + alpha * heat).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 90, subsampling: int = 2) -> bytes:
    """JPEG bytes; ``subsampling=0`` (4:4:4) keeps colour edges of maps sharp."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, optimize=True, subsampling=subsampling)
    return buf.getvalue()


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes with no time stamp or other varying metadata (reproducible)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def map_to_gray8(m: np.ndarray) -> np.ndarray:
    """A [0, 1] map as 8-bit grey (value x 255, rounded): the maps as a PNG any viewer opens."""
    return np.clip(np.rint(m * 255), 0, 255).astype(np.uint8)


def figure_title(row: dict) -> str:
    score = row.get("score")
    head = f"integrity score {score:.3f}" if score is not None else f"no score ({row.get('status')})"
    verdict = "" if score is None else (" (above 0.5: likely manipulated)" if score >= 0.5 else " (below 0.5)")
    warn = "   UNTRAINED WEIGHTS: meaningless" if row.get("weights_untrained") else ""
    second = f"   ManTra-Net score {row['mantranet_score']:.3f}" if row.get("mantranet_score") is not None else ""
    return f"{head}{verdict}{warn}{second}\n{row['uri']}"


def four_panel_figure(row: dict, rgb: np.ndarray | None, anomaly: np.ndarray, confidence: np.ndarray,
                      noiseprint: np.ndarray | None = None, problem: str | None = None,
                      mantranet: np.ndarray | None = None):
    """The paper's figure for one image: image | anomaly | confidence | Noiseprint++ (when given, else
    anomaly x confidence), then ManTra-Net's map when the row has one (a fifth panel), the score(s) in the
    title, a colour bar under each map. Returns a matplotlib Figure."""
    from matplotlib.figure import Figure

    h, w = anomaly.shape
    panel_w = 4.0
    n = 4 if mantranet is None else 5
    fig = Figure(figsize=(n * panel_w, panel_w * h / w + 1.3), dpi=100, layout="constrained")
    grid = fig.subplots(2, n, height_ratios=[1.0, 0.05])  # panels, then their colour bars
    axes, bars = grid[0], grid[1]
    if rgb is not None:
        axes[0].imshow(rgb)
    else:
        axes[0].imshow(np.full((h, w, 3), 235, np.uint8))
        axes[0].text(0.5, 0.5, problem or "original not available", ha="center", va="center", wrap=True,
                     fontsize=8, transform=axes[0].transAxes)
    axes[0].set_title("image")
    bars[0].axis("off")
    panels = [("anomaly map", anomaly, "anomaly"), ("confidence map", confidence, "confidence")]
    if noiseprint is not None:
        panels.append(("Noiseprint++", noiseprint, None))
    else:
        panels.append(("anomaly x confidence", anomaly * confidence, "product"))
    if mantranet is not None:
        panels.append(("ManTra-Net map", mantranet, "mantranet"))
    for ax, bar, (title, m, scale) in zip(axes[1:], bars[1:], panels):
        if scale is None:
            im = ax.imshow(m, cmap="gray")
        else:
            im = ax.imshow(m, cmap=SCALES[scale][0], vmin=0.0, vmax=1.0)
        ax.set_title(title)
        fig.colorbar(im, cax=bar, orientation="horizontal")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(figure_title(row), fontsize=10)
    return fig


def figure_png(fig) -> tuple[bytes, dict[str, tuple[int, int, int, int]]]:
    """(PNG bytes, panel boxes) of a figure from ``four_panel_figure``; boxes are (left, top, right,
    bottom) pixel rectangles of each panel's image area in the PNG, keyed by panel title.

    No date or version metadata is written, so the same inputs give the same bytes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    height = int(round(fig.bbox.height))
    boxes = {}
    for ax in fig.axes:
        if ax.get_title() and ax.images:
            b = ax.get_window_extent()
            boxes[ax.get_title()] = (int(np.ceil(b.x0)), int(np.ceil(height - b.y1)), int(b.x1), int(height - b.y0))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue(), boxes
