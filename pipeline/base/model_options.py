"""The model options, declared once: which weights and numerics (`scan`/`sweep`, `predict`) and how
images are batched into one forward (`scan`/`sweep` and the actors they start); how a run says which
weights it scores with."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.base.options import opt
from pipeline.base.storage import redact
from trufor_core.backends import BACKEND_HELP, BACKENDS, COMPILED_MAX_PIXELS
from trufor_core.config import VARIANTS
from trufor_core.model import PRECISION_HELP, PRECISIONS

UNTRAINED_WEIGHTS = ("these weights are UNTRAINED (synthesized for tests by `weights synthesize`): their scores and "
                     "maps mean nothing; scan with the released TruFor weights (`weights download`)")

MANTRANET_UNTRAINED = ("these ManTra-Net weights are UNTRAINED (the synthesized parity-fixture file): their scores and "
                       "maps mean nothing; get the official ones with `trufor-scan weights get mantranet`")


def weights_line(path: str, sha256: str, untrained: bool) -> str:
    """Which weights a run scores with, said at its start."""
    kind = "UNTRAINED test weights" if untrained else "trained weights (not marked untrained)"
    return f"weights {redact(str(path))} (sha256 {sha256[:12]}...), {kind}"


@dataclass(frozen=True, kw_only=True)
class WeightsOptions:
    """Which weights and numerics a command scores with (keyword-only: after each config's own fields)."""

    checkpoint: str | None = field(default=None, metadata=opt(
        "trufor.pth.tar (default: $TRUFOR_WEIGHTS, then the cache, then download); `predict --model mantranet`: "
        "its Keras .h5 (default: the file `weights get mantranet` cached)"))
    noiseprint_weights: str | None = field(default=None, metadata=opt(
        "a noiseprint++.th-format file replacing the Noiseprint++ weights"))
    variant: str = field(default=VARIANTS[0], metadata=opt(
        "train_test: confidence-head BN eps 1e-3 as in TruFor_train_test", choices=VARIANTS))
    precision: str = field(default="fp32", metadata=opt(PRECISION_HELP, choices=tuple(PRECISIONS)))
    backend: str = field(default="auto", metadata=opt(BACKEND_HELP, choices=BACKENDS))
    compiled_max_pixels: int = field(default=COMPILED_MAX_PIXELS, metadata=opt(
        "larger images take the eager bounded-memory path on a compiled backend (whose memory grows with the "
        "image: 4.2 GiB at 1 MP, 10.1 GiB at 2 MP, 19.3 GiB at 3 MP measured; eager stays under 2 GiB)"))
    allow_download: bool = field(default=True, metadata=opt("fail instead of downloading missing weights",
                                                           flag="--no-download"))


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """How images go through the model together (keyword-only: after each config's own fields)."""

    batch_size: int = field(default=4, metadata=opt("images of one shape per forward"))
    batch_max_pixels: int = field(default=2_000_000, metadata=opt(
        "most pixels in one forward; larger images go alone (bounded-memory path)"))
