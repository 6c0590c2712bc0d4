"""Dual-branch MiT encoder (RGB + Noiseprint++) with FRM/FFM after every stage (``backbone``)."""
from __future__ import annotations

import torch
from torch import nn

from .config import EvalConfig, TruForConfig
from .fusion import FFM, FRM
from .mit import Block, OverlapPatchEmbed


class DualMiT(nn.Module):
    """Two MiT stacks: ``patch_embedN/blockN/normN`` (RGB) and ``extra_*`` (Noiseprint++)."""

    def __init__(self, cfg: TruForConfig):
        super().__init__()
        dims = cfg.embed_dims
        # Registration order = the official state-dict order: all patch embeds, then per stage
        # the RGB blocks and norm, then the extra ones.
        for prefix in ("", "extra_"):
            for i in range(4):
                k, s = (7, 4) if i == 0 else (3, 2)
                setattr(self, f"{prefix}patch_embed{i + 1}", OverlapPatchEmbed(3 if i == 0 else dims[i - 1], dims[i], k, s))
        for i in range(4):
            for prefix in ("", "extra_"):
                setattr(self, f"{prefix}block{i + 1}", nn.ModuleList(
                    Block(dims[i], cfg.num_heads[i], cfg.mlp_ratio, cfg.sr_ratios[i]) for _ in range(cfg.depths[i])))
                setattr(self, f"{prefix}norm{i + 1}", nn.LayerNorm(dims[i], eps=1e-6))
        self.FRMs = nn.ModuleList(FRM(dims[i]) for i in range(4))
        self.FFMs = nn.ModuleList(FFM(dims[i], cfg.num_heads[i]) for i in range(4))

    def _stage(self, prefix: str, i: int, x: torch.Tensor, ev: EvalConfig) -> torch.Tensor:
        b = x.shape[0]
        t, h, w = getattr(self, f"{prefix}patch_embed{i}")(x)
        for blk in getattr(self, f"{prefix}block{i}"):
            t = blk(t, h, w, ev)
        t = getattr(self, f"{prefix}norm{i}")(t)
        return t.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # (B, N, C) -> (B, C, h, w)

    def forward(self, x_rgb: torch.Tensor, x_np: torch.Tensor, ev: EvalConfig) -> list[torch.Tensor]:
        """Returns the four fused feature maps (B, C_i, h_i, w_i) at strides 4, 8, 16, 32."""
        outs = []
        for i in range(4):
            x_rgb = self._stage("", i + 1, x_rgb, ev)
            x_np = self._stage("extra_", i + 1, x_np, ev)
            # The rectified features feed both the fusion (decoder input) and the next stage.
            x_rgb, x_np = self.FRMs[i](x_rgb, x_np)
            outs.append(self.FFMs[i](x_rgb, x_np))
        return outs
