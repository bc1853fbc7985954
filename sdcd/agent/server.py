"""The agent's internal API: a node's ``ICompute`` served to sdcd instances over
``sdcd.compute.wire`` frames on mutual TLS.

Only peers whose internal certificate says role ``api`` are served (checked once the
handshake is done, before any frame is read). Plain calls answer one frame each; the
stream calls relay with back-pressure both ways: the node's producer (a log follower, a
stdio session, a tar writer) is registered with this connection's transport, so a slow
sdcd pauses the node's reading; and stdin is paused at TCP when conmon does not take it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from zope.interface import implementer

from sdcd.auth import internal
from sdcd.compute import wire
from sdcd.compute.interface import ComputeError, IStreamSink

#: Methods answered with one RESULT frame; their arguments are JSON as they are.
PLAIN = frozenset(
    {
        "info",
        "prepare",
        "start",
        "stop",
        "kill",
        "pause",
        "unpause",
        "top",
        "resize",
        "remove",
        "state",
        "list",
        "exec_resize",
        "exec_inspect",
        "exec_wait",
        "stats",
        "changes",
        "commit_layer",
        "archive_stat",
        "disk_usage",
        "prune_layers",
    }
)
#: Bytes of a put tar queued for the node's extracting thread before reading pauses.
PUT_BUFFER = 4 * 1024 * 1024


def error_payload(e: BaseException) -> dict:
    if isinstance(e, ComputeError):
        return {"message": e.message, "kind": e.kind}
    return {"message": f"the compute node failed: {e}", "kind": "failed"}


@implementer(interfaces.IOpenSSLContextFactory)
class ServerContextFactory:
    """twisted's server context factory over the internal PKI's context."""

    def __init__(self, material: internal.Material) -> None:
        self._context = internal.context(material, server=True)

    def getContext(self) -> SSL.Context:
        return self._context


@implementer(interfaces.IHandshakeListener)
class AgentProtocol(wire.FrameProtocol):
    """One sdcd connection: calls, one at a time, or one stream."""

    log = Logger()

    def __init__(self, compute: Any, blobs: Any = None) -> None:
        super().__init__()
        self.compute = compute
        self.blobs = blobs
        self.peer: internal.Identity | None = None
        self._busy = False
        self._stream: _Stream | None = None
        self._closed = False

    def handshakeCompleted(self) -> None:
        try:
            self.peer = internal.check_peer(self.transport.getHandle(), "api")
        except internal.PKIError as e:
            self.log.warn("refused internal API peer: {e}", e=str(e))
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.lost()

    def frameReceived(self, kind: bytes, payload: bytes) -> None:
        if self.peer is None:
            raise wire.ProtocolViolation("no verified peer")
        if self._stream is not None:
            self._stream.frame(kind, payload)
            return
        if kind != wire.CALL or self._busy:
            raise wire.ProtocolViolation("a call was expected")
        call = wire.decode_json(payload)
        if not isinstance(call, dict) or not isinstance(call.get("args"), list):
            raise wire.ProtocolViolation("a call is {method, args}")
        method = call.get("method")
        if method in PLAIN:
            self._busy = True
            defer.ensureDeferred(self._plain(method, call["args"]))
            return
        stream = STREAMS.get(method)
        if stream is None:
            raise wire.ProtocolViolation(f"no such method: {method!r}")
        self._stream = stream(self, call["args"])
        self._stream.begin()

    async def _plain(self, method: str, args: list) -> None:
        try:
            result = await getattr(self.compute, method)(*args)
        except Exception as e:
            if not isinstance(e, ComputeError):
                self.log.failure("{method} failed", method=method)
            self._reply(wire.ERROR, error_payload(e))
        else:
            self._reply(wire.RESULT, {"result": result})
        self._busy = False

    def _reply(self, kind: bytes, value: Any) -> None:
        if not self._closed:
            self.send_json(kind, value)

    def finish(self, outcome: Any) -> None:
        """A stream's end: its RESULT (or ERROR for an exception), then close."""
        if isinstance(outcome, BaseException):
            self._reply(wire.ERROR, error_payload(outcome))
        else:
            self._reply(wire.RESULT, {"result": outcome})
        if not self._closed:
            self.transport.loseConnection()


class AgentFactory(protocol.Factory):
    """Serves one node's ``ICompute`` (and, for commits, its blob cache)."""

    def __init__(self, compute: Any, blobs: Any = None) -> None:
        self.compute = compute
        self.blobs = blobs

    def buildProtocol(self, addr: Any) -> AgentProtocol:
        return AgentProtocol(self.compute, self.blobs)


