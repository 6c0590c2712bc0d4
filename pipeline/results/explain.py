"""Why `top` or `contradictions` found nothing: one line for the user, from what the latest scans hold."""
from __future__ import annotations

import datetime as dt

from pipeline.base.sql import run_sql
from pipeline.base.storage import StorageConfig
from pipeline.results.contradictions import unedited_sql


def why_empty(output: str, min_score: float, since: dt.date | None = None, storage: StorageConfig | None = None,
              connector=None, as_of=None, credentials: bool = False) -> str:
    """One line saying why `top` (or, with ``credentials``, `contradictions`) found nothing: what the
    latest scans hold next to the condition that nothing met."""
    scope = "AND scan_date >= ?" if since else ""
    params = [since.isoformat()] if since else []
    verdicts = ("count(*) FILTER (verdict = 'inconclusive'), count(*) FILTER (verdict = 'flagged')"
                if connector is not None else "NULL, NULL")
    sql = (f"SELECT count(*) FILTER (status = 'ok'), max(score), {verdicts}, "
           "count(*) FILTER (c2pa_state IN ('valid', 'trusted')), "
           f"count(*) FILTER ({unedited_sql()}) FROM latest WHERE TRUE {scope}")
    ok, best, inconclusive, flagged, credentialed, unedited = run_sql(output, sql, params, storage, connector,
                                                                      as_of)[1][0]
    when = f" scanned since {since.isoformat()}" if since else ""
    if not ok:
        return f"nothing to show: no image{when} has an ok scan"
    if credentials:
        if not credentialed:
            return (f"no contradictions: none of the {ok} scored images{when} carries valid or trusted content "
                    "credentials (C2PA)")
        if not unedited:
            return (f"no contradictions: {credentialed} images{when} carry valid or trusted content credentials, "
                    "none of them declares an unedited picture")
    if connector is not None:
        return (f"the calibration flags none of the {ok} scored images{when}" + (f" ({inconclusive} inconclusive)"
                                                                                  if inconclusive else "")
                + (f"; {unedited} declare no edit in their credentials" if credentials else ""))
    return (f"no image{when} scores at or above {min_score:g} (--min-score): {ok} scored, the highest "
            f"{best:.4g}" + (f"; {unedited} declare no edit in their credentials" if credentials else ""))
