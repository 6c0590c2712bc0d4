"""Compressed anomaly/confidence maps, stored once per distinct image (content-addressed by sha256).

TruFor's full-resolution maps are a fixed function of its stride-4 logits: anomaly =
sigmoid(upsample(l1 - l0)), confidence = sigmoid(upsample(c)) (bilinear, align_corners=False; the
upsampling is linear, so the 2-class softmax only needs the margin). So a map is stored as

- ``<sha256>.npz``: the stride-4 margin and confidence logits in float16 (zlib-compressed) plus
  the image size. ``load`` rebuilds the float32 maps; the error is float16 rounding (~1e-4,
  far under 1/255). With the preview, 3.4% of the official float32 ``.npz`` (BENCHMARKS.md).
- ``<sha256>.png``: a preview a person can open: 8-bit grey + alpha at stride 4, grey = anomaly,
  alpha = confidence (so the anomaly shows where TruFor is confident).

Encoding and storing them is a CPU stage of its own in the scan (``store_maps``, after the model's):
the model's actor only hands the stride-4 logits on (``pack``), so it never waits for compression
or an upload, and a row reaches the results only once its map is stored.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.base.schema import ERROR_TRANSIENT, MAP_COLUMNS, MODEL_OUTPUT_COLUMNS, ROW_SCHEMA, STATUS_ERROR
from pipeline.base.storage import StorageConfig, is_remote, one_line, redact, write_local_atomic

MAP_CODEC = "npz-f16-stride4-logits+png-preview"
MAPS_DIR = "maps"  # under OUTPUT
# The model stage's output beside the row columns: its maps' stride-4 logits (``pack``), consumed
# and dropped by ``store_maps``; never in a result part.
PAYLOAD_COLUMN = "map_logits"


def encode(margin_lowres: np.ndarray, conf_lowres: np.ndarray, size: tuple[int, int]) -> tuple[bytes, bytes]:
    """Stride-4 logits (h, w) of one image of ``size`` (H, W) -> (npz bytes, preview PNG bytes)."""
    if margin_lowres.shape != conf_lowres.shape or margin_lowres.ndim != 2:
        raise ValueError(f"logits must be two equal (h, w) arrays, got {margin_lowres.shape} and {conf_lowres.shape}")
    buf = io.BytesIO()
    np.savez_compressed(buf, margin=margin_lowres.astype(np.float16), conf=conf_lowres.astype(np.float16),
                        size=np.asarray(size, np.int64))
    sig = 1.0 / (1.0 + np.exp(-np.stack([margin_lowres, conf_lowres], axis=-1).astype(np.float64)))
    png = io.BytesIO()
    Image.fromarray(np.rint(sig * 255).astype(np.uint8), mode="LA").save(png, format="PNG")
    return buf.getvalue(), png.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """npz bytes -> (anomaly, confidence) float32 (H, W) maps, as TruFor's post-processing makes them."""
    import torch  # here only: the scan's map stage encodes without it
    import torch.nn.functional as F

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        if not {"margin", "conf", "size"} <= set(z.files):
            raise ValueError(f"not a trufor-scan map: fields {z.files}")
        logits = torch.from_numpy(np.stack([z["margin"], z["conf"]]).astype(np.float32))[None]  # (1, 2, h, w)
        h, w = (int(v) for v in z["size"])
    full = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False))[0].numpy()
    return full[0], full[1]


def map_path(maps_root: str, sha256: str, ext: str = "npz") -> str:
    """Content-addressed location: identical files share one map."""
    return f"{maps_root.rstrip('/')}/{sha256[:2]}/{sha256}.{ext}"


def save(maps_root: str, sha256: str, margin_lowres: np.ndarray, conf_lowres: np.ndarray, size: tuple[int, int],
         storage: StorageConfig | None = None) -> str:
    """Write the map (and its preview) once per distinct sha256; returns the map URI.

    Each file appears whole or not at all (local: a temporary name, then a rename; object storage:
    an object appears when its upload completes), the preview first: the npz's presence means both
    are complete, so an actor killed mid-write never leaves a map that a later scan would trust.
    Local maps need only the standard library (the GPU benchmark runs where fsspec is absent).
    """
    uri = map_path(maps_root, sha256)
    if not is_remote(uri):
        if not os.path.exists(uri):
            npz, png = encode(margin_lowres, conf_lowres, size)
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            write_local_atomic(uri[:-3] + "png", png)
            write_local_atomic(uri, npz)
        return uri
    fs, path = (storage or StorageConfig()).filesystem(uri)
    if not fs.exists(path):
        npz, png = encode(margin_lowres, conf_lowres, size)
        with fs.open(path[:-3] + "png", "wb") as f:
            f.write(png)
        with fs.open(path, "wb") as f:
            f.write(npz)
    return uri


# Reading a stored map back: a regular file only, at most this big, within this time (an edited
# row may point at a FIFO; an object store may stall): never a hang.
MAX_MAP_BYTES = 256 * 2**20
READ_TIMEOUT_S = 120.0


def _read(uri: str, storage: StorageConfig | None) -> bytes:
    from pipeline.base.reading import read_input

    return read_input(uri, storage or StorageConfig(), MAX_MAP_BYTES, READ_TIMEOUT_S)[0]


