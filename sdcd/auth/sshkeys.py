"""SSH public keys as users register them (``authorized_keys`` lines).

An account's keys are its identity: the client certificate must carry one of them and
CloudAPI's HTTP Signature ``keyId`` names one by its MD5 fingerprint. Keys are validated
here, once, when they are registered, so the rest of sdcd can trust an ``SSHPublicKey``.
SDC accepted only RSA; sdcd accepts RSA (>= 2048 bits), ECDSA (P-256/384/521) and Ed25519,
and refuses DSA, security-key (``sk-*``) keys and SSH certificates, none of which can
sign a TLS client certificate or an HTTP Signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterator

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

MIN_RSA_BITS = 2048

RSA = "ssh-rsa"
ED25519 = "ssh-ed25519"
ECDSA_CURVES = {
    "ecdsa-sha2-nistp256": "secp256r1",
    "ecdsa-sha2-nistp384": "secp384r1",
    "ecdsa-sha2-nistp521": "secp521r1",
}
KEY_TYPES = frozenset({RSA, ED25519, *ECDSA_CURVES})

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_SUPPORTED = "use RSA, ECDSA or Ed25519"
_CERT_SUFFIX = "-cert-v01@openssh.com"


class SSHKeyError(ValueError):
    """A key that cannot be registered; the message is shown to the user as is."""


def _malformed(why: str) -> SSHKeyError:
    return SSHKeyError(f"malformed SSH public key: {why}")


@attrs.frozen
class SSHPublicKey:
    """A validated SSH public key; ``blob`` is its SSH wire encoding, which is what both
    fingerprints and the OpenSSH text form are made of."""

    key_type: str
    blob: bytes
    comment: str = ""

    @property
    def md5_fingerprint(self) -> str:
        """``aa:bb:...``: how SDC and CloudAPI name a key (the keyId of HTTP Signatures)."""
        digest = hashlib.md5(self.blob, usedforsecurity=False).hexdigest()
        return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))

    @property
    def sha256_fingerprint(self) -> str:
        """``SHA256:...``: what ``ssh-keygen -lf`` shows, so users can recognise a key."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    @property
    def openssh(self) -> str:
        """The ``authorized_keys`` form, which is how keys are stored and shown."""
        text = f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"
        return f"{text} {self.comment}" if self.comment else text

    def public_key(self) -> PublicKey:
        """The key as a ``cryptography`` object, to verify signatures with."""
        return _load(self.key_type, self.blob)

    @property
    def bits(self) -> int:
        """The key size as ``ssh-keygen -l`` reports it."""
        key = self.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            return key.key_size
        if isinstance(key, ec.EllipticCurvePublicKey):
            return key.curve.key_size
        return 256

    def matches(self, public_key: object) -> bool:
        """Whether ``public_key`` (e.g. from an X.509 certificate) is this very key.

        Canonical DER encodings are compared: key objects have no useful equality across
        sources, and anything that is not a comparable key simply does not match.
        """
        try:
            theirs = public_key.public_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except Exception:  # any non-key (or odd key) simply does not match
            return False
        ours = self.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return theirs == ours

    def fingerprint_matches(self, text: str) -> bool:
        """Whether ``text`` names this key: users and tools write fingerprints in several
        ways (``MD5:`` prefix or not, colons or not, any case; SHA256 with or without
        base64 padding)."""
        text = text.strip()
        if text[:7].lower() == "sha256:":
            return text[7:].rstrip("=") == self.sha256_fingerprint[7:]
        text = text.lower().removeprefix("md5:")
        return text in (self.md5_fingerprint, self.md5_fingerprint.replace(":", ""))


def _load(key_type: str, blob: bytes) -> PublicKey:
    """The ``cryptography`` key of a blob; SSHKeyError for anything it cannot load."""
    data = key_type.encode("ascii") + b" " + base64.b64encode(blob)
    try:
        return serialization.load_ssh_public_key(data)
    except Exception as e:  # untrusted input: ValueError, NotImplementedError, ...
        raise _malformed("the key data is not a valid key") from e


def _check_type(key_type: str) -> None:
    """Refuse key types sdcd cannot use, saying why and what to use instead."""
    if key_type in KEY_TYPES:
        return
    if key_type.endswith(_CERT_SUFFIX):
        raise SSHKeyError(f"SSH certificates ({key_type}) are not supported; register the key")
    if key_type.startswith("sk-"):
        raise SSHKeyError(f"security-key SSH keys ({key_type}) are not supported ({_SUPPORTED})")
    raise SSHKeyError(f"unsupported SSH key type {key_type} ({_SUPPORTED})")


