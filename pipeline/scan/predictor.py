"""The callable predictor: loads TruFor once per actor, scores a batch, returns rows (maps: ``maps.store_maps``)."""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from mantranet_core import count_steps as mantranet_steps, load_mantranet, to_input
from pipeline.base import maps
from pipeline.base.model_options import BatchOptions
from pipeline.base.schema import (DECODED_COLUMNS, ERROR_TRANSIENT, STATUS_ERROR, STATUS_OK, ScanRow, coerce,
                                  rows_to_table)
from pipeline.base.storage import StorageConfig, local_copy, one_line, redact
from pipeline.scan.dedup import CopyMarker
from trufor_core import EvalConfig, load_trufor
from trufor_core.backends import COMPILED_MAX_PIXELS, make_runner, openvino_cache
from trufor_core.config import POOLED_FEATURE_NAMES, SLOW_IMAGE_S
from trufor_core.model import autocast, describe_device, resolve_device
from trufor_core.progress import OutOfTime, Watch, on_step

MODEL_NAME = "trufor-detconfcmx-mit_b2"


@dataclass(frozen=True)
class PredictorConfig(BatchOptions):
    """Everything an actor needs; passed through Ray as constructor arguments, never globals.

    Attributes:
        checkpoint: TruFor weights file (resolved on the driver).
        output_root: OUTPUT; compressed maps go to ``OUTPUT/maps`` (rows refer to them relative to OUTPUT).
        run_id: identifier written into every row.
        code_version: trufor-scan version (+ git commit) written into every row.
        noiseprint_weights: optional replacement Noiseprint++ weights.
        variant: "test_docker" or "train_test" numerics.
        device: "auto", "cpu", "cuda"...
        batch_size, batch_max_pixels: ``BatchOptions`` (the same fields as `scan`'s options).
        torch_threads: intra-op threads (Ray gives workers OMP_NUM_THREADS=1).
        storage: object-store endpoint settings.
        precision: "fp32" (default), "bf16" or "fp16" (autocast; ``trufor_core.model.autocast``).
        backend: what runs the forward (``trufor_core.backends``: auto, eager, openvino, inductor).
        compiled_max_pixels: larger images take the eager bounded-memory path on a compiled backend.
        timings_dir: when set, each call appends its timings to ``actor-<pid>.jsonl`` there (benchmarks).
        dedup: do not score bytes (sha256) already scored with these weights, in earlier runs
            (``known_hashes``) or earlier in this actor: such rows are marked ``dedup.pending`` and
            completed from the original's row on the driver (``pipeline.scan.dedup.DedupResolver``).
        max_seconds_per_image: the time one image may take (a batch: that times its images; 0: no limit); past
            it the forward stops and the image gets a ``transient`` error row saying how far it got.
        slow_image_s: a forward running longer reports a progress line (``progress``), then as often again.
        noise_anomaly: a model from `noiseprint fit-anomaly` (fitted on this checkpoint's Noiseprint++):
            each scored image also gets its noise-anomaly heat map and score (a second opinion).
        mantranet: ManTra-Net weights (Keras .h5): each scored image also gets ManTra-Net's map and score
            (a second opinion from an independent detector; ``mantranet_core``), in its time budget.
    """

    checkpoint: str
    output_root: str
    run_id: str
    code_version: str
    noiseprint_weights: str | None = None
    variant: str = "test_docker"
    device: str = "auto"
    torch_threads: int | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    precision: str = "fp32"
    backend: str = "auto"
    compiled_max_pixels: int = COMPILED_MAX_PIXELS
    dedup: bool = False
    timings_dir: str | None = None
    noise_anomaly: str | None = None
    mantranet: str | None = None
    max_seconds_per_image: float = 0.0
    slow_image_s: float = SLOW_IMAGE_S

    def __post_init__(self) -> None:
        if self.max_seconds_per_image < 0:
            raise ValueError(f"--max-seconds-per-image must be >= 0 (0: no limit), got {self.max_seconds_per_image}")


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - provenance only
        return None


