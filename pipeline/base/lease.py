"""One writer per OUTPUT at a time: a lease under ``OUTPUT/_lease/``, taken with a conditional create.

The lease is a sequence of generation files ``_lease/<generation>.json`` (zero-padded). The holder is
the newest generation; it rewrites its own file every ``heartbeat_s`` (only it ever writes it). To
take the lease, a run creates the next generation **exclusively** (local: ``os.link`` of a complete
temporary file, which fails if the name exists; S3: a put with ``If-None-Match: *``), which it may
do only when the newest generation is released or its heartbeat is older than ``ttl_s`` (its holder
died: a driver ``kill -9``). Of two runs racing for the same generation exactly one succeeds.

A holder that finds a newer generation than its own (its heartbeat stalled past the expiry and
another run took over) stops: ``LeaseLost`` is raised at its next commit, so two runs never write
side by side.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from pipeline.base.storage import StorageConfig, is_remote, one_line

LEASE_DIR = "_lease"
DEFAULT_TTL_S = 120.0
_NAME_DIGITS = 12


class LeaseBusy(RuntimeError):
    """Another live run holds the lease (one line: its run id and heartbeat age)."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (its heartbeat stalled past the expiry)."""


@dataclass
class LeaseRecord:
    generation: int
    run_id: str
    host: str
    pid: int
    taken_at: str
    heartbeat_at: str
    ttl_s: float
    released: bool = False
    token: str = ""

    def age_s(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.timezone.utc)
        return (now - dt.datetime.fromisoformat(self.heartbeat_at)).total_seconds()

    def expired(self) -> bool:
        return self.age_s() > self.ttl_s


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class _Backend:
    """Exclusive create, overwrite, list and read of small objects under one folder."""

    def __init__(self, root: str, storage: StorageConfig):
        self.remote = is_remote(root)
        self.root = root.rstrip("/")
        if self.remote:
            self.fs, self.path = storage.filesystem(self.root)
        else:
            os.makedirs(self.root, exist_ok=True)

    def names(self) -> list[str]:
        if self.remote:
            try:
                found = self.fs.ls(self.path, detail=False, refresh=True)
            except FileNotFoundError:
                return []
            return [p.rsplit("/", 1)[-1] for p in found]
        return os.listdir(self.root)

    def read(self, name: str) -> bytes | None:
        if self.remote:
            try:
                return self.fs.cat_file(f"{self.path}/{name}")
            except FileNotFoundError:
                return None
        p = os.path.join(self.root, name)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # never a FIFO's open that blocks
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError(f"lease entry {p} is not a regular file")
            return f.read(1 << 16)

    def create(self, name: str, data: bytes) -> bool:
        """Create ``name`` with ``data`` only if it does not exist; True if this call created it."""
        if self.remote:
            bucket, _, key = f"{self.path}/{name}".partition("/")
            try:
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except FileExistsError:  # s3fs's translation of 412 Precondition Failed
                return False
            except Exception as e:  # noqa: BLE001 - other wrappings of the 412 / 409 conflict
                if "PreconditionFailed" in str(e) or "412" in str(e) or "ConditionalRequestConflict" in str(e):
                    return False
                raise
        tmp = os.path.join(self.root, f".{name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, os.path.join(self.root, name))  # atomic, and fails when the name exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def overwrite(self, name: str, data: bytes) -> None:
        if self.remote:
            self.fs.pipe_file(f"{self.path}/{name}", data)
            return
        from pipeline.base.storage import write_local_atomic

        write_local_atomic(os.path.join(self.root, name), data)


def _name(generation: int) -> str:
    return f"{generation:0{_NAME_DIGITS}d}.json"


class Lease:
    """The write lease of one OUTPUT; ``acquire`` then ``release`` (or use it as a context manager)."""

    def __init__(self, output: str, storage: StorageConfig, run_id: str, ttl_s: float = DEFAULT_TTL_S,
                 heartbeat_s: float | None = None):
        if ttl_s <= 0:
            raise ValueError(f"lease ttl must be > 0 s, got {ttl_s}")
        self.backend = _Backend(f"{output.rstrip('/')}/{LEASE_DIR}", storage)
        self.run_id, self.ttl_s = run_id, ttl_s
        self.heartbeat_s = heartbeat_s or max(0.05, ttl_s / 4)
        self.record: LeaseRecord | None = None
        self.lost: str | None = None
        self.took_over: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def newest(self) -> LeaseRecord | None:
        gens = sorted(int(n[:-5]) for n in self.backend.names()
                      if n.endswith(".json") and n[:-5].isdigit() and len(n) == _NAME_DIGITS + 5)
        for g in reversed(gens):
            raw = self.backend.read(_name(g))
            if raw is None:
                continue
            try:
                d = json.loads(raw)
                rec = LeaseRecord(**{k: d[k] for k in LeaseRecord.__dataclass_fields__ if k in d})
                rec.age_s()  # a valid time
            except (ValueError, TypeError, KeyError):
                # Damaged or edited: treated as an expired holder of that generation, so the next
                # generation can still be taken (and this one is never trusted).
                return LeaseRecord(generation=g, run_id="<unreadable lease entry>", host="?", pid=0,
                                   taken_at=_now(), heartbeat_at="1970-01-01T00:00:00+00:00", ttl_s=0)
            rec.generation = g
            return rec
        return None

    def try_acquire(self) -> bool:
        cur = self.newest()
        if cur is not None and not cur.released and not cur.expired():
            self._busy = cur
            return False
        gen = (cur.generation + 1) if cur is not None else 1
        now = _now()
        rec = LeaseRecord(generation=gen, run_id=self.run_id, host=socket.gethostname(), pid=os.getpid(),
                          taken_at=now, heartbeat_at=now, ttl_s=self.ttl_s, token=uuid.uuid4().hex)
        if not self.backend.create(_name(gen), json.dumps(asdict(rec)).encode()):
            self._busy = self.newest() or cur
            return False
        self.record = rec
        self.took_over = cur if cur is not None and not cur.released else None
        self._thread = threading.Thread(target=self._beat, name="trufor-lease-heartbeat", daemon=True)
        self._thread.start()
        return True

    def acquire(self, wait_s: float = 0.0, poll_s: float = 1.0) -> "Lease":
        """Take the lease, waiting up to ``wait_s`` seconds for a live holder to finish.

        Raises:
            LeaseBusy: still held by a live run after ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while True:
            if self.try_acquire():
                return self
            if time.monotonic() >= deadline:
                b = self._busy
                raise LeaseBusy(one_line(
                    f"another run holds the write lease of this OUTPUT: run {b.run_id} on {b.host} (pid {b.pid}), "
                    f"last heartbeat {b.age_s():.0f} s ago (it expires {b.ttl_s:g} s after its last heartbeat)"
                    + (f"; waited {wait_s:g} s" if wait_s else "; --wait SECONDS to wait for it")))
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or poll_s)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.check()
                self.record.heartbeat_at = _now()
                self.backend.overwrite(_name(self.record.generation), json.dumps(asdict(self.record)).encode())
            except LeaseLost as e:
                self.lost = str(e)
                return
            except Exception:  # noqa: BLE001 - a missed beat; the next one tries again (the ttl covers several)
                continue

    def check(self) -> None:
        """Raise LeaseLost if another run has taken the lease over. A lease that cannot be read now
        (the store unreachable) is not taken as lost: the commit that follows meets the same store."""
        if self.lost:
            raise LeaseLost(self.lost)
        try:
            cur = self.newest()
        except Exception:  # noqa: BLE001 - see above
            return
        if cur is not None and self.record is not None and cur.generation > self.record.generation:
            self.lost = (f"run {self.run_id} lost the write lease to run {cur.run_id} (its heartbeat stalled past "
                         f"the {self.ttl_s:g} s expiry): it stops writing")
            raise LeaseLost(self.lost)

    def release(self) -> None:
        """Mark the lease released (never raises: with the store gone, the lease simply expires)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.record is None or self.lost:
            return
        try:
            cur = self.newest()
            if cur is not None and cur.generation == self.record.generation:
                self.record.released, self.record.heartbeat_at = True, _now()
                self.backend.overwrite(_name(self.record.generation), json.dumps(asdict(self.record)).encode())
        except Exception:  # noqa: BLE001 - it expires ttl_s after its last heartbeat instead
            pass
        self.record = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
