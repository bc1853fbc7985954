"""Taking an HTTP/1.1 connection over for a raw stream (attach).

The route returns an ``AttachResource``; its ``render`` looks the container up (errors
are ordinary HTTP errors), then writes the status line itself — ``101 UPGRADED`` when the
client asked to upgrade, ``200 OK`` for old clients — and from then on the connection
carries the container's stdio: output framed (raw with a tty, 8-byte headers without),
stdin passed on. The HTTP channel stops being the transport's producer and loses its
idle timeout; the request never finishes: the stream closes the connection.

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
from sdcd.api.params import flag
from sdcd.compute.interface import ILogConsumer, IStreamSink
from sdcd.core.errors import InvalidArgument

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
    return transport


@implementer(IStreamSink, ILogConsumer)
class AttachStream:
    """One hijacked attach: the container's output to the client, the client's bytes
    to the container's stdin (with detach keys), half-close both ways."""

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

    # output (IStreamSink, and ILogConsumer for logs=1)
    def write(self, stream: str, data: bytes) -> None:
        out = frame(stream, data) if self._multiplexed else data
        self.sent += len(out)
        self.transport.write(out)

    def entry(self, stream: str, data: bytes, time: str) -> None:
        self.write(stream, data)

    def end(self) -> None:
        self.how = "exited"
        self.transport.loseConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        if self._producer is None:
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
        if not keys:
            return data
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
        self.transport.loseConnection()

    def joined(self, session) -> None:
        """The node session exists: flush stdin that raced it."""
        self.session = session
        for data in self._early:
            session.write_stdin(data)
        self._early = []
        if self._stdin_ended:
            session.close_stdin()


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
        if request.startedWriting or request.finished or getattr(request, "_hijacked", False):
            log.failure("attach failed", failure)
            transport = request.channel.transport if request.channel else None
            if transport is not None:
                transport.loseConnection()
            return
        request.write(render_failure(request, failure))
        request.finish()

    async def _attach(self, request) -> None:
        account = request.sdcd_account
        record, _ = await self._containers.get(account, self._ref)
        options = {s: flag(request, s) for s in ("stdin", "stdout", "stderr")}
        if not any(options.values()):
            raise InvalidArgument("Bad parameters: you must choose at least one stream")
        keys_text = request.args.get(b"detachKeys", [b""])[-1].decode() or DEFAULT_DETACH_KEYS
        detach_keys = parse_detach_keys(keys_text) if options["stdin"] else b""
        multiplexed = not record.config.get("Tty")
        content_type = MULTIPLEXED if multiplexed and request.sdcd_version >= (1, 42) else RAW
        stream = AttachStream(None, multiplexed, detach_keys)
        stream.transport = take_over(request, content_type, stream)
        request._hijacked = True
        started = time.monotonic()
        request.notifyFinish().addBoth(lambda _: self._client_gone(stream))
        if flag(request, "logs"):
            await self._containers.replay_logs(account, record.id, stream)
        if flag(request, "stream", default=True) and stream.how == "open":
            session = await self._containers.attach(account, record.id, options, stream)
            stream.joined(session)
            if stream.how != "open":
                session.close()
            await session.done
        else:
            stream.transport.loseConnection()
        log.info(
            "attach {account} {cid} ended ({how}) after {secs:.1f}s: {sent} bytes out, "
            "{received} bytes in",
            account=account.login, cid=record.id[:12], how=stream.how,
            secs=time.monotonic() - started, sent=stream.sent, received=stream.received,
        )  # fmt: skip

    @staticmethod
    def _client_gone(stream: AttachStream) -> None:
        if stream.how == "open":
            stream.how = "client gone"
        if stream.session is not None:
            stream.session.close()
