"""A compute node's cache of image blobs (issue 7): the layers a container needs are
fetched from the datacenter's image store (``sdcd.images.blobserver``) when the node
lacks them, verified, and kept.

Concurrent requests for one blob share a single download, and a node runs at most
``max_parallel`` downloads at once. Bodies stream into a ``BlobWriter`` (disk writes in
a thread, the connection paused while one is pending), which publishes the file only
once its sha256 (and size, when known) match: a corrupt or truncated download leaves
nothing behind, and the next image store is tried.

TLS is mutual with the internal PKI: the store must present an ``api`` certificate
from the internal CA. Host names are not matched against the certificate's SANs: any
sdcd instance may serve any blob, and every blob is checked against its digest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import treq
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from sdcd.auth import internal
from sdcd.images.blobstore import BlobError, FileBlobStore, check_digest
from sdcd.images.bodies import BodyCollector


class BlobFetchError(Exception):
    """A blob could not be had from any image store; the message says why."""


class _NotThere(Exception):
    """This store answered 404."""


@implementer(IOpenSSLClientConnectionCreator)
class _InternalConnections:
    """Client connections that present our internal certificate and accept only a
    server whose certificate, chained to the internal CA, has ``role``."""

    def __init__(self, context: SSL.Context, role: str) -> None:
        self._context = context
        self._role = role

    def clientConnectionForTLS(self, tls_protocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tls_protocol)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            self._verifier(tls_protocol),
        )
        connection.set_connect_state()
        return connection

    def _verifier(self, tls_protocol):
        """Chain errors stay OpenSSL's; the leaf must carry our peer's role, or the
        handshake fails with a ``PKIError`` as the connection's reason."""

        def verify(_conn, cert, _errno, depth, ok) -> bool:
            if not ok or depth != 0:
                return bool(ok)
            try:
                who = internal.identity(cert.to_cryptography())
                if who.role != self._role:
                    raise internal.PKIError(f"peer is {who.role}:{who.ident}, not {self._role}")
            except internal.PKIError:
                tls_protocol.failVerification(Failure())
                return False
            return True

        return verify


@implementer(IPolicyForHTTPS)
class InternalTLSPolicy:
    """Mutual TLS with the internal PKI for every host (an Agent's contextFactory)."""

    def __init__(self, material: internal.Material, role: str = "api") -> None:
        self._creator = _InternalConnections(internal.context(material, server=False), role)

    def creatorForNetloc(self, hostname: bytes, port: int) -> _InternalConnections:
        return self._creator


class BlobCache:
    """The node's blobs under ``root``, fetched from the image stores ``sources()``
    names (base URLs such as ``https://10.0.0.1:2377``, tried in order)."""

    log = Logger()

    def __init__(
        self,
        root: Path,
        sources: Callable[[], list[str]],
        material: internal.Material,
        reactor,
        max_parallel: int = 4,
        idle_timeout: float = 30.0,
    ) -> None:
        self.store = FileBlobStore(root, reactor)
        self._sources = sources
        self._reactor = reactor
        self._idle = idle_timeout
        self._slots = defer.DeferredSemaphore(max_parallel)
        self._waiters: dict[str, list[defer.Deferred]] = {}
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = max_parallel
        self._pool.retryAutomatically = False
        agent = Agent(reactor, contextFactory=InternalTLSPolicy(material), pool=self._pool)
        self._http = treq.client.HTTPClient(agent)
        #: Downloads started (one per blob however many asked at once), for tests.
        self.downloads = 0

    def path(self, digest: str) -> Path:
        return self.store.path(digest)

    def has(self, digest: str) -> bool:
        return self.store.has(digest)

    async def ensure(self, digest: str, size: int | None = None) -> Path:
        """The blob's cached file, downloaded first if the node lacks it. Callers asking
        for a blob already on its way wait for that download and share its outcome."""
        try:
            check_digest(digest)
        except BlobError as e:
            raise BlobFetchError(str(e)) from None
        if self.has(digest):
            return self.path(digest)
        mine: defer.Deferred = defer.Deferred()
        waiters = self._waiters.get(digest)
        if waiters is not None:
            waiters.append(mine)
        else:
            self._waiters[digest] = [mine]
            self.downloads += 1
            d = self._slots.run(lambda: defer.ensureDeferred(self._download(digest, size)))
            d.addBoth(self._settle, digest)
        return await mine

    def _settle(self, result, digest: str) -> None:
        """Hand the one download's outcome to every waiter; a later ensure() after a
        failure starts afresh."""
        for waiter in self._waiters.pop(digest, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _download(self, digest: str, size: int | None) -> Path:
        if self.has(digest):  # another cache user put it there while we queued
            return self.path(digest)
        sources = list(self._sources())
        if not sources:
            raise BlobFetchError(f"cannot fetch blob {digest}: no image store is known")
        problems: list[str] = []
        missing = 0
        for base in sources:
            try:
                await self._fetch(base, digest, size)
                return self.path(digest)
            except _NotThere:
                missing += 1
            except Exception as e:
                self.log.warn("fetching {digest} from {base}: {e}", digest=digest, base=base, e=e)
                problems.append(f"{base}: {_describe(e)}")
        if missing == len(sources):
            raise BlobFetchError(f"blob {digest} is not in the image store")
        raise BlobFetchError(f"cannot fetch blob {digest}: " + "; ".join(problems))

    async def _fetch(self, base: str, digest: str, size: int | None) -> None:
        response = await self._http.get(f"{base.rstrip('/')}/blobs/{digest}", unbuffered=True)
        if response.code == 404:
            await response.content()
            raise _NotThere()
        if response.code != 200:
            body = await response.content()
            raise BlobFetchError(f"HTTP {response.code}: {_message(body)}")
        writer = self.store.writer(digest, size)
        done: defer.Deferred = defer.Deferred()
        try:
            collector = BodyCollector(writer.write, done, self._reactor, self._idle, BlobFetchError)
            response.deliverBody(collector)
            if collector.transport is not None:  # paused while the disk write is pending
                writer.attach(collector.transport)
            await done
            await writer.commit()  # DigestMismatch: nothing is stored
        except BaseException:
            await writer.abort()
            raise

    async def close(self) -> None:
        """Drop the kept-alive connections (shutdown, tests)."""
        await self._pool.closeCachedConnections()


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace") or "no message"


def _describe(e: Exception) -> str:
    """A short reason: connection errors wrap their causes in lists of Failures."""
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_describe(r.value) for r in reasons)
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    return str(e) or type(e).__name__
