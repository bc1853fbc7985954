"""The Docker Remote API routes. A route parses, calls ``sdcd.core`` and renders.

Routes see requests that ``sdcd.api.root`` has already versioned and authenticated:
``request.sdcd_account`` and ``request.sdcd_version`` are set.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from sdcd.api import system as render_system
from sdcd.api.errors import render_failure, write_json_error
from sdcd.api.versions import MAX_VERSION, render
from sdcd.core.system import SystemService


def json_body(request, body: Any) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode() + b"\n"


class DockerAPI:
    """The Klein application; dependencies come in through ``__init__``."""

    app = Klein()

    def __init__(self, system: SystemService) -> None:
        self._system = system

    def resource(self):
        return self.app.resource()

    @app.handle_errors(RouteNotFound, MethodNotAllowed)
    def _not_found(self, request, failure: Failure) -> bytes:
        return write_json_error(request, 404, "page not found")

    @app.handle_errors(Exception)
    def _error(self, request, failure: Failure) -> bytes:
        return render_failure(request, failure)

    @app.route("/_ping", methods=["GET", "HEAD"])
    def ping(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache, no-store, must-revalidate")
        request.setHeader(b"pragma", b"no-cache")
        return b"OK"

    @app.route("/version", methods=["GET"])
    async def version(self, request) -> bytes:
        view = await self._system.view(request.sdcd_account)
        body = render_system.version_body(
            self._system.version, view.kernel_version, view.architecture, request.sdcd_version
        )
        return json_body(request, body)

    @app.route("/info", methods=["GET"])
    async def info(self, request) -> bytes:
        view = await self._system.view(request.sdcd_account)
        return json_body(
            request, render_system.info_body(view, self._system.version, request.sdcd_version)
        )


def common_headers(request, version: str) -> None:
    """Headers on every response, as dockerd sets them (the CLI negotiates from them)."""
    request.setHeader(b"api-version", render(MAX_VERSION).encode())
    request.setHeader(b"ostype", b"linux")
    request.setHeader(b"docker-experimental", b"false")
    request.setHeader(b"server", render_system.SERVER_HEADER.format(version=version).encode())
