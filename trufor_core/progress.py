"""Progress through one forward on the bounded-memory path: a callback after every piece of work.

The pieces ("steps") are the loops that bound memory: each Noiseprint++ tile, each query chunk of
an attention, each row band of a MixFFN and of a decoder. A whole-image part counts as one step.
``count_steps`` says how many a forward has before it starts (the same arithmetic as the loops; a
test checks that the two agree), so a caller can report "step k of N" and stop an image that will
not finish in its time (the callback may raise: the forward stops there, nothing is kept).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, Iterator

import torch

from .config import SLOW_IMAGE_S, EvalConfig, TruForConfig

_HOOK: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("trufor_step_hook", default=None)


@contextlib.contextmanager
def on_step(fn: Callable[[], None]) -> Iterator[None]:
    """Call ``fn()`` after every step of the forwards run inside this block (this thread only)."""
    token = _HOOK.set(fn)
    try:
        yield
    finally:
        _HOOK.reset(token)


def step() -> None:
    """One step done (called by the model's loops)."""
    if torch.compiler.is_compiling():  # a compiled graph has no steps to report (and no graph break)
        return
    fn = _HOOK.get()
    if fn is not None:
        fn()


def _chunks(total: int, per: int) -> int:
    return math.ceil(total / per)


def count_steps(cfg: TruForConfig, ev: EvalConfig, b: int, h: int, w: int) -> int:
    """Steps of one forward of ``b`` images of ``h`` x ``w`` (mirrors the loops of noiseprint, mit, decoder)."""
    t = ev.dncnn_tile
    steps = 1 if t is None or (h <= t and w <= t) else _chunks(h, t) * _chunks(w, t)
    gh, gw = h, w
    for i in range(4):
        k, s = (7, 4) if i == 0 else (3, 2)
        gh, gw = (gh + 2 * (k // 2) - k) // s + 1, (gw + 2 * (k // 2) - k) // s + 1  # OverlapPatchEmbed
        n, hidden, sr = gh * gw, cfg.embed_dims[i] * cfg.mlp_ratio, cfg.sr_ratios[i]
        nk = (gh // sr) * (gw // sr) if sr > 1 else n
        heads = cfg.num_heads[i]
        if ev.attn_block_elems is None or b * heads * n * nk <= ev.attn_block_elems:
            attn = 1
        else:
            attn = _chunks(n, max(1, ev.attn_block_elems // (b * heads * nk)))
        if ev.mlp_block_elems is None or b * n * hidden <= ev.mlp_block_elems:
            mlp = 1
        else:
            mlp = _chunks(gh, max(1, ev.mlp_block_elems // (b * gw * hidden)))
        steps += 2 * cfg.depths[i] * (attn + mlp)  # two branches (RGB, Noiseprint++)
        if i == 0:
            h1, w1 = gh, gw
    embed = cfg.decoder_embed_dim
    if ev.decoder_block_elems is None or b * h1 * w1 * 4 * embed <= ev.decoder_block_elems:
        dec = 1
    else:
        dec = _chunks(h1, max(1, ev.decoder_block_elems // (b * w1 * 4 * embed)))
    return steps + 2 * dec  # two decoders (anomaly, confidence)


class OutOfTime(RuntimeError):
    """A forward stopped because its time budget ran out (``Watch``)."""

    def __init__(self, done: int, total: int, seconds: float, budget_s: float):
        super().__init__(f"stopped after {seconds:.0f} s at step {done}/{total} (budget {budget_s:g} s per image)")
        self.done, self.total, self.seconds, self.budget_s = done, total, seconds, budget_s


class Watch:
    """A step callback (``on_step``) that reports progress and enforces a time budget.

    ``report(done, total, seconds)`` is called at the first step after ``report_after_s`` and then
    at most every ``report_every_s``; past ``budget_s`` seconds (None: no budget) the next step raises
    ``OutOfTime``. ``deadline`` (time.monotonic) is when the budget runs out, for backends that wait
    on a call of their own (OpenVINO) instead of steps.
    """

    def __init__(self, total: int, budget_s: float | None = None, report: Callable[[int, int, float], None] | None = None,
                 report_after_s: float = SLOW_IMAGE_S, report_every_s: float = SLOW_IMAGE_S, clock: Callable[[], float] | None = None):
        import time

        self.clock = clock or time.monotonic
        self.total, self.budget_s, self.report = total, budget_s, report
        self.after, self.every = report_after_s, report_every_s
        self.start = self.clock()
        self.deadline = None if budget_s is None else self.start + budget_s
        self.done, self.reported_at = 0, None

    def elapsed(self) -> float:
        return self.clock() - self.start

    def poll(self) -> None:
        """Report if a line is due, without a step (a backend waiting on one long call calls this)."""
        t = self.elapsed()
        if self.report is not None and t >= self.after and (self.reported_at is None or t - self.reported_at >= self.every):
            self.reported_at = t
            self.report(self.done, self.total, t)

    def __call__(self) -> None:
        self.done += 1
        self.poll()
        t = self.elapsed()
        if self.budget_s is not None and t > self.budget_s and self.done < self.total:
            raise OutOfTime(self.done, self.total, t, self.budget_s)
