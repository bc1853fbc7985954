"""The front of the Docker endpoint: API version prefix, authentication, ``/ca.pem``,
one log line per request. Every route is reached only through here, so no route can
forget to authenticate."""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from sdcd import __version__
from sdcd.api import versions
from sdcd.api.app import common_headers
from sdcd.api.errors import render_failure
from sdcd.auth.accounts import Authenticator
from sdcd.core.errors import InvalidArgument


def peer_certificate(request):
    """The client's certificate as a ``cryptography`` object, or None (converted once per
    connection)."""
    channel = request.channel
    if channel is None:
        return None
    if not hasattr(channel, "sdcd_peer_cert"):
        get = getattr(channel.transport, "getPeerCertificate", None)
        cert = get() if get else None
        channel.sdcd_peer_cert = cert.to_cryptography() if cert is not None else None
    return channel.sdcd_peer_cert


# A module-level Logger keeps its namespace (a class attribute would take the class's).
access_log = Logger(namespace="sdcd.access")


class DockerRoot(Resource):
    """Takes every request, strips and checks ``/vX.Y``, authenticates, then hands the
    request to the Klein routes."""

    isLeaf = True

    def __init__(self, routes: Resource, authenticator: Authenticator, ca_pem: bytes) -> None:
        super().__init__()
        self._routes = routes
        self._auth = authenticator
        self._ca_pem = ca_pem

    def render(self, request) -> int | bytes:
        request.sdcd_account = None
        common_headers(request, __version__)
        try:
            request.sdcd_version = self._take_version(request)
        except InvalidArgument:
            return render_failure(request, Failure())
        if request.postpath == [b"ca.pem"] and request.method in (b"GET", b"HEAD"):
            request.setHeader(b"content-type", b"application/x-pem-file")
            return self._ca_pem
        d = ensureDeferred(self._auth.from_certificate(peer_certificate(request)))
        d.addCallbacks(
            self._authenticated, self._refused, callbackArgs=(request,), errbackArgs=(request,)
        )
        return server.NOT_DONE_YET

    @staticmethod
    def _take_version(request) -> tuple[int, int]:
        """Move a ``vX.Y`` segment from postpath to prepath; the routes never see it."""
        if request.postpath:
            text = versions.prefix_version(request.postpath[0])
            if text is not None:
                version = versions.negotiate(text)
                request.prepath.append(request.postpath.pop(0))
                return version
        return versions.DEFAULT_VERSION

    def _authenticated(self, account, request) -> None:
        request.sdcd_account = account
        result = self._routes.render(request)
        if result is not server.NOT_DONE_YET:
            request.write(result)
            request.finish()

    @staticmethod
    def _refused(failure: Failure, request) -> None:
        body = render_failure(request, failure)
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()


class LoggingSite(server.Site):
    """A Site that logs one structured line per request instead of an access log file."""

    def __init__(self, resource: Resource, clock: Callable[[], float] = time.monotonic, **kw):
        super().__init__(resource, **kw)
        self.displayTracebacks = False
        self._clock = clock

    def getResourceFor(self, request):
        request.sdcd_started = self._clock()
        return super().getResourceFor(request)

    def log(self, request) -> None:
        started = getattr(request, "sdcd_started", None)
        account = getattr(request, "sdcd_account", None)
        access_log.info(
            "{account} {method} {path} {status} {duration_ms:.1f}ms",
            account=account.login if account else "-",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("utf-8", "replace"),
            status=request.code,
            duration_ms=(self._clock() - started) * 1000 if started else 0.0,
            peer=str(request.getClientAddress()),
        )
