"""RFC 3339 UTC timestamps as Docker shows them (``2026-11-28T10:00:00.123456Z``).
Layer-neutral: the API, core and compute nodes all write and read them."""

from __future__ import annotations

import datetime


def now() -> str:
    """This moment, microseconds, trailing ``Z``."""
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def from_unix(seconds: float) -> str:
    """A Unix time as a timestamp of the same form."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def parse(text: str | None) -> float:
    """Unix seconds of a timestamp; 0.0 for none or Go's zero time (0001-01-01...).
    Fractions of any length (Go writes up to nanoseconds) are kept."""
    if not text or text.startswith("0001-"):
        return 0.0
    main, _, rest = text.rstrip("Z").partition(".")
    base = datetime.datetime.fromisoformat(main).replace(tzinfo=datetime.UTC).timestamp()
    return base + (float("0." + rest) if rest.isdigit() else 0.0)
