"""Shared test fixtures: the ../shared data, a synthesized checkpoint, loaded models."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from jobs.demo_archive import CredentialSigner as C2paTestSigner  # noqa: F401 - the tests' signer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRUFOR_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "trufor_parity"
FIXTURES_F64 = SHARED / "fixtures" / "trufor_parity_f64"
IMAGES = SHARED / "fixtures" / "images"
MANTRANET_FIXTURES = SHARED / "fixtures" / "mantranet_parity"
MANTRANET_H5 = MANTRANET_FIXTURES / "mantranet_synth_ptrain4.h5"  # synthesized, Ptrain4 layout (its README)
NOISEPRINT = SHARED / "weights" / "noiseprint++.th"


# Converted models (trufor_core.backends: OpenVINO) go to a cache of this test session, never the user's
# (set before any test starts Ray or a subprocess, which inherit it).
if not os.environ.get("TRUFOR_CACHE_DIR"):
    os.environ["TRUFOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="trufor-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TRUFOR_CACHE_DIR"], True)


def _need_shared() -> None:
    if not (FIXTURES.is_dir() and FIXTURES_F64.is_dir() and NOISEPRINT.is_file()):
        msg = f"../shared (float32 + float64 fixtures, Noiseprint++ weights) not found at {SHARED}"
        if os.environ.get("TRUFOR_REQUIRE_SHARED"):
            pytest.fail(msg + " and TRUFOR_REQUIRE_SHARED is set (CI must run the parity tests)")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def shared() -> Path:
    _need_shared()
    return SHARED


@pytest.fixture(scope="session")
def synth_ckpt(shared, tmp_path_factory) -> Path:
    """The fixture recipe checkpoint (untrained), written through the CLI's own code path."""
    from trufor_core.checkpoint import write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("w") / "UNTRAINED-fixture.pth.tar", NOISEPRINT)


@pytest.fixture(scope="session")
def model(synth_ckpt):
    from trufor_core import load_trufor

    m, info = load_trufor(synth_ckpt)
    assert info.untrained
    return m


def pytest_report_header(config) -> list[str]:
    """The kernels float32 results depend on, so a failing tolerance can be explained."""
    import torch

    env = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    return [f"torch {torch.__version__}: CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads, oneDNN {torch.backends.mkldnn.is_available()}, env {env or 'default'}"]


def heic_bytes(rgb: np.ndarray, bits: int = 8, quality: int = 95) -> bytes:
    """An HEIC file made with pillow-heif itself (``bits`` 10 or 12: a phone's HDR capture)."""
    import io

    import pillow_heif

    h, w = rgb.shape[:2]
    if bits == 8:
        heif = pillow_heif.from_bytes(mode="RGB", size=(w, h), data=np.ascontiguousarray(rgb, np.uint8).tobytes())
    else:  # pillow-heif takes 16-bit samples and keeps the top ``bits`` bits
        heif = pillow_heif.from_bytes(mode="RGB;16", size=(w, h), data=(rgb.astype(np.uint16) << 8).tobytes())
    buf = io.BytesIO()
    saved, pillow_heif.options.SAVE_HDR_TO_12_BIT = pillow_heif.options.SAVE_HDR_TO_12_BIT, bits == 12
    try:
        heif.save(buf, quality=quality)
    finally:
        pillow_heif.options.SAVE_HDR_TO_12_BIT = saved
    return buf.getvalue()


def write_parts(output, run_id: str, date: str, tables: list, state: str = "complete"):
    """Commit ``tables`` as one run's commits, through the scan's own writer."""
    from pipeline.base.storage import StorageConfig
    from pipeline.base.store import ResultWriter, RunRecord

    w = ResultWriter(str(output), RunRecord(run_id=run_id, command="test", input="-", code_version="test"),
                     date, StorageConfig(), rows_per_part=10**6, commit_every_s=3600)
    for t in tables:
        w.add(t)
        w.commit()
    w.close(state)
    return w


@pytest.fixture(scope="session")
def mantranet_h5(shared) -> Path:
    """ManTra-Net weights in the official HDF5 layout (synthesized: the fixtures' README)."""
    return MANTRANET_H5


def mantranet_npz(name: str) -> dict[str, np.ndarray]:
    """The official ManTra-Net code's outputs for one input (float32 and f64_* fields)."""
    with np.load(MANTRANET_FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def fixture_npz(name: str, f64: bool = False) -> dict[str, np.ndarray]:
    """The official outputs for one input: float32 (AVX-512 machine) or float64 (any CPU) references."""
    with np.load((FIXTURES_F64 if f64 else FIXTURES) / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


S3_KEY, S3_SECRET = "trufortestkey", "TruForTestSecret-9f3k2"  # moto accepts any; distinctive to grep for


@pytest.fixture(scope="module")
def moto_endpoint():
    """A real S3 endpoint (moto's server) on 127.0.0.1, for the tests of one module."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def kill_ray_processes(ray_tmp: str) -> None:
    """SIGKILL every process of one Ray instance (they carry its temp dir on their command line):
    what a machine that dies does to them, and the clean-up after a test that killed a driver."""
    import signal

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if ray_tmp in cmd and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
