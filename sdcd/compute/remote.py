"""``RemoteCompute``: the ``ICompute`` of a node whose agent sdcd reaches over the
internal API (``sdcd.compute.wire`` frames on mutual TLS).

Plain calls share a small pool of verified connections; each stream call opens its own.
Streams relay with back-pressure: when sdcd's consumer pauses us we stop reading the
agent's connection (TCP then stops the node's producer), and stdin waits while the
agent's connection does not take it. The agent must present a ``node`` certificate of
the node id we meant to reach; anything else is refused before a call is sent.

Events: ``subscribe`` keeps one connection to the agent open for as long as the client
is open, reconnecting after a loss. Every (re)connection is announced to listeners as a
``{"action": "resync", "node": id}`` event, so the caller can catch up with what it may
have missed (the node's state is the truth; events only tell when to look).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, endpoints, interfaces, protocol, threads
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from sdcd.auth import internal
from sdcd.compute import wire
from sdcd.compute.interface import ComputeError, ICompute
from sdcd.compute.threadwriter import PauseGate

#: Idle connections kept per node for plain calls.
IDLE_CONNECTIONS = 8
CONNECT_TIMEOUT = 5
#: Seconds a plain call may take before the node counts as unreachable (a host that
#: froze or a partition sends no RST). ``exec_wait`` waits as long as the exec runs.
CALL_TIMEOUT = 300.0
UNTIMED = frozenset({"exec_wait"})
#: Seconds between attempts to re-open a lost event subscription.
RESUBSCRIBE_DELAY = 1.0
#: Plain calls that are safe to send again when a pooled connection turned out dead.
RETRYABLE = frozenset(
    {
        "info",
        "state",
        "list",
        "top",
        "stats",
        "changes",
        "archive_stat",
        "disk_usage",
        "exec_inspect",
        "exec_wait",
        "prepare",
        "remove",
        "resize",
        "exec_resize",
    }
)


@implementer(IOpenSSLContextFactory)
class _ClientContextFactory:
    def __init__(self, material: internal.Material) -> None:
        self._context = internal.context(material, server=False)

    def getContext(self) -> SSL.Context:
        return self._context


class _Lost(Exception):
    """The connection closed before the call's answer."""


