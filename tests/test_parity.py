"""Parity tier: the official-output fixtures, through the normal checkpoint loading path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import IMAGES, fixture_npz, maxdiff
from trufor_core import EvalConfig, load_trufor
from trufor_core.image import decode_rgb, to_model_input

pytestmark = pytest.mark.parity

# The fixture README's suggested pass criteria for a float32 PyTorch CPU re-implementation.
ATOL = 5e-5
ATOL_SCORE = 1e-5
ATOL_F16 = 1e-3

SMALL = [("pristine1", "pristine1.jpg"), ("synthetic_odd_333x517", "synthetic_odd_333x517.png")]


def _run(model, image: str, ev: EvalConfig, alt_model=None):
    rgb, _ = decode_rgb(IMAGES / image)
    x = to_model_input(rgb)
    with torch.inference_mode():
        npp, feats = model.encode(x, ev)
        out = model.decode(npp, feats, ev)
        alt = alt_model.decode(npp, feats, ev) if alt_model is not None else None
        chmeans = [f[0].mean(dim=(1, 2)).numpy() for f in feats]
    return out, alt, chmeans


@pytest.fixture(scope="module")
def alt_model(synth_ckpt):
    m, info = load_trufor(synth_ckpt, variant="train_test")
    assert m.decode_head_conf.linear_fuse[1].eps == 1e-3
    return m


def _check_common(ref, out, alt, chmeans):
    res = out.results()[0]
    assert tuple(ref["imgsize"]) == res.imgsize
    assert abs(res.score - float(ref["score"])) <= ATOL_SCORE
    assert maxdiff(res.det_logit, ref["det_logit"]) <= ATOL
    assert maxdiff(res.pooled, ref["pooled"]) <= ATOL
    assert maxdiff(out.anomaly_logits_lowres[0], ref["anomaly_logits_lowres"]) <= ATOL
    assert maxdiff(out.conf_logits_lowres[0], ref["conf_logits_lowres"]) <= ATOL
    for i, cm in enumerate(chmeans, 1):
        assert maxdiff(cm, ref[f"fused{i}_chmean"]) <= ATOL, f"fused{i}"
    a = alt.results()[0]
    assert abs(a.score - float(ref["alt_score"])) <= ATOL_SCORE
    assert maxdiff(a.det_logit, ref["alt_det_logit"]) <= ATOL
    assert maxdiff(a.pooled, ref["alt_pooled"]) <= ATOL
    assert maxdiff(alt.conf_logits_lowres[0], ref["alt_conf_logits_lowres"]) <= ATOL
    # The variant really differs from the default where the fixture says it does.
    assert maxdiff(alt.conf_logits, out.conf_logits) == pytest.approx(float(ref["alt_conf_maxabsdiff"]), abs=ATOL)
    assert maxdiff(alt.anomaly_logits, out.anomaly_logits) == 0.0
    return res


@pytest.mark.parametrize("name,image", SMALL)
def test_small_fixture_parity(model, alt_model, name, image):
    ref = fixture_npz(name)
    out, alt, chmeans = _run(model, image, EvalConfig(), alt_model)
    res = _check_common(ref, out, alt, chmeans)
    assert maxdiff(res.anomaly_map, ref["map"]) <= ATOL
    assert maxdiff(res.confidence_map, ref["conf"]) <= ATOL
    assert maxdiff(res.noiseprint, ref["np++"]) <= ATOL
    assert maxdiff(out.anomaly_logits[0], ref["anomaly_logits"]) <= ATOL
    assert maxdiff(out.conf_logits[0, 0], ref["conf_logits"]) <= ATOL
    # Not degenerate (the fixture README gives these ranges).
    assert res.anomaly_map.std() > 1e-3


@pytest.mark.slow
def test_large_fixture_parity_bounded_path(model, alt_model):
    """tampered1 (1536x2048) runs through the tiled/chunked path by default and matches."""
    ref = fixture_npz("tampered1")
    ev = EvalConfig()
    # Make sure this really exercises tiling and banding, not the whole-image path.
    assert ev.dncnn_tile < 2048 and 384 * 512 * 4 * 512 > ev.decoder_block_elems
    out, alt, chmeans = _run(model, "tampered1.png", ev, alt_model)
    res = _check_common(ref, out, alt, chmeans)
    assert maxdiff(res.anomaly_map, ref["map"]) <= ATOL_F16
    assert maxdiff(res.confidence_map, ref["conf"]) <= ATOL_F16
    assert maxdiff(res.noiseprint, ref["np++"]) <= ATOL_F16
    r0, c0 = (int(v) for v in ref["win_origin"])
    win = (slice(r0, r0 + 256), slice(c0, c0 + 256))
    assert maxdiff(res.anomaly_map[win], ref["map_win"]) <= ATOL
    assert maxdiff(res.confidence_map[win], ref["conf_win"]) <= ATOL
    assert maxdiff(res.noiseprint[win], ref["np++_win"]) <= ATOL
    assert maxdiff(out.anomaly_logits[0][:, win[0], win[1]], ref["anomaly_logits_win"]) <= ATOL
    assert maxdiff(out.conf_logits[0, 0][win], ref["conf_logits_win"]) <= ATOL


@pytest.mark.parametrize("name,image", SMALL)
def test_tiled_chunked_equals_plain(model, name, image):
    """Forcing many tiles, chunks and bands gives the whole-image result within the tolerances."""
    forced = EvalConfig(attention="sdpa", attn_block_elems=4096, mlp_block_elems=50_000, dncnn_tile=128,
                        decoder_block_elems=200_000)
    plain, _, _ = _run(model, image, EvalConfig.naive())
    tiled, _, _ = _run(model, image, forced)
    for field in ("anomaly_logits", "conf_logits", "noiseprint", "pooled", "det_logit"):
        assert maxdiff(getattr(tiled, field), getattr(plain, field)) <= ATOL, field
    # The naive path is the official computation: it reproduces the fixture.
    ref = fixture_npz(name)
    assert maxdiff(plain.anomaly_logits[0], ref["anomaly_logits"]) <= ATOL


def test_real_noiseprint_fixture(model):
    ref = fixture_npz("noiseprintpp_real_pristine1")
    rgb, _ = decode_rgb(IMAGES / "pristine1.jpg")
    np.testing.assert_array_equal(rgb, ref["rgb_u8"])
    x = to_model_input(rgb)
    np.testing.assert_array_equal(x[0].numpy(), ref["input_f32"])
    with torch.inference_mode():
        npp = model.dncnn.forward_tiled(x, 128)[0, 0].numpy()
    assert maxdiff(npp, ref["np++"]) <= ATOL
    assert maxdiff(npp, ref["np++_f64"]) <= 5e-4


def test_recipe_matches_manifest(shared):
    """Every synthesized tensor hashes to the manifest's fixture_sha256 (schema + recipe)."""
    import hashlib
    import json

    from trufor_core.checkpoint import map_noiseprint_state_dict, read_torch_file, synthesize_state_dict

    from conftest import FIXTURES, NOISEPRINT

    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    sd = synthesize_state_dict(noiseprint_sd=map_noiseprint_state_dict(read_torch_file(NOISEPRINT)))
    assert list(sd) == [e["name"] for e in manifest["entries"]]
    bad = [e["name"] for e in manifest["entries"]
           if hashlib.sha256(np.ascontiguousarray(sd[e["name"]].numpy()).tobytes()).hexdigest() != e["fixture_sha256"]]
    assert bad == []
