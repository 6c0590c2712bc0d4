"""Fast tier: the compiled backends (OpenVINO), progress steps, the time budget, decompression bombs."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tolerances import F32_ATOL
from trufor_core.backends import BackendError, Runner, choose, make_runner
from trufor_core.config import EvalConfig, TruForConfig
from trufor_core.image import ImageDecodeError, decode_image
from trufor_core.model import TruFor
from trufor_core.progress import OutOfTime, Watch, count_steps, on_step

# The bounded-memory path with limits small enough to split tiny images into many steps.
FORCED = EvalConfig(attn_block_elems=4096, mlp_block_elems=50_000, dncnn_tile=128, decoder_block_elems=200_000)


@pytest.fixture(scope="module")
def tiny() -> TruFor:
    torch.manual_seed(0)
    return TruFor(TruForConfig.tiny()).eval()


@pytest.fixture(scope="module")
def ov(tiny, tmp_path_factory):
    return make_runner(tiny, "openvino", "tiny-test", cache=tmp_path_factory.mktemp("ov"))


@pytest.mark.parametrize("shape", [(2, 3, 333, 517), (1, 3, 64, 65), (1, 3, 97, 40)])
def test_openvino_matches_eager(tiny, ov, shape):
    """One graph for every batch size and image shape (no conversion per shape), eager's outputs to float32
    rounding: the compiled graph is the same function (the parity tier checks it against the official outputs)."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.inference_mode():
        got, path = ov(x, EvalConfig())
        ref = tiny(x, EvalConfig())
    assert path.startswith("openvino ")
    for f in ("anomaly_logits", "conf_logits", "noiseprint", "pooled", "det_logit"):
        a, b = getattr(got, f), getattr(ref, f)
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32, f
        assert (a - b).abs().max().item() <= F32_ATOL["anomaly_logits"], f


def test_openvino_cache_is_used_and_checked(tiny, tmp_path):
    said = []
    make_runner(tiny, "openvino", "k", cache=tmp_path, log=said.append)
    assert len(said) == 1 and "converting" in said[0]
    make_runner(tiny, "openvino", "k", cache=tmp_path, log=said.append)
    assert len(said) == 1  # the cached conversion, no second one
    # An edited cached graph is not trusted: its checksum fails and it is converted again.
    xml = next(tmp_path.glob("*.xml"))
    xml.write_text(xml.read_text().replace("<net ", "<net edited=\"1\" ", 1))
    make_runner(tiny, "openvino", "k", cache=tmp_path, log=said.append)
    assert len(said) == 2
    # Other weights, another conversion.
    make_runner(tiny, "openvino", "other weights", cache=tmp_path, log=said.append)
    assert len(said) == 3


def test_backend_choice_refuses_what_cannot_run():
    cpu = torch.device("cpu")
    assert choose("auto", cpu, torch.float32, "fp32") == "openvino"
    assert choose("auto", cpu, torch.float64, "fp32") == "eager"  # float64 exactness stays eager
    assert choose("auto", cpu, torch.float32, "bf16") == "eager"  # Noiseprint++ stays float32 (autocast)
    assert choose("auto", torch.device("cuda"), torch.float32, "fp32") == "eager"
    for dtype, prec, dev in ((torch.float64, "fp32", cpu), (torch.float32, "bf16", cpu),
                             (torch.float32, "fp32", torch.device("cuda"))):
        with pytest.raises(BackendError, match="openvino backend runs float32 fp32 on the CPU only"):
            choose("openvino", dev, dtype, prec)
    with pytest.raises(BackendError, match="unknown backend"):
        choose("tensorrt", cpu, torch.float32, "fp32")


def test_openvino_refused_where_it_fails(monkeypatch):
    """Measured: OpenVINO's CPU plugin fails under oneDNN's SSE4.1 limit (its layer norm): auto is eager
    there, and an explicit openvino is one clear line, not an error row per image."""
    cpu = torch.device("cpu")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    assert choose("auto", cpu, torch.float32, "fp32") == "eager"
    with pytest.raises(BackendError, match="ONEDNN_MAX_CPU_ISA=SSE41 .OpenVINO's CPU plugin needs at least AVX."):
        choose("openvino", cpu, torch.float32, "fp32")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert choose("auto", cpu, torch.float32, "fp32") == "openvino"


