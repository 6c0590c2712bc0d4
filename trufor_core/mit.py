"""Mix Transformer (SegFormer MiT) parts, with chunked attention and a banded MixFFN."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EvalConfig
from .progress import step


class OverlapPatchEmbed(nn.Module):
    """Strided conv then LayerNorm (eps 1e-5); returns tokens and the new grid size."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        return self.norm(x), h, w


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, ev: EvalConfig) -> torch.Tensor:
    """softmax(q k^T * scale) v over (B, heads, N, d), in query chunks of bounded size."""
    b, heads, n, _ = q.shape
    nk = k.shape[2]
    if ev.attn_block_elems is None or b * heads * n * nk <= ev.attn_block_elems:
        chunk = n
    else:
        chunk = max(1, ev.attn_block_elems // (b * heads * nk))
    outs = []
    for s in range(0, n, chunk):
        qc = q[:, :, s:s + chunk]
        if ev.attention == "sdpa":
            outs.append(F.scaled_dot_product_attention(qc, k, v, scale=scale))
        else:
            attn = (qc @ k.transpose(-2, -1)) * scale
            outs.append(attn.softmax(dim=-1) @ v)
        step()
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


class Attention(nn.Module):
    """Efficient self-attention with spatial reduction of keys/values (sr conv + LN eps 1e-5)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, dim * 2, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, h: int, w: int, ev: EvalConfig) -> torch.Tensor:
        b, n, c = x.shape
        hd = c // self.num_heads
        q = self.q(x).reshape(b, n, self.num_heads, hd).permute(0, 2, 1, 3)  # (B, heads, N, hd)
        if self.sr_ratio > 1:
            x_ = x.transpose(1, 2).reshape(b, c, h, w)  # tokens -> map (B, C, h, w)
            x_ = self.sr(x_).reshape(b, c, -1).transpose(1, 2)  # (B, Nk, C)
            x_ = self.norm(x_)
        else:
            x_ = x
        kv = self.kv(x_).reshape(b, -1, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4)  # (2, B, heads, Nk, hd)
        out = attend(q, kv[0], kv[1], self.scale, ev)
        out = out.transpose(1, 2).reshape(b, n, c)  # (B, heads, N, hd) -> (B, N, C)
        return self.proj(out)


class DWConv(nn.Module):
    """Depthwise 3x3 conv on tokens laid out as an (h, w) grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, h, w)  # (B, N, C) -> (B, C, h, w)
        return self.dwconv(x).flatten(2).transpose(1, 2)  # -> (B, N, C)


class Mlp(nn.Module):
    """MixFFN: fc1, depthwise 3x3, exact GELU, fc2; evaluated in row bands when large."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def _run(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))

    def forward(self, x: torch.Tensor, h: int, w: int, ev: EvalConfig) -> torch.Tensor:
        b, n, c = x.shape
        hidden = self.fc1.out_features
        if ev.mlp_block_elems is None or b * n * hidden <= ev.mlp_block_elems:
            y = self._run(x, h, w)
            step()
            return y
        # The 3x3 depthwise conv reads one row above and below: a band computed with a one-row
        # halo (clipped at the image edge, where zero padding applies as before) is exact.
        rows = max(1, ev.mlp_block_elems // (b * w * hidden))
        grid = x.reshape(b, h, w, c)  # (B, N, C) -> (B, h, w, C)
        out = x.new_empty(b, h, w, self.fc2.out_features)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            a0, a1 = max(0, r0 - 1), min(h, r1 + 1)
            band = grid[:, a0:a1].reshape(b, (a1 - a0) * w, c)  # (B, band rows*w, C)
            y = self.act(self.dwconv(self.fc1(band), a1 - a0, w))
            y = y.reshape(b, a1 - a0, w, hidden)[:, r0 - a0:r1 - a0]  # (B, rows, w, hidden)
            out[:, r0:r1] = self.fc2(y)
            step()
        return out.reshape(b, n, -1)  # (B, h, w, C) -> (B, N, C)


class Block(nn.Module):
    """Pre-norm transformer block (LN eps 1e-6)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int, ev: EvalConfig) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w, ev)
        return x + self.mlp(self.norm2(x), h, w, ev)
