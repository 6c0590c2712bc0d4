"""Compiled paths beside eager PyTorch: OpenVINO (CPU) and torch.compile (Inductor, CPU and CUDA).

A backend runs the costly part of the forward (Noiseprint++, the dual encoder, both decoders, up to
the stride-4 logits: ``TruFor.lowres``); the rest (bilinear upsampling to full resolution, the
confidence-weighted pooling and the detection head: ``TruFor.finish``) stays the eager code in the
model dtype, so every backend shares it. A compiled graph evaluates the image whole
(``WHOLE_IMAGE``: fused attention, no tiles or bands); an image over ``max_pixels`` (default
``COMPILED_MAX_PIXELS``) takes the eager bounded-memory path instead, and the row says which path
scored it (``Runner.__call__``).

Chosen by measurement (`make bench-backends`, BENCHMARKS.md "Compiled model paths"): on the CPU
OpenVINO is the fastest everywhere measured (2.1-2.3x eager, 85-98% of the CPU's measured limit) and
converts once for every image shape, so "auto" is OpenVINO on the CPU; Inductor (1.3-1.5x eager)
compiles again for each new image shape (65-150 s each on 2 cores) and stays available for CUDA, where
OpenVINO does not run. float64 and reduced precision stay eager:
OpenVINO's CPU plugin computes in float32 at most, and our bf16/fp16 keep Noiseprint++ in float32
(``model.PRECISIONS``), which a whole-graph precision hint would not.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import os
import warnings
from pathlib import Path
from typing import Callable

import torch

from .config import EvalConfig
from .model import TruFor
from .progress import OutOfTime, Watch, count_steps, on_step
from .result import TruForOutput
from .weights import cache_dir

BACKENDS = ("auto", "eager", "openvino", "inductor")
BACKEND_HELP = ("auto (OpenVINO on the CPU in fp32 float32 with at least AVX, else eager), eager (PyTorch), openvino (CPU) or "
                "inductor (torch.compile; recompiles per image shape); measured in BENCHMARKS.md "
                "\"Compiled model paths\"")
# What a compiled graph evaluates: the whole image at once, attention by the fused kernel.
WHOLE_IMAGE = EvalConfig(attention="sdpa", attn_block_elems=None, mlp_block_elems=None, dncnn_tile=None,
                         decoder_block_elems=None)
# Default largest image (pixels) a compiled graph takes whole (``--compiled-max-pixels``); larger ones take
# the bounded-memory eager path. OpenVINO's peak RSS with its per-shape kernel cache off (needed for correct
# results, below), measured 2026-12-05 (BENCHMARKS.md "Compiled model paths"): 4.2 / 6.8 / 10.1 / 14.3 /
# 19.3 GiB at 1 / 1.5 / 2 / 2.5 / 3 MP (eager's bounded path: under 2 GiB). 1.7 MP (~8 GiB, the budget
# 3.2 MP had with the cache on) takes a 1080x1350 or 1280x1280 post whole; a 2048x1536 photo goes eager.
COMPILED_MAX_PIXELS = 1_700_000


def openvino_cache() -> Path:
    """Where converted OpenVINO models are kept: beside the downloaded weights (``weights.cache_dir``)."""
    return cache_dir() / "openvino"


class BackendError(RuntimeError):
    """A backend that cannot run here or with these settings."""


def openvino_blocked() -> str | None:
    """Why OpenVINO's CPU plugin cannot run in this process, or None. Measured: with oneDNN limited to
    SSE4.1 (``ONEDNN_MAX_CPU_ISA=SSE41``, which OpenVINO's own oneDNN reads too) its layer norm fails
    ("MVN node ... bad combination"); AVX, AVX2 and AVX-512 limits run."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa.startswith("SSE"):
        return f"ONEDNN_MAX_CPU_ISA={isa} (OpenVINO's CPU plugin needs at least AVX)"
    return None


def choose(name: str, device: torch.device, dtype: torch.dtype, precision: str) -> str:
    """The backend ``name`` means on ``device`` for a ``dtype`` model at ``precision``; refuses a
    combination that cannot run (never a silent substitute)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    plain = dtype == torch.float32 and precision == "fp32"
    if name == "auto":
        return "openvino" if device.type == "cpu" and plain and openvino_blocked() is None else "eager"
    if name == "openvino" and (device.type != "cpu" or not plain):
        raise BackendError(f"the openvino backend runs float32 fp32 on the CPU only (asked: {device}, {dtype}, "
                           f"{precision}): use --backend eager or inductor")
    if name == "openvino" and openvino_blocked():
        raise BackendError(f"the openvino backend cannot run here: {openvino_blocked()}; use --backend eager")
    return name


class Runner:
    """A TruFor forward through one backend: ``runner(x, ev) -> (TruForOutput, path name)``.

    ``x`` is the model's input (B, 3, H, W); ``ev`` is how the eager path evaluates it (bounded memory).
    The path name goes into each row (`backend` column): e.g. "openvino 2026.4.1" or
    "eager (bounded: over 3200000 px)" for an image a compiled graph does not take.
    """

    name = "eager"

    def __init__(self, model: TruFor, max_pixels: int = COMPILED_MAX_PIXELS):
        self.model, self.max_pixels = model, max_pixels

    def compiled(self, x: torch.Tensor, watch: Watch | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def steps(self, x: torch.Tensor, ev: EvalConfig) -> int:
        """How many progress steps ``self(x, ev)`` reports (``trufor_core.progress``): one for a compiled graph."""
        if self.name != "eager" and x.shape[-2] * x.shape[-1] <= self.max_pixels:
            return 1
        return count_steps(self.model.cfg, ev, x.shape[0], x.shape[-2], x.shape[-1])

    def __call__(self, x: torch.Tensor, ev: EvalConfig, watch: Watch | None = None) -> tuple[TruForOutput, str]:
        """The forward and the name of the path that ran it; ``watch`` gets every step (progress, budget)."""
        if self.name == "eager" or x.shape[-2] * x.shape[-1] > self.max_pixels:
            with on_step(watch) if watch is not None else contextlib.nullcontext():
                out = self.model(x, ev)
            return out, "eager" if self.name == "eager" else f"eager (bounded: over {self.max_pixels} px)"
        self.model.check_input(x)
        out = self.model.finish(*self.compiled(x, watch))
        if watch is not None:
            watch()
        return out, self.name


def _source_digest() -> str:
    """sha256 of this package's source: a converted graph is a trace of this code."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


class _Lowres(torch.nn.Module):
    """``TruFor.lowres`` on the whole image, as a module with tensor outputs (what a converter traces)."""

    def __init__(self, model: TruFor):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.lowres(x, WHOLE_IMAGE)


class OpenVINORunner(Runner):
    """OpenVINO's CPU plugin on the graph traced from ``TruFor.lowres``, float32, dynamic batch and size.

    Converting took 10-12 s on 2 cores (BENCHMARKS.md); the converted model is kept in ``cache`` under a key of
    the weights (``weights_key``), this package's source and the torch/OpenVINO versions, with the
    sha256 of its files checked before it is used (an edited cache file is converted again).
    """

    def __init__(self, model: TruFor, weights_key: str, threads: int | None = None, cache: Path | None = None,
                 max_pixels: int = COMPILED_MAX_PIXELS, log: Callable[[str], None] = lambda _: None):
        super().__init__(model, max_pixels)
        import openvino as ov

        if model.dtype != torch.float32 or next(model.parameters()).device.type != "cpu":
            raise BackendError("the openvino backend needs a float32 model on the CPU")
        self.name = f"openvino {ov.get_version().split('-')[0]}"
        key = hashlib.sha256("\0".join([weights_key, _source_digest(), torch.__version__, ov.get_version()])
                             .encode()).hexdigest()[:32]
        core = ov.Core()
        ir = self._cached(core, cache, key) if cache else None
        if ir is None:
            log("openvino: converting the model (once per weights and version on this machine; about 10 s on 2 cores)")
            ir = self._convert(ov, model)
            if cache:
                self._store(ov, ir, cache, key)
        # CPU_RUNTIME_CACHE_CAPACITY 0: with OpenVINO's per-shape kernel cache on, a run of mixed image
        # shapes gave wrong results after some switches (scores off by up to 0.16, measured; reproduced
        # by tests/test_parity.py::test_openvino_mixed_shapes); off, every call matches eager, and
        # same-shape calls are as fast (1.97-2.01 s at 0.4 MP).
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                  "CPU_RUNTIME_CACHE_CAPACITY": "0", "INFERENCE_NUM_THREADS": str(threads or torch.get_num_threads())}
        self.graph = core.compile_model(ir, "CPU", config)
        self.request = self.graph.create_infer_request()

    @staticmethod
    def _convert(ov, model: TruFor):
        example = torch.zeros(1, 3, 64, 64)
        with torch.no_grad(), warnings.catch_warnings():
            # The trace's warnings are about the input checks, run eagerly before every call (Runner).
            warnings.simplefilter("ignore")
            return ov.convert_model(_Lowres(model).eval(), example_input=example,
                                    input=[ov.PartialShape([-1, 3, -1, -1])])

    @staticmethod
    def _files(cache: Path, key: str) -> tuple[Path, Path, Path]:
        return cache / f"trufor-{key}.xml", cache / f"trufor-{key}.bin", cache / f"trufor-{key}.sha256"

    @classmethod
    def _cached(cls, core, cache: Path, key: str):
        xml, bin_, sums = cls._files(cache, key)
        if not all(p.is_file() for p in (xml, bin_, sums)):
            return None
        if sums.read_text().split() != [_sha256(xml), _sha256(bin_)]:
            return None
        return core.read_model(str(xml), str(bin_))

    @classmethod
    def _store(cls, ov, ir, cache: Path, key: str) -> None:
        cache.mkdir(parents=True, exist_ok=True)
        xml, bin_, sums = cls._files(cache, key)
        tmp = cache / f".tmp-{key}-{os.getpid()}"
        ov.save_model(ir, str(tmp) + ".xml", compress_to_fp16=False)
        # The checksums are written last: a file set without them (an interrupted store, or two
        # runs storing at once) is never read.
        os.replace(str(tmp) + ".bin", bin_)
        os.replace(str(tmp) + ".xml", xml)
        sums.with_suffix(f".{os.getpid()}").write_text(f"{_sha256(xml)} {_sha256(bin_)}\n")
        os.replace(sums.with_suffix(f".{os.getpid()}"), sums)

    def compiled(self, x, watch):
        self.request.start_async([x.contiguous().numpy()])
        if watch is None:
            self.request.wait()
        else:
            # One call, waited on in slices of a second: progress lines stay due, and the budget can stop it.
            while True:
                left = 1.0 if watch.deadline is None else min(1.0, watch.deadline - time.monotonic())
                if left <= 0:
                    # OpenVINO stops the call; a canceled request is not reusable.
                    self.request.cancel()
                    self.request = self.graph.create_infer_request()
                    raise OutOfTime(0, 1, watch.elapsed(), watch.budget_s)
                if self.request.wait_for(max(1, int(1000 * left))):
                    break
                watch.poll()
        return tuple(torch.from_numpy(self.request.get_output_tensor(i).data.copy()) for i in range(3))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class InductorRunner(Runner):
    """torch.compile (Inductor) of ``TruFor.lowres``, dynamic shapes; Dynamo recompiles when an image
    shape breaks a guard (measured: each new shape, 65-150 s on 2 cores) and, past its cache limit
    (``torch._dynamo.config.recompile_limit``, 8 shapes), runs that code eagerly: recompilation is bounded."""

    name = "inductor"

    def __init__(self, model: TruFor, max_pixels: int = COMPILED_MAX_PIXELS):
        super().__init__(model, max_pixels)
        self.fn = torch.compile(_Lowres(model), dynamic=True)

    def compiled(self, x, watch):
        return self.fn(x)  # one call that cannot be interrupted: the budget is checked after it


def make_runner(model: TruFor, backend: str, weights_key: str, precision: str = "fp32", threads: int | None = None,
                cache: Path | None = None, log: Callable[[str], None] = lambda _: None,
                max_pixels: int = COMPILED_MAX_PIXELS) -> Runner:
    """The runner for ``backend`` ("auto" resolved by ``choose``) on the model's device and dtype; images over
    ``max_pixels`` take the eager bounded-memory path on a compiled backend."""
    if max_pixels < 1:
        raise BackendError(f"--compiled-max-pixels must be a positive number of pixels, got {max_pixels}")
    device = next(model.parameters()).device
    name = choose(backend, device, model.dtype, precision)
    if name == "openvino":
        return OpenVINORunner(model, weights_key, threads, cache, max_pixels, log=log)
    if name == "inductor":
        return InductorRunner(model, max_pixels)
    return Runner(model, max_pixels)
