"""Near-duplicates: reposts, recompressions, resizes and light crops of one picture, grouped.

Each ok row records a 64-bit perceptual hash (``phash``: imagehash's pHash of the decoded pixels,
16 hex digits). ``near_pairs`` finds every pair of distinct hashes within a Hamming distance with
multi-index hashing (Norouzi et al.): the 64 bits are cut into 3 substrings; two hashes within
distance D differ in at most D // 3 bits of one of them (pigeonhole), so each hash looks up, per
substring, the buckets of every value within D // 3 flips (direct-addressed tables, no pair
enumeration), and each candidate's full distance is then checked. Exact, not approximate: the
test compares with all pairs. Clusters are the connected components of that graph over the
distinct hashes (single linkage: a chain of near-copies is one cluster).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.base.options import opt
from pipeline.base.storage import StorageOptions

HASH_BITS = 64
_SUBSTRINGS = 3  # 22 + 21 + 21 bits: buckets of about n / 2**21 hashes (one or less up to ~2M rows)
_PAIR_CHUNK = 1 << 22  # candidate pairs verified at a time (bounded memory)
DEFAULT_MAX_DISTANCE = 8  # measured: resize / JPEG / platform chains 0, 2% crop 2..8, distinct photos >= 24 (BENCHMARKS.md)
# One row per member of a cluster; declared once (the CLI's --members output and --out Parquet).
MEMBER_SCHEMA = pa.schema([
    ("cluster_id", pa.string()), ("cluster_size", pa.int64()), ("is_best", pa.bool_()), ("uri", pa.string()),
    ("sha256", pa.string()), ("phash", pa.string()), ("distance_to_best", pa.int64()), ("width", pa.int64()),
    ("height", pa.int64()), ("size_bytes", pa.int64()), ("score", pa.float64()), ("score_dev", pa.float64()),
    ("cluster_score_spread", pa.float64()), ("scanned_at", pa.timestamp("us", tz="UTC")),
])
CLUSTER_COLUMNS = ("cluster_id", "cluster_size", "best_uri", "score_min", "score_max", "cluster_score_spread",
                   "outlier_uri", "outlier_score")


def hex_to_codes(hexes) -> np.ndarray:
    """16-hex-digit hashes -> uint64 codes."""
    try:
        return np.array([int(h, 16) for h in hexes], dtype=np.uint64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a phash is not 16 hex digits: {e}") from None


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _substrings() -> list[tuple[int, int]]:
    """(shift, width) of each substring: widths as equal as possible."""
    widths = [HASH_BITS // _SUBSTRINGS + (1 if i < HASH_BITS % _SUBSTRINGS else 0) for i in range(_SUBSTRINGS)]
    shifts = np.cumsum([0] + widths[:-1])
    return [(int(s), w) for s, w in zip(shifts, widths)]


def _flip_masks(width: int, flips: int) -> np.ndarray:
    """Every mask of ``width`` bits with at most ``flips`` bits set."""
    masks = [0]
    for k in range(1, flips + 1):
        masks += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), k)]
    return np.array(masks, dtype=np.uint64)


def near_pairs(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j of ``codes`` (uint64) with Hamming distance <= ``max_distance``: (i, j, d).

    Exact. Cost grows with the number of flip masks per substring (1, 23, 254, 1794 for distance
    up to 2, 5, 8, 11) times n: meant for distances up to about 11.
    """
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in 0..{HASH_BITS - 1}, got {max_distance}")
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    n = len(codes)
    found_i, found_j = [], []
    flips = max_distance // _SUBSTRINGS
    for shift, width in _substrings():
        sub = ((codes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int32)  # (n,) substring values
        order = np.argsort(sub, kind="stable")
        sizes = np.bincount(sub, minlength=1 << width).astype(np.int32)  # (2**width,) bucket sizes
        starts = np.cumsum(sizes) - sizes  # bucket v holds order[starts[v]:starts[v] + sizes[v]]
        # A pair that differs by a mask is seen from both sides: probe only from the side whose value
        # has a 0 at the mask's top bit (its partner has a 1 there), which halves the work.
        zero_at = [np.flatnonzero((sub >> t) & 1 == 0) for t in range(width)]
        for mask in _flip_masks(width, flips).tolist():
            q0 = np.arange(n) if mask == 0 else zero_at[mask.bit_length() - 1]  # (queries,) hashes that probe
            key = sub[q0] ^ np.int32(mask)  # the bucket each of them looks into
            counts = sizes[key]
            hit = np.flatnonzero(counts)
            q, c, lo = q0[hit], counts[hit], starts[key[hit]]
            one = c == 1  # most buckets hold 0 or 1 hash: no expansion needed
            pairs = [(q[one], order[lo[one]])]
            many = np.flatnonzero(~one)
            # Buckets with several hashes: expand (query, member) pairs in chunks of about _PAIR_CHUNK.
            step = max(1, len(many) * _PAIR_CHUNK // max(1, int(c[many].sum())))
            for a in range(0, len(many), step):
                m = many[a:a + step]
                qi = np.repeat(q[m], c[m])  # (pairs,)
                offs = np.arange(len(qi)) - np.repeat(np.cumsum(c[m]) - c[m], c[m])
                pairs.append((qi, order[np.repeat(lo[m], c[m]) + offs]))
            for qi, qj in pairs:
                if mask == 0:  # same bucket: each unordered pair once, never a hash with itself
                    keep = qi < qj
                    qi, qj = qi[keep], qj[keep]
                close = hamming(codes[qi], codes[qj]) <= max_distance
                found_i.append(np.minimum(qi[close], qj[close]))
                found_j.append(np.maximum(qi[close], qj[close]))
    if not found_i:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    key = np.unique(np.concatenate(found_i) * n + np.concatenate(found_j))  # a pair is found once per substring
    i, j = key // n, key % n
    return i, j, hamming(codes[i], codes[j])


def cluster_labels(codes: np.ndarray, max_distance: int) -> np.ndarray:
    """A component label per code (near-copies within ``max_distance``, chained), computed over the
    distinct hashes so that many identical copies cost nothing extra."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    uniq, inverse = np.unique(np.asarray(codes, np.uint64), return_inverse=True)
    i, j, _ = near_pairs(uniq, max_distance)
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(len(uniq), len(uniq)))
    _, labels = connected_components(graph, directed=False)
    return labels[inverse.reshape(-1)]


@dataclass(frozen=True)
class DuplicatesConfig(StorageOptions):
    """Settings of one `duplicates`; the command line is derived from these fields."""

    output: str = field(metadata=opt("the scan's --output (local directory or s3:// prefix)", positional=True))
    max_distance: int = field(default=DEFAULT_MAX_DISTANCE, metadata=opt(
        "largest Hamming distance (of 64 pHash bits) between near-copies"))
    min_size: int = field(default=2, metadata=opt("list only clusters with at least this many images"))
    members: bool = field(default=False, metadata=opt("print one line per image instead of one per cluster"))
    k: int = field(default=50, metadata=opt("how many clusters to print (largest score spread first)"))
    format: str = field(default="table", metadata=opt("printed format", choices=("table", "csv", "json")))
    out: str | None = field(default=None, metadata=opt("also write every member row (all clusters) to this Parquet file"))

    def __post_init__(self):
        if not 0 <= self.max_distance <= 16:
            raise ValueError(f"--max-distance must be in 0..16 (bits of 64), got {self.max_distance}")
        if self.min_size < 1 or self.k < 1:
            raise ValueError(f"--min-size and --k must be >= 1, got {self.min_size} and {self.k}")


_ROWS_SQL = ("SELECT uri, sha256, phash, width, height, size_bytes, score, scanned_at FROM latest "
             "WHERE status = 'ok' AND phash IS NOT NULL ORDER BY uri")


def cluster_members(rows: pa.Table, max_distance: int, min_size: int = 2) -> pa.Table:
    """Rows (uri, sha256, phash, width, height, size_bytes, score, scanned_at) -> ``MEMBER_SCHEMA`` rows of
    every cluster with at least ``min_size`` images.

    cluster_id: ``dup-`` + the first 16 hex digits of the sha256 of the cluster's earliest-scanned
    image, so that reposts found by later sweeps join a cluster without renaming it. The best copy:
    most pixels, then most bytes per pixel (least compressed), then earliest scanned, then uri.
    score_dev: the image's score minus the cluster's median; spread: max - min score.
    """
    d = rows.to_pydict()
    n = len(d["uri"])
    if n == 0:
        return MEMBER_SCHEMA.empty_table()
    codes = hex_to_codes(d["phash"])
    labels = cluster_labels(codes, max_distance)
    by_label: dict[int, list[int]] = {}
    for idx, lab in enumerate(labels.tolist()):
        by_label.setdefault(lab, []).append(idx)
    far_future = np.datetime64("9999-01-01")
    out = {name: [] for name in MEMBER_SCHEMA.names}
    for members in by_label.values():
        if len(members) < min_size:
            continue

        def when(i):
            t = d["scanned_at"][i]
            return np.datetime64(t.replace(tzinfo=None)) if t is not None else far_future

        first = min(members, key=lambda i: (when(i), d["sha256"][i] or ""))
        best = min(members, key=lambda i: (-(d["width"][i] or 0) * (d["height"][i] or 0),
                                           -(d["size_bytes"][i] or 0) / max(1, (d["width"][i] or 0) * (d["height"][i] or 0)),
                                           when(i), d["uri"][i]))
        scores = [d["score"][i] for i in members if d["score"][i] is not None]
        median = float(np.median(scores)) if scores else None
        spread = float(max(scores) - min(scores)) if scores else None
        cid = "dup-" + (d["sha256"][first] or "")[:16]
        for i in sorted(members, key=lambda i: (i != best, d["uri"][i])):
            out["cluster_id"].append(cid)
            out["cluster_size"].append(len(members))
            out["is_best"].append(i == best)
            out["distance_to_best"].append(int(hamming(codes[i:i + 1], codes[best:best + 1])[0]))
            out["score_dev"].append(None if d["score"][i] is None or median is None else d["score"][i] - median)
            out["cluster_score_spread"].append(spread)
            for c in ("uri", "sha256", "phash", "width", "height", "size_bytes", "score", "scanned_at"):
                out[c].append(d[c][i])
    return pa.table(out, schema=MEMBER_SCHEMA)


def cluster_summary(members: pa.Table) -> tuple[list[str], list[tuple]]:
    """One line per cluster (``CLUSTER_COLUMNS``), the largest score spread first: the image whose
    score is furthest from its siblings' median is the cluster's outlier."""
    d = members.to_pydict()
    groups: dict[str, list[int]] = {}
    for i, cid in enumerate(d["cluster_id"]):
        groups.setdefault(cid, []).append(i)
    lines = []
    for cid, idx in groups.items():
        scores = [d["score"][i] for i in idx if d["score"][i] is not None]
        best = next(i for i in idx if d["is_best"][i])
        outlier = max(idx, key=lambda i: abs(d["score_dev"][i] or 0.0))
        lines.append((cid, len(idx), d["uri"][best], min(scores) if scores else None, max(scores) if scores else None,
                      d["cluster_score_spread"][best], d["uri"][outlier], d["score"][outlier]))
    lines.sort(key=lambda r: (-(r[5] or 0.0), -r[1], r[0]))
    return list(CLUSTER_COLUMNS), lines


def member_lines(members: pa.Table, cluster_ids: list[str]) -> tuple[list[str], list[tuple]]:
    """The member rows of ``cluster_ids``, cluster by cluster in that order (best copy first)."""
    rank = {c: i for i, c in enumerate(cluster_ids)}
    rows = [r for r in members.to_pylist() if r["cluster_id"] in rank]
    rows.sort(key=lambda r: rank[r["cluster_id"]])  # stable: keeps each cluster's own order
    return list(MEMBER_SCHEMA.names), [tuple(r[c] for c in MEMBER_SCHEMA.names) for r in rows]


def find_duplicates(cfg: DuplicatesConfig) -> pa.Table:
    """``MEMBER_SCHEMA`` rows of the near-copy clusters among the latest ok rows of a scan output."""
    from pipeline.base.sql import connect

    con = connect(cfg.output, cfg.storage())
    try:
        rows = con.sql(_ROWS_SQL).to_arrow_table()
    finally:
        con.close()
    return cluster_members(rows, cfg.max_distance, cfg.min_size)


def write_members(members: pa.Table, path: str, storage) -> None:
    import pyarrow.parquet as pq

    fs, p = storage.filesystem(path)
    with fs.open(p, "wb") as f:
        pq.write_table(members, f)