def group_batches(shapes: list[tuple[int, int]], batch_size: int, max_pixels: int) -> list[list[int]]:
    """Indices grouped by shape, split so a group has <= batch_size images and <= max_pixels pixels."""
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(shapes):
        by_shape[s].append(i)
    groups = []
    for (h, w), idx in by_shape.items():
        per = max(1, min(batch_size, max_pixels // max(1, h * w)))
        groups += [idx[k:k + per] for k in range(0, len(idx), per)]
    return groups


class TruForPredictor:
    """Ray Data callable class (``map_batches(TruForPredictor, compute=ActorPoolStrategy(...))``)."""

    def __init__(self, cfg: PredictorConfig, known_hashes: list | None = None, progress=None):
        """``progress``: where lines about an image that runs over a minute go (``put(line, timeout=)``: the
        scan passes a Ray queue its driver prints from; None: nowhere)."""
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        noiseprint = None if cfg.noiseprint_weights is None else local_copy(cfg.noiseprint_weights, cfg.storage)
        self.model, self.info = load_trufor(local_copy(cfg.checkpoint, cfg.storage), variant=cfg.variant,
                                            device=self.device, noiseprint=noiseprint)
        self.ev = EvalConfig()
        self.runner = make_runner(self.model, cfg.backend, f"{self.info.sha256}:{self.info.noiseprint_sha256}:{cfg.variant}",
                                  cfg.precision, torch.get_num_threads(), openvino_cache(),
                                  max_pixels=cfg.compiled_max_pixels)
        self.device_desc = describe_device(self.device)
        self.node_id = _node_id()
        self.copies = CopyMarker(cfg.dedup, known_hashes)
        self.progress = progress
        self.noise_anomaly = self.noise_anomaly_sha = None
        if cfg.noise_anomaly:
            from noiseprint_lab.localizers import NoiseAnomalyModel, check_fitted_on
            from trufor_core.checkpoint import sha256_file

            path = local_copy(cfg.noise_anomaly, cfg.storage)
            self.noise_anomaly, self.noise_anomaly_sha = NoiseAnomalyModel.load(path), sha256_file(path)
            check_fitted_on(self.noise_anomaly, self.model.dncnn.state_dict(), "the scan's weights", cfg.noise_anomaly)
        self.mantranet = self.mantranet_sha = None
        if cfg.mantranet:
            self.mantranet, info = load_mantranet(local_copy(cfg.mantranet, cfg.storage), device=self.device)
            self.mantranet_sha = info.sha256
        self.ready_at = time.time()

    def _common(self) -> dict:
        return {"model_name": MODEL_NAME, "weights_sha256": self.info.sha256,
                "noiseprint_sha256": self.info.noiseprint_sha256, "weights_untrained": self.info.untrained,
                "code_version": self.cfg.code_version, "torch_version": torch.__version__,
                "device": self.device_desc, "precision": self.cfg.precision, "ray_node_id": self.node_id,
                "run_id": self.cfg.run_id}

    def _report(self, uris: list[str], done: int, total: int, seconds: float) -> None:
        """A progress line for a forward past a minute; a queue that fails is dropped (reporting never
        stops scoring)."""
        if self.progress is None:
            return
        what = uris[0] if len(uris) == 1 else f"{uris[0]} (+{len(uris) - 1} in its batch)"
        try:
            self.progress.put(f"{what}: step {done}/{total} after {seconds:.0f} s", timeout=5)
        except Exception:  # noqa: BLE001 - progress is best effort; the row is what counts
            self.progress = None

    def _score(self, pixels: list[np.ndarray], uris: list[str]) -> list[dict]:
        """One forward over same-shape images; per image its model outputs and map payload.

        Only what the rows need leaves the device: scores, pooled features, three map statistics and
        the stride-4 logits, never the full-resolution maps. On CUDA the uint8 pixels go through
        pinned memory, asynchronously, and become floats on the device (a quarter of the bytes).
        """
        x = torch.from_numpy(np.stack(pixels))  # (B, H, W, 3) uint8
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).to(self.model.dtype).contiguous() / 256.0  # (B, 3, H, W), as to_model_input
        with torch.inference_mode():
            budget = self.cfg.max_seconds_per_image
            steps = self.runner.steps(x, self.ev)
            if self.mantranet is not None:  # the second detector runs in the same budget and progress count
                steps += len(pixels) * mantranet_steps(*pixels[0].shape[:2])
            watch = Watch(steps, budget * len(pixels) if budget > 0 else None,
                          report=lambda *a: self._report(uris, *a), report_after_s=self.cfg.slow_image_s,
                          report_every_s=self.cfg.slow_image_s)
            with autocast(self.device, self.cfg.precision):
                out, backend = self.runner(x, self.ev, watch)
            a, c = out.maps()  # (B, H, W) each, in the model dtype (outside autocast), on the device
            hot = a > 0.5
            stats = torch.stack([hot.sum((1, 2)), (hot & (c > 0.5)).sum((1, 2))], 1).cpu().tolist()
            peak = (a * c).amax((1, 2)).cpu().tolist()
            dets = out.det_logit.cpu()
            scores = torch.sigmoid(out.det_logit).cpu().tolist()
            pooled = out.pooled.cpu().numpy()
            margin = (out.anomaly_logits_lowres[:, 1] - out.anomaly_logits_lowres[:, 0]).cpu().numpy()
            conf = out.conf_logits_lowres[:, 0].cpu().numpy()
        size, n_pix = tuple(x.shape[-2:]), x.shape[-2] * x.shape[-1]
        noise = [self._noise_anomaly(p) for p in pixels] if self.noise_anomaly else [(None, None)] * len(pixels)
        mt = [self._mantranet(p, watch) for p in pixels] if self.mantranet else [(None, None)] * len(pixels)
        return [{"score": scores[i], "det_logit": dets[i].item(),
                 **{k: float(v) for k, v in zip(POOLED_FEATURE_NAMES, pooled[i])},
                 "frac_anom": stats[i][0] / n_pix, "frac_anom_conf": stats[i][1] / n_pix, "max_anom_conf": peak[i],
                 "backend": backend, "steps": watch.total, "noise_anomaly_score": noise[i][0], "noise_anomaly_model": self.noise_anomaly_sha,
                 "mantranet_score": mt[i][0], "mantranet_weights": self.mantranet_sha,
                 maps.PAYLOAD_COLUMN: maps.pack(margin[i], conf[i], size, noise=noise[i][1], mantranet=mt[i][1])}
                for i in range(len(pixels))]

    def _noise_anomaly(self, rgb: np.ndarray) -> tuple[float, np.ndarray]:
        """(score = the heat map's largest value, the heat map averaged over 4 x 4 cells) of one image."""
        heat = self.noise_anomaly.heatmap(self.model.dncnn, rgb)  # (H, W) float32
        return float(heat.max()), maps.cell_means(heat)

    def _mantranet(self, rgb: np.ndarray, watch: Watch) -> tuple[float, np.ndarray]:
        """(score = the map's largest value, the map averaged over 4 x 4 cells) of one image, by ManTra-Net's
        bounded-memory forward; its steps count on the image's watch (progress lines, the time budget)."""
        with torch.inference_mode(), on_step(watch):
            out = self.mantranet(to_input(rgb).to(self.device))
        mask = out.mask[0].float().cpu().numpy()  # (H, W)
        return float(out.score[0]), maps.cell_means(mask)

    def _run_group(self, idx: list[int], pixels, uris, extra: list[dict]) -> float:
        """Score one same-shape group; a failing group is retried image by image to isolate the culprit, except
        when it ran out of time (same-shape images take the same time: each would run out too).

        Returns the seconds spent in forward passes.
        """
        t0 = time.perf_counter()
        try:
            results = self._score([pixels[i] for i in idx], [str(uris[i]) for i in idx])
        except Exception as e:  # noqa: BLE001 - becomes error rows, the actor lives on
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(idx) > 1 and not isinstance(e, OutOfTime):
                return sum(self._run_group([i], pixels, uris, extra) for i in idx)
            what = (f"out of time: {e}; a later sweep retries it (with a larger --max-seconds-per-image or on a faster "
                    "machine)") if isinstance(e, OutOfTime) else f"inference failed: {type(e).__name__}: {e}"
            for i in idx:
                extra[i] = {"status": STATUS_ERROR, "error_kind": ERROR_TRANSIENT, "error": one_line(redact(what))}
            return time.perf_counter() - t0
        forward_s = time.perf_counter() - t0
        for i, fields in zip(idx, results):
            extra[i] = {**fields, "elapsed_ms": forward_s * 1000 / len(idx)}
        return forward_s

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Rows for a decoded batch: ``ROW_SCHEMA`` plus the maps' payload (``maps.PAYLOAD_COLUMN``), which
        ``maps.store_maps`` turns into stored maps: in the scan, a CPU stage after this one."""
        started = time.time()
        n = len(batch["uri"])
        base = [{k: coerce(k, batch[k][i]) for k in DECODED_COLUMNS if k in batch} for i in range(n)]
        extra: list[dict] = [{} for _ in range(n)]
        ok = []
        for i in range(n):
            if base[i]["status"] != STATUS_OK:
                continue
            if marker := self.copies.copy_of(base[i]["sha256"]):
                extra[i] = {"dedup_of": marker}  # completed on the driver
                continue
            ok.append(i)
        groups = group_batches([tuple(batch["pixels"][i].shape[:2]) for i in ok], self.cfg.batch_size,
                               self.cfg.batch_max_pixels)
        forward_s = sum(self._run_group([ok[j] for j in g], batch["pixels"], batch["uri"], extra) for g in groups)
        now = dt.datetime.now(dt.timezone.utc)
        common = self._common()
        rows, payloads = [], []
        for i in range(n):
            fields = {k: base[i].get(k) for k in DECODED_COLUMNS}
            fields.update(common)
            fields["scanned_at"] = now
            payloads.append(extra[i].pop(maps.PAYLOAD_COLUMN, None))
            fields.update(extra[i])
            rows.append(ScanRow(**fields))
        table = rows_to_table(rows).append_column(maps.PAYLOAD_COLUMN, pa.array(payloads, pa.binary()))
        if self.cfg.timings_dir:
            self._log_timing(started, forward_s, len(ok))
        return table

    def _log_timing(self, started: float, forward_s: float, images: int) -> None:
        """One JSON line per call, for measuring how much of an actor's time the model gets (bench_scan)."""
        line = {"pid": os.getpid(), "ready": self.ready_at, "start": started, "end": time.time(),
                "forward_s": forward_s, "images": images}
        with open(os.path.join(self.cfg.timings_dir, f"actor-{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
