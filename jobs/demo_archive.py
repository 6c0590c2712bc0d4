"""`trufor-scan make-demo-archive`: the embedded default input of `make scan`, built offline.

Real photographs bundled with scikit-image, saved as a camera would (JPEG), plus what a crawl
brings: a splice (a region of one photo pasted into another, then re-saved as JPEG), a repost
(the same bytes under another name: scored once, recorded with dedup_of), a resized and
recompressed repost of the splice (a near-duplicate), a truncated file and a text file. The splice
carries content credentials (C2PA) that declare an unedited capture, signed with a test certificate
made on the spot. Deterministic (the same bytes on every machine with the same Pillow) but for that
signature.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.base.options import opt

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle")


@dataclass(frozen=True)
class DemoArchiveConfig:
    """`trufor-scan make-demo-archive`; the command line is derived from these fields."""

    out: str = field(metadata=opt("folder to write the archive into"))


class CredentialSigner:
    """A test CA (self-signed, made here) and a signing certificate under it, ES256: content credentials
    (C2PA) for the demo archive and the tests, never for real use."""

    def __init__(self, valid_days: int = 30):
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                              x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trufor-scan tests and demo")])

        def usage(sign: bool):
            return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                                 data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                                 crl_sign=not sign, encipher_only=False, decipher_only=False)

        now = dt.datetime.now(dt.timezone.utc)
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(name("trufor-scan test root")).issuer_name(name("trufor-scan test root"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=valid_days))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(usage(False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        cert = (x509.CertificateBuilder().subject_name(name("trufor-scan test signer")).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=valid_days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(usage(True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
        self.chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
        self.key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())

    def sign(self, data: bytes, actions=("c2pa.created",), mime: str = "image/jpeg", remote_url: str | None = None,
             title: str = "test image") -> bytes:
        import c2pa

        manifest = {"claim_generator_info": [{"name": "trufor-scan tests", "version": "1.0"}], "title": title,
                    "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                        {"action": a, **({"digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/"
                                                               "digitalCapture"} if a == "c2pa.created" else {})}
                        for a in actions]}}]}
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, self.chain, self.key, None))
        builder = c2pa.Builder(manifest)
        if remote_url:
            builder.set_no_embed()
            builder.set_remote_url(remote_url)
        out = io.BytesIO()
        builder.sign(signer, mime, io.BytesIO(data), out)
        return out.getvalue()


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_demo_archive(out: str | Path) -> list[Path]:
    """Write the demo archive under ``out``; returns the files written."""
    import skimage.data as skd

    out = Path(out)
    (out / "reposts").mkdir(parents=True, exist_ok=True)
    written = []

    def put(rel: str, data: bytes) -> None:
        (out / rel).write_bytes(data)
        written.append(out / rel)

    photos = {}
    for name in PHOTOS:
        img = getattr(skd, name)()
        img = img[0] if isinstance(img, tuple) else img
        photos[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
        put(f"{name}.jpg", _jpeg(photos[name], 90))
    # A splice: a 160x160 region of the rocket pasted into the coffee photo, saved again as JPEG
    # (a different compression history inside the region: what TruFor's noiseprint sees).
    host = _jpeg(photos["coffee"], 75)
    spliced = np.array(Image.open(io.BytesIO(host)))
    spliced[120:280, 200:360] = photos["rocket"][200:360, 100:260]
    # Its content credentials lie: signed (a test certificate, made here) as an unedited capture
    # (c2pa.created only). `trufor-scan contradictions` is for exactly this: credentials that declare
    # no edit on a picture TruFor flags.
    put("coffee_spliced.jpg", CredentialSigner(valid_days=3650).sign(_jpeg(spliced, 90), title="coffee"))
    put("reposts/astronaut_repost.jpg", (out / "astronaut.jpg").read_bytes())
    # A platform's repost of the splice: resized to 75% and recompressed (new bytes, a near-duplicate:
    # `trufor-scan duplicates` clusters it with the splice).
    small = Image.fromarray(spliced).resize((spliced.shape[1] * 3 // 4, spliced.shape[0] * 3 // 4), Image.LANCZOS)
    put("reposts/coffee_spliced_resized.jpg", _jpeg(np.asarray(small), 80))
    put("truncated.jpg", (out / "chelsea.jpg").read_bytes()[:3000])
    put("README.txt", b"trufor-scan demo archive (scikit-image photographs); not an image: a skipped row\n")
    return written
