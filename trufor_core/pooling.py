"""Confidence-weighted statistics pooling and the detection MLP (``detection``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import POOLED_FEATURE_NAMES  # noqa: F401 - re-exported: the pooled features' order


def weighted_statistics_pooling(x: torch.Tensor, log_w: torch.Tensor | None = None) -> torch.Tensor:
    """[softmin, softmax, mean, mean-square] of x (B, C, H, W) under weights softmax(log_w) over pixels.

    Returns (B, 4*C). ``log_w`` is (B, 1, H, W); None means uniform weights.
    """
    b, c = x.shape[:2]
    x = x.reshape(b, c, -1)  # (B, C, H, W) -> (B, C, HW)
    if log_w is None:
        log_w = torch.zeros((b, 1, x.shape[-1]), device=x.device, dtype=x.dtype)
    else:
        if log_w.shape[0] != b or log_w.shape[1] != 1 or log_w[0, 0].numel() != x.shape[-1]:
            raise ValueError(f"log-weights of shape {tuple(log_w.shape)} do not match features {(b, c, x.shape[-1])}")
        log_w = log_w.reshape(b, 1, -1)  # (B, 1, H, W) -> (B, 1, HW)
    log_w = F.log_softmax(log_w, dim=-1)
    x_min = -torch.logsumexp(log_w - x, dim=-1)
    x_max = torch.logsumexp(log_w + x, dim=-1)
    w = torch.exp(log_w)
    x_avg = torch.sum(w * x, dim=-1)
    x_msq = torch.sum(w * x * x, dim=-1)
    return torch.cat((x_min, x_max, x_avg, x_msq), dim=1)


def confpool_features(anomaly_logits: torch.Tensor, conf_logits: torch.Tensor) -> torch.Tensor:
    """The 8 detection features (B, 8), in the order of ``POOLED_FEATURE_NAMES``.

    Uniform pooling of the confidence logits, then pooling of the anomaly margin
    (logit1 - logit0) weighted by sigmoid(conf), both at full resolution.
    """
    b = anomaly_logits.shape[0]
    f1 = weighted_statistics_pooling(conf_logits).view(b, -1)
    margin = anomaly_logits[:, 1:2] - anomaly_logits[:, 0:1]
    f2 = weighted_statistics_pooling(margin, F.logsigmoid(conf_logits)).view(b, -1)
    return torch.cat((f1, f2), dim=-1)


def detection_head() -> nn.Sequential:
    """Linear(8,128), ReLU, Dropout(0.5), Linear(128,1): indices 0 and 3 as in the checkpoint."""
    return nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Dropout(p=0.5), nn.Linear(128, 1))