@implementer(interfaces.IHandshakeListener)
class _Connection(wire.FrameProtocol):
    """One verified connection to the agent; frames go to its current handler."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self.ready: defer.Deferred = defer.Deferred()
        self.handler: Any = None
        self.closed = False
        self.reused = False
        self._lost_reason: Any = None

    def handshakeCompleted(self) -> None:
        try:
            internal.check_peer(self.transport.getHandle(), "node", self.node_id)
        except internal.PKIError as e:
            self.transport.abortConnection()
            if not self.ready.called:
                self.ready.errback(ComputeError(f"compute node refused: {e}", "unavailable"))
            return
        if not self.ready.called:
            self.ready.callback(self)

    def frameReceived(self, kind: bytes, payload: bytes) -> None:
        if self.handler is None:
            raise wire.ProtocolViolation("a frame nobody asked for")
        self.handler.frame(kind, payload)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.closed = True
        if self._held and self._buffer:
            self._lost_reason = reason  # the frames that came first go first
            return
        self._lost(reason)

    def release(self) -> None:
        super().release()
        reason, self._lost_reason = self._lost_reason, None
        if reason is not None and not self._held:
            self._lost(reason)
        elif reason is not None:
            self._lost_reason = reason

    def _lost(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(ComputeError(f"{reason.getErrorMessage()}", "unavailable"))
        if self.handler is not None:
            handler, self.handler = self.handler, None
            handler.lost(reason)


def _error(payload: bytes) -> ComputeError:
    value = wire.decode_json(payload)
    if not isinstance(value, dict):
        return ComputeError("the compute node sent a malformed error")
    return ComputeError(str(value.get("message", "")), str(value.get("kind", "failed")))


def _result(payload: bytes) -> Any:
    value = wire.decode_json(payload)
    if not isinstance(value, dict):
        raise wire.ProtocolViolation("a result is {result}")
    return value.get("result")


class _Reply:
    """Waits for one RESULT/ERROR frame."""

    def __init__(self) -> None:
        self.d: defer.Deferred = defer.Deferred()

    def frame(self, kind: bytes, payload: bytes) -> None:
        if self.d.called:
            raise wire.ProtocolViolation("a second answer")
        if kind == wire.RESULT:
            self.d.callback(_result(payload))
        elif kind == wire.ERROR:
            self.d.errback(_error(payload))
        else:
            raise wire.ProtocolViolation("an answer was expected")

    def lost(self, reason: Any) -> None:
        if not self.d.called:
            self.d.errback(_Lost(reason.getErrorMessage()))


def _plain_call(method: str) -> Callable[..., defer.Deferred]:
    """The ``ICompute`` method ``method``, as one plain call to the agent."""

    def call(self: RemoteCompute, *args: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._plain(method, *args))

    call.__name__ = method
    call.__doc__ = f"``ICompute.{method}`` on the node's agent."
    return call


@implementer(ICompute)
class RemoteCompute:
    """A compute node reached through its agent."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        node_id: str,
        host: str,
        port: int,
        material: internal.Material,
        blobs: Any = None,
        name: str = "",
    ) -> None:
        self._reactor = reactor
        self.node_id = node_id
        self.name = name or node_id
        self.host = host
        self.port = port
        self._context = _ClientContextFactory(material)
        self._blobs = blobs
        self._idle: list[_Connection] = []
        self._listeners: list[Callable[[dict], None]] = []
        self._events: _Connection | None = None
        self._closing = False
        self._resubscribe: Any = None

    def moved(self, host: str, port: int) -> None:
        """The agent registered another address (it restarted elsewhere)."""
        if (host, port) != (self.host, self.port):
            self.host, self.port = host, port
            for c in self._idle:
                c.transport.loseConnection()
            self._idle.clear()
            if self._events is not None:
                self._events.transport.loseConnection()

    # -- connections -------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        endpoint = endpoints.SSL4ClientEndpoint(
            self._reactor, self.host, self.port, self._context, timeout=CONNECT_TIMEOUT
        )
        try:
            conn = await endpoints.connectProtocol(endpoint, _Connection(self.node_id))
            return await conn.ready
        except ComputeError as e:
            raise self._unreachable(e.message) from None
        except Exception as e:  # refused, timed out, no route
            raise self._unreachable(str(e) or type(e).__name__) from None

    def _unreachable(self, why: str) -> ComputeError:
        return ComputeError(
            f"compute node {self.name} ({self.host}:{self.port}) is unreachable: {why}",
            "unavailable",
        )

    async def _pooled(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return await self._connect()

    def _release(self, conn: _Connection) -> None:
        if conn.closed or self._closing:
            if not conn.closed:
                conn.transport.loseConnection()
            return
        if len(self._idle) < IDLE_CONNECTIONS:
            conn.handler = None
            self._idle.append(conn)
        else:
            conn.transport.loseConnection()

    async def _plain(self, method: str, *args: Any) -> Any:
        for attempt in (1, 2):
            conn = await self._pooled()
            reply = _Reply()
            conn.handler = reply
            conn.send_json(wire.CALL, {"method": method, "args": list(args)})
            if method not in UNTIMED:
                reply.d.addTimeout(CALL_TIMEOUT, self._reactor, self._timed_out(conn, method))
            try:
                result = await reply.d
            except _Lost as e:
                if attempt == 1 and conn.reused and method in RETRYABLE:
                    continue
                raise self._unreachable(f"connection lost during {method}: {e}") from None
            except ComputeError:
                self._release(conn)
                raise
            self._release(conn)
            return result
        raise AssertionError("unreachable")

    def _timed_out(self, conn: _Connection, method: str) -> Callable:
        def give_up(result: Any, timeout: float) -> Any:
            conn.transport.abortConnection()
            raise self._unreachable(f"no answer to {method} within {timeout:.0f} s")

        return give_up

    async def _stream(self, method: str, args: list, handler: Any) -> _Connection:
        conn = await self._connect()
        conn.handler = handler
        conn.send_json(wire.CALL, {"method": method, "args": args})
        bind = getattr(handler, "bind", None)
        if bind is not None:
            bind(conn)
        else:
            handler.conn = conn
        return conn

    # -- plain calls: one frame each way (``wire.PLAIN``) ------------------------------

    info = _plain_call("info")
    prepare = _plain_call("prepare")
    start = _plain_call("start")
    stop = _plain_call("stop")
    kill = _plain_call("kill")
    pause = _plain_call("pause")
    unpause = _plain_call("unpause")
    top = _plain_call("top")
    resize = _plain_call("resize")
    remove = _plain_call("remove")
    state = _plain_call("state")
    list = _plain_call("list")
    exec_resize = _plain_call("exec_resize")
    exec_inspect = _plain_call("exec_inspect")
    exec_wait = _plain_call("exec_wait")
    stats = _plain_call("stats")
    changes = _plain_call("changes")
    archive_stat = _plain_call("archive_stat")
    disk_usage = _plain_call("disk_usage")
    prune_layers = _plain_call("prune_layers")

    def commit_layer(self, cid):
        return defer.ensureDeferred(self._commit_layer(cid))

    async def _commit_layer(self, cid: str) -> dict:
        """The node writes the layer into its own cache; the image store then fetches it
        from the node, checking its digest, so the layer is published when this returns."""
        layer = await self._plain("commit_layer", cid)
        if self._blobs is not None and not self._blobs.has(layer["digest"]):
            writer = self._blobs.writer(layer["digest"], layer["size"])
            try:
                await self._write_stream("blob_get", [layer["digest"]], writer)
                await writer.commit()
            except BaseException:
                await writer.abort()
                raise
        return layer

    # -- streams -------------------------------------------------------------------------

    def logs(self, cid, options, consumer):
        return defer.ensureDeferred(self._logs(cid, options, consumer))

    async def _logs(self, cid: str, options: dict, consumer: Any) -> None:
        handler = _LogsHandler(consumer)
        await self._stream("logs", [cid, options], handler)
        await handler.done

    def export(self, cid, consumer):
        return defer.ensureDeferred(self._write_stream("export", [cid], consumer))

    def archive_get(self, cid, path, consumer):
        return defer.ensureDeferred(self._write_stream("archive_get", [cid, path], consumer))

    async def _write_stream(self, method: str, args: list, consumer: Any) -> None:
        handler = _DataHandler(consumer)
        await self._stream(method, args, handler)
        await handler.done

    def archive_put(self, cid, path, read, no_overwrite_dir_non_dir):
        return defer.ensureDeferred(
            self._archive_put(cid, path, read, bool(no_overwrite_dir_non_dir))
        )

    async def _archive_put(self, cid: str, path: str, read: Any, no_overwrite: bool) -> None:
        handler = _Reply()
        conn = await self._stream("archive_put", [cid, path, no_overwrite], handler)
        gate = _WriteGate(conn)
        try:
            while not handler.d.called:
                chunk = await threads.deferToThread(read, wire.CHUNK)
                if conn.closed or handler.d.called:
                    break
                if not chunk:
                    conn.send(wire.DATA_END)
                    break
                conn.send(wire.DATA, chunk)
                await gate.wait()
        finally:
            gate.close()
        try:
            await handler.d
        except _Lost as e:
            raise self._unreachable(f"connection lost during a copy: {e}") from None

    def attach(self, cid, options, sink):
        return self._session("attach", [cid, options], sink)

    def exec_start(self, cid, exec_id, config, sink):
        if sink is None:
            return defer.ensureDeferred(self._exec_detached(cid, exec_id, config))
        return self._session("exec_start", [cid, exec_id, config], sink)

    async def _exec_detached(self, cid: str, exec_id: str, config: dict) -> Any:
        handler = _Reply()
        await self._stream("exec_detached", [cid, exec_id, config], handler)
        try:
            result = await handler.d
        except _Lost as e:
            raise self._unreachable(f"connection lost during exec: {e}") from None
        return RemoteSession.detached(int(result.get("pid") or 0))

    def _session(self, method: str, args: list, sink: Any) -> defer.Deferred:
        session = RemoteSession(sink)

        def cancel(_d: defer.Deferred) -> None:
            session.close()

        joined: defer.Deferred = defer.Deferred(cancel)
        session.joined = joined

        async def open_() -> None:
            try:
                conn = await self._stream(method, args, session)
            except Exception as e:
                if not joined.called:
                    joined.errback(e)
                return
            if session.closed_early:
                conn.transport.loseConnection()

        defer.ensureDeferred(open_())
        return joined

    # -- events --------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[dict], None]) -> None:
        self._listeners.append(listener)
        if self._events is None and self._resubscribe is None:
            self._schedule_subscription(0)

    def _schedule_subscription(self, delay: float) -> None:
        if self._closing:
            return
        self._resubscribe = self._reactor.callLater(delay, self._open_subscription)

    def _open_subscription(self) -> None:
        self._resubscribe = None
        d = defer.ensureDeferred(self._subscribe_once())
        d.addErrback(lambda f: self._schedule_subscription(RESUBSCRIBE_DELAY))

    async def _subscribe_once(self) -> None:
        handler = _EventsHandler(self)
        conn = await self._stream("subscribe", [], handler)
        self._events = conn
        await handler.subscribed
        self._dispatch({"action": "resync", "node": self.node_id, "id": ""})

    def _events_lost(self) -> None:
        self._events = None
        self._schedule_subscription(RESUBSCRIBE_DELAY)

    def _dispatch(self, event: dict) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.failure("node event listener failed")

    async def close(self) -> None:
        """Drop every connection; stop re-subscribing."""
        self._closing = True
        if self._resubscribe is not None and self._resubscribe.active():
            self._resubscribe.cancel()
        self._resubscribe = None
        if self._events is not None:
            self._events.transport.loseConnection()
        for conn in self._idle:
            conn.transport.loseConnection()
        self._idle.clear()


# -- stream handlers ---------------------------------------------------------------------


class _Pausing:
    """A push producer over the agent connection: pausing it stops reading the agent."""

    def __init__(self) -> None:
        self.conn: _Connection | None = None
        self.stopped = False
        self.paused = False

    def bind(self, conn: _Connection) -> None:
        """The stream's connection is open: apply a pause or stop that came first."""
        self.conn = conn
        if self.stopped:
            self.stopProducing()
        elif self.paused:
            self.pauseProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        if self.conn is not None and not self.conn.closed:
            self.conn.hold()
            self.conn.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.conn is not None:
            if not self.conn.closed:
                self.conn.transport.resumeProducing()
            self.conn.release()

    def stopProducing(self) -> None:
        self.stopped = True
        if self.conn is not None and not self.conn.closed:
            self.conn.transport.loseConnection()


class _ToConsumer(_Pausing):
    """A stream into a caller's consumer: ``done`` fires at its RESULT, fails with its
    ERROR or a lost connection (a consumer that stopped us just ends it)."""

    what = "stream"

    def __init__(self, consumer: Any) -> None:
        super().__init__()
        self.consumer = consumer
        self.done: defer.Deferred = defer.Deferred()

    def ended(self, kind: bytes, payload: bytes) -> None:
        self._end(None if kind == wire.RESULT else _error(payload))

    def release(self) -> None:
        """The consumer's producer registration ends."""

    def _end(self, error: Exception | None) -> None:
        if self.done.called:
            return
        self.release()
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)

    def lost(self, reason: Any) -> None:
        if self.stopped:
            self._end(None)
        else:
            message = f"{self.what} lost: {reason.getErrorMessage()}"
            self._end(ComputeError(message, "unavailable"))


