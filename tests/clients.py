"""Test clients: SSH keys, client certificates made from them (as the setup helper makes
them, and deliberately wrong ones), and HTTPS requests over real TLS."""

from __future__ import annotations

import datetime
import http.client
import json
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

KEY_KINDS = ["rsa", "ecdsa-256", "ecdsa-384", "ecdsa-521", "ed25519"]
CURVES = {"256": ec.SECP256R1, "384": ec.SECP384R1, "521": ec.SECP521R1}


def make_key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind.startswith("ecdsa-"):
        return ec.generate_private_key(CURVES[kind.split("-")[1]]())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def openssh_line(key, comment: str = "test@sdcd") -> str:
    blob = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{blob.decode()} {comment}"


def _hash_for(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def make_cert(
    key,
    cn: str,
    *,
    signer=None,
    issuer_cn: str | None = None,
    days: float = 365,
    starts: datetime.timedelta = datetime.timedelta(minutes=-1),
) -> x509.Certificate:
    """A certificate for ``key`` with subject CN ``cn``; self-signed unless ``signer``."""
    signer = signer or key
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]) if issuer_cn else subject
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + starts)
        .not_valid_after(now + starts + datetime.timedelta(days=days))
        .sign(signer, _hash_for(signer))
    )


def write_identity(directory: Path, key, cert: x509.Certificate) -> tuple[Path, Path]:
    """key.pem and cert.pem, as the setup helper leaves them."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def request(
    port: int,
    method: str,
    path: str,
    *,
    ca: Path,
    identity: tuple[Path, Path] | None = None,
    headers: dict[str, str] | None = None,
    host: str = "localhost",
    tls_version: ssl.TLSVersion | None = None,
    body: bytes | None = None,
) -> Response:
    """One HTTPS request over real TLS, verifying the server against ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    if tls_version is not None:
        context.minimum_version = context.maximum_version = tls_version
    if identity is not None:
        key_path, cert_path = identity
        context.load_cert_chain(str(cert_path), str(key_path))
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
