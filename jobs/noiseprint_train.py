"""`trufor-scan train-noiseprint`: retrain Noiseprint++ on a camera corpus with Ray Train (DDP).

Also a plain Ray job entry point: ``ray job submit -- python -m jobs.noiseprint_train --corpus ... --output ...``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipeline.storage import StorageConfig, local_copy
from trufor_core.checkpoint import CheckpointError, map_noiseprint_state_dict, map_official_state_dict, read_torch_file
from trufor_core.noiseprint import DnCNN

from .noiseprint_data import BatchLayout, Corpus, sample_batch

LATEST_RUN_FILE = "LATEST_RUN"
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (see `trufor-scan train-noiseprint --help`)."""

    corpus: str
    output: str
    init: str = "scratch"  # a noiseprint++.th / trufor.pth.tar path, or "scratch"
    workers: int = 2
    use_gpu: bool = False
    steps: int | None = None
    epochs: float | None = None
    batch_groups: int = 16  # groups per worker batch: cameras x positions x histories
    batch_cameras: int = 4  # cameras crossed in every batch (capped at the corpus's)
    batch_positions: int = 2  # 8x8-grid positions crossed in every batch
    per_group: int = 3  # patches per group (from different images of the camera)
    unedited_share: float = 0.25  # share of history slots that are the camera's own, unedited output
    patch: int = 64
    lr: float = 1e-4
    lr_schedule: str = "constant"  # "constant" or "cosine" (decays towards 0 by the last step)
    warmup_steps: int = 0  # linear warm-up to lr over the first steps
    ema_decay: float = 0.0  # > 0: export an exponential moving average of the weights, not the last step's
    temperature: float = 0.005  # distances are mean squared residual differences / temperature
    match_scale: bool = True  # fine-tuning: export at the starting weights' residual RMS (TruFor's detector expects it)
    checkpoint_every: int = 25
    resume: bool = False
    seed: int = 0
    threads_per_worker: int = 1
    max_failures: int = 1
    s3_endpoint: str | None = None
    eval_pairs: int = 300  # 0: no evaluation at the end
    eval_seed: int = 0  # the held-out pairs; apart from --seed so that runs of any seed meet the same pairs

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of --steps and --epochs")
        if self.per_group < 2 or self.batch_groups < 2:
            raise ValueError(f"need >= 2 groups of >= 2 patches (positives and negatives), got "
                             f"{self.batch_groups} x {self.per_group}")
        if not 0.0 <= self.unedited_share <= 1.0:
            raise ValueError(f"--unedited-share must be in [0, 1], got {self.unedited_share}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"need --warmup-steps >= 0 and 0 <= --ema-decay < 1, got {self.warmup_steps}, "
                             f"{self.ema_decay}")

    def learning_rate(self, step: int, steps: int) -> float:
        """The learning rate of 0-based ``step`` out of ``steps``: linear warm-up, then constant or cosine."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "cosine":
            progress = (step - self.warmup_steps) / max(1, steps - self.warmup_steps)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr

    def layout(self, corpus_cameras: int) -> BatchLayout:
        """The batch layout for a corpus with ``corpus_cameras`` cameras (raises on an impossible one)."""
        return BatchLayout.for_groups(self.batch_groups, self.batch_cameras, self.batch_positions, self.per_group,
                                      corpus_cameras)


def load_dncnn_weights(path: str) -> dict[str, torch.Tensor]:
    """DnCNN weights (keys '0.weight', ...) from a noiseprint++.th file or a full trufor.pth.tar."""
    raw = read_torch_file(path)
    if isinstance(raw, dict) and "network" in raw:
        sd = map_noiseprint_state_dict(raw)
    else:
        sd = {k: v for k, v in map_official_state_dict(raw).items() if k.startswith("dncnn.")}
        if not sd:
            raise CheckpointError(f"{path} holds no Noiseprint++ (dncnn.*) weights")
    return {k[len("dncnn."):]: v for k, v in sd.items()}


def build_dncnn(init: str | None, storage: StorageConfig | None = None) -> DnCNN:
    """The same 17-layer DnCNN as trufor_core, loaded strictly from ``init`` (a path or URI) unless "scratch"."""
    model = DnCNN()
    if init and init != "scratch":
        sd = load_dncnn_weights(local_copy(init, storage or StorageConfig()))
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{init}: missing {missing}, unexpected {unexpected}")
        model.load_state_dict(sd, strict=True)
    return model.to(memory_format=torch.channels_last)  # the layout to_input gives


def to_input(patches: np.ndarray) -> torch.Tensor:
    """(N, P, P, 3) uint8 -> (N, 3, P, P) float32 / 256, exactly TruFor's preprocessing, channels_last."""
    # channels_last: oneDNN's faster convolution layout on CPU (2x measured for this DnCNN), still fp32.
    x = torch.from_numpy(patches.transpose(0, 3, 1, 2).copy()).float() / 256.0
    return x.contiguous(memory_format=torch.channels_last)


