"""Content credentials (fast tier): real manifests signed here with c2pa-python and a test CA made
here, read back offline; then tampered with; a remote manifest is never fetched."""
from __future__ import annotations

import http.server
import io
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import C2paTestSigner
from pipeline.base.storage import StorageConfig
from pipeline.scan.c2pa import read_credentials, settings
from pipeline.scan.decode import load_one


def _jpeg(seed: int = 0, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def signer():
    return C2paTestSigner()


def test_states_none_valid_trusted_invalid(signer):
    plain = _jpeg()
    assert read_credentials(plain, "JPEG") == {"c2pa_state": "none", "c2pa_status": None, "c2pa_claim_generator": None,
                                               "c2pa_actions": None}
    signed = signer.sign(plain)
    got = read_credentials(signed, "JPEG")
    assert got["c2pa_state"] == "valid" and got["c2pa_status"] == "signingCredential.untrusted"  # not in any trust list
    assert got["c2pa_claim_generator"] == "trufor-scan tests 1.0" and got["c2pa_actions"] == "c2pa.created"
    trusted = read_credentials(signed, "JPEG", settings(signer.ca_pem))
    assert trusted["c2pa_state"] == "trusted" and trusted["c2pa_status"] is None
    # The pixels changed after signing: the manifest's hash of the data no longer matches.
    tampered = bytearray(signed)
    tampered[-200] ^= 0xFF
    bad = read_credentials(bytes(tampered), "JPEG", settings(signer.ca_pem))
    assert bad["c2pa_state"] == "invalid" and "assertion.dataHash.mismatch" in bad["c2pa_status"]
    edited = read_credentials(signer.sign(plain, actions=("c2pa.created", "c2pa.color_adjustments")), "JPEG")
    assert edited["c2pa_actions"] == "c2pa.created,c2pa.color_adjustments"
    assert read_credentials(_jpeg(fmt="BMP"), "BMP")["c2pa_state"] is None  # c2pa does not read BMP: not applicable


def test_a_remote_manifest_is_never_fetched(signer):
    """The library fetches a manifest that lives at a URL by default; our settings forbid it: a local
    server counts the requests (none), and the row says why it could not validate."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/manifest.c2pa"
        got = read_credentials(signer.sign(_jpeg(1), remote_url=url), "JPEG")
    finally:
        srv.shutdown()
    assert hits == []
    assert got["c2pa_state"] == "invalid" and got["c2pa_status"].startswith("error: remote manifest not fetched (offline)")


def test_rows_carry_credentials_and_a_broken_manifest_keeps_its_row(signer, tmp_path):
    (tmp_path / "signed.jpg").write_bytes(signer.sign(_jpeg(2)))
    broken = bytearray(signer.sign(_jpeg(3)))
    i = broken.find(b"jumb")  # inside the manifest store (JUMBF boxes)
    broken[i + 40:i + 400] = bytes(360)
    (tmp_path / "broken.jpg").write_bytes(bytes(broken))
    st = StorageConfig()
    ok = load_one(str(tmp_path / "signed.jpg"), None, None, None, st, 10**8, 29, c2pa_settings=settings(signer.ca_pem))
    assert ok["status"] == "ok" and ok["c2pa_state"] == "trusted" and ok["c2pa_actions"] == "c2pa.created"
    row = load_one(str(tmp_path / "broken.jpg"), None, None, None, st, 10**8, 29)
    assert row["status"] == "ok" and row["c2pa_state"] == "invalid" and row["c2pa_status"]
    assert "\n" not in row["c2pa_status"]
