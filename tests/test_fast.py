"""Fast tier: tiny configs, shapes, no NaN, exactness of the bounded-memory path, loading errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import heic_bytes
from tolerances import F64_PATHS_ATOL
from trufor_core import CheckpointError, EvalConfig, ImageTooSmallError, TruFor, TruForConfig
from trufor_core.checkpoint import (load_strict, load_trufor, map_noiseprint_state_dict, map_official_state_dict,
                                    read_torch_file)
from trufor_core.decoder import MLP, upsample_band
from trufor_core.image import ImageDecodeError, decode_rgb, to_model_input
from trufor_core.model import min_image_side

FORCED = EvalConfig(attn_block_elems=256, mlp_block_elems=600, dncnn_tile=16, decoder_block_elems=3000)


@pytest.fixture(scope="module")
def tiny() -> TruFor:
    torch.manual_seed(0)
    m = TruFor(TruForConfig.tiny()).eval()
    # Non-trivial BN statistics, so BN layers are exercised.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("hw", [(29, 29), (64, 48), (37, 101)])
def test_tiny_forward_shapes_and_finite(tiny, hw):
    x = torch.rand(1, 3, *hw)
    with torch.no_grad():
        out = tiny(x)
    h, w = hw
    assert out.anomaly_logits.shape == (1, 2, h, w)
    assert out.conf_logits.shape == (1, 1, h, w)
    assert out.anomaly_logits_lowres.shape == (1, 2, (h + 3) // 4, (w + 3) // 4)
    assert out.noiseprint.shape == (1, h, w)
    assert out.pooled.shape == (1, 8) and out.det_logit.shape == (1,)
    res = out.results()[0]
    for a in (res.anomaly_map, res.confidence_map, res.noiseprint, res.pooled):
        assert np.isfinite(a).all()
    assert 0.0 <= res.anomaly_map.min() <= res.anomaly_map.max() <= 1.0
    assert 0.0 < res.score < 1.0
    assert res.imgsize == hw
    assert set(res.pooled_features()) == {"conf_softmin", "conf_softmax", "conf_mean", "conf_msq",
                                          "anom_softmin", "anom_softmax", "anom_mean", "anom_msq"}


def test_batch_equals_single_images(tiny):
    """An image's result does not depend on its batch: checked in float64, where kernel choice
    (batched convolutions sum in another order) cannot hide a real mix-up between images."""
    m = TruFor(TruForConfig.tiny()).eval().double()
    m.load_state_dict(tiny.state_dict())
    x = torch.rand(2, 3, 40, 56, dtype=torch.float64)
    with torch.no_grad():
        both = m(x)
        one = m(x[1:2])
    for f in ("anomaly_logits", "conf_logits", "noiseprint", "pooled", "det_logit"):
        assert torch.allclose(getattr(both, f)[1], getattr(one, f)[0], atol=F64_PATHS_ATOL, rtol=0), f
    assert not torch.allclose(both.anomaly_logits[0], one.anomaly_logits[0])  # the two images differ


def test_input_dtype_must_match_model(tiny):
    with pytest.raises(ValueError, match="float64 differs from the model's torch.float32"):
        tiny(torch.rand(1, 3, 40, 56, dtype=torch.float64))
    rgb = np.zeros((40, 56, 3), np.uint8)
    rgb[1, 2] = (255, 128, 1)
    x = to_model_input(rgb, dtype=torch.float64)
    assert x.dtype == torch.float64 and x[0, :, 1, 2].tolist() == [255 / 256, 0.5, 1 / 256]


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_bounded_path_is_exact_in_float64(tiny, attention):
    """Tiles, chunks and bands compute the same function: identical up to float64 rounding."""
    m = TruFor(TruForConfig.tiny()).eval().double()
    m.load_state_dict(tiny.state_dict())
    x = torch.rand(1, 3, 61, 83, dtype=torch.float64)
    forced = EvalConfig(attention=attention, attn_block_elems=256, mlp_block_elems=600, dncnn_tile=16,
                        decoder_block_elems=3000)
    with torch.no_grad():
        a = m(x, EvalConfig.naive())
        b = m(x, forced)
    for f in ("anomaly_logits", "conf_logits", "noiseprint", "pooled", "det_logit", "anomaly_logits_lowres"):
        assert torch.allclose(getattr(a, f), getattr(b, f), atol=F64_PATHS_ATOL, rtol=0), f


def test_bounded_path_really_chunks(tiny, monkeypatch):
    """The forced settings do split the work (otherwise the exactness test proves nothing)."""
    calls = {"dncnn": 0}
    orig = type(tiny.dncnn).forward

    def counting(self, x):
        calls["dncnn"] += 1
        return orig(self, x)

    monkeypatch.setattr(type(tiny.dncnn), "forward", counting)
    with torch.no_grad():
        tiny(torch.rand(1, 3, 61, 83), FORCED)
    assert calls["dncnn"] == 4 * 6  # ceil(61/16) x ceil(83/16) tiles


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (17, 27)), ((1, 3), (4, 9)), ((9, 9), (33, 35))])
def test_upsample_band_matches_interpolate(in_hw, out_hw):
    torch.manual_seed(1)
    proj = MLP(6, 4).double()
    feat = torch.randn(2, 6, *in_hw, dtype=torch.float64)
    full = F.interpolate(proj(feat), size=out_hw, mode="bilinear", align_corners=False)
    for r0, r1 in ((0, 1), (0, out_hw[0]), (1, out_hw[0] - 1), (out_hw[0] - 1, out_hw[0])):
        band = upsample_band(proj, feat, out_hw, r0, r1)
        assert torch.allclose(band, full[:, :, r0:r1], atol=F64_PATHS_ATOL, rtol=0), (r0, r1)


def test_min_side_and_too_small_error(tiny):
    assert min_image_side(TruForConfig()) == 29
    with torch.no_grad():
        tiny(torch.rand(1, 3, 29, 40))
        with pytest.raises(ImageTooSmallError, match="28x40"):
            tiny(torch.rand(1, 3, 28, 40))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(torch.rand(1, 4, 64, 64))


def test_config_validation():
    with pytest.raises(ValueError, match="attention"):
        EvalConfig(attention="flash")
    with pytest.raises(ValueError, match="dncnn_tile"):
        EvalConfig(dncnn_tile=0)
    with pytest.raises(ValueError, match="variant"):
        TruForConfig.official("other")
    with pytest.raises(ValueError, match="divisible"):
        TruForConfig(embed_dims=(10, 32, 48, 64), num_heads=(3, 1, 1, 1))


# ---- checkpoints -----------------------------------------------------------------------------


def test_map_official_state_dict_variants():
    sd = {"a.weight": torch.zeros(1)}
    assert map_official_state_dict({"state_dict": sd, "epoch": 3}) == sd
    assert map_official_state_dict(sd) == sd
    assert list(map_official_state_dict({"module.a.weight": torch.zeros(1)})) == ["a.weight"]
    with pytest.raises(CheckpointError, match="state_dict"):
        map_official_state_dict({"epoch": 3})
    assert list(map_noiseprint_state_dict({"network": {"0.weight": torch.zeros(1)}, "global_step": 1})) == ["dncnn.0.weight"]


def test_strict_load_lists_missing_unexpected_and_shapes(tiny):
    sd = dict(tiny.state_dict())
    sd.pop("detection.0.weight")
    sd["backbone.bogus"] = torch.zeros(1)
    sd["detection.3.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as e:
        load_strict(TruFor(TruForConfig.tiny()), sd, "x.pth")
    msg = str(e.value)
    assert "detection.0.weight" in msg and "backbone.bogus" in msg and "detection.3.bias: file (5,) vs model (1,)" in msg


def test_official_layout_checkpoint_loads_with_weights_only(tiny, tmp_path):
    """The trainer's layout: epoch, best_value (numpy scalar), best_key, state_dict, optimizer."""
    path = tmp_path / "trufor.pth.tar"
    torch.save({"epoch": 81, "best_value": np.float64(0.87), "best_key": "avg_det_bacc",
                "state_dict": tiny.state_dict(),
                "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.005}]}},
               path)
    m, info = load_trufor(path, cfg=TruForConfig.tiny())
    assert not info.untrained and len(info.sha256) == 64
    assert torch.equal(m.detection[0].weight, tiny.detection[0].weight)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": io.StringIO("x")}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_torch_file(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_torch_file(tmp_path / "missing.pth")


def test_noiseprint_file_replaces_dncnn(tiny, tmp_path):
    ckpt, npf = tmp_path / "m.pth", tmp_path / "np.th"
    torch.save({"state_dict": tiny.state_dict()}, ckpt)
    new = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in tiny.dncnn.state_dict().items()}
    torch.save({"network": new, "global_step": 1}, npf)
    m, info = load_trufor(ckpt, noiseprint=npf, cfg=TruForConfig.tiny())
    assert torch.equal(m.dncnn[0].weight, new["0.weight"])
    assert info.noiseprint_sha256 and info.noiseprint_path == str(npf)
    torch.save({"network": {"99.weight": torch.zeros(1)}}, npf)
    with pytest.raises(CheckpointError, match="99.weight"):
        load_trufor(ckpt, noiseprint=npf, cfg=TruForConfig.tiny())


