"""A stand-in for ``TruForPredictor``, for measuring the pipeline itself and for fault tests.

It runs no model and gives no score: every row it returns has ``score`` NULL and ``model_name`` =
``STAND_IN_MODEL`` so that it can never be mistaken for a result. It does what the real predictor
does around the model (the same row fields, dedup marks), plus a fixed amount of work per image
(``delay_s``), so that runs are long enough to be interrupted. Nothing in the CLI can select it:
only code that passes ``predictor_cls=StandInPredictor`` to ``run_scan`` (benchmarks, tests).
"""
from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pyarrow as pa

from pipeline.base.schema import DECODED_COLUMNS, STATUS_OK, ScanRow, coerce, rows_to_table
from pipeline.base.storage import local_copy
from pipeline.scan.dedup import CopyMarker
from pipeline.scan.predictor import PredictorConfig
from trufor_core.checkpoint import sha256_file

STAND_IN_MODEL = "STAND-IN (no model, no score)"


class StandInPredictor:
    delay_s = 0.0  # seconds of work per image (subclass to change: Ray passes only the scan's arguments)

    def __init__(self, cfg: PredictorConfig, known_hashes: list | None = None):
        self.cfg = cfg
        self.copies = CopyMarker(cfg.dedup, known_hashes)
        # The weights' identity as the real predictor records it, so that sweeps and dedup behave the same.
        self.weights = {"weights_sha256": sha256_file(local_copy(cfg.checkpoint, cfg.storage)),
                        "noiseprint_sha256": sha256_file(local_copy(cfg.noiseprint_weights, cfg.storage))
                        if cfg.noiseprint_weights else None}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows, now = [], dt.datetime.now(dt.timezone.utc)
        for i in range(len(batch["uri"])):
            fields = {k: coerce(k, batch[k][i]) for k in DECODED_COLUMNS}
            fields.update(model_name=STAND_IN_MODEL, run_id=self.cfg.run_id, code_version=self.cfg.code_version,
                          scanned_at=now, **self.weights)
            if fields["status"] == STATUS_OK:
                if marker := self.copies.copy_of(fields["sha256"]):
                    fields["dedup_of"] = marker
                else:
                    time.sleep(self.delay_s)
                    fields["elapsed_ms"] = self.delay_s * 1000
            rows.append(ScanRow(**fields))
        return rows_to_table(rows)


def slow_standin(delay_s: float) -> type:
    """A stand-in doing ``delay_s`` seconds of work per image (a class made here is shipped to the
    Ray workers by value)."""
    return type("SlowStandIn", (StandInPredictor,), {"delay_s": delay_s})