class _LogsHandler(_ToConsumer):
    what = "log stream"

    def __init__(self, consumer: Any) -> None:
        super().__init__(consumer)
        consumer.registerProducer(self, True)

    def frame(self, kind: bytes, payload: bytes) -> None:
        stream = wire.STREAM_TYPES.get(kind)
        if stream is not None:
            time, data = wire.split_log_payload(payload)
            self.consumer.entry(stream, data, time)
        elif kind in (wire.RESULT, wire.ERROR):
            self.ended(kind, payload)
        else:
            raise wire.ProtocolViolation("a log stream's frame was expected")

    def release(self) -> None:
        self.consumer.unregisterProducer()


class _DataHandler(_ToConsumer):
    """Tar or blob bytes to an IConsumer (a request, a blob writer)."""

    registered = False

    def frame(self, kind: bytes, payload: bytes) -> None:
        if kind == wire.DATA:
            if not self.registered:  # only once bytes flow (an error comes first)
                self.registered = True
                self._register()
            self.consumer.write(payload)
        elif kind in (wire.RESULT, wire.ERROR):
            self.ended(kind, payload)
        else:
            raise wire.ProtocolViolation("a data frame was expected")

    def _register(self) -> None:
        attach = getattr(self.consumer, "attach", None)
        if attach is not None:  # a BlobWriter takes its producer this way
            attach(self)
        else:
            self.consumer.registerProducer(self, True)

    def release(self) -> None:
        if self.registered and getattr(self.consumer, "attach", None) is None:
            self.consumer.unregisterProducer()