def listen(reactor: Any, port: int, host: str, material: internal.Material, factory: AgentFactory):
    """Listen for sdcd on ``host:port`` with the node's certificate."""
    return reactor.listenSSL(port, factory, ServerContextFactory(material), interface=host)


# -- streams -------------------------------------------------------------------------------


class _Stream:
    """One stream call owning its connection."""

    def __init__(self, proto: AgentProtocol, args: list) -> None:
        self.proto = proto
        self.args = args
        self.task: defer.Deferred | None = None

    def begin(self) -> None:
        self.task = defer.ensureDeferred(self.run())
        self.task.addCallbacks(self.proto.finish, self._failed)

    def _failed(self, failure: Any) -> None:
        if not failure.check(ComputeError, defer.CancelledError):
            self.proto.log.failure("stream call failed", failure)
        self.proto.finish(failure.value)

    async def run(self) -> Any:
        raise NotImplementedError

    def frame(self, kind: bytes, payload: bytes) -> None:
        raise wire.ProtocolViolation("this stream takes no frames")

    def lost(self) -> None:
        """sdcd went away: stop the node's side."""
        if self.task is not None and not self.task.called:
            self.task.cancel()


class _Subscribe(_Stream):
    """Every node event from now on, until sdcd closes."""

    async def run(self) -> Any:
        self.done: defer.Deferred = defer.Deferred()
        self.proto.compute.subscribe(self._event)
        self.proto.send_json(wire.RESULT, {"result": None})  # subscribed
        try:
            await self.done
        finally:
            self.proto.compute.unsubscribe(self._event)

    def _event(self, event: dict) -> None:
        if not self.proto._closed:
            self.proto.send_json(wire.EVENT, event)

    def lost(self) -> None:
        if not self.done.called:
            self.done.callback(None)


class _TransportConsumer:
    """The node's producers write here; the connection's transport does back-pressure."""

    def __init__(self, proto: AgentProtocol) -> None:
        self.proto = proto

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not self.proto._closed:
            self.proto.transport.registerProducer(producer, streaming)
        elif streaming:
            producer.stopProducing()

    def unregisterProducer(self) -> None:
        if not self.proto._closed and self.proto.transport.producer is not None:
            self.proto.transport.unregisterProducer()


class _LogConsumer(_TransportConsumer):
    def entry(self, stream: str, data: bytes, time: str) -> None:
        if not self.proto._closed:
            self.proto.send(wire.STREAM_FRAMES[stream], wire.log_payload(time, data))


class _Logs(_Stream):
    async def run(self) -> Any:
        cid, options = self.args
        await self.proto.compute.logs(cid, options, _LogConsumer(self.proto))


class _DataConsumer(_TransportConsumer):
    def write(self, data: bytes) -> None:
        if self.proto._closed:
            return
        for start in range(0, len(data), wire.CHUNK):
            self.proto.send(wire.DATA, bytes(data[start : start + wire.CHUNK]))


class _Export(_Stream):
    async def run(self) -> Any:
        (cid,) = self.args
        await self.proto.compute.export(cid, _DataConsumer(self.proto))


class _ArchiveGet(_Stream):
    async def run(self) -> Any:
        cid, path = self.args
        await self.proto.compute.archive_get(cid, path, _DataConsumer(self.proto))


class _BlobGet(_Stream):
    """A blob the node holds (a committed layer), for sdcd's image store."""

    async def run(self) -> Any:
        (digest,) = self.args
        blobs = self.proto.blobs
        if blobs is None or not blobs.has(digest):
            raise ComputeError(f"blob {digest} is not on this node", "not_found")
        await _send_file(self.proto, blobs.path(digest))


async def _send_file(proto: AgentProtocol, path: Any) -> None:
    from twisted.internet import threads

    from sdcd.compute.threadwriter import ExportStopped, ThreadedWriter

    bridge = ThreadedWriter(_reactor(), _DataConsumer(proto))

    def copy() -> None:
        with open(path, "rb") as f:
            while chunk := f.read(wire.CHUNK):
                bridge.write(chunk)

    try:
        await threads.deferToThread(copy)
    except ExportStopped:
        pass
    finally:
        bridge.done()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _ThreadReader:
    """The tar sdcd sends, read by the node's extracting thread; reading the connection
    pauses while more than ``PUT_BUFFER`` bytes wait."""

    def __init__(self, proto: AgentProtocol) -> None:
        self.proto = proto
        self._chunks: queue.Queue = queue.Queue()
        self._queued = 0
        self._lock = threading.Lock()
        self._paused = False
        self._rest = b""

    def feed(self, data: bytes | None) -> None:
        """From the reactor: a chunk, or None at the end (or when sdcd went away)."""
        if data:
            with self._lock:
                self._queued += len(data)
                full = self._queued > PUT_BUFFER
            if full and not self._paused:
                self._paused = True
                self.proto.transport.pauseProducing()
        self._chunks.put(data)

    def _resume(self) -> None:
        if self._paused and not self.proto._closed:
            self._paused = False
            self.proto.transport.resumeProducing()

    def read(self, n: int = -1) -> bytes:
        """From the thread: up to ``n`` bytes, ``b""`` at the end."""
        if not self._rest:
            chunk = self._chunks.get()
            if chunk is None:
                self._chunks.put(None)  # the end stays the end
                return b""
            with self._lock:
                self._queued -= len(chunk)
                low = self._queued <= PUT_BUFFER // 2
            if low and self._paused:
                _reactor().callFromThread(self._resume)
            self._rest = chunk
        if n is None or n < 0 or n >= len(self._rest):
            out, self._rest = self._rest, b""
        else:
            out, self._rest = self._rest[:n], self._rest[n:]
        return out


