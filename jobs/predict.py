"""`trufor-scan predict`: the official test script's behaviour and .npz outputs, without its silent skips."""
from __future__ import annotations

import glob
import hashlib
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.base.listing import iter_listing
from pipeline.base.model_options import MANTRANET_UNTRAINED, UNTRAINED_WEIGHTS, WeightsOptions, weights_line
from pipeline.base.options import opt
from pipeline.base.progress import note_slow, progress
from pipeline.base.storage import StorageConfig, local_path
from trufor_core import EvalConfig, load_trufor
from trufor_core.backends import make_runner, openvino_cache
from trufor_core.image import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_rgb, to_model_input
from trufor_core.model import autocast, describe_device, resolve_device
from trufor_core.progress import Watch, on_step
from trufor_core.weights import resolve_weights

NAME_MAX = 255  # bytes in one file name (ext4, xfs, APFS)
MODELS = ("trufor", "mantranet")


@dataclass(frozen=True)
class PredictConfig(WeightsOptions):
    """Settings of one `predict` run; the command line is derived from these fields."""

    input: str = field(metadata=opt("a file, a directory (recursive, listed as `scan` lists it) or a glob",
                                    flag=("--input", "-in")))
    output: str = field(metadata=opt("output directory, or a .npz file for one image", flag=("--output", "-out")))
    save_np: bool = field(default=False, metadata=opt("also store the Noiseprint++ map as np++",
                                                      flag=("--save-np", "--save_np")))
    overwrite: bool = field(default=False, metadata=opt("replace existing outputs (the official script keeps them)"))
    device: str = field(default="auto", metadata=opt("auto, cpu, cuda or cuda:N"))
    model: str = field(default="trufor", metadata=opt(
        "which detector: trufor (the official .npz fields) or mantranet (ManTra-Net; --checkpoint a Keras .h5, "
        "default the file `weights get mantranet` cached; writes map and score)", choices=MODELS))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=opt("refuse images with more pixels"))


@dataclass
class PredictSummary:
    listed: int = 0
    done: int = 0
    existing: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    weights: str = ""  # which weights scored (the summary repeats what the start said)
    untrained: bool = False


