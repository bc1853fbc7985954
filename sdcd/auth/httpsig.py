"""HTTP Signature authentication (draft-cavage), as Joyent CloudAPI and its clients use it:

    Authorization: Signature keyId="/<account>/keys/<md5 fingerprint>",
        algorithm="rsa-sha256",headers="date",signature="<base64>"

The client signs a few request headers (by default just ``date``) with its SSH private
key; the server rebuilds the same "signing string" and verifies it with the account's
registered key. ``check_date`` keeps a captured header from being replayed for long.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
from collections.abc import Iterable, Mapping

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ALGORITHMS = frozenset(
    {
        "rsa-sha1",
        "rsa-sha256",
        "rsa-sha512",
        "ecdsa-sha256",
        "ecdsa-sha384",
        "ecdsa-sha512",
        "ed25519-sha512",
    }
)
DEFAULT_HEADERS = ("date",)
REQUEST_TARGET = "(request-target)"

_HASHES = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_EC_ALGORITHMS = {256: "ecdsa-sha256", 384: "ecdsa-sha384", 521: "ecdsa-sha512"}
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class SignatureError(ValueError):
    """A malformed or unacceptable signature header; callers answer 401 without detail."""


@attrs.frozen
class SignatureParams:
    """The parameters of a ``Signature`` Authorization header, decoded."""

    key_id: str
    algorithm: str
    headers: tuple[str, ...]
    signature: bytes

    def account_and_fingerprint(self) -> tuple[str, str]:
        """``(account, fingerprint)`` from a keyId ``/<account>/keys/<fingerprint>``, the
        only form CloudAPI gives an account's own keys. The fingerprint is the whole rest,
        since a SHA256 fingerprint's base64 may contain ``/``."""
        parts = self.key_id.split("/", 3)
        if len(parts) != 4 or parts[0] or not parts[1]:
            raise SignatureError(f"keyId is not /<account>/keys/<fingerprint>: {self.key_id!r}")
        _, account, kind, rest = parts
        if kind == "users" and rest.split("/")[1:2] == ["keys"]:
            raise SignatureError("sub-users are not supported")
        if kind != "keys" or not rest:
            raise SignatureError(f"keyId is not /<account>/keys/<fingerprint>: {self.key_id!r}")
        return account, rest


