"""The image store served to compute nodes (issue 7): ``GET /blobs/<digest>`` over
mutual TLS with the internal PKI.

Nodes fetch the layers they lack from here. Many nodes may start the same image at
once, so at most ``max_concurrent`` bodies are sent at a time and further requests
queue; a slot is given back when a transfer ends or its client goes away. Bodies are
streamed from the file with back-pressure, never read whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import BinaryIO

from OpenSSL import SSL
from twisted.internet import defer, threads
from twisted.internet.interfaces import IListeningPort, IOpenSSLContextFactory
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from sdcd.auth import internal
from sdcd.images.blobstore import BlobError, FileBlobStore, check_digest

log = Logger()


class _Sender(FileSender):
    """Bigger reads than FileSender's 16 KiB: fewer round trips through the reactor."""

    CHUNK_SIZE = 1 << 18


def _error(request: server.Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"message": message}).encode() + b"\n"


def _open(path) -> tuple[BinaryIO, int] | None:
    """Open a blob and take its size (in a thread: the disk may be slow)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed when the transfer ends)
    except FileNotFoundError:
        return None
    return f, os.fstat(f.fileno()).st_size


class BlobResource(Resource):
    """``/blobs/<digest>``: a blob's bytes to internal peers of an allowed role."""

    isLeaf = True

    def __init__(
        self,
        store: FileBlobStore,
        max_concurrent: int = 4,
        allowed_roles: Iterable[str] = ("node", "api"),
    ) -> None:
        super().__init__()
        self._store = store
        self._roles = frozenset(allowed_roles)
        self._slots = defer.DeferredSemaphore(max_concurrent)
        #: Bodies being sent now, requests queued for a slot, bodies sent in full.
        self.active = 0
        self.waiting = 0
        self.served = 0
        #: Every GET/HEAD that passed the checks, and the most bodies ever sent at once.
        self.requests = 0
        self.max_active = 0

    def _allowed(self, request: server.Request) -> bool:
        """The peer's certificate is a verified internal one (the TLS context checked
        the chain) with one of the allowed roles."""
        get = getattr(getattr(request, "transport", None), "getPeerCertificate", None)
        cert = get() if get is not None else None
        if cert is None:
            return False
        try:
            who = internal.identity(cert.to_cryptography())
        except internal.PKIError:
            return False
        return who.role in self._roles

    def _digest(self, request: server.Request) -> str:
        if len(request.postpath) != 1:
            raise BlobError("bad blob path")
        return check_digest(request.postpath[0].decode("ascii", "replace"))

    def render_HEAD(self, request: server.Request):
        return self.render_GET(request)

    def render_GET(self, request: server.Request):
        if not self._allowed(request):
            return _error(request, 403, "an internal node or api certificate is required")
        try:
            digest = self._digest(request)
        except BlobError as e:
            return _error(request, 400, str(e))
        self.requests += 1
        defer.ensureDeferred(self._serve(request, digest)).addErrback(
            lambda f: log.failure("serving blob {digest}", f, digest=digest)
        )
        return server.NOT_DONE_YET

    async def _serve(self, request: server.Request, digest: str) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        if request.method == b"HEAD":
            await self._send(request, digest, gone, head=True)
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            if not gone:
                await self._send(request, digest, gone, head=False)
        finally:
            self._slots.release()

    async def _send(self, request: server.Request, digest: str, gone: list, head: bool) -> None:
        opened = await threads.deferToThreadPool(
            self._store.reactor, self._store.threadpool, _open, self._store.path(digest)
        )
        if gone:
            if opened is not None:
                opened[0].close()
            return
        if opened is None:
            request.write(_error(request, 404, f"blob {digest} is not in the image store"))
            request.finish()
            return
        f, size = opened
        request.setHeader(b"content-length", str(size).encode())
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"docker-content-digest", digest.encode())
        if head:
            f.close()
            request.finish()
            return
        await self._stream(request, f, gone)

    async def _stream(self, request: server.Request, f: BinaryIO, gone: list) -> None:
        """Send the file; the slot is held until the last byte went out or the client
        disconnected (which stops the sender, failing its Deferred)."""
        sender = _Sender()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        finished = request.notifyFinish()
        finished.addErrback(lambda _: sender.stopProducing())
        try:
            await sender.beginFileTransfer(f, request)
        except Exception:
            return  # the client went away mid-body
        finally:
            self.active -= 1
            f.close()
        if not gone:
            self.served += 1
            request.finish()


@implementer(IOpenSSLContextFactory)
class _ContextFactory:
    """The old-style context factory ``listenSSL`` takes."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def site(resource: BlobResource) -> server.Site:
    """A Site whose root serves ``/blobs`` and nothing else."""
    root = Resource()
    root.putChild(b"blobs", resource)
    s = server.Site(root)
    s.displayTracebacks = False
    s.noisy = False
    return s


def listen(
    reactor, port: int, host: str, material: internal.Material, resource: BlobResource
) -> IListeningPort:
    """Serve ``resource`` at ``/blobs`` on ``host:port`` over mutual TLS: only peers
    with a certificate from the internal CA complete the handshake."""
    factory = _ContextFactory(internal.context(material, server=True))
    return reactor.listenSSL(port, site(resource), factory, interface=host)