def pair_distances(residuals: torch.Tensor, temperature: float) -> torch.Tensor:
    """s(i, j): mean squared difference of residual patches, divided by the temperature. (N, N)."""
    r = residuals.flatten(1)  # (N, 1, P, P) -> (N, P*P)
    sq = (r * r).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (r @ r.T)).clamp_min(0.0)
    return d / r.shape[1] / temperature


def infonce_loss(residuals: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """TruFor eq. (1): -mean_i log( sum_{j in N_i} e^{-s_ij} / sum_{j != i} e^{-s_ij} )."""
    logits = -pair_distances(residuals, temperature)
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    if not bool(pos.any(1).all()):
        raise ValueError("every patch needs at least one positive in its batch")
    logits = logits.masked_fill(eye, float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)).mean()


def start_step(model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, step: int, steps: int) -> None:
    """Training mode (released BN statistics kept when fine-tuning) and this step's learning rate."""
    model.train()
    if cfg.init != "scratch":
        _bn_eval(model)
    for group in opt.param_groups:
        group["lr"] = cfg.learning_rate(step, steps)


def _bn_eval(model: torch.nn.Module) -> None:
    # Fine-tuning keeps the released BN statistics: small patch batches would only add noise to them.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: DDP over grouped patch batches, checkpoints every K steps."""
    import ray.train
    import ray.train.torch

    from .noiseprint_data import load_corpus

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
        average = _clone_state(net) if saved_average is None else {k: v.to(device) for k, v in saved_average.items()}
    t_run, patches_seen = time.perf_counter(), 0
    for step in range(start, steps):
        rng = np.random.default_rng([cfg.seed, step, rank])  # reproducible, and the same after a resume
        x, labels = sample_batch(rng, corpus, layout, cfg.patch, unedited_share=cfg.unedited_share)
        t0 = time.perf_counter()
        start_step(model, opt, cfg, step, steps)
        loss = infonce_loss(model(to_input(x).to(device)), torch.from_numpy(labels).to(device), cfg.temperature)
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


