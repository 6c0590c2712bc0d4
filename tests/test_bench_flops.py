"""bench/flops.py counts what it claims, and the DnCNN's fast evaluation path computes the same function."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_flop_count_matches_the_dncnn_by_hand_and_counts_cpu_attention(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import flops

    from trufor_core import EvalConfig, load_trufor
    from trufor_core.checkpoint import write_synthetic_checkpoint

    model, _ = load_trufor(write_synthetic_checkpoint(tmp_path / "UNTRAINED.pth.tar"))
    x = torch.rand(1, 3, 64, 96)
    total, parts = flops.flops_by_part(model, x, EvalConfig())
    # 17 3x3 convs: 3 -> 64, 15 x 64 -> 64, 64 -> 1; 2 FLOPs per multiply-add per output pixel.
    assert parts["dncnn"] == 2 * 64 * 96 * 9 * (3 * 64 + 15 * 64 * 64 + 64 * 1)
    assert total >= sum(parts.values()) > parts["dncnn"]
    # MiT's attention runs on the CPU kernel torch's counter does not know: counted only through CPU_FLOPS.
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as plain:
        model(x, EvalConfig())
    assert parts["backbone"] > sum(plain.get_flop_counts()["TruFor.backbone"].values())


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_dncnn_eval_path_is_the_layer_by_layer_function(dtype, atol):
    """BN folded into the convs + channels-last (DnCNN.forward_eval) vs nn.Sequential layer by layer,
    with BN statistics far from identity so a folding mistake shows; training mode is untouched."""
    from trufor_core.noiseprint import DnCNN

    g = torch.Generator().manual_seed(0)
    net = DnCNN(depth=6, features=16).to(dtype)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(16, generator=g, dtype=dtype))
            m.running_var.copy_(torch.rand(16, generator=g, dtype=dtype) + 0.5)
            m.weight.data.copy_(torch.randn(16, generator=g, dtype=dtype))
            m.bias.data.copy_(torch.randn(16, generator=g, dtype=dtype))
    x = torch.rand(2, 3, 40, 56, generator=g, dtype=dtype)
    with torch.no_grad():
        net.eval()
        ref = torch.nn.Sequential.forward(net, x)
        got = net(x)
        assert got.is_contiguous() and got.shape == ref.shape
        assert (got - ref).abs().max().item() <= atol * max(1.0, ref.abs().max().item())
        net.train()
        assert torch.equal(net(x), torch.nn.Sequential.forward(net, x))
