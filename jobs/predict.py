"""`trufor-scan predict`: the official test script's behaviour and .npz outputs, without its silent skips."""
from __future__ import annotations

import glob
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trufor_core import EvalConfig, load_trufor
from trufor_core.model import describe_device, resolve_device
from trufor_core.image import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_rgb, to_model_input
from trufor_core.weights import resolve_weights


@dataclass(frozen=True)
class PredictConfig:
    """Settings of one `predict` run."""

    input: str
    output: str
    checkpoint: str | None = None
    noiseprint_weights: str | None = None
    save_np: bool = False
    overwrite: bool = False
    device: str = "auto"
    variant: str = "test_docker"
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_download: bool = True


@dataclass
class PredictSummary:
    listed: int = 0
    done: int = 0
    existing: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    seconds: float = 0.0


def list_inputs(spec: str) -> tuple[list[str], list[str]]:
    """Files named by a file, a directory (recursive) or a glob, as the official script lists them.

    Returns (images, not_images): in directory/glob mode files without an image extension are
    returned separately so they are reported, not silently dropped; a single named file is
    always attempted.
    """
    if "*" in spec:
        files = [p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p)]
    elif os.path.isfile(spec):
        return [spec], []
    elif os.path.isdir(spec):
        files = [p for p in glob.glob(os.path.join(spec, "**", "*"), recursive=True) if not os.path.isdir(p)]
    else:
        raise FileNotFoundError(f"input {spec!r} is neither a file, a directory nor a glob that matches")
    files.sort()
    images = [p for p in files if p.lower().endswith(IMAGE_EXTENSIONS)]
    others = [p for p in files if not p.lower().endswith(IMAGE_EXTENSIONS)]
    return images, others


def output_path(input_spec: str, output: str, path: str) -> str:
    """Output file for ``path``, mirroring the official script's naming (input-relative + '.npz')."""
    if os.path.splitext(os.path.basename(output))[1] == "":  # output is a directory
        if os.path.isfile(input_spec):
            sub = os.path.basename(path)
        else:
            root = input_spec.split("*")[0]
            sub = os.path.relpath(path, (root if os.path.isdir(root) else os.path.dirname(root)) or ".")
        out = os.path.join(output, sub)
    else:
        out = output
    return out if out.endswith(".npz") else out + ".npz"


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream = total, stream
        self.enabled = stream.isatty()
        self.start = time.monotonic()

    def update(self, n: int, name: str) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * n / max(1, self.total))
        rate = n / max(1e-9, time.monotonic() - self.start)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {n}/{self.total} {rate:.2f} img/s {name[-40:]:<40}")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line without garbling the bar."""
        print(("\r\033[K" if self.enabled else "") + text, file=self.stream)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def run_predict(cfg: PredictConfig, log=lambda m: print(m, file=sys.stderr)) -> PredictSummary:
    """Score every listed image and write one official-format .npz each.

    Returns:
        The summary; failed images are listed in ``errors`` (never skipped silently).
    """
    summary = PredictSummary()
    t0 = time.monotonic()
    images, others = list_inputs(cfg.input)
    summary.listed, summary.not_images = len(images), others
    if len(images) > 1 and os.path.splitext(os.path.basename(cfg.output))[1] != "":
        raise ValueError(f"--output {cfg.output!r} is a file name but {len(images)} images were listed; "
                         "give a directory")
    device = resolve_device(cfg.device)
    ckpt = resolve_weights(cfg.checkpoint, allow_download=cfg.allow_download, log=log)
    model, info = load_trufor(ckpt, noiseprint=cfg.noiseprint_weights, variant=cfg.variant, device=device)
    log(f"=> TruFor weights {info.path} (sha256 {info.sha256[:12]}...), device {describe_device(device)}")
    if info.untrained:
        log("WARNING: these weights are UNTRAINED (synthesized for tests); scores and maps mean nothing")
    ev = EvalConfig()
    bar = _Progress(len(images))
    for n, path in enumerate(images, 1):
        out = output_path(cfg.input, cfg.output, path)
        if os.path.isfile(out) and not cfg.overwrite:
            summary.existing += 1
        else:
            try:
                rgb, _ = decode_rgb(path, cfg.max_pixels)
                with torch.inference_mode():
                    res = model(to_model_input(rgb).to(device), ev).results()[0]
                fields = res.official_npz(save_np=cfg.save_np)
                if info.untrained:
                    fields["weights_untrained"] = True
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                tmp = out[:-4] + ".part.npz"
                np.savez(tmp, **fields)
                os.replace(tmp, out)
                summary.done += 1
            except Exception as e:  # noqa: BLE001 - one bad image must not stop the run
                msg = f"{type(e).__name__}: {e}"
                summary.errors.append((path, msg))
                bar.message(f"error: {path}: {msg}")
                if os.environ.get("TRUFOR_DEBUG"):
                    traceback.print_exc()
        bar.update(n, os.path.basename(path))
    bar.close()
    summary.seconds = time.monotonic() - t0
    return summary
