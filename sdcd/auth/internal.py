"""The datacenter's internal PKI (issue 7): sdcd and the compute node agents talk over
mutual TLS with certificates from a CA of their own, never the one docker clients see.

``sdcd-admin node enrol`` issues a node's certificate (role ``node``, its id in the
common name: ``node:<id>``) and ``sdcd-admin api-cert`` one for an sdcd instance
(``api:<name>``). Each side requires the other's certificate, checks its chain to the
internal CA, and then its role: an agent serves only ``api`` peers, sdcd talks only to
the ``node`` it meant to reach. A node's key never leaves the node's enrolment directory.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

from sdcd.auth.tls import _pem_key, _san, _write, make_ca

ROLES = ("node", "api")
CERT_DAYS = 825
#: Under data_dir: the internal CA (its key stays with the operator's sdcd host).
CA_DIR = "internal-ca"


class PKIError(Exception):
    """Enrolment or a peer's certificate is not acceptable."""


@attrs.frozen
class Identity:
    """Who a certificate says its holder is."""

    role: str
    ident: str


@attrs.frozen
class Material:
    """PEM bytes: our certificate and key, and the internal CA's certificate."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    def write(self, directory: Path, stem: str) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(directory / "ca.pem", self.ca_pem, 0o644)
        _write(directory / f"{stem}.pem", self.cert_pem, 0o644)
        _write(directory / f"{stem}-key.pem", self.key_pem, 0o600)

    @classmethod
    def read(cls, directory: Path, stem: str) -> Material:
        try:
            return cls(
                (directory / f"{stem}.pem").read_bytes(),
                (directory / f"{stem}-key.pem").read_bytes(),
                (directory / "ca.pem").read_bytes(),
            )
        except OSError as e:
            raise PKIError(f"cannot read {stem}'s TLS material in {directory}: {e}") from None


def internal_ca(data_dir: Path, datacenter: str) -> tuple[bytes, bytes]:
    """The internal CA (cert PEM, key PEM), made on first use under ``data_dir``."""
    directory = data_dir / CA_DIR
    cert, key = directory / "ca.pem", directory / "ca-key.pem"
    if cert.exists() and key.exists():
        return cert.read_bytes(), key.read_bytes()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_pem, key_pem = make_ca(f"{datacenter} internal")
    _write(key, key_pem, 0o600)
    _write(cert, cert_pem, 0o644)
    return cert_pem, key_pem


def issue(
    ca_cert_pem: bytes, ca_key_pem: bytes, role: str, ident: str, names: list[str]
) -> Material:
    """A certificate for ``role:ident`` (server and client use), valid for ``names``."""
    if role not in ROLES:
        raise PKIError(f"unknown role {role!r}")
    if not ident or ":" in ident or not ident.isprintable():
        raise PKIError(f"invalid {role} name {ident!r}")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sdcd"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{role}:{ident}"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Material(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), ca_cert_pem)


def identity(cert: x509.Certificate) -> Identity:
    """The role and name a verified peer certificate carries."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    text = str(names[0].value) if names else ""
    role, _, ident = text.partition(":")
    if role not in ROLES or not ident:
        raise PKIError(f"not an sdcd internal certificate: {text!r}")
    return Identity(role, ident)


def identity_of(material: Material) -> Identity:
    """Who our own certificate says we are (an agent's node id comes from it)."""
    return identity(x509.load_pem_x509_certificate(material.cert_pem))


def context(material: Material, server: bool) -> SSL.Context:
    """A TLS context that presents our certificate and requires the peer's, chained to
    the internal CA (the role is checked once the handshake is done: ``check_peer``)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(x509.load_pem_x509_certificate(material.cert_pem))
    ctx.use_privatekey(serialization.load_pem_private_key(material.key_pem, None))
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, material.ca_pem))
    ctx.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda _c, _x, _e, _d, ok: bool(ok)
    )
    return ctx


def check_peer(connection: SSL.Connection, role: str, ident: str | None = None) -> Identity:
    """After the handshake: the peer's identity, which must have ``role`` (and, for a
    node sdcd dialled, the node id it meant)."""
    cert = connection.get_peer_certificate()
    if cert is None:
        raise PKIError("the peer presented no certificate")
    who = identity(cert.to_cryptography())
    if who.role != role or (ident is not None and who.ident != ident):
        raise PKIError(f"peer is {who.role}:{who.ident}, not {role}:{ident or '*'}")
    return who
