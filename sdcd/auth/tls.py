"""The server's TLS material and context.

When the operator configures no certificate, sdcd makes its own CA and a server
certificate signed by it on first start (kept under ``<data_dir>/tls``); clients fetch the
CA from ``GET /ca.pem``. The server asks every client for a certificate but lets the
handshake succeed without one, or with a self-signed one: a client certificate here is
made from the user's SSH key and is judged by the application (``sdcd.auth.clientcert``),
since ``/ca.pem`` must stay reachable without one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from sdcd.config import Config, ConfigError

SERVER_CERT_DAYS = 825
CA_DAYS = 3650


@attrs.frozen
class ServerTLS:
    """PEM bytes of the server's certificate chain, its key and the CA clients trust."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sdcd"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(datacenter: str) -> tuple[bytes, bytes]:
    """A new self-signed CA for this datacenter: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"sdcd CA {datacenter}")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def server_names(public_host: str) -> list[str]:
    """Every name a client may reach this host by: the public one, loopback, the hostname."""
    names = [public_host, "localhost", "127.0.0.1", "::1", socket.gethostname()]
    return list(dict.fromkeys(n for n in names if n))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_server_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, names: list[str]
) -> tuple[bytes, bytes]:
    """A server certificate for ``names`` signed by the CA: (cert PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_CERT_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with the given mode so a crash never leaves half a key."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def _cert_names(cert_pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def _generated(config: Config) -> ServerTLS:
    """Load, or make on first start, the CA and server certificate under the data dir.

    The server certificate is made again when the public host name changes."""
    tls_dir = config.data_dir / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_path, ca_key_path = (
        config.tls.ca or tls_dir / "ca.pem",
        config.tls.ca_key or tls_dir / "ca-key.pem",
    )
    if not ca_path.exists() and not config.tls.ca:
        ca_pem, ca_key_pem = make_ca(config.datacenter)
        _write(ca_key_path, ca_key_pem, 0o600)
        _write(ca_path, ca_pem, 0o644)
    ca_pem, ca_key_pem = _read(ca_path, "CA certificate"), _read(ca_key_path, "CA key")
    cert_path, key_path = tls_dir / "server-cert.pem", tls_dir / "server-key.pem"
    names = server_names(config.public_host)
    if not (cert_path.exists() and key_path.exists()) or config.public_host not in _cert_names(
        cert_path.read_bytes()
    ):
        cert_pem, key_pem = make_server_cert(ca_pem, ca_key_pem, names)
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem + ca_pem, 0o644)
    return ServerTLS(cert_path.read_bytes(), key_path.read_bytes(), ca_pem)


def load_server_tls(config: Config) -> ServerTLS:
    """The TLS material for this configuration; ``ConfigError`` when unusable."""
    if config.tls.cert is None:
        tls = _generated(config)
    else:
        cert_pem = _read(config.tls.cert, "TLS certificate")
        key_pem = _read(config.tls.key, "TLS key")
        ca_pem = _read(config.tls.ca, "CA certificate") if config.tls.ca else cert_pem
        tls = ServerTLS(cert_pem, key_pem, ca_pem)
    context(tls)  # proves the pieces load and belong together
    return tls


def _accept_any(conn, cert, errno, depth, ok) -> bool:
    """The client certificate is self-signed by design; the application judges it."""
    return True


def context(tls: ServerTLS) -> SSL.Context:
    """A server context: TLS 1.2+, asks for (but does not require) a client cert."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    try:
        certs = _split_pem(tls.cert_pem)
        ctx.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, certs[0]))
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(crypto.load_certificate(crypto.FILETYPE_PEM, extra))
        ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, tls.key_pem))
        ctx.check_privatekey()
    except (crypto.Error, SSL.Error, ValueError, IndexError) as e:
        raise ConfigError(f"unusable TLS certificate or key: {_ssl_reason(e)}") from None
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    ctx.set_session_id(b"sdcd")
    return ctx


def _ssl_reason(e: Exception) -> str:
    if isinstance(e, crypto.Error | SSL.Error) and e.args and e.args[0]:
        return "; ".join(str(part[-1]) for part in e.args[0] if isinstance(part, tuple)) or str(e)
    return str(e) or type(e).__name__


def _split_pem(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part + marker for part in data.split(marker) if b"-----BEGIN CERTIFICATE" in part]


@implementer(IOpenSSLContextFactory)
class ServerContextFactory:
    """The old-style context factory ``listenSSL``/``SSL4ServerEndpoint`` accept."""

    def __init__(self, tls: ServerTLS) -> None:
        self._context = context(tls)

    def getContext(self) -> SSL.Context:
        return self._context