def _blob_type(blob: bytes) -> str:
    """The key type written at the start of a blob (a uint32-length-prefixed string)."""
    if len(blob) < 4:
        raise _malformed("truncated key data")
    (length,) = struct.unpack(">I", blob[:4])
    if len(blob) < 4 + length:
        raise _malformed("truncated key data")
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("bad key type in key data") from None


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise _malformed("bad base64") from None


def _check_size(key) -> None:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise SSHKeyError(
            f"RSA keys must be at least {MIN_RSA_BITS} bits (this one has {key.key_size})"
        )


def _validated(key_type: str, blob: bytes, comment: str) -> SSHPublicKey:
    """The key, after every check: right type, loadable, canonical, big enough.

    The blob must be exactly what the loaded key encodes to: otherwise one key could be
    registered twice under two fingerprints.
    """
    _check_type(key_type)
    inner = _blob_type(blob)
    if inner != key_type:
        raise _malformed(f"key type {key_type} does not match the key data ({inner})")
    key = _load(key_type, blob)
    _check_size(key)
    canonical = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if _decode_base64(canonical.split()[1].decode("ascii")) != blob:
        raise _malformed("non-canonical key data")
    return SSHPublicKey(key_type=key_type, blob=blob, comment=comment)


def _skip_options(line: str) -> str:
    """The line after an ``authorized_keys`` options field, which ends at the first
    whitespace outside double quotes (``command="echo a b",no-pty ssh-rsa ...``)."""
    quoted = False
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quoted:
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch.isspace() and not quoted:
            return line[i:].lstrip()
        i += 1
    if quoted:
        raise _malformed("unterminated quote in the options")
    raise _malformed('expected "<type> <base64 key> [comment]"')


def _looks_like_key_type(word: str) -> bool:
    """Whether the first word is a key type (else it is an options field). Known and
    refused-but-recognisable types count, so their rejection says the right thing."""
    return (
        word in KEY_TYPES
        or word.startswith(("ssh-", "ecdsa-", "sk-"))
        or word.endswith("@openssh.com")
    )


def parse_authorized_key(line: str) -> SSHPublicKey:
    """One ``authorized_keys`` line (options and comment allowed) as a validated key.

    Raises only SSHKeyError, whatever the input, so callers can report it to the user.
    """
    if not isinstance(line, str):
        raise SSHKeyError("an SSH public key must be text")
    line = line.strip()
    if not line:
        raise SSHKeyError("empty SSH public key")
    if "\n" in line or "\r" in line or "\0" in line:
        raise SSHKeyError("expected a single line with one SSH public key")
    if not _looks_like_key_type(line.split(None, 1)[0]):
        line = _skip_options(line)
    fields = line.split(None, 2)
    if len(fields) < 2:
        _check_type(fields[0])
        raise _malformed("no key data after the key type")
    key_type, data = fields[0], fields[1]
    comment = fields[2].strip() if len(fields) > 2 else ""
    _check_type(key_type)
    return _validated(key_type, _decode_base64(data), comment)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


def parse_authorized_keys(text: str) -> list[SSHPublicKey]:
    """Every key of an ``authorized_keys`` file; an error names the offending line."""
    if not isinstance(text, str):
        raise SSHKeyError("SSH public keys must be text")
    keys = []
    for number, line in _lines(text):
        try:
            keys.append(parse_authorized_key(line))
        except SSHKeyError as e:
            raise SSHKeyError(f"line {number}: {e}") from None
    return keys


def _key_type_of(public_key: object) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSA
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for key_type, curve in ECDSA_CURVES.items():
            if public_key.curve.name == curve:
                return key_type
        raise SSHKeyError(f"unsupported elliptic curve {public_key.curve.name} ({_SUPPORTED})")
    raise SSHKeyError(f"unsupported key {type(public_key).__name__} ({_SUPPORTED})")


def from_public_key(public_key: object, comment: str = "") -> SSHPublicKey:
    """The SSH form of a ``cryptography`` public key, under the same rules as a
    registered key (so a key made this way could also be registered)."""
    key_type = _key_type_of(public_key)
    if any(ch in comment for ch in "\r\n\0"):
        raise SSHKeyError("an SSH key comment must be a single line")
    text = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = _decode_base64(text.split()[1].decode("ascii"))
    return _validated(key_type, blob, comment.strip())
