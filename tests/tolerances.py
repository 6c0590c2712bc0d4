"""Every numeric tolerance of the test suite, declared once, with where each figure comes from.

float32 results are float32 roundings of one function, and how they round depends on the CPU's
kernels (oneDNN/ATen pick AVX-512, AVX2 or SSE code, which sum in another order) and on the batch
and thread layout. So a float32 output is compared with a tolerance measured across kernels, not
with whatever one machine printed. Exactness is proven in float64 instead, where every CPU agrees
to ~1e-14 (tests/test_parity_f64.py).
"""
from __future__ import annotations

import re

import numpy as np

# float64 implementation vs the official float64 outputs (../shared/fixtures/trufor_parity_f64/README.md:
# measured 0 with the same kernels, <= 1.3e-14 with another attention kernel, <= 4.3e-15 across thread
# counts; float32-rounded constants would show as ~1e-8..1.4e-6, four orders of magnitude above).
F64_ATOL = 1e-10
# Our own two evaluation paths (whole image vs tiles/chunks/bands) on one machine, in float64.
F64_PATHS_ATOL = 1e-12

# float32 on any CPU, per field: at least 3x the largest float32-vs-float64 error measured over three
# kernel sets (this CPU's AVX-512; AVX2; oneDNN SSE4.1 + ATen scalar, the set `make test` reruns the
# parity tiers under) and four inputs up to 1536x2048, rounded up to 1, 2 or 5 (`make bench-float`,
# table in docs/numerics.md). The worst case is the SSE4.1/scalar set (score 1.5e-4);
# AVX2 matches the float64 fixture README's Zen 3 figures (score 7.0e-5).
F32_ATOL = {
    "np++": 2e-3,  # measured up to 6.4e-4
    "map": 1e-3,  # 2.8e-4
    "conf": 2e-3,  # 6.4e-4
    "score": 5e-4,  # 1.5e-4
    "det_logit": 2e-3,  # 6.1e-4
    "pooled": 5e-3,  # 1.0e-3
    "anomaly_logits": 5e-3,  # 1.5e-3
    "conf_logits": 1e-2,  # 2.8e-3
    "fused_chmean": 1e-2,  # 2.4e-3
    "alt_conf_maxabsdiff": 2e-6,  # 4.7e-7
}
# ManTra-Net float32 vs the official float64 fields (../shared/fixtures/mantranet_parity), per field: at
# least 3x the largest error measured over two kernel sets (native AVX-512, and oneDNN SSE4.1 + ATen
# scalar: the set `make test` reruns the parity tier under) and the four fixtures up to 333x517, rounded up
# to 1, 2 or 5 (`python bench/mantranet_float.py`, table in docs/numerics.md "ManTra-Net"). The float32
# integral image of the window averages is the main source (as in the official code, whose own float32 mask
# is 1.5e-4 from float64): the error grows with the image, so these hold for fixture-sized inputs.
MANTRANET_F32_ATOL = {
    "logits": 2e-3,  # measured up to 4.0e-4
    "mask": 5e-4,  # 9.8e-5 (the official float32 code: 1.5e-4)
    "mask_vs_official_f32": 1e-3,  # 2.1e-4: both sides' float32 error
    "glbstd": 5e-7,  # 1.6e-7
    "featex": 2e-6,  # 6.6e-7
    "divstd": 2e-4,  # 4.9e-5 (the 7x7 window: a difference of two large integral-image sums)
    "clstm": 1e-4,  # 2.9e-5
    "chmean": 1e-5,  # 2.3e-6 (divstd_chmean)
}

# Fields the fixtures store as float16 (tampered1's full-size map/conf/np++): float16 itself is off
# by up to 4.9e-4 at |v| >= 1 (fixture README), added on top of the float32 tolerance.
F16_STORAGE_ATOL = 5e-4

# Stored maps (pipeline.base.maps: float16 stride-4 logits, rebuilt on load) vs the model's float32 maps:
# the codec's promise (under one 8-bit grey level), and what the float16 rounding alone gives.
MAP_CODEC_ATOL = 1 / 255
MAP_ROUNDTRIP_ATOL = 1e-3


def f32_kind(field: str) -> str:
    """The F32_ATOL key of a fixture field name (alt_*, *_lowres, *_win, *_f64, fusedN_chmean)."""
    if field == "alt_conf_maxabsdiff":
        return field
    kind = re.sub(r"^alt_", "", field)
    kind = re.sub(r"(_lowres|_win|_f64)$", "", kind)
    kind = re.sub(r"^fused\d_chmean$", "fused_chmean", kind)
    if kind not in F32_ATOL:
        raise KeyError(f"no float32 tolerance declared for field {field!r} (kind {kind!r})")
    return kind


def f32_atol(field: str, float16_ref: bool = False) -> float:
    return F32_ATOL[f32_kind(field)] + (F16_STORAGE_ATOL if float16_ref else 0.0)


def maxdiff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} vs reference {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def assert_close(got, ref, field: str, atol: float) -> None:
    """One line that says which field, by how much, against which tolerance, and where."""
    d = maxdiff(got, ref)
    if not d <= atol:  # also catches NaN
        diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
        where = np.unravel_index(int(np.nanargmax(diff)), diff.shape) if diff.ndim else ()
        raise AssertionError(f"{field}: max |diff| {d:.3e} > atol {atol:.1e} at {tuple(int(i) for i in where)}")


def assert_f32_close(got, ref, field: str, float16_ref: bool = False, label: str = "") -> None:
    """A float32 result vs a reference (float64 where the fixtures have one), at the field's tolerance.

    ``field`` names the quantity (it picks the tolerance); ``label`` says which input, for the message.
    """
    assert_close(got, ref, f"{label}: {field}" if label else field, f32_atol(field, float16_ref))

# `show`'s figure vs the stored maps: mean |RGB difference| (0..255) between a panel's pixels and the
# map resized (area average) and coloured the same way; matplotlib resamples with its own filter.
# Measured 0.8 (confidence), 1.6 (product), 2.2 (anomaly) at 128x96; the map flipped gives 61-73.
FIGURE_PANEL_MEAN_ABS = 10.0
