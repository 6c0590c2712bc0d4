"""The scan driver: plan (list INPUT, anti-join with OUTPUT), run the Ray Data pipeline, commit parts."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.base.lease import DEFAULT_TTL_S, Lease, LeaseLost
from pipeline.base.maps import store_maps
from pipeline.base.model_options import (MANTRANET_UNTRAINED, UNTRAINED_WEIGHTS, BatchOptions, WeightsOptions,
                                         weights_line)
from pipeline.base.options import carried, opt
from pipeline.base.progress import note_slow, progress
from pipeline.base.quiet import harmless_lines_to
from pipeline.base.schema import ERROR_TRANSIENT, STATUS_ERROR, ScanRow, rows_to_table
from pipeline.base.storage import StorageOptions, local_copy, one_line, redact
from pipeline.base.store import (MAPS_DIR, RESULTS_DIR, RUNS_DIR, STATE_COMPLETE, STATE_FAILED, ResultWriter, RunFailed,
                                 RunRecord, StoreError, check_layout, duck, mark_abandoned, root_of)
from pipeline.base.version import code_version
from pipeline.scan import c2pa as credentials
from pipeline.scan.decode import load_batch
from pipeline.scan.dedup import DedupResolver
from pipeline.scan.plan import Plan, plan_run
from pipeline.scan.predictor import PredictorConfig, TruForPredictor
from trufor_core.checkpoint import check_checkpoint, sha256_file
from trufor_core.config import SLOW_IMAGE_S, TruForConfig
from trufor_core.image import DEFAULT_MAX_PIXELS
from trufor_core.model import min_image_side
from trufor_core.weights import resolve_weights

# What makes a run fail as a whole (not a row): the results store cannot be written.
STORE_FAILURES = (StoreError, LeaseLost, OSError)

# CPUs per task of the stages around the model: reading, hashing and decoding before it, map
# encoding and storing after it. Both are light next to TruFor; half a CPU stays free for them.
DECODE_CPUS = 0.25
MAP_CPUS = 0.25
SIDE_CPUS = DECODE_CPUS + MAP_CPUS

# Quiet, local-friendly Ray defaults; a user's own environment wins.
RAY_ENV_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DATA_LOG_LEVEL": "ERROR"}


@dataclass(frozen=True)
class ScanConfig(WeightsOptions, BatchOptions, StorageOptions):
    """Settings of one `scan` or `sweep` run; the command line is derived from these fields."""

    input: str = field(metadata=opt("local directory, s3://bucket/prefix (any fsspec URI), single file, or a manifest "
                                    "(.parquet/.csv with a uri column, or .txt with one URI per line)", positional=True))
    output: str = field(metadata=opt("local directory or s3:// prefix for the results and runs tables and maps/"))
    incremental: bool = False  # set by the command: `sweep` scans only what OUTPUT has not scored
    rescore: bool = field(default=False, metadata=opt(
        "also rescan files whose latest row was scored with other weights (both generations stay queryable "
        "by weights_sha256)", commands=("sweep",)))
    noise_anomaly: str | None = field(default=None, metadata=opt(
        "a model from `noiseprint fit-anomaly` (fitted on these weights' Noiseprint++): a second opinion per image, "
        "noise_anomaly_score and its map (off by default)"))
    mantranet: str | None = field(default=None, metadata=opt(
        "ManTra-Net weights (Keras .h5, `weights get mantranet`): a second detector's opinion per image, "
        "mantranet_score and its map (off by default; ~2.5x TruFor eager's time per image on a CPU)"))
    c2pa_trust_anchors: str | None = field(default=None, metadata=opt(
        "PEM file of certificates to trust for content credentials (C2PA): a manifest signed under them is "
        "'trusted', any other correctly signed one 'valid'; nothing is ever fetched"))
    actors: int = field(default=1, metadata=opt("size of the TruFor actor pool"))
    gpus_per_actor: float | None = field(default=None, metadata=opt("default: 1 when a GPU exists, else 0"))
    cpus_per_actor: float | None = field(default=None, metadata=opt("default: the CPUs shared among actors"))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=opt("larger images become error rows (never resized)"))
    max_seconds_per_image: float = field(default=3600.0, metadata=opt(
        "seconds one image may take in the model (0: no limit); past it the image gets a transient error row saying "
        "how far it got (retried by the next sweep); progress lines from a minute on (docs/scanning.md \"Huge "
        "images\")"))
    max_bytes: int = field(default=200 * 2**20, metadata=opt("larger files become error rows, refused before reading"))
    read_timeout_s: float = field(default=120.0, metadata=opt(
        "seconds to read one file before it becomes an error row (retried by the next sweep)", flag="--read-timeout"))
    rows_per_part: int = field(default=10_000, metadata=opt("commit a result part every this many rows ..."))
    commit_every_s: float = field(default=60.0, metadata=opt(
        "... or every this many seconds, whichever first (a killed run loses at most one interval)",
        flag="--commit-every"))
    run_id: str | None = field(default=None, metadata=opt("identifier written into every row (default: timestamp + random)"))
    wait: float = field(default=0.0, metadata=opt(
        "seconds to wait while another run holds OUTPUT's write lease (default: exit at once with status 4, "
        "naming the holder)"))
    lease_ttl: float = field(default=DEFAULT_TTL_S, metadata=opt(
        "seconds after its last heartbeat that a run's write lease expires (a driver that died: the next run "
        "takes over then)"))
    ray_address: str | None = field(default=None, metadata=opt(
        "an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)"))
    progress_every_s: float = field(default=10.0, metadata=opt("seconds between progress lines off a terminal",
                                                               flag="--progress-every"))
    object_store_bytes: int | None = None  # local Ray only (tests, benchmarks)
    slow_image_s: float = SLOW_IMAGE_S  # tests: when an image's forward starts reporting progress lines
    actor_timings_dir: str | None = None  # benchmarks: each actor call's timings (PredictorConfig.timings_dir)
    ray_temp_dir: str | None = None  # local Ray only (tests, benchmarks)


@dataclass
class ScanSummary:
    """What a run did (its record: counts, version) and where its results went."""

    run: RunRecord
    wall_s: float = 0.0
    results_uri: str = ""
    maps_uri: str = ""
    runs_uri: str = ""

    def __getattr__(self, name: str):
        """The run's own fields (run_id, command, listed, to_scan, ok, errors, skipped, dedup, commits,
        results_version), read from its record: declared once, there."""
        if name == "run":
            raise AttributeError(name)
        return getattr(self.run, name)

    @property
    def scanned(self) -> int:
        return self.ok + self.errors

    def text(self) -> str:
        if self.command == "sweep" and self.to_scan == 0:
            head = (f"sweep {self.run_id}: nothing new: all {self.listed} listed files are already in the results "
                    f"({self.wall_s:.1f} s)")
        else:
            rate = self.scanned / self.wall_s if self.wall_s else 0.0
            new = f", {self.to_scan} to scan" if self.command == "sweep" else ""
            head = (f"{self.command} {self.run_id}: listed {self.listed}{new}, scanned {self.scanned} ({self.ok} ok, "
                    f"{self.errors} errors, {self.dedup} copies of bytes already scored), skipped {self.skipped}; "
                    f"{self.wall_s:.1f} s, {rate:.2f} img/s")
        version = "" if self.results_version is None else f" (Delta table, version {self.results_version})"
        warning = f"\nWARNING: {UNTRAINED_WEIGHTS}" if self.weights_untrained else ""
        return (f"{head}\nweights: sha256 {self.weights_sha256}"
                f"{' (UNTRAINED test weights)' if self.weights_untrained else ''}{warning}\n"
                f"results: {self.results_uri}{version}\nmaps:    {self.maps_uri}\n"
                f"runs:    {self.runs_uri} (run_id {self.run_id})")


def _ray_log_path(run_id: str) -> str:
    """Where the known-harmless lines of Ray go: its session's log folder, else the temporary folder."""
    try:
        import ray

        folder = os.path.join(ray._private.worker.global_worker.node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001 - a private API: any change of it only moves the file
        folder = tempfile.gettempdir()
    return os.path.join(folder, f"trufor-scan-{run_id}-harmless.log")


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
    # Leave a task's worth of CPU to the decode and map stages; torch in each actor uses its share of cores.
    cpus = cfg.cpus_per_actor or max(0.25, (total - SIDE_CPUS) / cfg.actors)
    if cpus * cfg.actors > total - SIDE_CPUS:
        raise ValueError(f"{cfg.actors} actors x {cpus:g} CPUs leave no CPU for the decode and map tasks "
                         f"({SIDE_CPUS:g} CPU) on a cluster of {total:g} CPUs: lower --cpus-per-actor or --actors")
    return cpus, 0.0, max(1, round(cpus + SIDE_CPUS / cfg.actors))



def _feed(plan: Plan, actors: int) -> list:
    """The rows to scan as object-store blocks (the driver keeps only the references).

    Blocks are small enough that every actor gets several (decode tasks run per block), at most 500 rows.
    """
    import ray

    rows = max(1, min(500, math.ceil(plan.to_scan / (8 * actors))))
    return [ray.put(pa.Table.from_batches([b])) for b in pq.ParquetFile(plan.path).iter_batches(batch_size=rows)]


def _pipeline(cfg: ScanConfig, plan: Plan, pcfg: PredictorConfig, predictor_cls, log,
              c2pa_settings: str, lines) -> Iterator[pa.Table]:
    """Result tables as the actors produce them."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    cpus, gpus, threads = _actor_resources(cfg)
    pcfg = dataclasses.replace(pcfg, device="cuda" if gpus > 0 else "cpu", torch_threads=threads)
    known = [ray.put(c) for c in plan.known_hashes]
    ds = ray.data.from_arrow_refs(_feed(plan, cfg.actors))
    ds = ds.map_batches(load_batch, batch_size=cfg.batch_size, num_cpus=DECODE_CPUS,
                        fn_kwargs={"storage": pcfg.storage, "max_pixels": cfg.max_pixels,
                                   "min_side": min_image_side(TruForConfig()), "max_bytes": cfg.max_bytes,
                                   "read_timeout_s": cfg.read_timeout_s, "c2pa_settings": c2pa_settings})
    # Two batches in flight per actor: one running, one queued, so idle actors get the rest.
    kwargs = {"cfg": pcfg, "known_hashes": known}
    if lines is not None:
        kwargs["progress"] = lines
    ds = ds.map_batches(predictor_cls, fn_constructor_kwargs=kwargs,
                        batch_size=cfg.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=cfg.actors, max_tasks_in_flight_per_actor=2),
                        num_cpus=cpus, num_gpus=gpus)
    # Maps are compressed and stored by CPU tasks of their own, so the model's actor never waits for
    # them; rows reach the driver (and the results) only after this stage has stored their maps.
    ds = ds.map_batches(store_maps, batch_size=None, batch_format="pyarrow", num_cpus=MAP_CPUS,
                        fn_kwargs={"output_root": pcfg.output_root, "storage": pcfg.storage})
    log(f"{pcfg.run_id}: {cfg.actors} actor(s) x ({cpus:g} CPU, {gpus:g} GPU, {threads} torch threads)")
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def _lost_rows(plan: Plan, writer: ResultWriter, held: set[str], run_id: str, reason: str) -> Iterator[pa.Table]:
    """Error rows for every planned file with no row committed by this run (streamed in DuckDB)."""
    con = duck(None, [])  # local files only, under the default limits (a deadline, a memory limit)
    try:
        con.register("written", writer.committed_uris())
        con.execute("CREATE TEMP TABLE held(uri VARCHAR)")
        if held:
            con.executemany("INSERT INTO held VALUES (?)", [[u] for u in sorted(held)])
        reader = con.execute(
            "SELECT uri, size_bytes, etag_or_mtime FROM read_parquet(?) WHERE uri NOT IN (SELECT uri FROM written) "
            "AND uri NOT IN (SELECT uri FROM held) ORDER BY uri", [plan.path]).fetch_record_batch(10_000)
        now = dt.datetime.now(dt.timezone.utc)
        for batch in reader:
            yield rows_to_table([ScanRow(uri=r["uri"], status=STATUS_ERROR, size_bytes=r["size_bytes"],
                                         etag_or_mtime=r["etag_or_mtime"], run_id=run_id, error=reason,
                                         error_kind=ERROR_TRANSIENT, scanned_at=now) for r in batch.to_pylist()])
    finally:
        con.close()


def _write(cfg: ScanConfig, plan: Plan, run: RunRecord, out_root: str, storage, scoring, lease, predictor_cls, log,
           c2pa_settings: str, ckpt: str) -> str | None:
    """Score the plan into the table; returns the failure line of a failed pipeline (its rows are in).

    Raises:
        RunFailed: the store could not be written (disk full, object store gone past the retries, the
            lease lost): the run is recorded as failed with that line when the store still takes a
            record; its committed rows stay and the next sweep completes it.
    """
    writer: ResultWriter | None = None
    try:
        resolver = DedupResolver(out_root, storage, scoring) if cfg.incremental else None
        writer = ResultWriter(out_root, run, dt.datetime.now(dt.timezone.utc).date().isoformat(), storage,
                              cfg.rows_per_part, cfg.commit_every_s, resolver, lease=lease)
        failure = _score(cfg, plan, writer, resolver, predictor_cls, log, c2pa_settings, ckpt, storage) \
            if plan.to_scan else None
        if isinstance(failure, STORE_FAILURES):
            raise failure
        # Every planned file is accounted for: anything the pipeline lost gets a transient error row.
        writer.commit()
        reason = one_line(f"{run.command} {run.run_id} failed in the Ray pipeline: {_failure_summary(failure)}") \
            if failure else "no result came back from the pipeline for this file"
        held = {r["uri"] for r in resolver.held} if resolver is not None else set()
        for lost in _lost_rows(plan, writer, held, run.run_id, reason):
            writer.add(lost)
        writer.close(STATE_FAILED if failure else STATE_COMPLETE, reason if failure else None)
        return reason if failure else None
    except Exception as e:  # noqa: BLE001 - any failure to write the store fails the run, in one line
        line = one_line(redact(f"{run.command} {run.run_id} failed writing to {out_root}: {type(e).__name__}: {e}"))
        if writer is not None:
            try:
                writer.finish(STATE_FAILED, line)
            except Exception:  # noqa: BLE001 - the store is what failed; the line below says so
                pass
        raise RunFailed(line) from None


def _score(cfg: ScanConfig, plan: Plan, writer: ResultWriter, resolver, predictor_cls, log, c2pa_settings: str,
           ckpt: str, storage) -> Exception | None:
    """Run the Ray pipeline over the plan, committing rows as they come; returns what failed, if anything."""
    run = writer.run
    # The model, batching and noise-anomaly options are carried over by name (declared once, on the
    # option groups both configs compose); what the driver resolved is given.
    pcfg = carried(cfg, PredictorConfig, checkpoint=ckpt, output_root=writer.output, run_id=run.run_id,
                   code_version=run.code_version, storage=storage, dedup=cfg.incremental,
                   timings_dir=cfg.actor_timings_dir)
    # Stage lines: starting Ray and loading the model take a while before the first row.
    t0 = time.monotonic()
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    log(f"{run.command} {run.run_id}: " + (f"connecting to Ray at {redact(address)}" if address else "starting Ray"))
    started_ray = _init_ray(cfg)
    convert = (" (on the CPU OpenVINO converts the model once per weights and version on a machine: about 10 s)"
               if cfg.backend in ("auto", "openvino") else "")
    log(f"{run.command} {run.run_id}: Ray ready after {time.monotonic() - t0:.0f} s; {cfg.actors} actor(s) load the "
        f"weights{convert}, then the first batch")
    bar = progress(plan.to_scan, run.command, cfg.progress_every_s)
    first = True
    # Lines about images past a minute come from the actors through a Ray queue, printed above the bar.
    lines = ProgressLines(bar) if issubclass(predictor_cls, TruForPredictor) else None
    try:
        # Ray's known-harmless C++ lines go to a file in its session logs, not to the user's output.
        with harmless_lines_to(_ray_log_path(run.run_id)):
            for table in _pipeline(cfg, plan, pcfg, predictor_cls, log, c2pa_settings,
                                   lines.queue if lines else None):
                if first:
                    bar.write(f"{run.command} {run.run_id}: first results after {time.monotonic() - t0:.0f} s",
                              file=bar.fp)
                    first = False
                ready = resolver.take(table) if resolver is not None else table
                writer.add(ready)
                bar.update(table.num_rows)
                for uri, ms in zip(table.column("uri").to_pylist(), table.column("elapsed_ms").to_pylist()):
                    note_slow(bar, uri, ms / 1000 if ms else None)
    except Exception as e:  # noqa: BLE001 - its rows are recorded by the caller, then it is raised
        return e
    finally:
        if lines is not None:
            lines.close()
        bar.close()
        if started_ray:
            import ray

            ray.shutdown()
    return None


class ProgressLines:
    """The driver's end of the actors' progress lines: a Ray queue (an actor of no CPU) read by a thread
    that writes each line above the bar; every call has a timeout, and closing waits for the thread."""

    def __init__(self, bar):
        from ray.util.queue import Queue

        self.bar, self.queue = bar, Queue(maxsize=1000, actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-lines", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                line = self.queue.get(timeout=1.0)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue is gone (Ray shut down): nothing more will come
                return
            # A uri is data: one line, no control characters or credentials, as every message.
            self.bar.write(one_line(redact(str(line))), file=self.bar.fp)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.queue.shutdown(force=True)
        except Exception:  # noqa: BLE001 - best effort: Ray's shutdown ends the queue's actor anyway
            pass


def _failure_summary(e: BaseException) -> str:
    """Ray's errors carry whole tracebacks: their first line (what failed) and last (the exception)."""
    lines = [ln.strip() for ln in redact(str(e)).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def run_scan(cfg: ScanConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
             predictor_cls=TruForPredictor) -> ScanSummary:
    """Score every image under ``cfg.input`` (``scan``), or only what OUTPUT has not scored (``sweep``,
    ``cfg.incremental``): one row per listed file, committed in parts as the run goes.

    Args:
        predictor_cls: the actor class (a stand-in in the pipeline's own benchmark).

    Returns:
        Counts, wall time and where the results, maps and run manifest went.

    Raises:
        RunFailed: the Ray pipeline failed; the rows it had not delivered are recorded as
            transient error rows first (the next sweep scans those files again).
    """
    t0 = time.monotonic()
    command = "sweep" if cfg.incremental else "scan"
    run_id = cfg.run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    storage = cfg.storage()
    out_root = root_of(cfg.output)
    ckpt = str(resolve_weights(cfg.checkpoint, allow_download=cfg.allow_download, log=log)) \
        if not (cfg.checkpoint and "://" in cfg.checkpoint) else cfg.checkpoint
    # A bad or malicious checkpoint is one clear error here, before Ray starts and before any row
    # could claim that the images failed (the actors would each fail to load it).
    ckpt_local = local_copy(ckpt, storage)
    noiseprint = local_copy(cfg.noiseprint_weights, storage) if cfg.noiseprint_weights else None
    untrained = check_checkpoint(ckpt_local, noiseprint, cfg.variant)
    weights_sha, np_sha = sha256_file(ckpt_local), (sha256_file(noiseprint) if noiseprint else None)
    na_sha = None
    if cfg.noise_anomaly:  # a model fitted on another Noiseprint++ fails here, not in every actor
        from noiseprint_lab.localizers import NoiseAnomalyModel, check_fitted_on
        from noiseprint_lab.training import load_dncnn_weights

        na_local = local_copy(cfg.noise_anomaly, storage)
        check_fitted_on(NoiseAnomalyModel.load(na_local), load_dncnn_weights(noiseprint or ckpt_local),
                        "the scan's weights", cfg.noise_anomaly)
        na_sha = sha256_file(na_local)
    mt_sha = None
    if cfg.mantranet:  # weights that do not load fail here, once, not in every actor
        from mantranet_core import load_mantranet

        mt_model, mt_info = load_mantranet(local_copy(cfg.mantranet, storage))
        mt_sha = mt_info.sha256
        del mt_model
    # what --incremental's copies and --rescore compare (pipeline.scan.dedup)
    scoring = (weights_sha, np_sha, na_sha, mt_sha)
    c2pa_settings = credentials.settings(credentials.load_trust_anchors(cfg.c2pa_trust_anchors, storage)
                                         if cfg.c2pa_trust_anchors else None)

    check_layout(out_root, storage)  # an OUTPUT of the old layout: one line naming `migrate`, before anything
    # One writer per OUTPUT: a second run waits (--wait) or stops here with the holder named.
    lease = Lease(out_root, storage, run_id, ttl_s=cfg.lease_ttl).acquire(cfg.wait)
    # Said once the run goes ahead (a run that finds the lease taken stops with its one line).
    log(f"{command} {run_id}: {weights_line(ckpt, weights_sha, untrained)}"
        + (f"; Noiseprint++ {cfg.noiseprint_weights} (sha256 {np_sha[:12]})" if np_sha else ""))
    if untrained:
        log(f"WARNING: {UNTRAINED_WEIGHTS}")
    if cfg.mantranet:
        log(f"{command} {run_id}: second opinion ManTra-Net {weights_line(cfg.mantranet, mt_sha, mt_info.untrained)}")
        if mt_info.untrained:
            log(f"WARNING: {MANTRANET_UNTRAINED}")
    if lease.took_over is not None:
        t = lease.took_over
        log(f"{command} {run_id}: took over the write lease from run {t.run_id} on {t.host} (last heartbeat "
            f"{t.age_s():.0f} s ago, past its {t.ttl_s:g} s expiry: that driver died)")
        mark_abandoned(out_root, storage, t.run_id, f"its driver stopped (no heartbeat for {t.age_s():.0f} s); "
                       f"run {run_id} took over and completes its work")
    try:
        with tempfile.TemporaryDirectory(prefix="trufor-plan-") as work:
            plan = plan_run(cfg.input, out_root, storage, work, incremental=cfg.incremental, rescore=cfg.rescore,
                            max_bytes=cfg.max_bytes, scoring=scoring)
            log(f"{command} {run_id}: {plan.listed} files listed under {redact(cfg.input)}, {plan.to_scan} to scan")
            run = RunRecord(run_id=run_id, command=command, input=redact(cfg.input), code_version=code_version(),
                            weights_sha256=weights_sha, noiseprint_sha256=np_sha, weights_untrained=untrained,
                            listed=plan.listed,
                            to_scan=plan.to_scan)
            failure = _write(cfg, plan, run, out_root, storage, scoring, lease, predictor_cls, log, c2pa_settings, ckpt)
    finally:
        lease.release()
    summary = ScanSummary(run=run, wall_s=time.monotonic() - t0, results_uri=f"{out_root}/{RESULTS_DIR}",
                          maps_uri=f"{out_root}/{MAPS_DIR}", runs_uri=f"{out_root}/{RUNS_DIR}")
    if failure:
        raise RunFailed(failure) from None
    return summary
