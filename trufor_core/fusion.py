"""CMX cross-modal fusion: feature rectification (FRM) and feature fusion (FFM) modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelWeights(nn.Module):
    """Per-channel gates from [avg | max] pooling of both branches."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim * 4, dim * 4), nn.ReLU(inplace=True), nn.Linear(dim * 4, dim * 2), nn.Sigmoid())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b = x1.shape[0]
        x = torch.cat((x1, x2), dim=1)
        pooled = torch.cat((F.adaptive_avg_pool2d(x, 1).view(b, -1), F.adaptive_max_pool2d(x, 1).view(b, -1)), dim=1)  # (B, 4C): [avg | max]
        y = self.mlp(pooled)
        return y.reshape(b, 2, self.dim, 1, 1).permute(1, 0, 2, 3, 4)  # (2, B, C, 1, 1)


class SpatialWeights(nn.Module):
    """Per-pixel gates from 1x1 convs over both branches."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(dim * 2, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, 2, 1), nn.Sigmoid())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x1.shape
        y = self.mlp(torch.cat((x1, x2), dim=1))
        return y.reshape(b, 2, 1, h, w).permute(1, 0, 2, 3, 4)  # (2, B, 1, h, w)


class FRM(nn.Module):
    """Feature rectification: each branch gets 0.5 * (channel + spatial) gated copies of the other."""

    def __init__(self, dim: int):
        super().__init__()
        self.channel_weights = ChannelWeights(dim)
        self.spatial_weights = SpatialWeights(dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cw = self.channel_weights(x1, x2)
        sw = self.spatial_weights(x1, x2)
        out1 = x1 + 0.5 * cw[1] * x2 + 0.5 * sw[1] * x2
        out2 = x2 + 0.5 * cw[0] * x1 + 0.5 * sw[0] * x1
        return out1, out2


class CrossAttention(nn.Module):
    """Efficient cross attention: each branch queries the other's (d x d) context per head."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.kv1 = nn.Linear(dim, dim * 2, bias=False)
        self.kv2 = nn.Linear(dim, dim * 2, bias=False)

    def _context(self, kv: nn.Linear, u: torch.Tensor) -> torch.Tensor:
        b, n, c = u.shape
        k, v = kv(u).reshape(b, n, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # 2 x (B, heads, N, hd)
        return ((k.transpose(-2, -1) @ v) * self.scale).softmax(dim=-2)  # (B, heads, hd, hd)

    def forward(self, u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = u1.shape
        hd = c // self.num_heads
        ctx1 = self._context(self.kv1, u1)
        ctx2 = self._context(self.kv2, u2)
        q1 = u1.reshape(b, n, self.num_heads, hd).permute(0, 2, 1, 3)  # (B, heads, N, hd)
        q2 = u2.reshape(b, n, self.num_heads, hd).permute(0, 2, 1, 3)
        out1 = (q1 @ ctx2).permute(0, 2, 1, 3).reshape(b, n, c)  # -> (B, N, C), head-major
        out2 = (q2 @ ctx1).permute(0, 2, 1, 3).reshape(b, n, c)
        return out1, out2


class CrossPath(nn.Module):
    """Token-level exchange between the branches (LN eps 1e-5)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.channel_proj1 = nn.Linear(dim, dim * 2)
        self.channel_proj2 = nn.Linear(dim, dim * 2)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.end_proj1 = nn.Linear(dim * 2, dim)
        self.end_proj2 = nn.Linear(dim * 2, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1, u1 = torch.relu(self.channel_proj1(x1)).chunk(2, dim=-1)
        y2, u2 = torch.relu(self.channel_proj2(x2)).chunk(2, dim=-1)
        v1, v2 = self.cross_attn(u1, u2)
        out1 = self.norm1(x1 + self.end_proj1(torch.cat((y1, v1), dim=-1)))
        out2 = self.norm2(x2 + self.end_proj2(torch.cat((y2, v2), dim=-1)))
        return out1, out2


class ChannelEmbed(nn.Module):
    """Merge 2C channels to C: 1x1 residual + (1x1, dw3x3, ReLU, 1x1, BN), then BN (eps 1e-5)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.residual = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=True, groups=out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1, bias=True),
            nn.BatchNorm2d(out_channels, eps=1e-5),
        )
        self.norm = nn.BatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = x.permute(0, 2, 1).reshape(b, c, h, w)  # (B, N, 2C) -> (B, 2C, h, w)
        return self.norm(self.residual(x) + self.channel_embed(x))


class FFM(nn.Module):
    """Feature fusion of a stage's two rectified branches into the decoder's feature map."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.cross = CrossPath(dim, num_heads)
        self.channel_emb = ChannelEmbed(dim * 2, dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x1.shape
        t1 = x1.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, N, C)
        t2 = x2.flatten(2).transpose(1, 2)
        t1, t2 = self.cross(t1, t2)
        return self.channel_emb(torch.cat((t1, t2), dim=-1), h, w)