class _Scanner:
    """Reads ``name="value", ...`` pairs: values are quoted strings that may hold commas
    and equals signs (no escapes, as CloudAPI's own parser has none) or bare tokens."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def _token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TOKEN_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def _value(self) -> str:
        if self.text.startswith('"', self.pos):
            end = self.text.find('"', self.pos + 1)
            if end < 0:
                raise SignatureError("unterminated quoted value")
            value, self.pos = self.text[self.pos + 1 : end], end + 1
            return value
        return self._token()

    def _pair(self) -> tuple[str, str]:
        self._skip_spaces()
        name = self._token()
        self._skip_spaces()
        if not name or not self.text.startswith("=", self.pos):
            raise SignatureError('expected name="value"')
        self.pos += 1
        self._skip_spaces()
        return name.lower(), self._value()

    def pairs(self) -> dict[str, str]:
        """All pairs; a repeated name is refused rather than guessed at."""
        result: dict[str, str] = {}
        while True:
            name, value = self._pair()
            if name in result:
                raise SignatureError(f"parameter {name} given twice")
            result[name] = value
            self._skip_spaces()
            if self.pos == len(self.text):
                return result
            if self.text[self.pos] != ",":
                raise SignatureError("expected a comma between parameters")
            self.pos += 1


def _decode_signature(text: str) -> bytes:
    """Base64, tolerating missing padding, which some clients leave off."""
    text = text.strip()
    try:
        signature = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not base64") from None
    if not signature:
        raise SignatureError("empty signature")
    return signature


def _header_list(value: str | None) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_HEADERS
    names = tuple(value.lower().split())
    if not names:
        raise SignatureError("headers parameter is empty")
    return names


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name.lower(), "")
    if not value:
        raise SignatureError(f"missing {name}")
    return value


def parse_authorization(value: str) -> SignatureParams:
    """The parameters of an ``Authorization: Signature ...`` header.

    Raises only SignatureError, whatever the input, since the header comes from anyone.
    """
    if not isinstance(value, str):
        raise SignatureError("authorization header must be text")
    parts = value.strip().split(None, 1)
    if not parts or parts[0].lower() != "signature":
        raise SignatureError("authorization scheme is not Signature")
    if len(parts) < 2:
        raise SignatureError("no signature parameters")
    params = _Scanner(parts[1].strip()).pairs()
    algorithm = _required(params, "algorithm").lower()
    if algorithm not in ALGORITHMS:
        raise SignatureError(f"unsupported algorithm {algorithm}")
    return SignatureParams(
        key_id=_required(params, "keyId"),
        algorithm=algorithm,
        headers=_header_list(params.get("headers")),
        signature=_decode_signature(_required(params, "signature")),
    )


def signing_string(
    header_names: Iterable[str], method: str, path: str, headers: Mapping[str, str]
) -> bytes:
    """What the client signed: ``name: value`` lines for the listed headers, in order.

    ``(request-target)`` binds the signature to the method and path (with query), so a
    captured header cannot authorise a different request.
    """
    values = {name.lower(): value for name, value in headers.items()}
    lines = []
    for name in header_names:
        name = name.lower()
        if name == REQUEST_TARGET:
            lines.append(f"{REQUEST_TARGET}: {method.lower()} {path}")
        elif name in values:
            lines.append(f"{name}: {values[name].strip()}")
        else:
            raise SignatureError(f"signed header {name} is missing from the request")
    if not lines:
        raise SignatureError("no headers to sign")
    try:
        return "\n".join(lines).encode("utf-8")
    except UnicodeEncodeError:
        raise SignatureError("header values cannot be encoded") from None


def _hash(algorithm: str) -> hashes.HashAlgorithm:
    return _HASHES[algorithm.rsplit("-", 1)[1]]()


def _ecdsa_candidates(signature: bytes, curve: ec.EllipticCurve) -> list[bytes]:
    """DER as ``openssl dgst -sign`` makes it, and, when the length fits, the same
    signature read as raw ``r||s`` (JOSE/WebCrypto style), re-encoded as DER."""
    candidates = [signature]
    size = (curve.key_size + 7) // 8
    if len(signature) == 2 * size:
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        candidates.append(encode_dss_signature(r, s))
    return candidates


def _verify(algorithm: str, signature: bytes, data: bytes, public_key: object) -> bool:
    """Raises InvalidSignature (or a ValueError) on a bad signature; False for an
    algorithm that does not fit the key, so one key type cannot pose as another."""
    family = algorithm.split("-", 1)[0]
    if family == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), _hash(algorithm))
        return True
    if family == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
        for candidate in _ecdsa_candidates(signature, public_key.curve):
            try:
                public_key.verify(candidate, data, ec.ECDSA(_hash(algorithm)))
                return True
            except (InvalidSignature, ValueError):
                continue
        return False
    if algorithm == "ed25519-sha512" and isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
        return True
    return False


def verify(params: SignatureParams, signing_string: bytes, public_key: object) -> bool:
    """Whether ``params.signature`` is ``public_key``'s signature of ``signing_string``
    under ``params.algorithm``. A bad signature is False, never an exception."""
    if params.algorithm not in ALGORITHMS:
        return False
    try:
        return _verify(params.algorithm, params.signature, signing_string, public_key)
    except (InvalidSignature, ValueError, TypeError):
        return False


def _default_algorithm(private_key: object) -> str:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "rsa-sha256"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        algorithm = _EC_ALGORITHMS.get(private_key.curve.key_size)
        if algorithm:
            return algorithm
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "ed25519-sha512"
    raise SignatureError(f"cannot sign with {type(private_key).__name__}")


def _sign(private_key: object, algorithm: str, data: bytes) -> bytes:
    family = algorithm.split("-", 1)[0]
    if family == "rsa" and isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), _hash(algorithm))
    if family == "ecdsa" and isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(_hash(algorithm)))
    if algorithm == "ed25519-sha512" and isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    raise SignatureError(f"algorithm {algorithm} does not fit {type(private_key).__name__}")


def sign(
    private_key: object,
    key_id: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    header_names: Iterable[str] = DEFAULT_HEADERS,
    algorithm: str | None = None,
) -> str:
    """The ``Authorization`` header value a CloudAPI client would send (for tests,
    benchmarks and the setup helper's checks)."""
    header_names = tuple(name.lower() for name in header_names)
    algorithm = (algorithm or _default_algorithm(private_key)).lower()
    if algorithm not in ALGORITHMS:
        raise SignatureError(f"unsupported algorithm {algorithm}")
    if '"' in key_id:
        raise SignatureError("keyId cannot contain a double quote")
    data = signing_string(header_names, method, path, headers)
    signature = base64.b64encode(_sign(private_key, algorithm, data)).decode("ascii")
    return (
        f'Signature keyId="{key_id}",algorithm="{algorithm}",'
        f'headers="{" ".join(header_names)}",signature="{signature}"'
    )


def check_date(date_value: str, now: float, max_skew: float) -> None:
    """Refuse a ``Date`` header too far from ``now`` (either way), so that a captured
    signature stops working soon; also refuse one that is not an HTTP date."""
    try:
        when = email.utils.parsedate_to_datetime(date_value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        timestamp = when.timestamp()
    except (AttributeError, IndexError, OSError, OverflowError, TypeError, ValueError):
        raise SignatureError("date header is not an HTTP date") from None
    if not abs(now - timestamp) <= max_skew:
        raise SignatureError("clock skew too large")
