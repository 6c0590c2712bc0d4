"""ManTra-Net's intermediate tensors under the fixtures' field names (../shared/fixtures/mantranet_parity/README.md),
computed in one piece (the official path) with the model's own parts, in one pass."""
from __future__ import annotations

import numpy as np
import torch

from mantranet_core.anomaly import nested_deviations

WIN = 16  # the fixtures' corner window side (`win`)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).double().numpy()  # (C, H, W) of image 0 -> (H, W, C)


def fields(model, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Every fixture field the float32 npz files hold (full-size tensors as ``*_full``), from one image."""
    with torch.inference_mode():
        feat = model.Featex(x)
        bn = model.bnorm(model.outlierTrans(feat))
        std, mean = torch.std_mean(bn, (2, 3), correction=0)
        sigma = model.glbStd(std)
        dev = nested_deviations(bn, mean, (0, 0), tuple(x.shape[-2:]))  # (1, 4, 64, H, W)
        divstd = torch.abs(dev / sigma[:, None, :, None, None])
        clstm = model.cLSTM(divstd)
        logits = model.pred(clstm)[0, 0]
    # (that this is what ``forward`` computes is checked once, on the tiny input: test_mantranet.py)
    got = {"logits": logits.double().numpy(), "mask": torch.sigmoid(logits).double().numpy(),
           "glbstd": sigma[0].double().numpy()}
    full = {"featex": nhwc(feat), "bnorm": nhwc(bn), "clstm": nhwc(clstm),
            "divstd": divstd[0].permute(0, 2, 3, 1).double().numpy(),  # (4, H, W, 64)
            "nestedavg": dev[0].permute(0, 2, 3, 1).double().numpy()}
    for k, v in full.items():
        got[f"{k}_full"] = v
        got[f"{k}_chmean"] = v.mean(axis=(-3, -2))
        got[f"{k}_tl"] = v[..., :WIN, :WIN, :]
        got[f"{k}_br"] = v[..., -WIN:, -WIN:, :]
    return got
