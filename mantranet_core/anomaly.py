"""The local anomaly detector of ManTra-Net (official ``create_manTraNet_model``, after Featex).

``outlierTrans`` (1x1 conv 256 -> 64, no bias; unit-norm columns as stored) -> ``bnorm``
(BatchNorm without centre/scale, eps 1e-3, inference statistics) -> two branches: ``glbStd`` (the
per-channel population std over the image, at least 1e-6 + ``min_std``) and the nested window
deviations (the mean of each 7x7, 15x15, 31x31 window over its in-image pixels, then the whole
image's mean, minus the pixel: four "time steps") -> |deviation / std| -> ``cLSTM`` (ConvLSTM2D,
8 filters, 7x7, zero 'same' padding, hard-sigmoid gates i, f, c, o) over the four steps -> ``pred``
(7x7 conv, 'same' zero padding) -> logits; the mask is their sigmoid.

Parameter names are the HDF5 file's (``cLSTM/cLSTM/kernel:0`` -> ``cLSTM.kernel``); kernels in
PyTorch's (out, in, kh, kw) layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WINDOWS = (7, 15, 31)  # Ptrain4's window_size_list; the global mean is the fourth step
BN_EPS = 1e-3  # Keras BatchNormalization's default epsilon
MIN_STD_VAL = 1e-5  # GlobalStd2D's min_std_val: the floor is min_std_val / 10 + min_std
FEATURES = 64  # outlierTrans outputs
LSTM_FILTERS = 8
LSTM_KERNEL = 7
PRED_KERNEL = 7


class OutlierTrans(nn.Module):
    """1x1 conv 256 -> 64 without bias (Keras ``unit_norm(axis=-2)`` holds for a trained file)."""

    def __init__(self, cin: int = 256, cout: int = FEATURES):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(cout, cin, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel)


class BNorm(nn.Module):
    """BatchNormalization(center=False, scale=False) at inference: (x - mean) / sqrt(var + 1e-3)."""

    def __init__(self, c: int = FEATURES):
        super().__init__()
        self.register_buffer("moving_mean", torch.zeros(c))
        self.register_buffer("moving_variance", torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.moving_mean.view(1, -1, 1, 1)  # (1, C, 1, 1)
        inv = torch.rsqrt(self.moving_variance + BN_EPS).view(1, -1, 1, 1)
        return (x - mean) * inv


class GlobalStd(nn.Module):
    """``GlobalStd2D``: max(population std over H, W, min_std_val / 10 + min_std), per image and channel."""

    def __init__(self, c: int = FEATURES):
        super().__init__()
        self.min_std = nn.Parameter(torch.zeros(c))

    def forward(self, std: torch.Tensor) -> torch.Tensor:
        """(N, C) std -> (N, C) floored std."""
        return torch.maximum(std, MIN_STD_VAL / 10.0 + self.min_std)


def window_counts(n: int, start: int, length: int, half: int, device, dtype) -> torch.Tensor:
    """How many in-image positions (of ``n``) the window of half-width ``half`` centred on each of the
    positions ``start .. start+length-1`` covers. Exact integers: the official code gets the same from
    an integral image of ones (exact in float32 below 2^24 pixels)."""
    i = torch.arange(start, start + length, device=device)
    return ((i + half).clamp(max=n - 1) - (i - half).clamp(min=0) + 1).to(dtype)


def nested_deviations(x: torch.Tensor, mean: torch.Tensor, origin: tuple[int, int], image_hw: tuple[int, int],
                      windows: tuple[int, ...] = WINDOWS) -> torch.Tensor:
    """``NestedWindowAverageFeatExtrator(minus_original=True)`` over a region of the image.

    x: (N, C, h, w) the region of ``bnorm``'s output whose top-left pixel is ``origin`` in an image of
    ``image_hw``; mean: (N, C) the whole image's mean. Returns (N, T, C, h, w): for each window the mean
    over its in-image pixels minus x, then mean - x. As the official code: zeros padded by max//2 + 1, an
    integral image (cumsum over H, then W) in x's dtype, box sums ``ii[A] + ii[C] - ii[B] - ii[D]``.
    On a region smaller than the image, values within max//2 of a side that is not the image's border are
    wrong (the window is cut) and must be discarded by the caller (``model.HEAD_HALO``).
    """
    n, c, h, w = x.shape
    big = max(windows)
    p = big // 2 + 1
    ii = F.pad(x, (p, p, p, p)).cumsum(2).cumsum(3)  # (N, C, h + 2p, w + 2p)
    out = []
    for k in windows:
        top, left = big // 2 - k // 2, big // 2 - k // 2
        bot, right = top + k, left + k
        s = (ii[..., top:top + h, left:left + w] + ii[..., bot:bot + h, right:right + w]
             - ii[..., top:top + h, right:right + w] - ii[..., bot:bot + h, left:left + w])
        rows = window_counts(image_hw[0], origin[0], h, k // 2, x.device, x.dtype).view(h, 1)  # (h, 1)
        cols = window_counts(image_hw[1], origin[1], w, k // 2, x.device, x.dtype).view(1, w)  # (1, w)
        out.append(s / (rows * cols) - x)
    out.append(mean.view(n, c, 1, 1) - x)
    return torch.stack(out, 1)  # (N, T, C, h, w)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2's hard_sigmoid: clip(0.2 x + 0.5, 0, 1) (not PyTorch's hardsigmoid, x / 6 + 0.5)."""
    return torch.clamp(x * 0.2 + 0.5, 0.0, 1.0)


class ConvLSTM(nn.Module):
    """``ConvLSTM2D(8, (7, 7), padding='same', activation='tanh', recurrent_activation='hard_sigmoid')``
    returning the last hidden state; gates in the kernels' output order i, f, c, o; bias on the input conv."""

    def __init__(self, cin: int = FEATURES, filters: int = LSTM_FILTERS, k: int = LSTM_KERNEL):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(4 * filters, cin, k, k))
        self.recurrent_kernel = nn.Parameter(torch.zeros(4 * filters, filters, k, k))
        self.bias = nn.Parameter(torch.zeros(4 * filters))
        self.filters, self.pad = filters, k // 2

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N, filters, H, W)."""
        n, t, c, h, w = seq.shape
        xs = F.conv2d(seq.reshape(n * t, c, h, w), self.kernel, self.bias, padding=self.pad)  # (N*T, 4F, H, W)
        xs = xs.view(n, t, 4 * self.filters, h, w)  # (N, T, 4F, H, W)
        hid = cell = None
        for step in range(t):
            z = xs[:, step]
            if hid is not None:  # h0 = 0: its recurrent conv is 0
                z = z + F.conv2d(hid, self.recurrent_kernel, padding=self.pad)
            zi, zf, zc, zo = z.split(self.filters, 1)  # (N, F, H, W) each
            i, f, o = hard_sigmoid(zi), hard_sigmoid(zf), hard_sigmoid(zo)
            cell = i * torch.tanh(zc) if cell is None else f * cell + i * torch.tanh(zc)
            hid = o * torch.tanh(cell)
        return hid


class Pred(nn.Module):
    """``Conv2D(1, (7, 7), padding='same')``; the sigmoid is applied by the caller (logits kept)."""

    def __init__(self, cin: int = LSTM_FILTERS, k: int = PRED_KERNEL):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(1, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel, self.bias, padding=self.kernel.shape[-1] // 2)
