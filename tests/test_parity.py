"""Parity tier, float32: the official outputs through the normal checkpoint loading path.

float32 results depend on the CPU's kernels, so they are compared with the float64 references
(../shared/fixtures/trufor_parity_f64/) at the per-field float32 tolerances of tests/tolerances.py.
Only the 1536x2048 input has no official float64 reference (it needs >12 GiB in the official
code); it is compared with the float32 fixture made on an AVX-512 machine at the same tolerances:
each float32 result was measured within a third of them from float64 on three kernel sets
(docs/numerics.md), so two float32 results stay within them.
The exactness proof is the float64 tier (test_parity_f64.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import IMAGES, fixture_npz
from parity_harness import BACKEND_FIELDS, DERIVED, PATHS, SMALL, run_backend_image, run_fixture_image
from tolerances import F32_ATOL, assert_f32_close, maxdiff
from trufor_core import EvalConfig, load_trufor
from trufor_core.image import decode_rgb, to_model_input

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def alt_model(synth_ckpt):
    m, _ = load_trufor(synth_ckpt, variant="train_test")
    assert m.decode_head_conf.linear_fuse[1].eps == 1e-3
    return m


def _check_fields(got: dict, ref: dict, fields, float16=()) -> None:
    for field in sorted(fields):
        assert_f32_close(got[field], ref[field], field, float16_ref=field in float16)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name,image", SMALL)
def test_small_fixture_parity(model, alt_model, name, image, path):
    """Every field, each evaluation path, against the float64 official outputs."""
    ref = fixture_npz(name, f64=True)
    got = run_fixture_image(model, IMAGES / image, PATHS[path], alt_model)
    assert set(got) - DERIVED == set(ref)
    np.testing.assert_array_equal(got["imgsize"], ref["imgsize"])
    assert got["map"].dtype == np.float32
    _check_fields(got, ref, set(ref) - {"imgsize"})
    assert got["alt_anomaly_maxabsdiff"] == 0.0
    # Not degenerate (the fixture README gives these ranges).
    assert got["map"].std() > 1e-3


@pytest.fixture(scope="module")
def openvino_runner(model, synth_ckpt):
    from trufor_core.backends import make_runner, openvino_cache
    from trufor_core.checkpoint import sha256_file

    runner = make_runner(model, "openvino", sha256_file(synth_ckpt), cache=openvino_cache())
    assert runner.name.startswith("openvino")
    return runner


@pytest.mark.parametrize("name,image", SMALL)
def test_small_fixture_parity_openvino(openvino_runner, name, image):
    """The compiled path (OpenVINO, the CPU default) against the float64 official outputs, at the same
    float32 tolerances as the eager paths: its kernels are one more way of rounding the same function."""
    ref = fixture_npz(name, f64=True)
    got, path = run_backend_image(openvino_runner, IMAGES / image)
    assert path == openvino_runner.name  # the compiled graph ran, not the eager fallback for large images
    np.testing.assert_array_equal(got["imgsize"], ref["imgsize"])
    _check_fields(got, ref, set(BACKEND_FIELDS) - {"imgsize"})
    assert got["map"].std() > 1e-3


def test_openvino_mixed_shapes(model, synth_ckpt):
    """An archive's shapes in a shuffled order through one OpenVINO graph (one thread, as a scan actor
    on a small node): every call matches eager. With OpenVINO's per-shape kernel cache on, this
    sequence gave scores off by up to 0.16 after some shape switches (the two-node scan test caught it)."""
    import random

    from trufor_core.backends import make_runner
    from trufor_core.checkpoint import sha256_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = make_runner(model, "openvino", sha256_file(synth_ckpt), threads=1)
        rng = np.random.default_rng(0)
        xs = {n: to_model_input(decode_rgb(IMAGES / n)[0])
              for n in ("tampered2.png", "pristine1.jpg", "synthetic_odd_333x517.png")}
        for h, w in [(64, 96), (45, 33), (40, 56), (48, 64), (192, 288)]:
            xs[f"{h}x{w}"] = torch.from_numpy(rng.integers(0, 256, (1, 3, h, w)).astype(np.float32)) / 256
        with torch.inference_mode():
            ref = {k: model(x).det_logit for k, x in xs.items()}
            order = list(xs) * 3
            random.Random(1).shuffle(order)
            for k in order:
                got, path = runner(xs[k], EvalConfig())
                assert path.startswith("openvino")
                assert_f32_close(got.det_logit.numpy(), ref[k].numpy(), "det_logit")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_large_fixture_parity_bounded_path(model, alt_model):
    """tampered1 (1536x2048) runs through the tiled/chunked path by default and matches.

    The only 1536x2048 forward of the suite (about 100 s on two cores), so it runs once: `make test`
    leaves it out of the second pass under other kernels.
    """
    ref = fixture_npz("tampered1")
    ev = EvalConfig()
    # Make sure this really exercises tiling and banding, not the whole-image path.
    assert ev.dncnn_tile < 2048 and 384 * 512 * 4 * 512 > ev.decoder_block_elems
    got = run_fixture_image(model, IMAGES / "tampered1.png", ev, alt_model)
    np.testing.assert_array_equal(got["imgsize"], ref["imgsize"])
    r0, c0 = (int(v) for v in ref["win_origin"])
    win = (slice(r0, r0 + 256), slice(c0, c0 + 256))
    for f in ("map", "conf", "np++", "conf_logits"):
        got[f"{f}_win"] = got[f][win]
    got["anomaly_logits_win"] = got["anomaly_logits"][:, win[0], win[1]]
    stored = set(ref) - {"imgsize", "win_origin"}
    assert stored <= set(got)
    _check_fields(got, ref, stored, float16={"map", "conf", "np++"})


def test_real_noiseprint_fixture(model):
    """The real Noiseprint++ weights in float32, tiled, against the float64 output."""
    ref = fixture_npz("noiseprintpp_real_pristine1", f64=True)
    rgb, _ = decode_rgb(IMAGES / "pristine1.jpg")
    np.testing.assert_array_equal(rgb, ref["rgb_u8"])
    x = to_model_input(rgb)
    np.testing.assert_array_equal(x[0].numpy(), ref["input_f32"])
    with torch.inference_mode():
        npp = model.dncnn.forward_tiled(x, 128)[0, 0].numpy()
    assert_f32_close(npp, ref["np++"], "np++")
    assert maxdiff(npp, ref["np++"]) > 0  # really float32: the float64 tier is the exact one
    assert F32_ATOL["np++"] < 0.01 * np.abs(ref["np++"]).max()  # the tolerance is small next to the signal


def test_recipe_matches_manifest(shared):
    """Every synthesized tensor hashes to the manifest's fixture_sha256 (schema + recipe)."""
    import hashlib
    import json

    from conftest import FIXTURES, NOISEPRINT
    from trufor_core.checkpoint import map_noiseprint_state_dict, read_torch_file, synthesize_state_dict

    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    sd = synthesize_state_dict(noiseprint_sd=map_noiseprint_state_dict(read_torch_file(NOISEPRINT)))
    assert list(sd) == [e["name"] for e in manifest["entries"]]
    bad = [e["name"] for e in manifest["entries"]
           if hashlib.sha256(np.ascontiguousarray(sd[e["name"]].numpy()).tobytes()).hexdigest() != e["fixture_sha256"]]
    assert bad == []
