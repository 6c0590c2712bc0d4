"""Known-harmless lines of libraries kept out of the user's output (they go to a log file instead).

Ray's C++ core prints some warnings straight to file descriptor 2, past Python's logging: one comes
with every successful scan (an actor's constructor arguments live in the object store; Ray Data
puts them there itself, and nothing is lost by it). ``harmless_lines_to`` routes fd 2 through a
pipe for a block of code: lines matching ``KNOWN_HARMLESS`` go to a log file, everything else to
the real stderr, in order. Child processes started inside the block would inherit the pipe, so
the block must start none (the scan enters it after Ray is up).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

KNOWN_HARMLESS = (
    # Ray 2.60, core_worker.cc: Ray Data's actor pools keep the UDF's constructor arguments in the object store.
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store and "
               rb"max_restarts > 0"),
)
JOIN_TIMEOUT_S = 5.0


@contextlib.contextmanager
def harmless_lines_to(log_path: str):
    """Within the block, fd-2 lines matching ``KNOWN_HARMLESS`` are appended to ``log_path``."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with open(log_path, "ab") as log:
            while True:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    harmless = any(p.search(line) for p in KNOWN_HARMLESS)
                    (log.write if harmless else lambda b: os.write(real, b))(line + b"\n")
                if b"\r" in pending:  # a progress bar refresh on a terminal: pass it on at once
                    os.write(real, pending)
                    pending = b""
            if pending:
                os.write(real, pending)
        os.close(read_end)

    thread = threading.Thread(target=pump, daemon=True, name="trufor-stderr")
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last writer goes: the pump sees its end
        thread.join(JOIN_TIMEOUT_S)
        os.close(real)
