"""The CloudAPI subset the setup helper needs, authenticated by HTTP Signature.

Errors use CloudAPI's ``{"code": ..., "message": ...}`` shape, not Docker's.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from sdcd.auth.accounts import Authenticator
from sdcd.core import errors
from sdcd.core.accounts import AccountService

CLOUDAPI_VERSIONS = ["9.0.0"]

CODES = {
    errors.Unauthorized: (401, "InvalidCredentials"),
    errors.Forbidden: (403, "NotAuthorized"),
    errors.NotFound: (404, "ResourceNotFound"),
    errors.InvalidArgument: (409, "InvalidArgument"),
}


def _json(request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"server", b"sdcd cloudapi")
    request.setHeader(b"api-version", CLOUDAPI_VERSIONS[0].encode())
    return json.dumps(body).encode() + b"\n"


def _headers(request) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
        for name, values in request.requestHeaders.getAllRawHeaders()
    }


class CloudAPI:
    """``/--ping``, ``/<account>``, ``/<account>/keys``, ``/<account>/services``."""

    app = Klein()
    log = Logger()

    def __init__(self, authenticator: Authenticator, accounts: AccountService, docker_url: str):
        self._auth = authenticator
        self._accounts = accounts
        self._docker_url = docker_url

    def resource(self):
        return self.app.resource()

    @app.handle_errors(RouteNotFound, MethodNotAllowed)
    def _not_found(self, request, failure: Failure) -> bytes:
        return _json(request, 404, {"code": "ResourceNotFound", "message": "not found"})

    @app.handle_errors(Exception)
    def _error(self, request, failure: Failure) -> bytes:
        for kind, (status, code) in CODES.items():
            if failure.check(kind):
                return _json(request, status, {"code": code, "message": failure.value.message})
        self.log.failure("cloudapi error", failure)
        return _json(request, 500, {"code": "InternalError", "message": "internal error"})

    async def _caller(self, request, login: str):
        """The signed-in account, which must be the one named in the path."""
        account = await self._auth.from_signature(
            request.getHeader(b"authorization")
            and request.getHeader(b"authorization").decode("latin-1"),
            request.method.decode("ascii"),
            request.uri.decode("latin-1"),
            _headers(request),
        )
        request.sdcd_account = account
        if account.login != login:
            raise errors.Forbidden(f"{account.login} may not act as {login}")
        return account

    @app.route("/--ping", methods=["GET", "HEAD"])
    def ping(self, request) -> bytes:
        return _json(request, 200, {"ping": "pong", "cloudapi": {"versions": CLOUDAPI_VERSIONS}})

    @app.route("/<string:login>", methods=["GET", "HEAD"])
    async def account(self, request, login: str) -> bytes:
        account = await self._caller(request, login)
        return _json(
            request,
            200,
            {
                "id": account.uuid,
                "login": account.login,
                "created": account.created,
                "updated": account.created,
                "approved_for_provisioning": account.approved,
            },
        )

    @app.route("/<string:login>/keys", methods=["GET", "HEAD"])
    async def keys(self, request, login: str) -> bytes:
        await self._caller(request, login)
        keys = await self._accounts.keys(login)
        return _json(
            request,
            200,
            [{"name": k.name, "fingerprint": k.fingerprint, "key": k.openssh} for k in keys],
        )

    @app.route("/<string:login>/services", methods=["GET", "HEAD"])
    async def services(self, request, login: str) -> bytes:
        await self._caller(request, login)
        return _json(request, 200, {"docker": self._docker_url})
