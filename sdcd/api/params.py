"""Reading a request: query parameters as dockerd reads them, JSON bodies, JSON replies."""

from __future__ import annotations

import json
from typing import Any

from sdcd.core.errors import InvalidArgument

MAX_BODY = 1024 * 1024


def json_body(request, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode() + b"\n"


def no_content(request) -> bytes:
    request.setResponseCode(204)
    return b""


def arg(request, name: str, default: str | None = None) -> str | None:
    """A query parameter as text (the last one if repeated)."""
    values = request.args.get(name.encode())
    return values[-1].decode("utf-8", "replace") if values else default


def flag(request, name: str, default: bool = False) -> bool:
    """dockerd's boolean query values: 1/true/yes are true; 0, false and others are not;
    ``default`` when absent."""
    value = arg(request, name)
    if value is None:
        return default
    return value.lower() in ("1", "true", "yes")


def integer(request, name: str, default: int | None = None) -> int | None:
    value = arg(request, name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value for {name}: {value}") from None


def read_json(request) -> dict:
    """The request's JSON object body ({} when empty); 400 when it is not one."""
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise InvalidArgument("request body too large")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON: the body must be an object")
    return body
