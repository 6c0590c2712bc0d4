"""Runs our TruFor on one image and names every output as the parity fixtures do.

Used by both parity tiers and by bench/float_agreement.py (which measures the float32 spread).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tolerances import maxdiff
from trufor_core.image import decode_rgb, to_model_input


def run_fixture_image(model, image: str | Path, ev, alt_model=None) -> dict[str, np.ndarray]:
    """Every fixture field our model computes for one input image, under the fixtures' names.

    The encoder runs once; the ``alt_*`` fields come from the train_test variant's decoders on
    the same features (the variants differ only in the confidence head's BN eps).
    """
    rgb, _ = decode_rgb(image)
    x = to_model_input(rgb, dtype=model.dtype)  # float32 or float64, as the model
    with torch.inference_mode():
        npp, feats = model.encode(x, ev)
        out = model.decode(npp, feats, ev)
        alt = alt_model.decode(npp, feats, ev) if alt_model is not None else None
        res = out.results()[0]
        f = {"imgsize": np.array(res.imgsize), "map": res.anomaly_map, "conf": res.confidence_map,
             "np++": res.noiseprint, "score": np.float64(res.score), "det_logit": res.det_logit,
             "pooled": res.pooled, "anomaly_logits_lowres": out.anomaly_logits_lowres[0].numpy(),
             "conf_logits_lowres": out.conf_logits_lowres[0].numpy(),
             "anomaly_logits": out.anomaly_logits[0].numpy(), "conf_logits": out.conf_logits[0, 0].numpy()}
        for i, feat in enumerate(feats, 1):
            f[f"fused{i}_chmean"] = feat[0].mean(dim=(1, 2)).numpy()
        if alt is not None:
            a = alt.results()[0]
            f.update({"alt_conf_logits_lowres": alt.conf_logits_lowres[0].numpy(), "alt_pooled": a.pooled,
                      "alt_det_logit": a.det_logit, "alt_score": np.float64(a.score),
                      "alt_conf_maxabsdiff": maxdiff(alt.conf_logits, out.conf_logits),
                      "alt_anomaly_maxabsdiff": maxdiff(alt.anomaly_logits, out.anomaly_logits)})
    return f