def test_large_images_take_the_bounded_path(tiny, ov):
    """Over the compiled graph's pixel limit, the eager bounded-memory path runs, and says so."""
    x = torch.rand(1, 3, 64, 96)
    assert ov.steps(x, FORCED) == 1
    limit, ov.max_pixels = ov.max_pixels, 5000
    try:
        with torch.inference_mode():
            out, path = ov(x, FORCED)
            ref = tiny(x, FORCED)
        assert path == "eager (bounded: over 5000 px)"
        assert torch.equal(out.det_logit, ref.det_logit)
        assert ov.steps(x, FORCED) == count_steps(tiny.cfg, FORCED, 1, 64, 96) > 1
    finally:
        ov.max_pixels = limit


@pytest.mark.parametrize("ev", [EvalConfig(), EvalConfig.naive(), FORCED], ids=["default", "naive", "forced"])
@pytest.mark.parametrize("bhw", [(1, 333, 517), (2, 64, 65), (1, 200, 900), (1, 31, 1030)])
def test_count_steps_matches_the_loops(tiny, ev, bhw):
    """Progress says "step k of N": N is computed before the forward by the loops' own arithmetic."""
    b, h, w = bhw
    seen = []
    with torch.inference_mode(), on_step(lambda: seen.append(1)):
        tiny(torch.rand(b, 3, h, w), ev)
    assert len(seen) == count_steps(tiny.cfg, ev, b, h, w)


def test_watch_reports_and_stops():
    now = [0.0]
    lines = []
    w = Watch(10, budget_s=5.0, report=lambda d, t, s: lines.append((d, t, s)), report_after_s=2.0, report_every_s=2.0,
              clock=lambda: now[0])
    for t in (0.5, 1.0, 2.5, 3.0, 4.6, 4.9):
        now[0] = t
        w()
    assert lines == [(3, 10, 2.5), (5, 10, 4.6)]  # after 2 s, then every 2 s
    now[0] = 5.2
    with pytest.raises(OutOfTime, match=r"stopped after 5 s at step 7/10 \(budget 5 s per image\)"):
        w()


def test_budget_stops_a_forward_between_steps(tiny):
    """The bounded path stops at the first step past the budget: nothing after it runs."""
    x = torch.rand(1, 3, 200, 300)
    total = count_steps(tiny.cfg, FORCED, 1, 200, 300)
    w = Watch(total, budget_s=0.0)
    with pytest.raises(OutOfTime) as e, torch.inference_mode():
        Runner(tiny)(x, FORCED, w)
    assert (e.value.done, e.value.total) == (1, total)


def test_openvino_budget_cancels_its_call(tiny, ov):
    w = Watch(1, budget_s=0.0)
    with pytest.raises(OutOfTime, match="step 0/1"), torch.inference_mode():
        ov(torch.rand(1, 3, 1024, 1024), EvalConfig(), w)
    with torch.inference_mode():  # the request is usable after a cancel
        assert ov(torch.rand(1, 3, 64, 64), EvalConfig())[1].startswith("openvino")


def test_decompression_bomb_refused_before_decoding(tmp_path: Path):
    """A 40 MP PNG of 40 KB (under the pixel limit) is refused from its header; a photo-like file is not; the
    issue's 88 MP PNG of 86 KB is over the pixel limit itself."""
    buf = io.BytesIO()
    Image.new("L", (8000, 5000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 50_000
    with pytest.raises(ImageDecodeError, match=r"8000x5000 = 40000000 pixels from a file of \d+ bytes .*"
                                               r"decompression bomb"):
        decode_image(buf.getvalue())
    huge = io.BytesIO()
    Image.new("L", (10000, 8800)).save(huge, "PNG")
    with pytest.raises(ImageDecodeError, match="88000000 pixels exceeds the limit of 50000000"):
        decode_image(huge.getvalue())
    (tmp_path / "bomb.png").write_bytes(buf.getvalue())
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(tmp_path / "bomb.png")
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(noisy, "PNG")
    assert decode_image(noisy.getvalue()).rgb.shape == (40, 60, 3)
