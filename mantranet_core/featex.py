"""The image-manipulation-trace feature extractor (official ``create_featex_vgg16_base(type=2)``, "Featex").

A VGG-style stack at full resolution (no pooling, no stride): ``b1c1`` combines 4 free 5x5
filters, 9 fixed SRM filters and 3 Bayar-constrained filters; then 12 3x3 convs (32, 64, 64, 128 x3,
256 x3, 256 x2, all ReLU), a linear 3x3 ``transform`` and an L2 normalisation per pixel. Every conv
pads its input SYMMETRICALLY (``tf.pad(mode='symmetric')``: the edge pixel repeated) by k//2, then
runs VALID. Parameter names are the HDF5 file's (``Featex/b1c1/regular_kernel:0`` ->
``Featex.b1c1.regular_kernel``); kernels are stored in PyTorch's (out, in, kh, kw) layout.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (name, in, out, kernel): the convs after b1c1, in order (type 2: b1c1 has 16 outputs).
CONVS = (("b1c2", 16, 32), ("b2c1", 32, 64), ("b2c2", 64, 64), ("b3c1", 64, 128), ("b3c2", 128, 128),
         ("b3c3", 128, 128), ("b4c1", 128, 256), ("b4c2", 256, 256), ("b4c3", 256, 256), ("b5c1", 256, 256),
         ("b5c2", 256, 256), ("transform", 256, 256))
FEATEX_HALO = 2 + len(CONVS)  # pixels of context one output pixel reads on each side (5x5 then twelve 3x3)
L2_EPS = 1e-12  # tf.linalg.l2_normalize's epsilon (on the squared norm)


def symmetric_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """numpy/TF 'symmetric' padding of the last two dims by ``p``: ``[x1 x0 | x0 x1 ... | xn xn-1]``.

    For p = 1 that is replicate padding (PyTorch's own, faster); for p = 2 it is neither replicate nor
    reflect, so the rows/columns are gathered by index (numpy computes the index, any size, even 1).
    """
    if p == 1:
        return F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = torch.from_numpy(np.pad(np.arange(x.shape[-2]), p, mode="symmetric")).to(x.device)
    cols = torch.from_numpy(np.pad(np.arange(x.shape[-1]), p, mode="symmetric")).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def srm_kernel(dtype: torch.dtype) -> torch.Tensor:
    """The 9 fixed SRM filters as (9, 3, 5, 5): output 3*s + c is SRM filter s on input channel c only.

    Built in float32 as the official code does (``_get_srm_list``), then cast: a float64 model uses
    the float32-rounded values, as the float64 reference does."""
    srm1 = np.zeros((5, 5), np.float32)
    srm1[1:-1, 1:-1] = np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], np.float32)
    srm1 /= 4.0
    srm2 = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
                     [-1, 2, -2, 2, -1]], np.float32) / np.float32(12.0)
    srm3 = np.zeros((5, 5), np.float32)
    srm3[2, 1:-1] = np.array([1, -2, 1], np.float32)
    srm3 /= 2.0
    k = np.zeros((9, 3, 5, 5), np.float32)
    for s, srm in enumerate((srm1, srm2, srm3)):
        for c in range(3):
            k[3 * s + c, c] = srm
    return torch.from_numpy(k).to(dtype)


class CombinedConv2D(nn.Module):
    """``b1c1``: [4 free | 9 SRM | 3 Bayar] 5x5 filters concatenated on the output axis, no bias.

    The Bayar filters are used as stored: Keras applies ``BayarConstraint`` after each training step,
    never at inference, so a trained file holds them constrained (``bayar_violation`` measures it)."""

    def __init__(self, free: int = 4):
        super().__init__()
        self.regular_kernel = nn.Parameter(torch.zeros(free, 3, 5, 5))  # (out, in, kh, kw)
        self.bayar_kernel = nn.Parameter(torch.zeros(3, 3, 5, 5))
        # float32 values; casting the model to float64 casts them exactly, as the float64 reference does
        self.register_buffer("srm", srm_kernel(torch.float32), persistent=False)

    def kernel(self) -> torch.Tensor:
        return torch.cat([self.regular_kernel, self.srm, self.bayar_kernel], 0)  # (16, 3, 5, 5)

    def bayar_violation(self) -> float:
        """Largest departure from the Bayar constraint (centre -1, the other 24 taps of each filter and
        input channel summing to 1) in the loaded weights."""
        k = self.bayar_kernel.detach().double()
        centre = k[:, :, 2, 2]
        rest = k.sum((2, 3)) - centre
        return max((centre + 1).abs().max().item(), (rest - 1).abs().max().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(symmetric_pad(x, 2), self.kernel()))


class Conv2DSymPadding(nn.Module):
    """3x3 conv with symmetric (= replicate, for 3x3) padding and a bias."""

    def __init__(self, cin: int, cout: int, relu: bool = True):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(symmetric_pad(x, 1), self.kernel, self.bias)
        return F.relu(y) if self.relu else y


class Featex(nn.Module):
    """(N, 3, H, W) in [-1, 1] -> (N, 256, H, W) unit-norm features per pixel."""

    def __init__(self):
        super().__init__()
        self.b1c1 = CombinedConv2D()
        for name, cin, cout in CONVS:
            setattr(self, name, Conv2DSymPadding(cin, cout, relu=name != "transform"))  # transform: linear (type 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b1c1(x)
        for name, _, _ in CONVS:
            x = getattr(self, name)(x)
        # tf.linalg.l2_normalize: x * rsqrt(max(sum(x^2), eps))
        return x * torch.rsqrt(torch.clamp((x * x).sum(1, keepdim=True), min=L2_EPS))