# ---- decoding ----------------------------------------------------------------------------------


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_drops_alpha_and_scales_by_256():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    rgb, fmt = decode_rgb(_png(rgba))
    assert fmt == "PNG" and rgb.shape == (4, 5, 3) and (rgb[..., 0] == 200).all()
    x = to_model_input(rgb)
    assert x.shape == (1, 3, 4, 5) and x.dtype == torch.float32 and float(x.max()) == 200 / 256


def _png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, LA, RGB or RGBA by channel count), written by hand: Pillow cannot."""
    import struct
    import zlib

    h, w, ch = arr.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[ch], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["png16-grey", "png16-la", "png16-rgb", "png16-rgba", "tiff16-rgb", "tiff-float"])
def test_high_bit_depth_is_refused_not_truncated(kind):
    """16-bit and float images that Pillow would open as 8-bit (keeping the high byte: 0..1023
    becomes 0..3) are refused with the reason; the bit depth comes from the file, not the mode."""
    import tifffile

    rng = np.random.default_rng(0)
    if kind.startswith("png16"):
        ch = {"grey": 1, "la": 2, "rgb": 3, "rgba": 4}[kind.split("-")[1]]
        data = _png16(rng.integers(0, 1024, (40, 48, ch)))
    else:
        buf = io.BytesIO()
        arr = rng.integers(0, 1024, (40, 48, 3)).astype(np.uint16) if kind == "tiff16-rgb" else rng.random((40, 48), np.float32)
        tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
        data = buf.getvalue()
    with pytest.raises(ImageDecodeError, match=r"\(more than 8 bits per sample, or float\) is not supported"):
        decode_rgb(data)
    # The same pictures at 8 bits decode.
    buf = io.BytesIO()
    tifffile.imwrite(buf, rng.integers(0, 256, (40, 48, 3)).astype(np.uint8), photometric="rgb")
    assert decode_rgb(buf.getvalue())[0].shape == (40, 48, 3)
    assert decode_rgb(_png(rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)))[0].shape == (40, 48, 3)


def test_decode_errors_are_clear(tmp_path):
    with pytest.raises(ImageDecodeError, match="allowed format"):
        decode_rgb(b"this is text, not an image")
    with pytest.raises(ImageDecodeError, match="allowed format"):
        decode_rgb(b"")
    jpg = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(jpg, format="JPEG")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_rgb(jpg.getvalue()[:300])
    with pytest.raises(ImageDecodeError, match="more than 8 bits per sample"):
        decode_rgb(_png(np.full((8, 8), 40000, np.uint16)))
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_rgb(_png(np.zeros((10, 10, 3), np.uint8)), max_pixels=99)
    ico = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ico, format="ICO")
    with pytest.raises(ImageDecodeError, match="allowed format"):
        decode_rgb(ico.getvalue())


def test_heic_decodes_to_the_8_bit_rgb_that_libheif_gives():
    """A phone's HEIC goes through pillow-heif's opener (registered on import) to the same 8-bit RGB
    that libheif decodes directly, close to the pixels that were encoded (lossy HEVC)."""
    import pillow_heif

    from trufor_core.image import decode_image

    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8)  # smooth: HEVC keeps it closely
    data = heic_bytes(rgb)
    img = decode_image(data)
    direct = np.asarray(pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False))
    assert img.format == "HEIF" and img.rgb.shape == (48, 64, 3) and img.rgb.dtype == np.uint8
    np.testing.assert_array_equal(img.rgb, direct)
    assert np.abs(img.rgb.astype(int) - rgb).mean() < 3.0


@pytest.mark.parametrize("bits", [10, 12])
def test_high_bit_depth_heic_is_refused(bits):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    with pytest.raises(ImageDecodeError, match=rf"{bits}-bit HEIF samples \(more than 8 bits per sample"):
        decode_rgb(heic_bytes(rgb, bits=bits))


_KERNEL_PROBE = """
import hashlib, torch
torch.manual_seed(0)
conv = torch.nn.Conv2d(64, 64, 3, padding=1)
x = torch.rand(1, 64, 48, 48)
with torch.no_grad():
    y = conv(x)
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(y.numpy().tobytes()).hexdigest())
"""


def test_other_kernel_variables_change_float32_results():
    """`make test` reruns the parity tiers under OTHER_KERNELS: it must really run other kernels.

    A float32 conv under ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default gives other bits than
    under the CPU's own choice (both probed in fresh processes, whatever this one runs under)."""
    import os
    import subprocess
    import sys

    other = {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}
    base = {k: v for k, v in os.environ.items() if k not in other}
    run = {name: subprocess.run([sys.executable, "-c", _KERNEL_PROBE], env=env, capture_output=True, text=True,
                                check=True, timeout=120).stdout.split()
           for name, env in (("own", base), ("other", {**base, **other}))}
    assert run["other"][0] == "DEFAULT" and run["own"][0] != "DEFAULT"
    assert run["other"][1] != run["own"][1]


