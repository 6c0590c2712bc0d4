"""Content credentials (C2PA): what a file's own signed manifest says, read with c2pa-python, offline.

Kept apart from TruFor's score: a row records whether the bytes carry a C2PA manifest, its
validation state, the failure codes, the claim generator and the declared actions. Workers never
fetch anything: remote manifests and OCSP revocation checks (on by default in the library) are
switched off, and trust is decided only against the PEM anchors given to the scan
(``--c2pa-trust-anchors``); without them a correctly signed manifest is ``valid``, not ``trusted``.
"""
from __future__ import annotations

import functools
import json

from pipeline.base.schema import C2PA_COLUMNS

C2PA_STATES = ("none", "invalid", "valid", "trusted")
# Pillow format -> the MIME type c2pa reads; formats missing here cannot carry a manifest we read (NULL).
_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff",
         "GIF": "image/gif", "HEIF": "image/heif"}
_MAX_STATUS = 500  # characters of failure codes kept in a row


def settings(trust_anchors_pem: str | None = None) -> str:
    """The c2pa settings (JSON) every reader uses: never fetch; trust only the given anchors."""
    s: dict = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors_pem:
        s["trust"] = {"trust_anchors": trust_anchors_pem}
    return json.dumps(s, sort_keys=True)


def load_trust_anchors(uri: str, storage) -> str:
    """The PEM text of ``--c2pa-trust-anchors`` (local or object storage), checked to hold certificates."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"--c2pa-trust-anchors {uri!r} does not exist")
    with fs.open(path, "rb") as f:
        text = f.read(1 << 20).decode("ascii", "replace")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"--c2pa-trust-anchors {uri!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return text


@functools.lru_cache(maxsize=4)
def _context(settings_json: str):
    import c2pa

    return c2pa.Context(c2pa.Settings.from_json(settings_json))


def _actions(manifest: dict) -> list[str]:
    out: list[str] = []
    for a in manifest.get("assertions") or []:
        if str(a.get("label", "")).startswith("c2pa.actions"):
            for act in (a.get("data") or {}).get("actions") or []:
                name = str(act.get("action", ""))
                if name and name not in out:
                    out.append(name)
    return out


def _generator(manifest: dict) -> str | None:
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict) and info[0].get("name"):
        return " ".join(str(x) for x in (info[0].get("name"), info[0].get("version")) if x)
    return manifest.get("claim_generator")


def read_credentials(data: bytes, fmt: str | None, settings_json: str | None = None) -> dict:
    """``C2PA_COLUMNS`` for one file's bytes; never raises. State NULL for a format c2pa does not
    read; ``none`` without a manifest; ``invalid`` with the failure codes when the manifest does not
    validate (or cannot be parsed: then ``error: <reason>``)."""
    import io

    import c2pa

    from pipeline.base.storage import one_line, redact

    out = dict.fromkeys(C2PA_COLUMNS)
    mime = _MIME.get(fmt or "")
    if mime is None:
        return out
    try:
        with c2pa.Reader(mime, io.BytesIO(data), context=_context(settings_json or settings())) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError as e:
        if type(e).__name__ == "_C2paManifestNotFound" or "ManifestNotFound" in str(e):
            out["c2pa_state"] = "none"
        elif "must fetch remote manifests" in str(e):  # the manifest lives elsewhere: never fetched
            out.update(c2pa_state="invalid", c2pa_status=one_line(
                f"error: remote manifest not fetched (offline): {redact(str(e).rsplit(' ', 1)[-1])}", _MAX_STATUS))
        else:
            out.update(c2pa_state="invalid", c2pa_status=one_line(f"error: {e}", _MAX_STATUS))
        return out
    except Exception as e:  # noqa: BLE001 - a hostile manifest must not lose the row
        out.update(c2pa_state="invalid", c2pa_status=one_line(f"error: {type(e).__name__}: {e}", _MAX_STATUS))
        return out
    state = str(store.get("validation_state") or "").lower()
    codes = [str(s.get("code")) for s in store.get("validation_status") or [] if s.get("code")]
    manifest = (store.get("manifests") or {}).get(store.get("active_manifest") or "", {})
    out.update(c2pa_state=state if state in C2PA_STATES else "invalid",
               c2pa_status=",".join(codes)[:_MAX_STATUS] or None,
               c2pa_claim_generator=_generator(manifest),
               c2pa_actions=",".join(_actions(manifest)) or None)
    return out
