"""Runs our TruFor on one image and names every output as the parity fixtures do.

Used by both parity tiers and by bench/float_agreement.py (which measures the float32 spread).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tolerances import maxdiff
from trufor_core import EvalConfig
from trufor_core.image import decode_rgb, to_model_input

# The inputs with float64 official references (../shared/fixtures/trufor_parity_f64/).
SMALL = [("pristine1", "pristine1.jpg"), ("synthetic_odd_333x517", "synthetic_odd_333x517.png")]
# The official whole-image evaluation, and the bounded-memory one with limits small enough to split
# even these images into many tiles, chunks and bands (with the fused attention kernel). The
# default EvalConfig is the same code with larger limits (the 1536x2048 test runs it split).
PATHS = {"naive": EvalConfig.naive(),
         "bounded": EvalConfig(attention="sdpa", attn_block_elems=4096, mlp_block_elems=50_000, dncnn_tile=128,
                               decoder_block_elems=200_000)}
# Fields the harness adds that no fixture stores.
DERIVED = {"alt_anomaly_maxabsdiff"}


# The fields a compiled backend computes (trufor_core.backends: everything but the encoder's inner
# features and the train_test variant's second decoder, which run only on the eager model).
BACKEND_FIELDS = ("imgsize", "map", "conf", "np++", "score", "det_logit", "pooled", "anomaly_logits_lowres",
                  "conf_logits_lowres", "anomaly_logits", "conf_logits")


def run_backend_image(runner, image: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """``BACKEND_FIELDS`` of one input through a ``trufor_core.backends`` runner, and the path that ran it."""
    rgb, _ = decode_rgb(image)
    with torch.inference_mode():
        out, path = runner(to_model_input(rgb), EvalConfig())
    res = out.results()[0]
    return {"imgsize": np.array(res.imgsize), "map": res.anomaly_map, "conf": res.confidence_map,
            "np++": res.noiseprint, "score": np.float64(res.score), "det_logit": res.det_logit, "pooled": res.pooled,
            "anomaly_logits_lowres": out.anomaly_logits_lowres[0].numpy(),
            "conf_logits_lowres": out.conf_logits_lowres[0].numpy(), "anomaly_logits": out.anomaly_logits[0].numpy(),
            "conf_logits": out.conf_logits[0, 0].numpy()}, path


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
