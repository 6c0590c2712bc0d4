"""Loading the official ``trufor.pth.tar`` (strict, weights_only) and the fixture weight recipe."""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import TruForConfig
from .model import TruFor

# Key written into checkpoints made by ``synthesize``: anything scored with them must say so.
UNTRAINED_MARKER = "trufor_scan_untrained"
RECIPE_NAME = "trufor-parity-fixture-recipe (crc32-seeded PCG64 normals; NOT trained weights)"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the model."""


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of the weights a model was loaded with."""

    path: str
    sha256: str
    untrained: bool
    variant: str
    noiseprint_path: str | None = None
    noiseprint_sha256: str | None = None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _numpy_safe_globals() -> list:
    """The numpy globals the official training saver pickles (``best_value`` is a numpy scalar)."""
    scalar = np._core.multiarray.scalar
    dtype_classes = [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                                      "BoolDType", "Float16DType")]
    # numpy 1.x wrote ``numpy.core.multiarray.scalar``; numpy 2 moved it to ``numpy._core``.
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


def read_torch_file(path: str | os.PathLike) -> object:
    """``torch.load(weights_only=True)`` with only the numpy globals the official file needs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several unrelated types here
        # torch's unpickling errors span many lines of advice: the first says what went wrong.
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"cannot load {path} with weights_only=True: {type(e).__name__}: {first}") from e


def _strip_prefix(sd: dict, prefix: str) -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def map_official_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Official checkpoint (or a bare state dict) -> our state dict. Pure; the key map is tiny.

    Accepts ``{"state_dict": sd, ...}`` as written by the official trainer, or ``sd`` itself,
    optionally saved from a DataParallel model (``module.`` prefix).
    """
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("expected a dict with a 'state_dict' entry or a bare state dict of tensors, "
                              f"got {type(obj).__name__}")
    return _strip_prefix(dict(obj), "module.")


def map_noiseprint_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """A ``noiseprint++.th`` file (``{"network": sd}``) or bare DnCNN state dict -> ``dncnn.*`` keys."""
    if isinstance(obj, dict) and "network" in obj:
        obj = obj["network"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"expected a Noiseprint++ file with a 'network' state dict, got {type(obj).__name__}")
    sd = _strip_prefix(_strip_prefix(dict(obj), "module."), "dncnn.")
    return {f"dncnn.{k}": v for k, v in sd.items()}


def _some(items: list[str], n: int = 5) -> str:
    return str(items[:n])[:-1] + (f", ... {len(items) - n} more]" if len(items) > n else "]")


def check_state_dict(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], source: str) -> None:
    """Strict key and shape check; one line naming the first offending keys of each kind and their counts."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} does not match the TruFor model: {len(missing)} missing keys {_some(missing)}, "
            f"{len(unexpected)} unexpected keys {_some(unexpected)}, {len(mismatched)} shape mismatches {_some(mismatched)}")


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load with strict key and shape checks (``check_state_dict``)."""
    check_state_dict(model.state_dict(), sd, source)
    model.load_state_dict(sd, strict=True)


def check_checkpoint(checkpoint: str | os.PathLike, noiseprint: str | os.PathLike | None = None,
                     variant: str = "test_docker") -> bool:
    """Everything ``load_trufor`` checks about the files, without building a real model; returns
    whether the checkpoint is marked UNTRAINED (``write_synthetic_checkpoint``).

    For a driver that hands the files to workers: a bad or malicious checkpoint is one clear
    ``CheckpointError`` here, before any worker starts. The model's schema comes from a model on
    the meta device (shapes only, no memory).
    """
    raw = read_torch_file(checkpoint)
    sd = map_official_state_dict(raw)
    if noiseprint is not None:
        sd.update(_noiseprint_entries(noiseprint, sd))
    with torch.device("meta"):
        expected = TruFor(TruForConfig.official(variant)).state_dict()
    check_state_dict(expected, sd, str(checkpoint))
    return bool(isinstance(raw, dict) and raw.get(UNTRAINED_MARKER, False))


