"""Noiseprint++: the 17-layer DnCNN camera-fingerprint extractor (module ``dncnn``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .progress import step


class DnCNN(nn.Sequential):
    """Plain DnCNN without residual connection, indexed like the official ``nn.Sequential``.

    Layout: 0 conv(bias), 1 ReLU; layer i in 1..depth-2 at 3i-1 conv(no bias), 3i BN, 3i+1 ReLU;
    the last conv (bias, linear) at 3*(depth-2)+2 (= 47 for depth 17).
    """

    def __init__(self, depth: int = 17, features: int = 64, in_channels: int = 3, out_channels: int = 1):
        if depth < 2:
            raise ValueError(f"DnCNN depth must be >= 2, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(features, features, 3, padding=1, bias=False),
                nn.BatchNorm2d(features, eps=1e-5, momentum=0.1),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(features, out_channels, 3, padding=1, bias=True))
        super().__init__(*layers)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, H, W). Training: layer by layer, as ``nn.Sequential``. Evaluation:
        the same function computed faster (``forward_eval``)."""
        return super().forward(x) if self.training else self.forward_eval(x)

    def forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation-mode DnCNN with each BatchNorm folded into the conv before it, on channels-last
        activations.

        BN(conv(x, w)) = conv(x, w * s) + (beta - mean * s), s = gamma / sqrt(var + eps): the same
        function with one pass over the activations less per layer; channels-last is oneDNN's native
        layout (no reorder around each conv). Together 1.9x faster on a 2-core AVX-512 CPU at 1 MP
        (BENCHMARKS.md, "Where CPU time goes"). Only the rounding moves: ~1e-12 on the float64 noiseprint (the
        official-exactness tolerance is 1e-10), float32 within the cross-kernel tolerances.
        """
        layers = list(self)
        y = x.contiguous(memory_format=torch.channels_last)
        i = 0
        while i < len(layers):
            conv = layers[i]
            w, b = conv.weight, conv.bias
            if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
                bn = layers[i + 1]
                s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w = w * s.view(-1, 1, 1, 1)
                b = bn.bias - bn.running_mean * s + (0 if b is None else b * s)
                i += 1
            y = F.conv2d(y, w.contiguous(memory_format=torch.channels_last), b, padding=conv.padding)
            if i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU):
                y = F.relu(y)
                i += 1
            i += 1
        return y.contiguous()  # (B, out, H, W) in the default layout for the caller

    @property
    def halo(self) -> int:
        """Receptive-field radius in pixels: one per 3x3 conv."""
        return self.depth

    def forward_tiled(self, x: torch.Tensor, tile: int | None) -> torch.Tensor:
        """Evaluate tile by tile with a halo, giving the whole-image result in bounded memory.

        Each tile is computed on the input extended by ``halo`` pixels (clipped at the image
        border, where the zero padding is the same as in the whole-image pass) and cropped back,
        so every kept pixel saw exactly the inputs it sees in the whole-image pass.
        """
        b, _, h, w = x.shape
        if tile is None or (h <= tile and w <= tile):
            y = self(x)
            step()
            return y
        halo = self.halo
        out = x.new_empty(b, self[-1].out_channels, h, w)
        for r0 in range(0, h, tile):
            r1 = min(h, r0 + tile)
            a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
            for c0 in range(0, w, tile):
                c1 = min(w, c0 + tile)
                b0, b1 = max(0, c0 - halo), min(w, c1 + halo)
                y = self(x[:, :, a0:a1, b0:b1])
                out[:, :, r0:r1, c0:c1] = y[:, :, r0 - a0:r1 - a0, c0 - b0:c1 - b0]
                step()
        return out