def list_inputs(spec: str) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Files named by a file, a directory or a glob: (images, not_images, refused).

    A directory is listed by the scan's own walker (``pipeline.base.listing``): recursive, symlink
    loops and special files (FIFOs, sockets, devices) refused with a reason instead of followed or
    opened, names that are not UTF-8 kept. In directory/glob mode files without an image
    extension are returned separately so they are reported, not silently dropped; a single named
    file is always attempted.
    """
    if "*" in spec:
        files = sorted(p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p))
        return ([p for p in files if p.lower().endswith(IMAGE_EXTENSIONS)],
                [p for p in files if not p.lower().endswith(IMAGE_EXTENSIONS)], [])
    if os.path.isfile(spec):
        return [spec], [], []
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"input {spec!r} is neither a file, a directory nor a glob that matches")
    images, others, refused = [], [], []
    root = os.path.realpath(spec)
    for f in iter_listing(spec, StorageConfig()):
        # Paths relative to the input as given (output naming mirrors the official script).
        path = os.path.join(spec, os.path.relpath(os.fsdecode(local_path(f.uri)), root))
        if f.error:
            refused.append((path, f.error))
        elif f.skip_reason:
            others.append(path)
        else:
            images.append(path)
    return images, others, refused


def output_path(input_spec: str, output: str, path: str) -> str:
    """Output file for ``path``, mirroring the official script's naming (input-relative + '.npz').

    A name that would pass the filesystem's 255-byte limit is shortened, with a hash of the full
    name so that two long names never share an output.
    """
    if os.path.splitext(os.path.basename(output))[1] == "":  # output is a directory
        if os.path.isfile(input_spec):
            sub = os.path.basename(path)
        else:
            root = input_spec.split("*")[0]
            sub = os.path.relpath(path, (root if os.path.isdir(root) else os.path.dirname(root)) or ".")
        out = os.path.join(output, sub)
    else:
        out = output
    out = out if out.endswith(".npz") else out + ".npz"
    head, name = os.path.split(out)
    if len(os.fsencode(name)) > NAME_MAX:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
        keep = os.fsdecode(os.fsencode(name)[: NAME_MAX - len(digest) - 6].decode("utf-8", "ignore").encode())
        out = os.path.join(head, f"{keep}~{digest}.npz")
    return out


def run_predict(cfg: PredictConfig, log=lambda m: print(m, file=sys.stderr)) -> PredictSummary:
    """Score every listed image and write one official-format .npz each.

    Returns:
        The summary; failed images are listed in ``errors`` (never skipped silently).
    """
    summary = PredictSummary()
    t0 = time.monotonic()
    images, others, refused = list_inputs(cfg.input)
    summary.listed, summary.not_images = len(images) + len(refused), others
    summary.errors += refused
    if len(images) > 1 and os.path.splitext(os.path.basename(cfg.output))[1] != "":
        raise ValueError(f"--output {cfg.output!r} is a file name but {len(images)} images were listed; "
                         "give a directory")
    device = resolve_device(cfg.device)
    score_image = (_trufor if cfg.model == "trufor" else _mantranet)(cfg, device, summary, log)
    bar = progress(len(images), "predict")
    for path in images:
        t1 = time.monotonic()
        out = output_path(cfg.input, cfg.output, path)
        if os.path.isfile(out) and not cfg.overwrite:
            summary.existing += 1
        else:
            try:
                rgb, _ = decode_rgb(path, cfg.max_pixels)
                # A line per minute for an image that takes longer (step k of N: tiles, chunks, bands).
                fields = score_image(rgb, lambda done, total, s, path=path: bar.write(
                    f"{path}: step {done}/{total} after {s:.0f} s", file=bar.fp))
                if summary.untrained:
                    fields["weights_untrained"] = True
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                tmp = os.path.join(os.path.dirname(out) or ".", f".part-{os.getpid()}.npz")
                np.savez(tmp, **fields)
                os.replace(tmp, out)
                summary.done += 1
            except Exception as e:  # noqa: BLE001 - one bad image must not stop the run
                msg = f"{type(e).__name__}: {e}"
                summary.errors.append((path, msg))
                bar.write(f"error: {path}: {msg}", file=bar.fp)
                if os.environ.get("TRUFOR_DEBUG"):
                    traceback.print_exc()
        bar.update(1)
        note_slow(bar, path, time.monotonic() - t1)
    bar.close()
    summary.seconds = time.monotonic() - t0
    return summary


def _say_weights(summary: PredictSummary, path, sha256: str, untrained: bool, device, log,
                 warning: str = UNTRAINED_WEIGHTS) -> None:
    summary.weights, summary.untrained = weights_line(str(path), sha256, untrained), untrained
    log(f"=> {summary.weights}, device {describe_device(device)}")
    if untrained:
        log(f"WARNING: {warning}")


def _trufor(cfg: PredictConfig, device, summary: PredictSummary, log):
    """TruFor loaded once; returns rgb, report -> the official script's .npz fields."""
    ckpt = resolve_weights(cfg.checkpoint, allow_download=cfg.allow_download, log=log)
    model, info = load_trufor(ckpt, noiseprint=cfg.noiseprint_weights, variant=cfg.variant, device=device)
    _say_weights(summary, info.path, info.sha256, info.untrained, device, log)
    runner = make_runner(model, cfg.backend, f"{info.sha256}:{info.noiseprint_sha256}:{cfg.variant}", cfg.precision,
                         cache=openvino_cache(), log=log, max_pixels=cfg.compiled_max_pixels)
    log(f"=> backend {runner.name}")
    ev = EvalConfig()

    def score(rgb: np.ndarray, report) -> dict:
        x = to_model_input(rgb).to(device)
        watch = Watch(runner.steps(x, ev), report=report)
        with torch.inference_mode(), autocast(device, cfg.precision):
            res = runner(x, ev, watch)[0].results()[0]
        return res.official_npz(save_np=cfg.save_np)

    return score


def _mantranet(cfg: PredictConfig, device, summary: PredictSummary, log):
    """ManTra-Net loaded once; returns rgb, report -> {map: full-resolution float32 likelihood (the official
    demo's output), score: its maximum (``mantranet_core.image_score``), imgsize, weights_sha256}."""
    from mantranet_core import count_steps, load_mantranet, to_input
    from mantranet_core.weights import resolve_weights as resolve_mantranet

    if cfg.backend not in ("auto", "eager") or cfg.precision != "fp32" or cfg.save_np or cfg.noiseprint_weights:
        raise ValueError("--model mantranet runs eager in fp32 and has no Noiseprint++: drop --backend "
                         f"{cfg.backend} / --precision {cfg.precision} / --save-np / --noiseprint-weights")
    model, info = load_mantranet(resolve_mantranet(cfg.checkpoint), device=device)
    _say_weights(summary, info.path, info.sha256, info.untrained, device, log, MANTRANET_UNTRAINED)
    log("=> model ManTra-Net (Ptrain4), backend eager")

    def score(rgb: np.ndarray, report) -> dict:
        x = to_input(rgb).to(device)
        with torch.inference_mode(), on_step(Watch(count_steps(*rgb.shape[:2]), report=report)):
            out = model(x)
        return {"map": out.mask[0].float().cpu().numpy(), "score": np.float32(out.score[0].item()),
                "imgsize": np.array(rgb.shape[:2]), "weights_sha256": info.sha256}

    return score