class _ArchivePut(_Stream):
    def begin(self) -> None:
        self.reader = _ThreadReader(self.proto)
        self.ended = False
        super().begin()

    async def run(self) -> Any:
        cid, path, no_overwrite = self.args
        try:
            await self.proto.compute.archive_put(cid, path, self.reader.read, no_overwrite)
        finally:
            self.reader.feed(None)  # a thread that stopped early must not leave us paused
            self.reader._resume()

    def frame(self, kind: bytes, payload: bytes) -> None:
        if self.ended:
            raise wire.ProtocolViolation("data after its end")
        if kind == wire.DATA:
            self.reader.feed(payload)
        elif kind == wire.DATA_END:
            self.ended = True
            self.reader.feed(None)
        else:
            raise wire.ProtocolViolation("a put takes data frames")

    def lost(self) -> None:
        self.reader.feed(None)
        super().lost()


@implementer(IStreamSink)
class _FrameSink(_TransportConsumer):
    """A stdio session's output as frames to sdcd."""

    def write(self, stream: str, data: bytes) -> None:
        if not self.proto._closed:
            self.proto.send(wire.STREAM_FRAMES[stream], data)

    def end(self) -> None:
        if not self.proto._closed:
            self.proto.send(wire.END)


class _Session(_Stream):
    """attach or attached exec: joined, then stdin frames in and output frames out."""

    session: Any = None

    def begin(self) -> None:
        self.early: list[tuple[bytes, bytes]] = []
        super().begin()

    async def run(self) -> Any:
        sink = _FrameSink(self.proto)
        self.session = await self.open(sink)
        self.proto.send_json(wire.JOINED, {"pid": getattr(self.session, "pid", 0)})
        # sdcd's stdin pauses at TCP while conmon does not take it.
        if not self.proto._closed:
            self.session.registerProducer(self.proto.transport, True)
        for kind, payload in self.early:
            self.frame(kind, payload)
        self.early = []
        if self.proto._closed:
            self.session.close()
        try:
            how = await self.session.done
        finally:
            self.session.unregisterProducer()
        return how

    async def open(self, sink: _FrameSink) -> Any:
        raise NotImplementedError

    def frame(self, kind: bytes, payload: bytes) -> None:
        if kind not in (wire.STDIN, wire.STDIN_CLOSED, wire.DETACH):
            raise wire.ProtocolViolation("a session takes stdin frames")
        if self.session is None:
            self.early.append((kind, payload))
        elif kind == wire.STDIN:
            self.session.write_stdin(payload)
        elif kind == wire.STDIN_CLOSED:
            self.session.close_stdin()
        else:
            self.session.close()

    def lost(self) -> None:
        if self.session is not None:
            self.session.close()
        else:
            super().lost()


class _Attach(_Session):
    async def open(self, sink: _FrameSink) -> Any:
        cid, options = self.args
        return await self.proto.compute.attach(cid, options, sink)


class _Exec(_Session):
    async def open(self, sink: _FrameSink) -> Any:
        cid, exec_id, config = self.args
        return await self.proto.compute.exec_start(cid, exec_id, config, sink)


class _ExecDetached(_Stream):
    async def run(self) -> Any:
        cid, exec_id, config = self.args
        session = await self.proto.compute.exec_start(cid, exec_id, config, None)
        return {"pid": session.pid}


STREAMS: dict[str, type[_Stream]] = {
    "subscribe": _Subscribe,
    "logs": _Logs,
    "export": _Export,
    "archive_get": _ArchiveGet,
    "archive_put": _ArchivePut,
    "attach": _Attach,
    "exec_start": _Exec,
    "exec_detached": _ExecDetached,
    "blob_get": _BlobGet,
}

__all__ = ["AgentFactory", "AgentProtocol", "listen"]
