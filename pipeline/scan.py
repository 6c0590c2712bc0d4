"""The scan driver: list INPUT, run the Ray Data pipeline, write Parquet results, report progress."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from trufor_core.checkpoint import check_checkpoint
from trufor_core.image import DEFAULT_MAX_PIXELS
from trufor_core.model import min_image_side
from trufor_core.config import TruForConfig
from trufor_core.weights import resolve_weights

from .listing import list_input
from .predictor import PredictorConfig, TruForPredictor
from .preprocess import load_batch
from .schema import PARTITION_COLUMN, ROW_SCHEMA, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, ScanRow, rows_to_table
from .storage import StorageConfig, is_remote, local_copy, redact

DECODE_CPUS = 0.25  # per decode task: reading, hashing and decoding are light next to TruFor

# Quiet, local-friendly Ray defaults; a user's own environment wins.
RAY_ENV_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DATA_LOG_LEVEL": "ERROR"}


@dataclass(frozen=True)
class ScanConfig:
    """Settings of one `scan` run (see `trufor-scan scan --help`)."""

    input: str
    output: str
    checkpoint: str | None = None
    noiseprint_weights: str | None = None
    actors: int = 1
    gpus_per_actor: float | None = None  # None: 1 when this machine has a GPU, else 0
    cpus_per_actor: float | None = None  # None: share the CPUs among the actors
    batch_size: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    run_id: str | None = None
    ray_address: str | None = None
    s3_endpoint: str | None = None
    variant: str = "test_docker"
    allow_download: bool = True
    progress_every_s: float = 10.0
    rows_per_file: int = 50_000
    object_store_bytes: int | None = None  # local Ray only
    ray_temp_dir: str | None = None  # local Ray only


@dataclass
class ScanSummary:
    run_id: str
    listed: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    results_uri: str = ""
    maps_uri: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def scanned(self) -> int:
        return self.ok + self.errors

    def text(self) -> str:
        rate = self.scanned / self.wall_s if self.wall_s else 0.0
        return (f"scan {self.run_id}: listed {self.listed}, scanned {self.scanned} ({self.ok} ok, {self.errors} errors), "
                f"skipped {self.skipped}; {self.wall_s:.1f} s, {rate:.2f} img/s\n"
                f"results: {self.results_uri}\nmaps:    {self.maps_uri}")


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("trufor-scan")
    except PackageNotFoundError:
        v = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


class _Progress:
    """A live line on a terminal, else a line every ``every_s`` seconds."""

    def __init__(self, total: int, every_s: float, stream=sys.stderr):
        self.total, self.every_s, self.stream = total, every_s, stream
        self.tty = stream.isatty()
        self.t0 = self.last = time.monotonic()

    def update(self, done: int, errors: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else self.every_s):
            return
        self.last = now
        el = now - self.t0
        rate = done / el if el > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        line = f"scan: {done}/{self.total} images, {rate:.2f} img/s, {errors} errors, ETA {eta:.0f} s"
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _init_ray(cfg: ScanConfig) -> bool:
    """Connect to ``--ray-address``/RAY_ADDRESS, or start a local Ray. Returns True if we started it."""
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False}
    if cfg.object_store_bytes:
        kwargs["object_store_memory"] = cfg.object_store_bytes
    if cfg.ray_temp_dir:
        kwargs["_temp_dir"] = cfg.ray_temp_dir
    ray.init(**kwargs)
    return True


def _actor_resources(cfg: ScanConfig) -> tuple[float, float, int]:
    """(num_cpus, num_gpus, torch threads) per actor."""
    import ray
    import torch

    res = ray.cluster_resources()
    gpus = cfg.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if res.get("GPU", 0) >= 1 or (not cfg.ray_address and torch.cuda.is_available()) else 0.0
    if gpus > 0:
        return (cfg.cpus_per_actor or 1.0), gpus, int(cfg.cpus_per_actor or 2)
    total = res.get("CPU", os.cpu_count() or 1)
    # Leave half a CPU for the decode tasks; torch in each actor uses its share of cores.
    cpus = cfg.cpus_per_actor or max(0.25, (total - 0.5) / cfg.actors)
    if cpus * cfg.actors > total - DECODE_CPUS:
        raise ValueError(f"{cfg.actors} actors x {cpus:g} CPUs leave no CPU for the decode tasks "
                         f"({DECODE_CPUS} CPU each) on a cluster of {total:g} CPUs: lower --cpus-per-actor or --actors")
    return cpus, 0.0, max(1, round(cpus + 0.5 / cfg.actors))


def run_scan(cfg: ScanConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> ScanSummary:
    """Score every image under ``cfg.input``; one Parquet row per listed file.

    Returns:
        Counts, wall time and where the results and maps went.
    """
    t0 = time.monotonic()
    run_id = cfg.run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    storage = StorageConfig.from_env(cfg.s3_endpoint)
    out_root = cfg.output.rstrip("/")
    scan_date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    results_dir = f"{out_root}/results/{PARTITION_COLUMN}={scan_date}"
    summary = ScanSummary(run_id=run_id, results_uri=f"{out_root}/results", maps_uri=f"{out_root}/maps")

    ckpt = cfg.checkpoint if cfg.checkpoint and is_remote(cfg.checkpoint) else \
        str(resolve_weights(cfg.checkpoint, allow_download=cfg.allow_download, log=log))
    # A bad or malicious checkpoint is one clear error here, before Ray starts and before any row
    # could claim that the images failed (the actors would each fail to load it).
    noiseprint = local_copy(cfg.noiseprint_weights, storage) if cfg.noiseprint_weights else None
    check_checkpoint(local_copy(ckpt, storage), noiseprint, cfg.variant)

    listing = list_input(cfg.input, storage)
    summary.listed = len(listing)
    n_skip = sum(1 for f in listing if f.skip_reason)
    log(f"scan {run_id}: {len(listing)} files listed under {cfg.input} ({n_skip} not images)")

    out_fs, results_path = storage.filesystem(results_dir)
    out_fs.makedirs(results_path, exist_ok=True)
    seen: set[str] = set()
    pending: list[pa.Table] = []
    pending_rows = 0
    progress = _Progress(len(listing), cfg.progress_every_s)

    def flush() -> None:
        nonlocal pending, pending_rows
        if not pending:
            return
        name = f"{results_path}/part-{run_id}-{len(summary.files):05d}.parquet"
        with out_fs.open(name, "wb") as f:
            pq.write_table(pa.concat_tables(pending), f, compression="zstd")
        summary.files.append(out_fs.unstrip_protocol(name) if is_remote(out_root) else name)
        pending, pending_rows = [], 0

    def take(table: pa.Table) -> None:
        nonlocal pending_rows
        table = table.select(ROW_SCHEMA.names).cast(ROW_SCHEMA)
        status = table.column("status").to_pylist()
        summary.ok += status.count(STATUS_OK)
        summary.errors += status.count(STATUS_ERROR)
        summary.skipped += status.count(STATUS_SKIPPED)
        seen.update(table.column("uri").to_pylist())
        pending.append(table)
        pending_rows += table.num_rows
        if pending_rows >= cfg.rows_per_file:
            flush()
        progress.update(summary.scanned + summary.skipped, summary.errors)

    started_ray = False
    failure: Exception | None = None
    if listing:
        started_ray = _init_ray(cfg)
        try:
            import ray

            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            cpus, gpus, threads = _actor_resources(cfg)
            pcfg = PredictorConfig(checkpoint=ckpt, maps_root=f"{out_root}/maps", run_id=run_id,
                                   code_version=code_version(), noiseprint_weights=cfg.noiseprint_weights,
                                   variant=cfg.variant, device="cuda" if gpus > 0 else "cpu",
                                   batch_size=cfg.batch_size, torch_threads=threads, storage=storage)
            items = [asdict(f) for f in listing]
            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * cfg.actors * 8)))
            ds = ds.map_batches(load_batch, batch_size=cfg.batch_size, num_cpus=DECODE_CPUS,
                                fn_kwargs={"storage": storage, "max_pixels": cfg.max_pixels,
                                           "min_side": min_image_side(TruForConfig())})
            # Two batches in flight per actor: one running, one queued, so idle actors get the rest.
            ds = ds.map_batches(TruForPredictor, fn_constructor_kwargs={"cfg": pcfg}, batch_size=cfg.batch_size,
                                compute=ray.data.ActorPoolStrategy(size=cfg.actors, max_tasks_in_flight_per_actor=2),
                                num_cpus=cpus, num_gpus=gpus)
            log(f"scan {run_id}: {cfg.actors} actor(s) x ({cpus:g} CPU, {gpus:g} GPU, {threads} torch threads)")
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                take(table)
        except Exception as e:  # noqa: BLE001 - recorded below, then raised
            failure = e
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    # Every listed file is accounted for: anything the pipeline lost gets an error row.
    lost = [f for f in listing if f.uri not in seen]
    reason = f"scan {run_id} failed in the Ray pipeline: {redact(str(failure))}" if failure else None
    if lost:
        take(rows_to_table([ScanRow(uri=f.uri, status=STATUS_ERROR, size_bytes=f.size_bytes,
                                    etag_or_mtime=f.etag_or_mtime, run_id=run_id,
                                    error=reason or "no result came back from the pipeline for this file",
                                    scanned_at=dt.datetime.now(dt.timezone.utc)) for f in lost]))
    flush()
    if failure:
        raise RuntimeError(reason) from failure
    summary.wall_s = time.monotonic() - t0
    progress.update(summary.scanned + summary.skipped, summary.errors, final=True)
    return summary
