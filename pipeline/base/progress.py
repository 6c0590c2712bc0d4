"""The one progress display of long runs (scan, sweep, predict): tqdm, with a line per slow image."""
from __future__ import annotations

import re
import sys

from tqdm import tqdm

from trufor_core.config import SLOW_IMAGE_S


class Lines:
    """Off a terminal: tqdm's carriage-return refreshes become whole lines (a log file gets one line per
    refresh, never one endless line of ``\r``)."""

    def __init__(self, stream):
        self.stream, self.pending = stream, ""

    def write(self, text: str) -> None:
        self.pending += text
        *done, self.pending = re.split(r"[\r\n]", self.pending)
        for line in done:
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def progress(total: int, desc: str, every_s: float = 10.0, stream=None) -> tqdm:
    """A live bar on a terminal; off a terminal (logs, CI), a plain line at most every ``every_s`` seconds.
    ``stream``: default the standard error of the moment (not of import time)."""
    stream = sys.stderr if stream is None else stream
    tty = stream.isatty()
    return tqdm(total=total, desc=desc, unit="img", file=stream if tty else Lines(stream),
                mininterval=0.5 if tty else every_s, ascii=not tty, dynamic_ncols=tty, smoothing=0.1)


def note_slow(bar: tqdm, what: str, seconds: float | None) -> None:
    """A line above the bar for an image that took minutes, so a slow image is visible while it runs."""
    if seconds is not None and seconds >= SLOW_IMAGE_S:
        bar.write(f"{what}: {seconds:.0f} s for one image", file=bar.fp)
