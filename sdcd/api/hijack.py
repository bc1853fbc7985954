"""Taking an HTTP/1.1 connection over for a raw stream (attach, exec start).

The route returns an ``AttachResource`` or ``ExecStartResource``; its ``render`` looks
the container or exec up (errors are ordinary HTTP errors), then writes the status line
itself — ``101 UPGRADED`` when the client asked to upgrade, ``200 OK`` for old clients —
and from then on the connection carries the process's stdio: output framed (raw with a
tty, 8-byte headers without), stdin passed on. The HTTP channel stops being the
transport's producer and loses its idle timeout; the request never finishes: the stream
closes the connection.

stdin EOF is a half-close (TCP FIN, or TLS close_notify — see ``halfclose``): it closes
the container's stdin (conmon decides with StdinOnce) while output keeps flowing; when
the output ends we close (TLS close_notify, then FIN).
"""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from sdcd.api.errors import render_failure
from sdcd.api.halfclose import hijack_transport
from sdcd.api.logstream import frame
from sdcd.api.params import flag, read_json
from sdcd.compute.interface import ILogConsumer, IStreamSink
from sdcd.core.errors import CoreError, InvalidArgument

log = Logger()

RAW = b"application/vnd.docker.raw-stream"
MULTIPLEXED = b"application/vnd.docker.multiplexed-stream"
DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


