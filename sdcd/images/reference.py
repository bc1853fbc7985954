"""Docker image references, normalised exactly as dockerd and the docker CLI do.

Every name a user types ("busybox", "ns/app:1.0", "127.0.0.1:5000/app@sha256:...") must
mean the same image here as it does to dockerd, or tags recorded by one pull would not be
found by the next ``docker run``. So the grammar and the normalisation follow
``github.com/distribution/reference`` (``ParseNormalizedNamed`` then ``TagNameOnly``):
a first component that looks like a host is the registry, anything else is on Docker
Hub, and Docker Hub's one-component names live under ``library/``. Error messages keep
dockerd's wording, because clients and users recognise them.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255
# Longer than any valid reference (a DNS name, a 255-character path, a tag, a digest):
# refusing these up front keeps the regular expressions' backtracking bounded.
MAX_INPUT_LENGTH = 1024

INVALID_FORMAT = "invalid reference format"
MUST_BE_LOWERCASE = "invalid reference format: repository name must be lowercase"
NAME_TOO_LONG = f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
INVALID_TAG = "invalid tag format"

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
# Python's \w is Unicode; the Go grammar's is ASCII, hence the explicit classes.
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
_REMAINDER_RE = re.compile(rf"({_PATH})(?::({_TAG}))?(?:@({_DIGEST}))?")
_TAG_RE = re.compile(_TAG)
_DIGEST_SHAPE_RE = re.compile(_DIGEST)
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
_FULL_ID_RE = re.compile(r"(?:sha256:)?[0-9a-f]{64}")
_HEX_PREFIX_RE = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")


class ReferenceError(ValueError):
    """An image reference the user gave cannot be parsed; the message is for them.

    (It shadows the builtin ``ReferenceError`` only inside this module, which never
    uses weak references.)
    """


@attrs.frozen
class Reference:
    """A normalised image reference: where the repository is, and which image in it.

    ``domain`` is never empty (Docker Hub is ``docker.io``) and ``path`` always has
    ``library/`` for Hub's official images, so two spellings of one image compare equal.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The full repository name, ``docker.io/library/busybox``: the key for records."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as ``docker images`` shows it: ``busybox``, ``ns/app``,
        ``127.0.0.1:5000/app``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        rest = self.path.removeprefix(OFFICIAL_PREFIX)
        return self.path if "/" in rest else rest

    @property
    def repository(self) -> str:
        """Alias of ``familiar_name``: the REPOSITORY column."""
        return self.familiar_name

    @property
    def familiar(self) -> str:
        """The short form users type and read: ``busybox:latest``."""
        return self.familiar_name + self._suffix()

    def __str__(self) -> str:
        """The full normalised form: ``docker.io/library/busybox:latest``."""
        return self.name + self._suffix()

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return tag + digest

    def with_tag(self, tag: str) -> Reference:
        """This repository with ``tag``; a digest is kept, as ``reference.WithTag`` does."""
        if not _TAG_RE.fullmatch(tag):
            raise ReferenceError(INVALID_TAG)
        return attrs.evolve(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        """This repository pinned to ``digest``; a tag is kept, as ``WithDigest`` does."""
        _check_digest(digest)
        return attrs.evolve(self, digest=digest)

    @property
    def registry_host(self) -> str:
        """The host to contact: Docker Hub's ``docker.io`` is served by another name."""
        return DOCKER_HUB_REGISTRY if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def is_loopback(self) -> bool:
        """Whether the registry is on this machine (dockerd allows plain HTTP there)."""
        return is_loopback_host(host_of(self.domain))


def host_of(domain: str) -> str:
    """The host part of ``domain`` without port or IPv6 brackets."""
    if domain.startswith("["):
        return domain[1:].split("]", 1)[0]
    return domain.split(":", 1)[0]


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1, or ::ffff:127.x)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def parse(text: str, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse and normalise ``text`` as ``ParseNormalizedNamed`` does.

    ``default_tag`` is added when the reference has neither tag nor digest (dockerd's
    ``TagNameOnly``); pass ``None`` to keep a bare name bare (e.g. to display it).
    """
    if len(text) > MAX_INPUT_LENGTH:
        raise ReferenceError(INVALID_FORMAT)
    if _SHA256_HEX_RE.fullmatch(text):
        raise ReferenceError(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_domain(text)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        raise ReferenceError(MUST_BE_LOWERCASE)
    path, tag, digest = _match_remainder(domain, remainder)
    if tag is None and digest is None:
        tag = default_tag
    return Reference(domain, path, tag, digest)


def _split_domain(text: str) -> tuple[str, str]:
    """Registry and the rest, by dockerd's rule: a first component is a host when it
    is ``localhost``, has a ``.`` or ``:``, or has capitals (never valid in a path)."""
    first, slash, rest = text.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + text
    if first == LEGACY_DEFAULT_DOMAIN:
        first = DEFAULT_DOMAIN
    elif not (first == "localhost" or "." in first or ":" in first or first.lower() != first):
        first, rest = DEFAULT_DOMAIN, text
    if first == DEFAULT_DOMAIN and "/" not in rest:
        rest = OFFICIAL_PREFIX + rest
    return first, rest


def _match_remainder(domain: str, remainder: str) -> tuple[str, str | None, str | None]:
    """Path, tag and digest of what follows the domain, validated."""
    match = _REMAINDER_RE.fullmatch(remainder)
    if match is None or not _DOMAIN_RE.fullmatch(domain):
        lowered = _REMAINDER_RE.fullmatch(remainder.lower())
        valid_domain = _DOMAIN_RE.fullmatch(domain)
        raise ReferenceError(MUST_BE_LOWERCASE if lowered and valid_domain else INVALID_FORMAT)
    path, tag, digest = match.groups()
    if len(path) > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError(NAME_TOO_LONG)
    if digest is not None:
        _check_digest(digest)
    return path, tag, digest


def _check_digest(digest: str) -> None:
    """Only sha256 digests name images here; say clearly why another is refused."""
    if not _DIGEST_SHAPE_RE.fullmatch(digest):
        raise ReferenceError(f"invalid digest format: {digest}")
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256":
        raise ReferenceError(
            f"unsupported digest algorithm: {algorithm} (only sha256 digests are supported)"
        )
    if len(hexpart) != 64:
        raise ReferenceError("invalid checksum digest length: a sha256 digest has 64 hex digits")
    if not _SHA256_HEX_RE.fullmatch(hexpart):
        raise ReferenceError("invalid checksum digest format: hex digits must be lowercase")


def parse_repository_and_tag(
    repo: str, tag: str | None, default_tag: str | None = DEFAULT_TAG
) -> Reference:
    """The reference named by the API's ``fromImage=``/``repo=`` and ``tag=`` pair.

    As dockerd's ``POST /images/create`` does: a trailing ``:`` on the name is ignored
    (``docker pull -a`` sends one), ``tag`` replaces a tag given in the name, and a
    ``tag`` shaped like a digest pins the repository to it instead. Without either,
    ``default_tag`` applies (sdcd pulls one tag, never a whole repository).
    """
    ref = parse(repo.removesuffix(":"), default_tag=None)
    if tag:
        if _DIGEST_SHAPE_RE.fullmatch(tag):
            return attrs.evolve(ref, tag=None, digest=None).with_digest(tag)
        return ref.with_tag(tag)
    if ref.tag is None and ref.digest is None and default_tag is not None:
        return attrs.evolve(ref, tag=default_tag)
    return ref


def is_full_id(text: str) -> bool:
    """Whether ``text`` is a whole image ID: 64 hex digits, ``sha256:`` optional."""
    return _FULL_ID_RE.fullmatch(text) is not None


def is_short_id(text: str, min_length: int = 4) -> bool:
    """Whether ``text`` may be an image ID prefix (``sha256:`` optional). dockerd looks up
    prefixes of at least four hex digits; shorter ones are too ambiguous to be useful."""
    match = _HEX_PREFIX_RE.fullmatch(text)
    return match is not None and len(match.group(1)) >= min_length
