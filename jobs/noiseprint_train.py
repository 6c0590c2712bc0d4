"""`trufor-scan noiseprint train`: retrain Noiseprint++ on a camera corpus with Ray Train (DDP).

Only the Ray Train and command-line wiring lives here; the settings, model, loss, export and
evaluation are ``noiseprint_lab`` (no Ray). Also a plain Ray job entry point:
``ray job submit -- python -m jobs.noiseprint_train --corpus ... --output ...``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from noiseprint_lab.data import load_corpus, sample_batch
from noiseprint_lab.training import (TrainConfig, build_dncnn, clone_state, export_noiseprint, final_weights,
                                     start_step, steps_for, to_input, training_loss, update_average)
from pipeline.base.options import add_options, from_args
from pipeline.base.storage import StorageConfig

LATEST_RUN_FILE = "LATEST_RUN"
COMMAND = "noiseprint train"  # its name in the CLI (jobs.cli.COMMAND_TABLE)


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: DDP over grouped patch batches, checkpoints every K steps."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["cfg"])
    _quiet_report_logs()
    torch.set_num_threads(cfg.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    storage = StorageConfig.from_env(cfg.s3_endpoint)
    corpus = load_corpus(cfg.corpus, "train", storage)
    layout = cfg.layout(len(corpus.cameras))
    steps = config["steps"]
    model = ray.train.torch.prepare_model(build_dncnn(cfg.init, storage))
    device = ray.train.torch.get_device()
    # The frozen starting network of the --anchor term (not wrapped by DDP: it is never trained).
    anchor_net = build_dncnn(cfg.init, storage).to(device) if cfg.anchor > 0 else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    net = model.module if hasattr(model, "module") else model
    start, history, saved_average = 0, [], None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), [list(h) for h in state["history"]]
        saved_average = state.get("average")
        if rank == 0:
            print(f"[train-noiseprint] resumed from the checkpoint at step {start}", flush=True)
    average = None
    if cfg.ema_decay and rank == 0:  # every rank holds the same weights after a step: one average suffices
        average = clone_state(net) if saved_average is None else {k: v.to(device) for k, v in saved_average.items()}
    t_run, patches_seen = time.perf_counter(), 0
    for step in range(start, steps):
        rng = np.random.default_rng([cfg.seed, step, rank])  # reproducible, and the same after a resume
        x, labels = sample_batch(rng, corpus, layout, cfg.patch, unedited_share=cfg.unedited_share)
        t0 = time.perf_counter()
        start_step(model, opt, cfg, step, steps)
        loss = training_loss(model, to_input(x).to(device), torch.from_numpy(labels).to(device), cfg, anchor_net)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if average is not None:
            update_average(average, net, cfg.ema_decay)
        patches_seen += len(x)
        loss_value = float(loss.detach())
        history.append([step + 1, loss_value])
        dt = time.perf_counter() - t0
        el = time.perf_counter() - t_run
        metrics = {"step": step + 1, "loss": loss_value, "patches_per_s_worker": len(x) / dt,
                   "patches_per_s_total": patches_seen * world / el, "rank": rank}
        if rank == 0:
            eta = (steps - step - 1) * el / (step + 1 - start)
            print(f"[train-noiseprint] step {step + 1}/{steps} loss {loss_value:.4f} "
                  f"{metrics['patches_per_s_worker']:.1f} patches/s/worker "
                  f"{metrics['patches_per_s_total']:.1f} patches/s total ETA {eta:.0f} s", flush=True)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            with tempfile.TemporaryDirectory() as d:
                if rank == 0:
                    # The loss history travels with the checkpoint, so a resumed run keeps the whole curve.
                    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                                "history": history, "average": average}, os.path.join(d, "state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)
        else:
            ray.train.report(metrics)


# Without the patch a worker's print reaches the console once; with it, once more through Train's logger.
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def quiet_train_logs() -> None:
    """Worker-process setup hook: no once-a-second warning from the placement-group cleaner.

    The cleaner asks the State API (served by the dashboard, which the embedded Ray does not start)
    whether the controller lives; that only matters if the driver dies, and the resumable
    checkpoints cover that case.
    """
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _quiet_report_logs() -> None:
    # Ray Train logs every report at INFO on loggers named after their source file, outside the
    # "ray.train" hierarchy that RunConfig's logging_config filters.
    for name in list(logging.root.manager.loggerDict):
        if name.endswith(".py") and "/ray/train/" in name.replace("\\", "/"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def run_training(cfg: TrainConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Train, export ``noiseprint++.th`` into the output, then evaluate trained vs starting weights.

    Returns:
        A summary: run name, steps, export path, loss curve, throughput and the evaluation.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from noiseprint_lab.metrics import evaluate

    # Workers run in their own directories: local paths must not stay relative to the driver's.
    cfg = replace(cfg, corpus=_absolute(cfg.corpus), output=_absolute(cfg.output),
                  init=cfg.init if cfg.init == "scratch" else _absolute(cfg.init))
    storage = StorageConfig.from_env(cfg.s3_endpoint)
    # A missing or foreign --init fails here, before Ray starts; the loaded weights set the export's residual scale.
    reference = None if cfg.init == "scratch" else build_dncnn(cfg.init, storage)
    train = load_corpus(cfg.corpus, "train", storage)
    log(train.report.text())
    if len(train.cameras) < 2:
        raise ValueError(f"the corpus needs at least 2 usable camera models for training, found {train.cameras}")
    layout = cfg.layout(len(train.cameras))  # an impossible layout fails here, before Ray starts
    log(f"batch per worker: {layout.cameras} cameras x {layout.positions} positions x {layout.histories} histories "
        f"= {layout.groups} groups of {layout.per_group} patches")
    steps = steps_for(cfg, sum(train.report.cameras.values()))
    out_fs, out_path = storage.filesystem(cfg.output)
    out_fs.makedirs(out_path, exist_ok=True)
    latest = f"{out_path.rstrip('/')}/{LATEST_RUN_FILE}"
    if cfg.resume:
        if not out_fs.exists(latest):
            raise FileNotFoundError(f"--resume: no earlier run recorded in {cfg.output} ({LATEST_RUN_FILE} missing)")
        name = out_fs.cat_file(latest).decode().strip()
        log(f"resuming run {name} from its last checkpoint")
    else:
        name = f"noiseprint-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with out_fs.open(latest, "wb") as f:
            f.write(name.encode())
    from pipeline.scan.driver import RAY_ENV_DEFAULTS

    for k, v in {**RAY_ENV_DEFAULTS, **TRAIN_ENV_DEFAULTS}.items():
        os.environ.setdefault(k, v)
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_config=ray.LoggingConfig(log_level="WARNING"),
                 runtime_env={"worker_process_setup_hook": quiet_train_logs})
        started = True
    try:
        fs_arg = {}
        if "://" in cfg.output:
            import pyarrow.fs as pafs

            fs_arg = {"storage_filesystem": pafs.PyFileSystem(pafs.FSSpecHandler(out_fs))}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": asdict(cfg), "steps": steps},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                                   resources_per_worker={"CPU": cfg.threads_per_worker}),
            run_config=ray.train.RunConfig(
                name=name, storage_path=out_path if fs_arg else cfg.output, **fs_arg,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                # WARNING: Ray Train logs every report at INFO, which would drown the progress lines.
                logging_config=ray.train.LoggingConfig(log_level="WARNING"),
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        )
        t0 = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - t0
        if result.checkpoint is None:
            raise RuntimeError(f"training run {name} ended without a checkpoint: {result.error}")
        with result.checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
    finally:
        if started:
            ray.shutdown()
    with tempfile.TemporaryDirectory() as d:
        weights, scale = final_weights(state["model"], state.get("average"), cfg, train, layout, reference)
        if scale is not None:
            log(f"export: last layer scaled by {scale:.4g} to the starting weights' residual RMS")
        local = export_noiseprint(weights, Path(d) / "noiseprint++.th", state["step"])
        export_uri = f"{cfg.output.rstrip('/')}/{name}/noiseprint++.th"
        out_fs.put(str(local), f"{out_path.rstrip('/')}/{name}/noiseprint++.th")
        evaluation = None if cfg.eval_pairs == 0 else evaluate(
            str(local), cfg.corpus, baseline=None if cfg.init == "scratch" else cfg.init, storage=storage,
            n_pairs=cfg.eval_pairs, patch=cfg.patch, seed=cfg.eval_seed)
        if evaluation:
            evaluation["weights_path"] = export_uri  # not the temporary copy it was read from
    curve = [{"step": int(st), "loss": round(float(lo), 5)} for st, lo in state["history"]]
    summary = {"run": name, "steps": int(state["step"]), "workers": cfg.workers, "wall_s": round(wall, 1),
               "export": export_uri, "residual_scale_factor": scale, "loss_curve": curve, "evaluation": evaluation,
               "patches_per_s_total": result.metrics.get("patches_per_s_total"),
               "patches_per_s_worker": result.metrics.get("patches_per_s_worker")}
    with out_fs.open(f"{out_path.rstrip('/')}/{name}/summary.json", "wb") as f:
        f.write(json.dumps(summary, indent=1).encode())
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, TrainConfig, COMMAND)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return from_args(TrainConfig, a, COMMAND)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.noiseprint_train", description=__doc__)
    add_arguments(p)
    summary = run_training(config_from_args(p.parse_args(argv)))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