def parse_detach_keys(text: str) -> bytes:
    """dockerd's detach key syntax: ``ctrl-<letter>`` and single characters, by commas."""
    keys = bytearray()
    for part in text.split(","):
        part = part.strip()
        if len(part) == 1:
            keys.append(ord(part))
        elif part.startswith("ctrl-") and len(part) == 6:
            c = part[5]
            if c.isalpha():
                keys.append(ord(c.lower()) - ord("a") + 1)
            elif c in "@[\\]^_":
                keys.append({"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}[c])
            else:
                raise InvalidArgument(f"Invalid detach keys ({text}) provided")
        else:
            raise InvalidArgument(f"Invalid detach keys ({text}) provided")
    return bytes(keys)


def take_over(request, content_type: bytes, stream):
    """Write the status line and headers ourselves; input now goes to ``stream``."""
    channel = request.channel
    channel.setTimeout(None)
    transport = channel.transport
    transport.unregisterProducer()
    if request.getHeader(b"upgrade") is not None:
        head = (
            b"HTTP/1.1 101 UPGRADED\r\nContent-Type: " + content_type
            + b"\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        )  # fmt: skip
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n\r\n"
    transport.write(head)
    hijack_transport(transport, stream)
    # Bytes that came after the request (stdin racing the upgrade) wait in the channel's
    # pipelining buffer, which may also have paused the transport: they are the
    # stream's now.
    early = b"".join(channel._dataBuffer)
    channel._dataBuffer = []
    transport.resumeProducing()
    if early:
        stream.dataReceived(early)
    return transport


@implementer(IStreamSink, ILogConsumer)
class HijackedStream:
    """One hijacked session: the process's output to the client, the client's bytes to
    its stdin (watching for detach keys), half-close both ways. ``how`` says how it
    ended: open, exited, detached, client gone, failed."""

    def __init__(self, transport, multiplexed: bool, detach_keys: bytes) -> None:
        self.transport = transport
        self._multiplexed = multiplexed
        self._detach_keys = detach_keys
        self._matched = 0
        self.session = None
        self._early: list[bytes] = []
        self._stdin_ended = False
        self.sent = 0
        self.received = 0
        self.how = "open"
        self._producer = None
        self._closed = False

    # output (IStreamSink, and ILogConsumer for logs=1)
    def write(self, stream: str, data: bytes) -> None:
        if self._closed:
            return
        out = frame(stream, data) if self._multiplexed else data
        self.sent += len(out)
        self.transport.write(out)

    def entry(self, stream: str, data: bytes, time: str) -> None:
        self.write(stream, data)

    def end(self) -> None:
        """The output ended; the resource closes once it has nothing more to say (an
        exec's exit code must be recorded before the client asks for it)."""
        if self.how == "open":
            self.how = "exited"

    def close(self) -> None:
        """Close our side: TLS close_notify then FIN (pending output is sent first)."""
        if not self._closed:
            self._closed = True
            self.transport.loseConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        if self._producer is None and not self._closed:
            self._producer = producer
            self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producer is not None:
            self._producer = None
            self.transport.unregisterProducer()

    # input (what the hijacked transport delivers)
    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        data = self._watch_detach(data)
        if data is None:
            return
        if self.session is None:
            self._early.append(data)
        else:
            self.session.write_stdin(data)

    def readConnectionLost(self) -> None:
        self._stdin_ended = True
        if self.session is not None:
            self.session.close_stdin()

    def _watch_detach(self, data: bytes) -> bytes | None:
        """Pass bytes on, holding back a partial detach sequence; None after a detach."""
        keys = self._detach_keys
        if not keys or self.how != "open":
            return data if self.how == "open" else None
        out = bytearray()
        for byte in data:
            if byte == keys[self._matched]:
                self._matched += 1
                if self._matched == len(keys):
                    self._matched = 0
                    self.detach()
                    return None
                continue
            if self._matched:
                out += keys[: self._matched]
                self._matched = 0
            out.append(byte)
        return bytes(out)

    def detach(self) -> None:
        self.how = "detached"
        if self.session is not None:
            self.session.close()
        self.close()

    def joined(self, session) -> None:
        """The node session exists: flush stdin that raced it."""
        self.session = session
        for data in self._early:
            session.write_stdin(data)
        self._early = []
        if self._stdin_ended:
            session.close_stdin()
        if self.how != "open":
            session.close()

    def client_gone(self) -> None:
        if self.how == "open":
            self.how = "client gone"
        self._closed = True
        if self.session is not None:
            self.session.close()


class HijackResource(Resource):
    """Shared by attach and exec start: errors before the take-over are HTTP errors;
    after it, the connection is closed (and the session logged) whatever happens."""

    isLeaf = True
    kind = "stream"

    def render(self, request):
        d = defer.ensureDeferred(self._serve(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _serve(self, request) -> None:
        raise NotImplementedError

    def _failed(self, failure, request) -> None:
        stream = getattr(request, "_sdcd_stream", None)
        if stream is None:
            request.write(render_failure(request, failure))
            request.finish()
            return
        if not failure.check(CoreError):
            log.failure("{kind} failed", failure, kind=self.kind)
        stream.close()

    def take_over(self, request, multiplexed: bool, detach_keys: bytes) -> HijackedStream:
        """Answer 101 (or 200) and hand the connection to a new HijackedStream."""
        new_type = multiplexed and request.sdcd_version >= (1, 42)
        content_type = MULTIPLEXED if new_type else RAW
        stream = HijackedStream(request.channel.transport, multiplexed, detach_keys)
        take_over(request, content_type, stream)
        request._sdcd_stream = stream
        request.notifyFinish().addBoth(lambda _: stream.client_gone())
        return stream

    def log_session(self, request, stream: HijackedStream, target: str, started: float) -> None:
        """One line per hijacked session: who, what, how long, how much, how it ended."""
        log.info(
            "{kind} {account} {target} ended ({how}) after {secs:.1f}s: {sent} bytes out, "
            "{received} bytes in",
            kind=self.kind, account=request.sdcd_account.login, target=target,
            how=stream.how, secs=time.monotonic() - started, sent=stream.sent,
            received=stream.received,
        )  # fmt: skip


def _detach_keys(text: str | None) -> bytes:
    return parse_detach_keys(text or DEFAULT_DETACH_KEYS)


class AttachResource(HijackResource):
    """``POST /containers/{id}/attach``."""

    kind = "attach"

    def __init__(self, containers, ref: str) -> None:
        super().__init__()
        self._containers = containers
        self._ref = ref

    async def _serve(self, request) -> None:
        account = request.sdcd_account
        record, _ = await self._containers.get(account, self._ref)
        options = {s: flag(request, s) for s in ("stdin", "stdout", "stderr")}
        if not any(options.values()):
            raise InvalidArgument("Bad parameters: you must choose at least one stream")
        keys_text = request.args.get(b"detachKeys", [b""])[-1].decode()
        detach_keys = _detach_keys(keys_text) if options["stdin"] else b""
        stream = self.take_over(request, not record.config.get("Tty"), detach_keys)
        started = time.monotonic()
        try:
            if flag(request, "logs"):
                chosen = {s for s in ("stdout", "stderr") if options[s]}
                await self._containers.replay_logs(
                    account, record.id, _ChosenStreams(stream, chosen)
                )
            if flag(request, "stream", default=True) and stream.how == "open":
                session = await self._containers.attach(account, record.id, options, stream)
                stream.joined(session)
                await session.done
        finally:
            stream.close()
            self.log_session(request, stream, record.id[:12], started)


@implementer(ILogConsumer)
class _ChosenStreams:
    """The kept log for ``logs=1``: only the streams the attach asked for (as dockerd)."""

    def __init__(self, stream: HijackedStream, streams: set[str]) -> None:
        self._stream = stream
        self._streams = streams

    def entry(self, stream: str, data: bytes, time: str) -> None:
        if stream in self._streams:
            self._stream.entry(stream, data, time)

    def registerProducer(self, producer, streaming: bool) -> None:
        self._stream.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._stream.unregisterProducer()


class ExecStartResource(HijackResource):
    """``POST /exec/{id}/start``: detached (a plain 200) or hijacked."""

    kind = "exec"

    def __init__(self, execs, exec_id: str) -> None:
        super().__init__()
        self._execs = execs
        self._exec_id = exec_id

    async def _serve(self, request) -> None:
        account = request.sdcd_account
        body = read_json(request)
        size = _console_size(body.get("ConsoleSize"))
        if body.get("Detach"):
            await self._execs.start(account, self._exec_id, None, size)
            request.setResponseCode(200)
            request.finish()
            return
        record = await self._execs.check_start(account, self._exec_id)
        config = record.config
        keys = _detach_keys(config.get("DetachKeys")) if config.get("AttachStdin") else b""
        stream = self.take_over(request, not body.get("Tty"), keys)
        started = time.monotonic()
        try:
            session = await self._execs.start(account, self._exec_id, stream, size)
            stream.joined(session)
            await session.done
            if stream.how == "exited":
                await self._execs.exited(self._exec_id)
        except CoreError as e:  # as dockerd: said in the stream, the exit code in inspect
            stream.write("stdout", e.message.encode() + b"\r\n")
            stream.how = "failed"
        finally:
            stream.close()
            target = f"{record.container[:12]} exec {self._exec_id[:12]}"
            self.log_session(request, stream, target, started)


def _console_size(value) -> tuple[int, int] | None:
    """``ConsoleSize`` ([height, width], API 1.42) of an exec start body."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and 0 <= v < 65536 for v in value)
    ):
        raise InvalidArgument("ConsoleSize must be [height, width]")
    return (value[0], value[1]) if value[0] and value[1] else None