def load(map_uri: str, storage: StorageConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a map written by a scan: returns (anomaly, confidence) as float32 (H, W) arrays."""
    return decode(_read(map_uri, storage))


def preview_uri(map_uri: str) -> str:
    return map_uri[: -len("npz")] + "png"


# The second opinions' maps, stored beside the image's TruFor map as 4 x 4 cell means in float16 (the
# pack key, the file-name prefix, the row's model and map columns): one per (image, model file).
SECOND_OPINIONS = {"noise": ("na", "noise_anomaly_model", "noise_anomaly_map_uri"),
                   "mantranet": ("mt", "mantranet_weights", "mantranet_map_uri")}


def cell_means(full: np.ndarray) -> np.ndarray:
    """(H, W) -> (ceil(H/4), ceil(W/4)) means of 4 x 4 cells (edge cells padded with their edge values)."""
    h, w = full.shape
    pad = np.pad(full, ((0, -h % 4), (0, -w % 4)), mode="edge")
    return pad.reshape(pad.shape[0] // 4, 4, pad.shape[1] // 4, 4).mean((1, 3))  # (h/4, 4, w/4, 4) -> cells


def pack(margin_lowres: np.ndarray, conf_lowres: np.ndarray, size: tuple[int, int],
         **second: np.ndarray | None) -> bytes:
    """The model stage's hand-over: the logits as computed (uncompressed: compressing is the map stage's
    work), and each second opinion's map at stride 4 when the scan computes one (``SECOND_OPINIONS`` keys)."""
    unknown = set(second) - set(SECOND_OPINIONS)
    if unknown:
        raise ValueError(f"unknown second opinions {sorted(unknown)}")
    buf = io.BytesIO()
    extra = {k: v for k, v in second.items() if v is not None}
    np.savez(buf, margin=margin_lowres, conf=conf_lowres, size=np.asarray(size, np.int64), **extra)
    return buf.getvalue()


def unpack(data: bytes) -> tuple[np.ndarray, np.ndarray, tuple[int, int], dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        second = {k: z[k] for k in SECOND_OPINIONS if k in z.files}
        return z["margin"], z["conf"], (int(z["size"][0]), int(z["size"][1])), second


def second_map_path(maps_root: str, sha256: str, kind: str, model_sha256: str) -> str:
    """Beside the image's TruFor map; one per (image, second-opinion model file)."""
    return map_path(maps_root, sha256, f"{SECOND_OPINIONS[kind][0]}-{model_sha256[:16]}.npz")


def save_lowres_map(maps_root: str, sha256: str, kind: str, model_sha256: str, lowres: np.ndarray,
                    size: tuple[int, int], storage: StorageConfig | None = None) -> str:
    """Store a second opinion's map (stride 4, float16) once per image and model; returns its URI."""
    uri = second_map_path(maps_root, sha256, kind, model_sha256)
    buf = io.BytesIO()  # field "noise": the name of the format's first user, kept for every second opinion
    np.savez_compressed(buf, noise=lowres.astype(np.float16), size=np.asarray(size, np.int64))
    if not is_remote(uri):
        if not os.path.exists(uri):
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            write_local_atomic(uri, buf.getvalue())
        return uri
    fs, path = (storage or StorageConfig()).filesystem(uri)
    if not fs.exists(path):
        with fs.open(path, "wb") as f:
            f.write(buf.getvalue())
    return uri


def load_lowres_map(uri: str, storage: StorageConfig | None = None) -> np.ndarray:
    """A stored second-opinion map at the image's resolution (bilinear from stride 4), float32 (H, W)."""
    import torch  # here only, as in decode
    import torch.nn.functional as F

    with np.load(io.BytesIO(_read(uri, storage)), allow_pickle=False) as z:
        low = torch.from_numpy(z["noise"].astype(np.float32))[None, None]  # (h, w) -> (1, 1, h, w)
        h, w = (int(v) for v in z["size"])
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def store_maps(table: pa.Table, output_root: str, storage: StorageConfig | None = None) -> pa.Table:
    """The map stage: store each row's maps (``save``) under ``OUTPUT/maps``, fill map_uri/preview_uri/map_codec
    (relative to OUTPUT, so a copied or moved OUTPUT keeps its maps: ``pipeline.base.store.resolve_ref``), drop
    the payload.

    A row whose map cannot be stored (e.g. the object store is down) becomes a transient error row
    without its model outputs: no row ever points to a map that is not there, and the next sweep
    scores that file again. Tables without a payload column pass unchanged.
    """
    if PAYLOAD_COLUMN not in table.column_names:
        return table
    output_root = output_root.rstrip("/")
    maps_root = f"{output_root}/{MAPS_DIR}"

    def rel(uri: str) -> str:
        return uri[len(output_root) + 1:]

    payloads = table.column(PAYLOAD_COLUMN).to_pylist()
    rows = table.drop_columns([PAYLOAD_COLUMN]).to_pylist()
    for row, payload in zip(rows, payloads):
        if payload is None:
            continue
        try:
            margin, conf, size, second = unpack(payload)
            uri = save(maps_root, row["sha256"], margin, conf, size, storage)
            row.update(map_uri=rel(uri), preview_uri=rel(preview_uri(uri)), map_codec=MAP_CODEC)
            for kind, lowres in second.items():
                _, model_col, map_col = SECOND_OPINIONS[kind]
                uri_2 = save_lowres_map(maps_root, row["sha256"], kind, row[model_col], lowres, size, storage)
                row[map_col] = rel(uri_2)
        except Exception as e:  # noqa: BLE001 - becomes an error row, the stage lives on
            row.update(dict.fromkeys((*MODEL_OUTPUT_COLUMNS, *MAP_COLUMNS)), status=STATUS_ERROR,
                       error_kind=ERROR_TRANSIENT,
                       error=one_line(redact(f"writing the map failed: {type(e).__name__}: {e}")))
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
