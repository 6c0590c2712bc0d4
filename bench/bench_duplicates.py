"""Near-duplicate search at archive scale (`make bench-duplicates`): our multi-index hashing vs all pairs.

Prints, for generated 64-bit hashes (random, a tenth of them planted near-copies of others with up
to D bits flipped), the time of ``pipeline.results.duplicates.near_pairs`` and of ``cluster_labels``, against
baselines measured in the same run: faiss's exhaustive binary range search (all pairs; at 1M rows
timed on a slice of the queries and scaled, said so in the output) and faiss's own multi-index
hashing (IndexBinaryMultiHash). Pair sets are compared with the exhaustive search where it runs in
full. Then the pHash distances that set ``DEFAULT_MAX_DISTANCE``: sample photographs through
repost chains and crops, and the distances between different photographs; and the cost of one
pHash next to the decode of the same image.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.results.duplicates import DEFAULT_MAX_DISTANCE, cluster_labels, hamming, hex_to_codes, near_pairs
from pipeline.scan.decode import phash_hex  # noqa: E402
from trufor_core.image import decode_rgb  # noqa: E402

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "images"


def planted(n: int, max_flips: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    k = n // 10
    src = rng.integers(0, n - k, k)
    flips = rng.integers(0, max_flips + 1, k)
    bits = np.unpackbits(x[src].view(np.uint8).reshape(k, 8), axis=1)  # (k, 64)
    for r in range(k):
        bits[r, rng.choice(64, flips[r], replace=False)] ^= 1
    x[n - k:] = np.packbits(bits, axis=1).reshape(-1).view(np.uint64)
    return x


def _faiss_codes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint8).reshape(len(x), 8)


def faiss_all_pairs(x: np.ndarray, d: int, queries: int | None = None) -> tuple[float, set | None]:
    import faiss

    codes = _faiss_codes(x)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    q = codes if queries is None else codes[:queries]
    t = time.perf_counter()
    lims, _, ids = index.range_search(q, d + 1)  # strictly below the radius
    sec = time.perf_counter() - t
    if queries is not None:
        return sec, None
    lims = lims.astype(np.int64)
    qi = np.repeat(np.arange(len(q)), lims[1:] - lims[:-1])
    keep = qi < ids
    return sec, set(zip(qi[keep].tolist(), ids[keep].tolist()))


def faiss_multihash(x: np.ndarray, d: int) -> float:
    import faiss

    index = faiss.IndexBinaryMultiHash(64, 3, 21)
    index.nflip = d // 3
    index.add(_faiss_codes(x))
    t = time.perf_counter()
    index.range_search(_faiss_codes(x), d + 1)
    return time.perf_counter() - t


def scale_rows(sizes: list[int], d: int, full_limit: int, slice_queries: int, use_faiss: bool) -> list[dict]:
    out = []
    for n in sizes:
        x = planted(n, d)
        t = time.perf_counter()
        i, j, _ = near_pairs(x, d)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        cluster_labels(x, d)
        clus = time.perf_counter() - t
        row = {"rows": n, "max_distance": d, "pairs": int(len(i)), "ours_pairs_s": round(ours, 2),
               "ours_clusters_s": round(clus, 2)}
        if use_faiss:
            if n <= full_limit:
                sec, pairs = faiss_all_pairs(x, d)
                row.update(all_pairs_s=round(sec, 2), all_pairs_measured="full",
                           same_pairs_as_all_pairs=pairs == set(zip(i.tolist(), j.tolist())))
            else:
                sec, _ = faiss_all_pairs(x, d, slice_queries)
                row.update(all_pairs_s=round(sec * n / slice_queries, 1),
                           all_pairs_measured=f"{slice_queries} queries x {n} rows, scaled x{n // slice_queries}")
            row["faiss_multihash_s"] = round(faiss_multihash(x, d), 2)
            row["speedup_vs_all_pairs"] = round(row["all_pairs_s"] / ours, 1)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def _jpeg(a, q):
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="JPEG", quality=q)
    return np.asarray(Image.open(b).convert("RGB"))


def _resize(a, s):
    im = Image.fromarray(a)
    return np.asarray(im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BICUBIC))


def _crop(a, f):
    h, w = a.shape[:2]
    return a[int(h * f):h - int(h * f), int(w * f):w - int(w * f)]


def _platform(a):
    s = min(1.0, 1080 / max(a.shape[:2]))
    return _jpeg(_resize(_jpeg(_resize(a, s), 80), 0.9), 75)


def phash_distances() -> dict:
    """(scikit-image's "cat" is "chelsea" again: left out, it would be a true duplicate.)"""
    import skimage.data as sd

    photos = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(IMAGES.glob("*"))}
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "colorwheel", "logo", "retina", "skin"):
        try:
            a = getattr(sd, name)()
        except (AttributeError, ModuleNotFoundError, OSError):  # not bundled with this scikit-image
            continue
        if True:
            a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
            photos[name] = np.ascontiguousarray(a.astype(np.uint8))
    codes = {k: hex_to_codes([phash_hex(v)])[0] for k, v in photos.items()}
    edits = {"jpeg q70": lambda a: _jpeg(a, 70), "resize x0.5": lambda a: _resize(a, 0.5),
             "platform (1080 px, JPEG 80, x0.9, JPEG 75)": _platform, "crop 2%": lambda a: _crop(a, 0.02),
             "crop 5%": lambda a: _crop(a, 0.05), "crop 10%": lambda a: _crop(a, 0.10)}
    rows = {}
    for e, f in edits.items():
        d = sorted(int(hamming(hex_to_codes([phash_hex(f(v))]), codes[k].reshape(1))[0]) for k, v in photos.items())
        rows[e] = {"max": d[-1], "median": float(np.median(d)), "within_default": sum(x <= DEFAULT_MAX_DISTANCE for x in d)}
    between = [int(hamming(codes[a].reshape(1), codes[b].reshape(1))[0]) for a, b in itertools.combinations(codes, 2)]
    return {"photos": len(photos), "default_max_distance": DEFAULT_MAX_DISTANCE, "edits": rows,
            "different_photos": {"pairs": len(between), "min": min(between), "5th_percentile": float(np.percentile(between, 5))}}


def phash_cost() -> dict:
    data = (IMAGES / "pristine2.jpg").read_bytes()  # a 2048x1773 camera JPEG
    t = time.perf_counter()
    for _ in range(5):
        rgb, _ = decode_rgb(data)
    dec = (time.perf_counter() - t) / 5
    t = time.perf_counter()
    for _ in range(5):
        phash_hex(rgb)
    ph = (time.perf_counter() - t) / 5
    return {"image": f"{rgb.shape[1]}x{rgb.shape[0]}", "decode_ms": round(dec * 1e3, 1), "phash_ms": round(ph * 1e3, 1),
            "phash_over_decode": round(ph / dec, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--distances", type=int, nargs="+", default=[5, DEFAULT_MAX_DISTANCE])
    p.add_argument("--full-limit", type=int, default=100_000, help="largest n for the full all-pairs baseline")
    p.add_argument("--slice-queries", type=int, default=20_000)
    p.add_argument("--no-faiss", action="store_true", help="skip the faiss baselines")
    a = p.parse_args()
    for d in a.distances:
        scale_rows(a.sizes, d, a.full_limit, a.slice_queries, not a.no_faiss)
    if IMAGES.is_dir():
        print(json.dumps({"phash_distances": phash_distances()}), flush=True)
        print(json.dumps({"phash_cost": phash_cost()}), flush=True)


if __name__ == "__main__":
    main()