class _WriteGate(PauseGate):
    """Lets a writer wait while the agent connection's send buffer is full."""

    def __init__(self, conn: _Connection) -> None:
        super().__init__()
        self.conn = conn
        conn.transport.registerProducer(self, True)

    def close(self) -> None:
        self.resumeProducing()
        if not self.conn.closed and self.conn.transport.producer is self:
            self.conn.transport.unregisterProducer()


class _EventsHandler:
    def __init__(self, remote: RemoteCompute) -> None:
        self.remote = remote
        self.subscribed: defer.Deferred = defer.Deferred()

    def frame(self, kind: bytes, payload: bytes) -> None:
        if kind == wire.EVENT:
            event = wire.decode_json(payload)
            if isinstance(event, dict) and isinstance(event.get("id"), str):
                self.remote._dispatch(event)
        elif kind == wire.RESULT and not self.subscribed.called:
            self.subscribed.callback(None)
        elif kind == wire.ERROR and not self.subscribed.called:
            self.subscribed.errback(_error(payload))
        else:
            raise wire.ProtocolViolation("an event was expected")

    def lost(self, reason: Any) -> None:
        if not self.subscribed.called:
            self.subscribed.errback(ComputeError(reason.getErrorMessage(), "unavailable"))
            return
        self.remote._events_lost()


