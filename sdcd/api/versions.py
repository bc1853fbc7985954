"""Docker API versions: the ``/vX.Y`` prefix, parsed once for every route."""

from __future__ import annotations

import re

from sdcd.core.errors import InvalidArgument

MIN_VERSION = (1, 20)
MAX_VERSION = (1, 41)
DEFAULT_VERSION = MAX_VERSION

_PREFIX = re.compile(rb"^v([0-9][0-9.]*)$")


def render(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def prefix_version(segment: bytes) -> str | None:
    """The version text of a ``vX.Y`` path segment, or None if it is not one
    (dockerd's router takes ``v[0-9.]+``)."""
    match = _PREFIX.match(segment)
    return match.group(1).decode() if match else None


def _as_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise InvalidArgument(f"invalid API version {text!r}") from None


def negotiate(text: str) -> tuple[int, int]:
    """The version a request is served at, refused with dockerd's words outside the range."""
    version = _as_tuple(text)
    if version < MIN_VERSION:
        raise InvalidArgument(
            f"client version {text} is too old. Minimum supported API version is "
            f"{render(MIN_VERSION)}, please upgrade your client to a newer version"
        )
    if version > MAX_VERSION:
        raise InvalidArgument(
            f"client version {text} is too new. Maximum supported API version is "
            f"{render(MAX_VERSION)}"
        )
    major, minor = (*version, 0)[:2]
    return major, minor
