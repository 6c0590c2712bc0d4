"""Loading the official ManTra-Net Keras HDF5 weights (``ManTraNet_Ptrain4.h5``) strictly, with h5py.

Keras ``save_weights`` writes one group per layer (root attribute ``layer_names``), each with an
attribute ``weight_names`` naming its datasets in order (``Featex/b1c1/regular_kernel:0`` for the
nested Featex model, ``cLSTM/cLSTM/kernel:0`` for the others; a whole-model file holds the same under
``model_weights``). A name maps to a parameter by its layer, its sub-layer (Featex only) and its last
part; every dataset must map to a parameter and every parameter be filled, shapes checked, or
``CheckpointError`` names what is missing, extra or mis-shaped. Kernels are converted from Keras's
(kh, kw, in, out) to PyTorch's (out, in, kh, kw). No constraint is applied: Keras applies them after
each training step, never at inference, so the official code uses the stored values (the Bayar and
unit-norm departures of the file are measured and reported in ``ManTraNetInfo``).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

import numpy as np
import torch

from trufor_core.checkpoint import CheckpointError, sha256_file

from .model import ManTraNet

# Weights known not to be trained: the parity fixtures' synthesized file (../shared/fixtures/mantranet_parity).
KNOWN_UNTRAINED = {"34f7f4134a7b1f1e8046b4df314ee3cc652bdb52d22377e1383ad6c47dfb923c":
                   "the synthesized parity-fixture weights (mantranet_synth_ptrain4.h5)"}
MAX_FILE_BYTES = 256 << 20  # the official file is ~15 MB


@dataclass(frozen=True)
class ManTraNetInfo:
    """Provenance of the weights a ManTra-Net was loaded with."""

    path: str
    sha256: str
    untrained: bool
    keras_version: str
    bayar_violation: float  # largest departure from the Bayar constraint (centre -1, rest sums to 1)
    unit_norm_violation: float  # largest |L2 norm - 1| of outlierTrans's columns


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _param_key(layer: str, weight_name: str) -> str:
    """``Featex/b1c1/regular_kernel:0`` in layer Featex -> ``Featex.b1c1.regular_kernel``; ``cLSTM/cLSTM/bias:0``
    -> ``cLSTM.bias`` (a Keras name-scope suffix such as ``b1c1_1`` is dropped)."""
    parts = weight_name.split(":")[0].split("/")
    if layer == "Featex":
        if len(parts) < 2:
            raise CheckpointError(f"weight {weight_name!r} of layer Featex names no sub-layer")
        return f"Featex.{re.sub(r'_[0-9]+$', '', parts[-2])}.{parts[-1]}"
    return f"{layer}.{parts[-1]}"


def _to_torch_layout(key: str, a: np.ndarray) -> np.ndarray:
    if a.ndim == 4 and key.endswith("kernel"):
        return a.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    if key.endswith("min_std"):
        return a.reshape(-1)  # (1, 1, 1, C) -> (C,)
    return a


def _keras_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    return (1, 1, 1, shape[0]) if key.endswith("min_std") else shape


def read_h5_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """{parameter key: array in the file's (Keras) layout}, keras_version. Reads a regular file only."""
    import h5py

    p = os.fspath(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise CheckpointError(f"cannot read ManTra-Net weights {p}: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"ManTra-Net weights {p} is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise CheckpointError(f"ManTra-Net weights {p} is {st.st_size} bytes, over {MAX_FILE_BYTES} "
                              "(the official file is ~15 MB)")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise CheckpointError(f"{p} is not an HDF5 file ({e}); expected Keras weights such as "
                              "ManTraNet_Ptrain4.h5") from None
    out: dict[str, np.ndarray] = {}
    with f:
        g = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" not in g.attrs:
            raise CheckpointError(f"{p} has no Keras 'layer_names' attribute: not a Keras weights file")
        version = _text(g.attrs.get("keras_version", "unknown"))
        for layer in (_text(n) for n in g.attrs["layer_names"]):
            if layer not in g:
                raise CheckpointError(f"{p}: layer {layer!r} is listed but has no group")
            for wn in (_text(n) for n in g[layer].attrs.get("weight_names", [])):
                key = _param_key(layer, wn)
                if key in out:
                    raise CheckpointError(f"{p}: two datasets map to {key} (second: {layer}/{wn})")
                try:
                    ds = g[layer][wn]
                except KeyError:
                    raise CheckpointError(f"{p}: weight {wn!r} of layer {layer!r} is listed but absent") from None
                if not isinstance(ds, h5py.Dataset) or ds.dtype.kind != "f":
                    raise CheckpointError(f"{p}: {layer}/{wn} is not a floating-point dataset")
                out[key] = np.asarray(ds[()])
    return out, version


def load_mantranet(path: str | os.PathLike, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[ManTraNet, ManTraNetInfo]:
    """Build ManTra-Net and fill every parameter from the HDF5 file (strict), in eval mode.

    Raises:
        CheckpointError: unreadable file, a dataset the model does not have, a parameter the file does not
            fill, a shape mismatch, or a non-finite value; the message names them.
    """
    weights, version = read_h5_weights(path)
    model = ManTraNet()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    mismatched = [f"{k}: file {tuple(weights[k].shape)} vs model {_keras_shape(k, tuple(expected[k].shape))}"
                  for k in sorted(set(expected) & set(weights))
                  if _to_torch_layout(k, weights[k]).shape != tuple(expected[k].shape)]
    if missing or extra or mismatched:
        raise CheckpointError(f"{path} does not match ManTra-Net Ptrain4: {len(missing)} missing {missing[:6]}, "
                              f"{len(extra)} extra {extra[:6]}, {len(mismatched)} mis-shaped {mismatched[:4]}")
    bad = [k for k, a in weights.items() if not np.isfinite(a).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {bad[:6]}")
    sd = {k: torch.from_numpy(np.ascontiguousarray(_to_torch_layout(k, a))) for k, a in weights.items()}
    model.load_state_dict(sd, strict=True)
    model.eval().requires_grad_(False).to(device=device, dtype=dtype)  # inference only
    if dtype != torch.float64:
        model.to(memory_format=torch.channels_last)  # see ManTraNet.features
    sha = sha256_file(path)
    cols = model.outlierTrans.kernel.detach().double().flatten(1).norm(dim=1)  # (64,) norm of each output's column
    info = ManTraNetInfo(path=str(path), sha256=sha, untrained=sha in KNOWN_UNTRAINED, keras_version=version,
                         bayar_violation=model.Featex.b1c1.bayar_violation(),
                         unit_norm_violation=float((cols - 1).abs().max()))
    return model, info