class RemoteSession(_Pausing):
    """``IStdioSession`` of a session on the agent: output frames to ``sink``, stdin as
    frames; ``done`` as the agent reports it (or at once on a detach here)."""

    def __init__(self, sink: Any) -> None:
        super().__init__()
        self.sink = sink
        self.pid = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.done: defer.Deferred = defer.Deferred()
        self.joined: defer.Deferred | None = None
        self.closed_early = False
        self._ended = False
        self._stdin_producer: Any = None
        if sink is not None:
            sink.registerProducer(self, True)

    @classmethod
    def detached(cls, pid: int) -> RemoteSession:
        session = cls(None)
        session.pid = pid
        session._ended = True
        session.done.callback("detached")
        return session

    # IStdioSession
    def write_stdin(self, data: bytes) -> None:
        if self._ended or not data or self.conn is None or self.conn.closed:
            return
        self.bytes_in += len(data)
        for start in range(0, len(data), wire.CHUNK):
            self.conn.send(wire.STDIN, bytes(data[start : start + wire.CHUNK]))

    def close_stdin(self) -> None:
        if not self._ended and self.conn is not None and not self.conn.closed:
            self.conn.send(wire.STDIN_CLOSED)

    def close(self) -> None:
        """Detach: the agent's session ends, the process goes on."""
        if self._ended:
            return
        if self.conn is None:
            self.closed_early = True
        elif not self.conn.closed:
            self.conn.send(wire.DETACH)
            self.conn.transport.loseConnection()
        self._end("detached")
        if self.joined is not None and not self.joined.called:
            self.joined.errback(defer.CancelledError())

    # IConsumer for stdin: the caller's stdin pauses while the agent does not take it
    def write(self, data: bytes) -> None:
        self.write_stdin(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._stdin_producer = producer
        if self.conn is not None and not self.conn.closed:
            self.conn.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._stdin_producer = None
        if self.conn is not None and not self.conn.closed and self.conn.transport.producer:
            self.conn.transport.unregisterProducer()

    # frames from the agent
    def frame(self, kind: bytes, payload: bytes) -> None:
        stream = wire.STREAM_TYPES.get(kind)
        if stream is not None:
            if not self._ended and self.sink is not None:
                self.bytes_out += len(payload)
                self.sink.write(stream, payload)
        elif kind == wire.JOINED:
            joined = wire.decode_json(payload)
            self.pid = int(joined.get("pid") or 0) if isinstance(joined, dict) else 0
            if self._stdin_producer is not None:
                self.conn.transport.registerProducer(self._stdin_producer, True)
            if self.joined is not None and not self.joined.called:
                self.joined.callback(self)
        elif kind == wire.END:
            if not self._ended:
                self._end("exited")
        elif kind == wire.RESULT:
            how = _result(payload)
            self._end(how if how in ("exited", "detached") else "exited")
        elif kind == wire.ERROR:
            error = _error(payload)
            if self.joined is not None and not self.joined.called:
                self._ended = True
                if self.sink is not None:
                    self.sink.unregisterProducer()
                self.joined.errback(error)
                self.done.callback("detached")
            else:
                self._end("exited")
        else:
            raise wire.ProtocolViolation("a session frame was expected")

    def lost(self, reason: Any) -> None:
        if self.joined is not None and not self.joined.called:
            self._ended = True
            if self.sink is not None:
                self.sink.unregisterProducer()
            self.joined.errback(
                ComputeError(f"session lost: {reason.getErrorMessage()}", "unavailable")
            )
            self.done.callback("detached")
            return
        self._end("detached")

    def _end(self, how: str) -> None:
        if self._ended:
            return
        self._ended = True
        if self.sink is not None:
            self.sink.unregisterProducer()
            if how == "exited":
                self.sink.end()
        self.done.callback(how)


__all__ = ["RemoteCompute", "RemoteSession"]
