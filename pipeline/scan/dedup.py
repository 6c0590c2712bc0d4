"""Reposts and copies scored once: rows whose bytes (sha256) were already scored the same way (the
same weights, Noiseprint++, noise-anomaly model and ManTra-Net weights: ``Scoring``).

The actors mark such a row ``dedup_of = "sha256:<hex>"`` (``pending_marker``) instead of running
the model; the driver completes it from the original's row (score, features, map) before the
row is committed (``DedupResolver``), with ``dedup_of`` = the original's uri. The original is looked
up among the rows not yet committed, then in the committed history with DuckDB, once per commit
interval (never per batch).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.base.schema import ERROR_TRANSIENT, MAP_COLUMNS, MODEL_OUTPUT_COLUMNS, ROW_SCHEMA, STATUS_ERROR, STATUS_OK
from pipeline.base.storage import StorageConfig

PENDING_PREFIX = "sha256:"
# What a copy takes from the row of the bytes it repeats; everything else (uri, size, version tag,
# EXIF, run, time, device) is the copy's own.
FROM_ORIGINAL = (*MODEL_OUTPUT_COLUMNS, *MAP_COLUMNS, "model_name", "weights_sha256", "noiseprint_sha256",
                 "weights_untrained")
_HASH_CHUNK = 1 << 16
# What makes two rows' results interchangeable: a copy repeats only a result it would have computed
# itself (a run with --noise-anomaly does not copy a row scored without it, nor the reverse).
SCORING_COLUMNS = ("weights_sha256", "noiseprint_sha256", "noise_anomaly_model", "mantranet_weights")
Scoring = tuple  # (weights_sha256, noiseprint_sha256, noise_anomaly_model, mantranet_weights), None where absent


def same_scoring_sql(alias: str = "") -> str:
    """SQL true for rows scored the way of ``scoring_params`` (named parameters $weights_sha256, ...)."""
    return " AND ".join(f"{alias}{c} IS NOT DISTINCT FROM ${c}" for c in SCORING_COLUMNS)


def scoring_params(scoring: Scoring) -> dict:
    if len(scoring) != len(SCORING_COLUMNS):
        raise ValueError(f"a scoring is {SCORING_COLUMNS}, got {scoring!r}")
    return dict(zip(SCORING_COLUMNS, scoring))


def pending_marker(sha256: str) -> str:
    return PENDING_PREFIX + sha256


class HashSet:
    """Membership of sha256 digests in sorted chunks of 32-byte values (32 bytes per digest, shared
    read-only between actors through Ray's object store; no Python object per digest)."""

    def __init__(self, chunks: list):
        self.chunks = []
        for c in chunks:
            if type(c).__name__ == "ObjectRef":  # resolved lazily so this class needs no Ray without refs
                import ray

                c = ray.get(c)
            if len(c):
                self.chunks.append(c)

    def __contains__(self, sha256: str) -> bool:
        d = np.frombuffer(bytes.fromhex(sha256), dtype="S32")[0]
        for c in self.chunks:
            if c[0] <= d <= c[-1]:
                i = int(np.searchsorted(c, d))
                return i < len(c) and c[i] == d
        return False

    @staticmethod
    def chunks_from_hex(batches) -> "list[np.ndarray]":
        """Sorted hex digests (an iterable of Arrow arrays/batches' first column) -> sorted S32 chunks."""
        out = []
        for b in batches:
            col = b.column(0) if hasattr(b, "column") else b
            hexes = [h for h in col.to_pylist() if h]
            for k in range(0, len(hexes), _HASH_CHUNK):
                part = hexes[k:k + _HASH_CHUNK]
                out.append(np.frombuffer(bytes.fromhex("".join(part)), dtype="S32").copy())
        return out


class CopyMarker:
    """What an actor decides per decoded image: score it, or mark it as a copy (``pending_marker``) of
    bytes scored before with these weights (``known``) or earlier by this actor in this run."""

    def __init__(self, enabled: bool, known_hashes: list | None):
        self.enabled = enabled
        self.known = HashSet(known_hashes or [])
        self.scored_here: set[str] = set()

    def copy_of(self, sha256: str) -> str | None:
        """The pending ``dedup_of`` marker when these bytes need no scoring, else None (and noted as scored)."""
        if not self.enabled:
            return None
        if sha256 in self.scored_here or sha256 in self.known:
            return pending_marker(sha256)
        self.scored_here.add(sha256)
        return None


def known_hashes_sql() -> str:
    """Bytes scored (not copied) a given way, in digest order (parameters: ``scoring_params``).

    No DISTINCT: a digest twice changes no membership test (``HashSet``), and DuckDB's sort spills
    within the plan's memory limit where the DISTINCT's hash table over 10M digests did not
    (BENCHMARKS.md, "The results store at scale")."""
    return ("SELECT sha256 FROM results WHERE status = 'ok' AND dedup_of IS NULL AND sha256 IS NOT NULL "
            f"AND {same_scoring_sql()} ORDER BY sha256")


class DedupResolver:
    """Holds marked rows until their original is found; see the module docstring."""

    def __init__(self, output: str, storage: StorageConfig, scoring: Scoring):
        self.params = scoring_params(scoring)  # checked once; the row comparison below reads it too
        self.output, self.storage = output, storage
        self.held: list[dict] = []

    def take(self, table: pa.Table) -> pa.Table:
        """Rows ready to be written; marked rows are kept back."""
        if table.num_rows == 0:
            return table
        marked = pc.fill_null(pc.starts_with(table.column("dedup_of"), PENDING_PREFIX), False)
        if not pc.any(marked).as_py():
            return table
        self.held += table.filter(marked).to_pylist()
        return table.filter(pc.invert(marked))

    def __len__(self) -> int:
        return len(self.held)

    def _originals(self, shas: set[str], uncommitted: list[pa.Table]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for t in uncommitted:
            for r in t.filter(pc.is_in(t.column("sha256"), pa.array(sorted(shas)))).to_pylist():
                if (r["sha256"] not in found and r["status"] == STATUS_OK and r["dedup_of"] is None
                        and all(r[c] == v for c, v in self.params.items())):
                    found[r["sha256"]] = r
        rest = sorted(shas - found.keys())
        if rest:
            from pipeline.base.sql import connect

            con = connect(self.output, self.storage)
            try:
                cur = con.execute(
                    f"SELECT {', '.join(('sha256', 'uri') + FROM_ORIGINAL)} FROM results WHERE status = 'ok' "
                    f"AND dedup_of IS NULL AND {same_scoring_sql()} AND sha256 IN (SELECT unnest($shas::VARCHAR[])) "
                    "QUALIFY row_number() OVER (PARTITION BY sha256 ORDER BY scanned_at, uri) = 1",
                    {**self.params, "shas": rest})
                cols = [d[0] for d in cur.description]
                for row in cur.fetchall():
                    found[row[0]] = dict(zip(cols, row))
            finally:
                con.close()
        return found

    def release(self, uncommitted: list[pa.Table]) -> pa.Table | None:
        """Held rows whose original is now known, completed; the others stay held."""
        if not self.held:
            return None
        found = self._originals({r["dedup_of"][len(PENDING_PREFIX):] for r in self.held}, uncommitted)
        done, keep = [], []
        for r in self.held:
            orig = found.get(r["dedup_of"][len(PENDING_PREFIX):])
            if orig is None:
                keep.append(r)
                continue
            r.update({k: orig[k] for k in FROM_ORIGINAL}, dedup_of=orig["uri"])
            done.append(r)
        self.held = keep
        return pa.Table.from_pylist(done, schema=ROW_SCHEMA) if done else None

    def give_up(self) -> pa.Table | None:
        """Rows whose original never came back (its scoring failed): error rows the next sweep retries."""
        if not self.held:
            return None
        for r in self.held:
            sha = r["dedup_of"][len(PENDING_PREFIX):]
            r.update(status=STATUS_ERROR, error_kind=ERROR_TRANSIENT, dedup_of=None,
                     error=f"identical bytes (sha256 {sha[:16]}...) were scored elsewhere in this run, but that "
                           f"result did not come back; the next sweep scores this file")
        out, self.held = pa.Table.from_pylist(self.held, schema=ROW_SCHEMA), []
        return out
