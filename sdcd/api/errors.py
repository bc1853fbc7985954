"""The one place domain errors become HTTP statuses and ``{"message": ...}`` bodies."""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from sdcd.core import errors

log = Logger()

STATUS = {
    errors.InvalidArgument: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.NotImplementedYet: 501,
    errors.NotModified: 304,
    errors.Unprocessable: 422,
    errors.TooManyRequests: 429,
    errors.Unavailable: 503,
}


def status_of(error: errors.CoreError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def write_json_error(request: IRequest, status: int, message: str) -> bytes:
    """Set the status and content type; the body to return or write."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"message": message}).encode() + b"\n"


def render_failure(request: IRequest, failure: Failure) -> bytes:
    """A CoreError becomes its status; anything else is logged and a bare 500."""
    if failure.check(errors.NotModified):
        request.setResponseCode(304)
        return b""
    if failure.check(errors.CoreError):
        return write_json_error(request, status_of(failure.value), failure.value.message)
    log.failure(
        "unhandled error in {method} {path}", failure, method=request.method, path=request.path
    )
    return write_json_error(request, 500, "internal server error")
