"""Taking an HTTP/1.1 connection over for a raw stream (attach).

The route returns an ``AttachResource``; its ``render`` looks the container up (errors
are ordinary HTTP errors), then writes the status line itself — ``101 UPGRADED`` when the
client asked to upgrade, ``200 OK`` for old clients — and from then on the connection
carries the container's output. The HTTP channel stops being the transport's producer
and loses its idle timeout; the request never finishes, the stream closes the connection.

This first version carries output only (stdout/stderr from the node's log, from the
moment of attaching until the container exits): enough for ``docker run`` without
``-i``. Stdin, half-close and TLS close_notify handling arrive with the streams issue.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from sdcd.api.errors import render_failure
from sdcd.api.halfclose import hijack_transport
from sdcd.api.logstream import frame
from sdcd.compute.interface import ILogConsumer
from sdcd.core.errors import InvalidArgument

log = Logger()

RAW = b"application/vnd.docker.raw-stream"
MULTIPLEXED = b"application/vnd.docker.multiplexed-stream"


def _flag(request, name: str) -> bool:
    values = request.args.get(name.encode())
    return bool(values) and values[-1].decode().lower() in ("1", "true", "yes")


def take_over(request, content_type: bytes):
    """Write the status line and headers ourselves; return the raw transport."""
    channel = request.channel
    channel.setTimeout(None)
    transport = channel.transport
    transport.unregisterProducer()
    upgrade = request.getHeader(b"upgrade") is not None
    if upgrade:
        head = (
            b"HTTP/1.1 101 UPGRADED\r\nContent-Type: "
            + content_type
            + b"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        )
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n\r\n"
    transport.write(head)
    hijack_transport(transport, _OutputOnly())
    return transport


class _OutputOnly:
    """The input side of an output-only attach: stdin is not wired yet (bytes are
    dropped) and the client's half-close ends nothing: output keeps flowing."""

    def dataReceived(self, data: bytes) -> None:
        pass

    def readConnectionLost(self) -> None:
        pass


@implementer(ILogConsumer)
class _AttachOutput:
    """Container output to a hijacked transport, with back-pressure."""

    def __init__(self, transport, streams: set[str], multiplexed: bool) -> None:
        self._transport = transport
        self._streams = streams
        self._multiplexed = multiplexed
        self.sent = 0

    def entry(self, stream: str, data: bytes, time: str) -> None:
        if stream in self._streams:
            out = frame(stream, data) if self._multiplexed else data
            self.sent += len(out)
            self._transport.write(out)

    def registerProducer(self, producer, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()


class AttachResource(Resource):
    """``POST /containers/{id}/attach``."""

    isLeaf = True

    def __init__(self, containers, ref: str) -> None:
        super().__init__()
        self._containers = containers
        self._ref = ref

    def render(self, request):
        d = defer.ensureDeferred(self._attach(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure, request) -> None:
        if request.startedWriting or request.finished:
            log.failure("attach failed", failure)
            return
        request.write(render_failure(request, failure))
        request.finish()

    async def _attach(self, request) -> None:
        account = request.sdcd_account
        record, _ = await self._containers.get(account, self._ref)
        streams = {s for s in ("stdout", "stderr") if _flag(request, s)}
        if not streams and not _flag(request, "stdin"):
            raise InvalidArgument("Bad parameters: you must choose at least one stream")
        multiplexed = not record.config.get("Tty")
        content_type = MULTIPLEXED if multiplexed and request.sdcd_version >= (1, 42) else RAW
        ready: defer.Deferred = defer.Deferred()
        transport = None

        def started() -> None:
            nonlocal transport
            transport = take_over(request, content_type)
            output.transport = transport
            ready.callback(None)

        output = _LazyOutput(streams, multiplexed, started)
        done = defer.ensureDeferred(self._containers.attach_output(account, record.id, output))
        await defer.DeferredList([ready, done], fireOnOneCallback=True, fireOnOneErrback=True)
        try:
            await done
        finally:
            if transport is not None:
                transport.loseConnection()
        log.info(
            "attach {account} {cid} ended, {sent} bytes out",
            account=account.login,
            cid=record.id[:12],
            sent=output.sent,
        )


@implementer(ILogConsumer)
class _LazyOutput(_AttachOutput):
    """Takes the connection over once the node has registered the stream (so that a
    client that starts the container after our 101 loses none of its output)."""

    def __init__(self, streams, multiplexed, on_registered) -> None:
        super().__init__(None, streams, multiplexed)
        self._on_registered = on_registered
        self._registered = False

    @property
    def transport(self):
        return self._transport

    @transport.setter
    def transport(self, value) -> None:
        self._transport = value

    def registerProducer(self, producer, streaming: bool) -> None:
        if not self._registered:
            self._registered = True
            self._on_registered()
        super().registerProducer(producer, streaming)
