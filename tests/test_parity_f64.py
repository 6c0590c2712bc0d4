"""Float64 parity tier: exactness against the official code on any x86-64 CPU.

The fixtures in ../shared/fixtures/trufor_parity_f64/ are the official TruFor code's outputs in
float64 (same recipe weights, same inputs). In float64 the order in which a CPU's kernels sum no
longer shows (two implementations agree to 1.3e-14), so our model, loaded through the normal
checkpoint path and run in float64, must match every field to F64_ATOL on whatever CPU this runs,
in the official whole-image path and in the bounded-memory path alike.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import IMAGES, fixture_npz
from parity_harness import DERIVED, PATHS, SMALL, run_fixture_image
from tolerances import F64_ATOL, F64_PATHS_ATOL, assert_close
from trufor_core import EvalConfig, load_trufor
from trufor_core.image import decode_rgb, to_model_input

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def model64(synth_ckpt):
    m, _ = load_trufor(synth_ckpt, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    return m


@pytest.fixture(scope="module")
def alt64(synth_ckpt):
    m, _ = load_trufor(synth_ckpt, variant="train_test", dtype=torch.float64)
    return m


@pytest.fixture(scope="module")
def runs64(model64, alt64):
    """Every fixture field of one input on each path, computed once per module (float64 is slow:
    the DnCNN alone takes ~10 s at 333x517 on two cores)."""
    cache: dict[str, dict] = {}

    def get(image: str) -> dict[str, dict]:
        if image not in cache:
            cache[image] = {p: run_fixture_image(model64, IMAGES / image, ev, alt64) for p, ev in PATHS.items()}
        return cache[image]

    return get


@pytest.mark.parametrize("name,image", SMALL)
def test_f64_every_field_every_path(runs64, name, image):
    ref = fixture_npz(name, f64=True)
    runs = runs64(image)
    for path, got in runs.items():
        assert set(got) - DERIVED == set(ref), path  # every stored field is checked, none invented
        np.testing.assert_array_equal(got["imgsize"], ref["imgsize"])
        for field in sorted(set(ref) - {"imgsize"}):
            assert isinstance(got[field], float) or got[field].dtype == np.float64, (path, field)
            assert_close(got[field], ref[field], f"{path}: {field}", F64_ATOL)
        assert got["alt_anomaly_maxabsdiff"] == 0.0  # the variants share the localisation head
    # Our two evaluations of the same function on this machine: tighter still.
    for field in ("anomaly_logits", "conf_logits", "np++", "pooled", "det_logit", "fused1_chmean",
                  "alt_conf_logits_lowres"):
        assert_close(runs["bounded"][field], runs["naive"][field], f"bounded vs naive: {field}", F64_PATHS_ATOL)


def test_f64_real_noiseprint(runs64):
    """The real released Noiseprint++ weights (the checkpoint's ``dncnn.*``) against their own
    float64 fixture: the same input bits, then the whole-image (naive) and 128-px tiled (bounded)
    DnCNN outputs of the runs above."""
    ref = fixture_npz("noiseprintpp_real_pristine1", f64=True)
    rgb, _ = decode_rgb(IMAGES / "pristine1.jpg")
    np.testing.assert_array_equal(rgb, ref["rgb_u8"])
    x = to_model_input(rgb, dtype=torch.float64)
    np.testing.assert_array_equal(x[0].numpy(), ref["input_f32"])  # /256 is exact in both dtypes
    assert PATHS["naive"].dncnn_tile is None and PATHS["bounded"].dncnn_tile < min(rgb.shape[:2])
    for path, got in runs64("pristine1.jpg").items():
        assert_close(got["np++"], ref["np++"], f"{path}: np++", F64_ATOL)


def test_f64_tier_catches_float32_constants(model64, runs64, monkeypatch):
    """The tier has teeth: ImageNet mean/std rounded to float32 (a plain .double() of float32
    constants, the official code's own pitfall) moves the outputs far beyond F64_ATOL."""
    import trufor_core.model as model_mod

    rounded = {k: tuple(float(v) for v in torch.tensor(getattr(model_mod, k), dtype=torch.float32))
               for k in ("IMAGENET_MEAN", "IMAGENET_STD")}
    for k, v in rounded.items():
        monkeypatch.setattr(model_mod, k, v)
    # The constants touch the RGB branch only: the DnCNN output of the run above stands in for it.
    npp = torch.from_numpy(runs64("pristine1.jpg")["naive"]["np++"])[None, None]  # (H, W) -> (1, 1, H, W)
    monkeypatch.setattr(model64.dncnn, "forward_tiled", lambda x, tile: npp)
    ref = fixture_npz("pristine1", f64=True)
    rgb, _ = decode_rgb(IMAGES / "pristine1.jpg")
    with torch.inference_mode():
        _, feats = model64.encode(to_model_input(rgb, dtype=torch.float64), EvalConfig())
    with pytest.raises(AssertionError, match="fused1_chmean"):
        assert_close(feats[0][0].mean(dim=(1, 2)).numpy(), ref["fused1_chmean"], "fused1_chmean", F64_ATOL)
