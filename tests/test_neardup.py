"""Near-duplicates (fast tier): the index is exact, pHash survives reposting, clusters are stable."""
from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from conftest import IMAGES
from pipeline.results.duplicates import (DEFAULT_MAX_DISTANCE, MEMBER_SCHEMA, DuplicatesConfig, cluster_labels,
                                         cluster_members, cluster_summary, hamming, hex_to_codes, near_pairs)
from pipeline.scan.decode import phash_hex


def _planted(n: int, max_flips: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes, a tenth of them copies of others with 0..max_flips bits flipped."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    for r in range(n - n // 10, n):
        mask = 0
        for b in rng.choice(64, rng.integers(0, max_flips + 1), replace=False):
            mask |= 1 << int(b)
        x[r] = x[rng.integers(0, n - n // 10)] ^ np.uint64(mask)
    return x


@pytest.mark.parametrize("max_distance", [0, 2, 5, 8, 11])
def test_near_pairs_equal_all_pairs(max_distance):
    """Multi-index hashing must miss nothing and add nothing: compared with every pair. Copies are
    planted up to 2 bits past the limit, so pairs just outside it exist and must be left out."""
    x = _planted(3000, max_distance + 2, seed=max_distance)
    i, j, d = near_pairs(x, max_distance)
    a, b = np.triu_indices(len(x), 1)
    dd = hamming(x[a], x[b])
    keep = dd <= max_distance
    assert set(zip(i.tolist(), j.tolist())) == set(zip(a[keep].tolist(), b[keep].tolist()))
    assert len(i) == keep.sum() and (d == hamming(x[i], x[j])).all() and (i < j).all()
    assert ((dd > max_distance) & (dd <= max_distance + 2)).any()  # the boundary was really tested


def test_near_pairs_rejects_a_distance_outside_the_hash():
    with pytest.raises(ValueError, match="max_distance must be in 0..63, got 64"):
        near_pairs(np.zeros(3, np.uint64), 64)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    im = Image.fromarray(rgb)
    return np.asarray(im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC))


def test_phash_keeps_reposts_close_and_different_photos_apart(shared):
    """Platform-like chains (resize to 1080 px, JPEG 80 then 75) stay within the default distance;
    the sample photographs stay far apart from each other."""
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(IMAGES.glob("*")) if "pristine" in p.name
              or "tampered" in p.name]
    assert len(photos) >= 4
    codes = hex_to_codes([phash_hex(p) for p in photos])
    for p, c in zip(photos, codes):
        s = min(1.0, 1080 / max(p.shape[:2]))
        for repost in (_jpeg(p, 70), _resize(p, 0.5), _jpeg(_resize(_jpeg(_resize(p, s), 80), 0.9), 75)):
            assert hamming(hex_to_codes([phash_hex(repost)]), c.reshape(1))[0] <= DEFAULT_MAX_DISTANCE
    a, b = np.triu_indices(len(codes), 1)
    assert hamming(codes[a], codes[b]).min() > DEFAULT_MAX_DISTANCE


def test_identical_hashes_cost_nothing_and_chain_into_one_cluster():
    base = np.uint64(0x0123456789ABCDEF)
    codes = np.array([base] * 1000 + [base ^ np.uint64(0b111)] + [base ^ np.uint64(0b111 << 3 | 0b111)]
                     + [~base], np.uint64)
    labels = cluster_labels(codes, 3)
    assert len(set(labels[:1002].tolist())) == 1 and labels[1002] != labels[0]  # 0 -> 3 -> 6 bits: chained


def _rows(specs):
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    cols = {k: [] for k in ("uri", "sha256", "phash", "width", "height", "size_bytes", "score", "scanned_at")}
    for uri, ph, w, h, size, score, day in specs:
        for k, v in zip(cols, (uri, (uri.encode().hex() * 8)[:64], ph, w, h, size, score, t0 + dt.timedelta(days=day))):
            cols[k].append(v)
    return pa.table(cols)


def test_clusters_best_copy_stable_id_and_score_spread():
    rows = _rows([
        ("s3://b/orig.png", "ffff0000ffff0000", 1000, 800, 900_000, 0.10, 2),
        ("s3://b/repost_small.jpg", "ffff0000ffff0001", 500, 400, 40_000, 0.85, 5),  # the lead: scores far off
        ("s3://b/repost_big.jpg", "ffff0000ffff0003", 1000, 800, 200_000, 0.15, 1),  # scanned first
        ("s3://b/other.jpg", "0000ffff0000ffff", 640, 480, 50_000, 0.90, 0),
    ])
    m = cluster_members(rows, max_distance=4)
    assert m.schema == MEMBER_SCHEMA and m.num_rows == 3  # the unrelated image is no cluster of its own
    d = {r["uri"]: r for r in m.to_pylist()}
    assert d["s3://b/orig.png"]["is_best"] and sum(r["is_best"] for r in d.values()) == 1  # largest, least compressed
    cid = {r["cluster_id"] for r in d.values()}
    assert cid == {"dup-" + ("s3://b/repost_big.jpg".encode().hex() * 8)[:16]}  # named after the first scanned
    assert d["s3://b/repost_small.jpg"]["distance_to_best"] == 1
    assert d["s3://b/repost_small.jpg"]["score_dev"] == pytest.approx(0.85 - 0.15)
    assert d["s3://b/orig.png"]["cluster_score_spread"] == pytest.approx(0.75)
    cols, lines = cluster_summary(m)
    summary = dict(zip(cols, lines[0]))
    assert summary["best_uri"] == "s3://b/orig.png" and summary["outlier_uri"] == "s3://b/repost_small.jpg"
    # A repost found by a later sweep joins without renaming the cluster.
    later = pa.concat_tables([rows, _rows([("s3://b/repost_3.jpg", "ffff0000ffff0002", 300, 240, 9_000, 0.2, 9)])])
    assert set(cluster_members(later, 4).column("cluster_id").to_pylist()) == cid
    assert cluster_members(rows, max_distance=4, min_size=4).num_rows == 0


def test_duplicates_options_are_checked():
    with pytest.raises(ValueError, match="--max-distance must be in 0..16"):
        DuplicatesConfig(output="out", max_distance=20)