def test_reduced_precision_autocasts_the_network_but_not_the_pooling(tiny, monkeypatch):
    """fp32 changes nothing (bitwise); bf16 runs the SegFormer convolutions/matmuls in bf16 while
    Noiseprint++, the upsampling, pooling and detection head stay float32; outputs are float32."""
    from trufor_core import pooling
    from trufor_core.model import autocast

    x = torch.rand(1, 3, 64, 80)
    with torch.inference_mode():
        ref = tiny(x)
        with autocast("cpu", "fp32"):
            same = tiny(x)
    assert torch.equal(ref.det_logit, same.det_logit) and torch.equal(ref.anomaly_logits, same.anomaly_logits)
    seen = []
    real = pooling.weighted_statistics_pooling
    monkeypatch.setattr(pooling, "weighted_statistics_pooling",
                        lambda v, w=None: seen.append((v.dtype, None if w is None else w.dtype)) or real(v, w))
    with torch.inference_mode(), autocast("cpu", "bf16"):
        low = tiny(x)
    assert seen == [(torch.float32, None), (torch.float32, torch.float32)]  # the pooling saw float32
    for name in ("anomaly_logits", "conf_logits", "anomaly_logits_lowres", "pooled", "det_logit", "noiseprint"):
        assert getattr(low, name).dtype == torch.float32, name
    assert not torch.equal(low.anomaly_logits_lowres, ref.anomaly_logits_lowres)  # the network did run in bf16
    assert torch.equal(low.noiseprint, ref.noiseprint)  # ... but not the DnCNN
    assert torch.allclose(low.det_logit, ref.det_logit, atol=0.1)
    r = low.results()[0]
    assert r.anomaly_map.dtype == np.float32 and 0 <= r.score <= 1
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        autocast("cpu", "fp8")