def _clone_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def update_average(average: dict[str, torch.Tensor], net: torch.nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * weights, in place; integer buffers are copied."""
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                average[k].lerp_(v, 1.0 - decay)
            else:
                average[k].copy_(v)


def export_noiseprint(state: dict, path: str | Path, step: int) -> Path:
    """Write ``{"network": state_dict, "global_step": step}`` exactly like the released noiseprint++.th."""
    sd = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    build = DnCNN()
    build.load_state_dict(sd, strict=True)  # same keys and shapes as the released file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network": sd, "global_step": int(step)}, path)
    return path


def match_residual_scale(state: dict, reference: torch.nn.Module, patches: np.ndarray) -> tuple[dict, float]:
    """Scale the last convolution so that the residual RMS on ``patches`` equals ``reference``'s.

    The last layer is linear, so the residual is scaled exactly: pair distances change by one
    common factor, which moves no AUC and no nearest centroid of standardised features, while
    TruFor's detector, trained on the released noiseprint, sees residuals of the scale it knows
    (the contrastive loss lets training inflate them freely).

    Returns:
        (the state with the last layer's weight and bias scaled, the factor).
    """
    model = DnCNN()
    model.load_state_dict(state, strict=True)
    x = to_input(patches)
    with torch.inference_mode():
        ref_rms = float(reference.eval()(x).pow(2).mean().sqrt())
        rms = float(model.eval()(x).pow(2).mean().sqrt())
    factor = ref_rms / rms if rms > 0 else float("nan")
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"cannot match the residual scale: RMS {rms} (trained) vs {ref_rms} (reference)")
    last = len(model) - 1
    out = dict(state)
    out[f"{last}.weight"] = state[f"{last}.weight"] * factor
    out[f"{last}.bias"] = state[f"{last}.bias"] * factor
    return out, factor


def calibration_patches(corpus: Corpus, layout: BatchLayout, cfg: TrainConfig, batches: int = 2) -> np.ndarray:
    """Training patches of a fixed seed (apart from the steps' seeds) for `match_residual_scale`."""
    rng = np.random.default_rng([cfg.seed, 1 << 31])
    return np.concatenate([sample_batch(rng, corpus, layout, cfg.patch, unedited_share=cfg.unedited_share)[0]
                           for _ in range(batches)])


def final_weights(model_state: dict, average: dict | None, cfg: TrainConfig, corpus: Corpus, layout: BatchLayout,
                  reference: torch.nn.Module | None) -> tuple[dict, float | None]:
    """The weights to export and the residual scale factor applied to them (None: not matched).

    The moving average when kept (the last step's weights carry that step's noise), brought to the
    residual scale of ``reference`` (the starting weights; None from scratch) with ``cfg.match_scale``.
    """
    weights = average if average is not None else model_state
    if not cfg.match_scale or reference is None:
        return weights, None
    return match_residual_scale(weights, reference, calibration_patches(corpus, layout, cfg))


def _steps(cfg: TrainConfig, n_train_images: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    per_step = cfg.batch_groups * cfg.per_group * cfg.workers
    return max(1, int(np.ceil(cfg.epochs * n_train_images / per_step)))


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

    from .noiseprint_data import load_corpus
    from .noiseprint_eval import evaluate

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
    steps = _steps(cfg, sum(train.report.cameras.values()))
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
    from pipeline.scan import RAY_ENV_DEFAULTS

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
    p.add_argument("--corpus", required=True, help="URI/<camera_model>/**/*.jpg (eval/ folders held out) or a "
                                                    "manifest with uri, camera_model ('exif' = from EXIF)")
    p.add_argument("--output", required=True, help="local directory or object-store prefix for checkpoints and the export")
    p.add_argument("--init", default="scratch", help="noiseprint++.th or trufor.pth.tar to fine-tune, or 'scratch'")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--use-gpu", action="store_true")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--steps", type=int)
    g.add_argument("--epochs", type=float)
    p.add_argument("--batch-groups", type=int, default=16,
                   help="groups per worker batch, crossing cameras x positions x histories")
    p.add_argument("--batch-cameras", type=int, default=4, help="cameras in every batch")
    p.add_argument("--batch-positions", type=int, default=2, help="8x8-grid positions in every batch")
    p.add_argument("--per-group", type=int, default=3, help="patches per group")
    p.add_argument("--unedited-share", type=float, default=0.25,
                   help="share of history slots that are the camera's unedited output")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="constant, or cosine decay to 0 at the last step")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="> 0: export the exponential moving average of the weights (e.g. 0.95)")
    p.add_argument("--temperature", type=float, default=TrainConfig.temperature,
                   help="divides the mean squared residual distances (eq. 1); TRAINING.md compares values")
    p.add_argument("--no-match-scale", dest="match_scale", action="store_false",
                   help="export the trained residual scale as it is (default when fine-tuning: scale the last layer "
                        "to the starting weights' residual RMS, which no metric depends on but TruFor's detector does)")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--resume", action="store_true", help="continue the last run in --output from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--eval-pairs", type=int, default=300, help="positive (and negative) pairs of the final evaluation; 0 skips it")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation's held-out pairs (not --seed: "
                                                            "runs of any seed are compared on the same pairs)")
    p.add_argument("--s3-endpoint")


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(corpus=a.corpus, output=a.output, init=a.init, workers=a.workers, use_gpu=a.use_gpu,
                       steps=a.steps, epochs=a.epochs, batch_groups=a.batch_groups, batch_cameras=a.batch_cameras,
                       batch_positions=a.batch_positions, per_group=a.per_group, unedited_share=a.unedited_share,
                       patch=a.patch, lr=a.lr, lr_schedule=a.lr_schedule, warmup_steps=a.warmup_steps,
                       ema_decay=a.ema_decay, temperature=a.temperature, match_scale=a.match_scale,
                       checkpoint_every=a.checkpoint_every, resume=a.resume, seed=a.seed,
                       threads_per_worker=a.threads_per_worker, s3_endpoint=a.s3_endpoint, eval_pairs=a.eval_pairs, eval_seed=a.eval_seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.noiseprint_train", description=__doc__)
    add_arguments(p)
    summary = run_training(config_from_args(p.parse_args(argv)))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