def _noiseprint_entries(noiseprint: str | os.PathLike, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``dncnn.*`` entries of a Noiseprint++ file, checked against the checkpoint's own."""
    np_sd = map_noiseprint_state_dict(read_torch_file(noiseprint))
    unknown = sorted(set(np_sd) - {k for k in sd if k.startswith("dncnn.")})
    if unknown:
        raise CheckpointError(f"{noiseprint} has keys the DnCNN does not have: {_some(unknown)}")
    return np_sd


def load_trufor(checkpoint: str | os.PathLike, noiseprint: str | os.PathLike | None = None,
                variant: str = "test_docker", device: str | torch.device = "cpu",
                cfg: TruForConfig | None = None, dtype: torch.dtype = torch.float32) -> tuple[TruFor, WeightsInfo]:
    """Build TruFor and load a checkpoint strictly.

    Args:
        checkpoint: official ``trufor.pth.tar`` (or a bare state dict file).
        noiseprint: optional ``noiseprint++.th``-format file that replaces the ``dncnn.*`` weights.
        variant: "test_docker" (official inference, default) or "train_test" (conf-head BN eps 1e-3).
        device: where the model goes.
        cfg: architecture; defaults to the official one for ``variant``.
        dtype: floating dtype of the model (float64 is the CPU-independent exactness reference).

    Returns:
        The model in eval mode and the provenance of its weights.
    """
    cfg = cfg or TruForConfig.official(variant)
    raw = read_torch_file(checkpoint)
    sd = map_official_state_dict(raw)
    untrained = bool(isinstance(raw, dict) and raw.get(UNTRAINED_MARKER, False))
    np_path = np_sha = None
    if noiseprint is not None:
        sd.update(_noiseprint_entries(noiseprint, sd))
        np_path, np_sha = str(noiseprint), sha256_file(noiseprint)
    model = TruFor(cfg)
    load_strict(model, sd, str(checkpoint))
    model.eval().to(device=device, dtype=dtype)
    info = WeightsInfo(path=str(checkpoint), sha256=sha256_file(checkpoint), untrained=untrained, variant=variant,
                       noiseprint_path=np_path, noiseprint_sha256=np_sha)
    return model, info


def recipe_array(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The parity fixtures' deterministic value for one state-dict entry (see fixtures README)."""
    if name.endswith(".num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    z = np.random.Generator(np.random.PCG64(zlib.crc32(name.encode("utf-8")))).standard_normal(shape)
    if name.endswith(".running_var"):
        v = np.exp(0.25 * z)
    elif name.endswith(".running_mean") or name.endswith(".bias"):
        v = 0.1 * z
    elif name.endswith(".weight") and len(shape) == 1:
        v = 1.0 + 0.1 * z
    elif name.endswith(".weight"):
        v = z * (1.0 / np.sqrt(float(np.prod(shape[1:]))))
    else:
        raise ValueError(f"no recipe for state-dict entry {name!r}")
    return v.astype(np.float32)


def synthesize_state_dict(cfg: TruForConfig | None = None,
                          noiseprint_sd: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The fixture recipe for every key of the model; ``dncnn.*`` from ``noiseprint_sd`` when given."""
    schema = TruFor(cfg or TruForConfig()).state_dict()
    out = {k: torch.from_numpy(recipe_array(k, tuple(v.shape))) for k, v in schema.items()}
    if noiseprint_sd is not None:
        for k, v in noiseprint_sd.items():
            if k not in out or out[k].shape != v.shape:
                raise CheckpointError(f"Noiseprint++ entry {k} {tuple(v.shape)} does not fit the model")
            out[k] = v.clone()
    return out


def write_synthetic_checkpoint(out: str | os.PathLike, noiseprint: str | os.PathLike | None = None,
                               cfg: TruForConfig | None = None) -> Path:
    """Write an UNTRAINED checkpoint in the official layout, marked so its outputs say so."""
    np_sd = map_noiseprint_state_dict(read_torch_file(noiseprint)) if noiseprint else None
    sd = synthesize_state_dict(cfg, np_sd)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    torch.save({"state_dict": sd, UNTRAINED_MARKER: True, "recipe": RECIPE_NAME,
                "noiseprint_source": "noiseprint++.th" if noiseprint else "recipe"}, tmp)
    tmp.replace(out)
    return out
