"""Who a client certificate speaks for.

As SDC Docker did: the certificate's subject CN names the account; its public key must be
one of that account's SSH keys and it must be signed by that key (the setup helper makes
it self-signed from the user's SSH private key). A certificate whose issuer CN is the
fingerprint of one of the account's keys and that is signed by that key is accepted too.
The TLS handshake has already proved the client holds the certificate key's private half.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from sdcd.auth.sshkeys import SSHPublicKey

# Clocks of laptops drift; accept a certificate made a little "in the future".
NOT_BEFORE_SLACK = datetime.timedelta(minutes=5)


def common_name(name: x509.Name) -> str | None:
    """The first CN of a name, or None."""
    try:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def login_of(cert: x509.Certificate) -> str | None:
    """The account a certificate claims to speak for."""
    return common_name(cert.subject)


def signed_by(cert: x509.Certificate, public_key) -> bool:
    """Whether ``public_key`` made the certificate's signature."""
    try:
        params = cert.signature_algorithm_parameters
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(
                cert.signature, cert.tbs_certificate_bytes, params, cert.signature_hash_algorithm
            )
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, params)
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
        return False
    return True


def within_validity(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc - NOT_BEFORE_SLACK <= now <= cert.not_valid_after_utc


@functools.lru_cache(maxsize=4096)
def vouches_for(cert: x509.Certificate, key: SSHPublicKey) -> bool:
    """Whether ``key`` vouches for ``cert``: it is the cert's own key and signed it, or the
    issuer CN names its fingerprint and it signed it. Pure, so cached: a client sends the
    same certificate on every connection."""
    try:
        cert_key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return False
    if key.matches(cert_key):
        return signed_by(cert, cert_key)
    issuer_cn = common_name(cert.issuer)
    return (
        bool(issuer_cn) and key.fingerprint_matches(issuer_cn) and signed_by(cert, key.public_key())
    )


def signing_key(
    cert: x509.Certificate, keys: Iterable[SSHPublicKey], now: datetime.datetime
) -> SSHPublicKey | None:
    """The registered key that vouches for ``cert``, or None if none does."""
    if not within_validity(cert, now):
        return None
    return next((key for key in keys if vouches_for(cert, key)), None)
