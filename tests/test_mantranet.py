"""ManTra-Net (mantranet_core): strict HDF5 loading, exactness against the official Keras code's outputs
(../shared/fixtures/mantranet_parity), and the bounded-memory (tiled) path.

float64 proves the port exact: the fixtures' float64 fields come from the official code rebuilt in float64,
and every CPU's float64 kernels agree to ~1e-14. float32 is held to tolerances measured across kernel sets
(tests/tolerances.py MANTRANET_F32_ATOL); `make test` reruns the float32 tests under SSE4.1 kernels.
"""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import mantranet_npz
from mantranet_harness import fields
from tolerances import F64_ATOL, F64_PATHS_ATOL, MANTRANET_F32_ATOL, assert_close

from mantranet_core import count_steps, load_mantranet, model as mmodel
from trufor_core.checkpoint import CheckpointError
from trufor_core.progress import OutOfTime, Watch, on_step

FIXTURES = ("tiny_synthetic_25x37", "tampered1_crop256", "pristine1", "synthetic_odd_333x517")


def _input(z: dict, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(z["input"]).permute(0, 3, 1, 2).to(dtype)  # (1, H, W, 3) -> (1, 3, H, W)


@pytest.fixture(scope="module")
def m32(mantranet_h5):
    return load_mantranet(mantranet_h5)


@pytest.fixture(scope="module")
def m64(mantranet_h5):
    m, _ = load_mantranet(mantranet_h5, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in m.state_dict().values())
    return m


# --- loading ------------------------------------------------------------------------------------------------


def test_loads_every_weight_and_reports_provenance(m32):
    m, info = m32
    assert sum(t.numel() for t in m.state_dict().values()) == 3_805_078  # the official model's count
    assert info.untrained and info.keras_version == "2.21.0" and len(info.sha256) == 64
    assert info.bayar_violation < 1e-6 and info.unit_norm_violation < 1e-6  # stored constrained, as trained files are


def _edited(src, tmp_path, edit) -> str:
    out = tmp_path / "edited.h5"
    shutil.copy(src, out)
    os.chmod(out, 0o644)
    with h5py.File(out, "r+") as f:
        edit(f)
    return str(out)


def _drop(f, layer, name):
    g = f[layer]
    del g[name]
    g.attrs["weight_names"] = [n for n in g.attrs["weight_names"] if (n.decode() if isinstance(n, bytes) else n) != name]


def _add(f, layer, name, shape):
    g = f[layer]
    g.create_dataset(name, data=np.zeros(shape, np.float32))
    g.attrs["weight_names"] = list(g.attrs["weight_names"]) + [name]


def _reshape(f, layer, name):
    data = f[layer][name][()]
    del f[layer][name]
    f[layer].create_dataset(name, data=data[:, :, :, :-1])


@pytest.mark.parametrize("edit,expect", [
    (lambda f: _drop(f, "pred", "pred/bias:0"), "1 missing ['pred.bias']"),
    (lambda f: _add(f, "pred", "pred/extra:0", (3,)), "1 extra ['pred.extra']"),
    (lambda f: _reshape(f, "Featex", "b4c2/kernel:0"), "Featex.b4c2.kernel: file (3, 3, 256, 255) vs model (3, 3, 256, 256)"),
    (lambda f: f["cLSTM"]["cLSTM/bias:0"].__setitem__(0, np.nan), "non-finite values in ['cLSTM.bias']"),
])
def test_strict_loading_names_what_is_wrong(mantranet_h5, tmp_path, edit, expect):
    path = _edited(mantranet_h5, tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        load_mantranet(path)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_refuses_what_is_not_a_weights_file(tmp_path, mantranet_h5):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="is not an HDF5 file"):
        load_mantranet(tmp_path / "x.h5")
    os.mkfifo(tmp_path / "fifo.h5")  # never opened: a FIFO would block the reader
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_mantranet(tmp_path / "fifo.h5")
    with pytest.raises(CheckpointError, match="no Keras 'layer_names'"):
        with h5py.File(tmp_path / "empty.h5", "w"):
            pass
        load_mantranet(tmp_path / "empty.h5")


# --- exactness ----------------------------------------------------------------------------------------------


@pytest.mark.parity
def test_mantranet_f64_every_intermediate_tiny(m64):
    """Every intermediate, full size, in float64: Featex (symmetric padding, SRM, Bayar), bnorm, the nested
    windows at every border, the ConvLSTM and the logits."""
    z = mantranet_npz("tiny_synthetic_25x37")
    got = fields(m64, _input(z, torch.float64))
    out = m64(_input(z, torch.float64))
    assert torch.equal(out.logits[0, 0].double(), torch.from_numpy(got["logits"]))  # forward = the harness's parts
    for f in ("featex", "divstd", "clstm"):
        assert_close(got[f + "_full"], z["f64_" + f], f"tiny f64 {f}", F64_ATOL)
    for f in ("logits", "glbstd", "featex_chmean", "bnorm_chmean", "divstd_chmean", "clstm_chmean"):
        assert_close(got[f], z["f64_" + f], f"tiny f64 {f}", F64_ATOL)
    # the signed window deviations (no float64 field): float32 fixture, at the float32 divstd tolerance x std
    assert_close(got["nestedavg_full"], z["nestedavg"], "tiny nestedavg", MANTRANET_F32_ATOL["divstd"])


@pytest.mark.parity
@pytest.mark.slow
def test_mantranet_f64_crop256(m64):
    """A 256x256 crop of a real splice in float64: logits everywhere, the corner intermediates."""
    z = mantranet_npz("tampered1_crop256")
    got = fields(m64, _input(z, torch.float64))
    for f in ("logits", "glbstd", "featex_tl", "divstd_tl", "clstm_tl", "featex_chmean", "divstd_chmean"):
        assert_close(got[f], z["f64_" + f], f"crop256 f64 {f}", F64_ATOL)


@pytest.mark.parity
@pytest.mark.parametrize("name", FIXTURES)
def test_mantranet_f32(m32, name):
    """float32 through ``forward`` as the product runs it (synthetic_odd is 517 wide: two tiles) against the
    official float64 outputs, and against the official float32 mask."""
    m, _ = m32
    z = mantranet_npz(name)
    out = m(_input(z))
    logits = out.logits[0, 0].double().numpy()
    f64_mask = 1 / (1 + np.exp(-z["f64_logits"]))
    assert_close(logits, z["f64_logits"], f"{name} logits", MANTRANET_F32_ATOL["logits"])
    assert_close(out.mask[0].double().numpy(), f64_mask, f"{name} mask", MANTRANET_F32_ATOL["mask"])
    assert_close(out.mask[0].double().numpy(), z["mask"], f"{name} mask vs official float32",
                 MANTRANET_F32_ATOL["mask_vs_official_f32"])
    assert_close(out.glbstd[0].double().numpy(), z["f64_glbstd"], f"{name} glbstd", MANTRANET_F32_ATOL["glbstd"])


@pytest.mark.parity
@pytest.mark.parametrize("name", FIXTURES[:2])
def test_mantranet_f32_intermediates(m32, name):
    m, _ = m32
    z = mantranet_npz(name)
    got = fields(m, _input(z))
    ref = {f: z["f64_" + f] if "f64_" + f in z else z["f64_" + f[:-3]][..., :16, :16, :]
           for f in ("featex_tl", "divstd_tl", "clstm_tl")}
    for f, r in ref.items():
        assert_close(got[f], r, f"{name} {f}", MANTRANET_F32_ATOL[f[:-3]])
    for f in ("featex_chmean", "bnorm_chmean", "divstd_chmean", "clstm_chmean"):
        assert_close(got[f], z["f64_" + f], f"{name} {f}", MANTRANET_F32_ATOL["chmean"])


# --- the bounded-memory path --------------------------------------------------------------------------------


@pytest.mark.parity
def test_tiles_are_exact_in_float64(m64):
    """Featex tiles (tile 8 on the 25x37 fixture: regions cut on the left and right) against the official
    float64 outputs; the head's tiles (24-pixel halo) against one piece on a larger feature map."""
    z = mantranet_npz("tiny_synthetic_25x37")
    x = _input(z, torch.float64)
    assert len(mmodel.tiles(25, 37, 8)) == 20
    assert_close(m64(x, tile=8).logits[0, 0].numpy(), z["f64_logits"], "tiny f64 tiled", F64_ATOL)
    g = torch.Generator().manual_seed(0)
    bn = torch.randn(1, 64, 70, 90, generator=g, dtype=torch.float64)
    whole = _head_tiled(m64, bn, None)
    assert_close(_head_tiled(m64, bn, 24), whole, "head tiles", F64_PATHS_ATOL)


def _head_tiled(m, bn, tile):
    """Pass 2 of ``forward`` on a given bnorm map (the store filled directly)."""
    std, mean = torch.std_mean(bn, (2, 3), correction=0)
    sigma = m.glbStd(std)
    h, w = bn.shape[-2:]
    out = torch.empty(1, 1, h, w, dtype=bn.dtype)
    halo = mmodel.HEAD_HALO
    for r0, r1, c0, c1 in mmodel.tiles(h, w, tile):
        a0, a1, b0, b1 = max(r0 - halo, 0), min(r1 + halo, h), max(c0 - halo, 0), min(c1 + halo, w)
        o = m.head(bn[..., a0:a1, b0:b1], mean, sigma, (a0, b0), (h, w))
        out[..., r0:r1, c0:c1] = o[..., r0 - a0:r1 - a0, c0 - b0:c1 - b0]
    return out.numpy()


@pytest.mark.parity
def test_a_halo_one_pixel_short_is_caught(m64, m32, monkeypatch):
    """The tile checks can fail, and the halos are the smallest that work: one pixel less (23 for the head,
    13 for Featex) and tiles differ from one piece."""
    assert (mmodel.HEAD_HALO, mmodel.FEATEX_HALO) == (24, 14)
    g = torch.Generator().manual_seed(0)
    bn = torch.randn(1, 64, 70, 90, generator=g, dtype=torch.float64)
    whole = _head_tiled(m64, bn, None)
    monkeypatch.setattr(mmodel, "HEAD_HALO", mmodel.HEAD_HALO - 1)
    assert np.abs(_head_tiled(m64, bn, 24) - whole).max() > 1e-6
    monkeypatch.setattr(mmodel, "HEAD_HALO", mmodel.HEAD_HALO + 1)
    x = torch.rand(1, 3, 60, 76, generator=g) * 2 - 1
    whole = m32[0](x, tile=None).logits
    ok = (m32[0](x, tile=24).logits - whole).abs().max().item()  # float32 rounding only
    monkeypatch.setattr(mmodel, "FEATEX_HALO", mmodel.FEATEX_HALO - 1)
    short = (m32[0](x, tile=24).logits - whole).abs().max().item()
    assert short > 100 * ok, (short, ok)


def test_forward_tiles_float32_spill_and_steps(m32, monkeypatch):
    """float32 tiles vs one piece (a random image: no fixture needed), the spilled store (a temporary file)
    equal to the in-memory one, and one progress step per tile and pass (``count_steps``)."""
    m, _ = m32
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 60, 76, generator=g) * 2 - 1
    whole = m(x, tile=None).logits
    calls = []
    with on_step(lambda: calls.append(1)):
        tiled = m(x, tile=24).logits
    assert len(calls) == count_steps(60, 76, 24) == 2 * 3 * 4
    assert (tiled - whole).abs().max().item() < MANTRANET_F32_ATOL["logits"]
    spilled = m(x, tile=24, spill_bytes=0).logits
    assert torch.equal(spilled, tiled)
    with pytest.raises(OutOfTime), on_step(Watch(count_steps(60, 76, 24), budget_s=0.0)):
        m(x, tile=24)
