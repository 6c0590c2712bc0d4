"""All-MLP SegFormer decoder (``decode_head`` / ``decode_head_conf``), banded for large images."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EvalConfig
from .progress import step


class MLP(nn.Module):
    """Per-token linear projection of a feature map."""

    def __init__(self, input_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj(x.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, N, E)
        return y.permute(0, 2, 1).reshape(b, -1, h, w)  # (B, N, E) -> (B, E, h, w)


def _linear_taps(out_size: int, in_size: int, start: int, stop: int,
                 like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source taps and weights of ``interpolate(bilinear, align_corners=False)`` for outputs start..stop-1.

    Same arithmetic, in the input's dtype, as torch's kernel: src = max(scale * (dst + 0.5) - 0.5, 0).
    """
    scale = torch.tensor(in_size, dtype=like.dtype, device=like.device) / out_size
    dst = torch.arange(start, stop, dtype=like.dtype, device=like.device)
    src = torch.clamp(scale * (dst + 0.5) - 0.5, min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = torch.clamp(i0 + 1, max=in_size - 1)
    lam1 = src - i0.to(like.dtype)
    return i0, i1, lam1


def upsample_band(project: nn.Module, feat: torch.Tensor, size: tuple[int, int], r0: int, r1: int) -> torch.Tensor:
    """Rows r0..r1-1 of ``interpolate(project(feat), size, bilinear)`` without computing the rest.

    Only the source rows the band needs go through ``project`` (a per-token linear map), so the
    cost and memory follow the band, not the image.
    """
    out_h, out_w = size
    in_h, in_w = feat.shape[2:]
    i0, i1, lh = _linear_taps(out_h, in_h, r0, r1, feat)
    lo, hi = int(i0.min()), int(i1.max()) + 1
    src = project(feat[:, :, lo:hi])  # (B, E, rows needed, in_w)
    j0, j1, lw = _linear_taps(out_w, in_w, 0, out_w, feat)
    top, bot = src[:, :, i0 - lo], src[:, :, i1 - lo]  # (B, E, band rows, in_w)
    lh = lh.view(1, 1, -1, 1)
    rows = top * (1 - lh) + bot * lh
    lw = lw.view(1, 1, 1, -1)
    return rows[..., j0] * (1 - lw) + rows[..., j1] * lw  # (B, E, band rows, out_w)


class MLPDecoder(nn.Module):
    """Per-stage linear to ``embed``, upsample to stride 4, concat [c4, c3, c2, c1], fuse, predict."""

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, embed_dim: int, bn_eps: float):
        super().__init__()
        for i in reversed(range(len(in_channels))):  # c4 first, as in the official state dict
            setattr(self, f"linear_c{i + 1}", MLP(in_channels[i], embed_dim))
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(embed_dim * 4, embed_dim, 1),
            nn.BatchNorm2d(embed_dim, eps=bn_eps),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(0.1)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_pred(self.dropout(self.linear_fuse(x)))

    def forward(self, feats: list[torch.Tensor], ev: EvalConfig) -> torch.Tensor:
        """Logits at stride 4, shape (B, classes, h1, w1)."""
        c1, c2, c3, c4 = feats
        b, _, h1, w1 = c1.shape
        embed = self.linear_fuse[0].in_channels // 4
        size = (h1, w1)
        if ev.decoder_block_elems is None or b * h1 * w1 * 4 * embed <= ev.decoder_block_elems:
            ups = [F.interpolate(getattr(self, f"linear_c{i}")(c), size=size, mode="bilinear", align_corners=False)
                   for i, c in ((4, c4), (3, c3), (2, c2))]
            y = self._head(torch.cat(ups + [self.linear_c1(c1)], dim=1))
            step()
            return y
        # Everything after the upsampling is per pixel, so row bands give the same result.
        rows = max(1, ev.decoder_block_elems // (b * w1 * 4 * embed))
        out = c1.new_empty(b, self.linear_pred.out_channels, h1, w1)
        for r0 in range(0, h1, rows):
            r1 = min(h1, r0 + rows)
            parts = [upsample_band(getattr(self, f"linear_c{i}"), c, size, r0, r1) for i, c in ((4, c4), (3, c3), (2, c2))]
            parts.append(self.linear_c1(c1[:, :, r0:r1]))
            out[:, :, r0:r1] = self._head(torch.cat(parts, dim=1))
            step()
        return out
