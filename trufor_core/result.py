"""The typed outputs of a TruFor forward pass: batched tensors and per-image results."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .pooling import POOLED_FEATURE_NAMES


@dataclass
class TruForResult:
    """One image's outputs, post-processed as the official test script does.

    Attributes:
        score: integrity score sigmoid(det_logit) in [0, 1]; high means likely manipulated.
        det_logit: detection logit before the sigmoid.
        pooled: the 8 confidence-weighted features (order: ``POOLED_FEATURE_NAMES``).
        anomaly_map: (H, W) softmax probability of the "forged" class (the model's dtype: float32 by default).
        confidence_map: (H, W) sigmoid of the confidence logit.
        noiseprint: (H, W) Noiseprint++ residual.
    """

    score: float
    det_logit: float
    pooled: np.ndarray
    anomaly_map: np.ndarray
    confidence_map: np.ndarray
    noiseprint: np.ndarray

    @property
    def imgsize(self) -> tuple[int, int]:
        return tuple(self.anomaly_map.shape)

    def pooled_features(self) -> dict[str, float]:
        return {k: float(v) for k, v in zip(POOLED_FEATURE_NAMES, self.pooled)}

    def official_npz(self, save_np: bool = False) -> dict[str, object]:
        """The fields of the official ``.npz``: map, imgsize, score, conf and optionally np++."""
        out: dict[str, object] = {"map": self.anomaly_map, "imgsize": self.imgsize, "score": self.score,
                                  "conf": self.confidence_map}
        if save_np:
            out["np++"] = self.noiseprint
        return out


@dataclass
class TruForOutput:
    """Batched raw outputs of ``TruFor.forward`` (B images of one size H x W)."""

    anomaly_logits: torch.Tensor  # (B, 2, H, W)
    conf_logits: torch.Tensor  # (B, 1, H, W)
    anomaly_logits_lowres: torch.Tensor  # (B, 2, ceil(H/4), ceil(W/4))
    conf_logits_lowres: torch.Tensor  # (B, 1, ceil(H/4), ceil(W/4))
    pooled: torch.Tensor  # (B, 8)
    det_logit: torch.Tensor  # (B,)
    noiseprint: torch.Tensor  # (B, H, W)

    def maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly, confidence) maps, each (B, H, W) on the outputs' device: softmax(logits)[1], sigmoid."""
        return torch.softmax(self.anomaly_logits, dim=1)[:, 1], torch.sigmoid(self.conf_logits)[:, 0]

    def results(self) -> list[TruForResult]:
        """Per-image results: map = softmax(logits)[1], conf = sigmoid, score = sigmoid(det)."""
        maps, confs = (m.cpu().numpy() for m in self.maps())
        scores = torch.sigmoid(self.det_logit).cpu()
        dets = self.det_logit.cpu()
        pooled = self.pooled.cpu().numpy()
        nps = self.noiseprint.cpu().numpy()
        return [TruForResult(score=scores[i].item(), det_logit=dets[i].item(), pooled=pooled[i],
                             anomaly_map=maps[i], confidence_map=confs[i], noiseprint=nps[i])
                for i in range(maps.shape[0])]
