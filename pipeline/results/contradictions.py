"""`trufor-scan contradictions`: images whose content credentials (C2PA) declare no edit while
TruFor flags them."""
from __future__ import annotations

# Declared actions that change nothing in the picture: a manifest declaring only these says "unedited".
UNEDITED_ACTIONS = ("c2pa.created", "c2pa.opened")

CONTRADICTION_COLUMNS = ("uri", "score", "c2pa_state", "c2pa_claim_generator", "c2pa_actions", "map_uri", "preview_uri",
                         "scan_date")


def unedited_sql() -> str:
    """SQL true when a row's valid (or trusted) credentials declare only ``UNEDITED_ACTIONS``."""
    allowed = ", ".join(f"'{a}'" for a in UNEDITED_ACTIONS)
    return ("c2pa_state IN ('valid', 'trusted') AND c2pa_actions IS NOT NULL AND "
            f"list_has_all([{allowed}], string_split(c2pa_actions, ','))")


def contradictions(output: str, k: int = 50, min_score: float | None = None, storage=None,
                   calibration: dict | None = None):
    """Images whose credentials say unedited while TruFor flags them (score >= ``min_score``, or the
    calibration's ``flagged`` verdict), highest score first."""
    from pipeline.results.query import DEFAULT_MIN_SCORE, top

    if calibration:
        from pipeline.results.calibration import connector

        return top(output, k, 0.0, None, storage, columns=(*CONTRADICTION_COLUMNS, "verdict", "threshold"),
                   where=f"AND verdict = 'flagged' AND {unedited_sql()}", connector=connector(calibration))
    return top(output, k, DEFAULT_MIN_SCORE if min_score is None else min_score, None, storage,
               columns=CONTRADICTION_COLUMNS, where=f"AND {unedited_sql()}")
