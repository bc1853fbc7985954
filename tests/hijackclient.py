"""A blocking raw-socket client for Docker's hijacked HTTP streams (attach, exec start).

Agents and treq cannot drive a connection after ``101 UPGRADED``, and Python's
``SSLSocket`` cannot half-close (its ``unwrap`` waits for the peer's close_notify and
hides whether the peer sent one). So this client keeps the TLS state machine in memory
(``ssl.SSLObject`` over two ``MemoryBIO``s) on top of a plain blocking socket, and moves
bytes between them itself. That gives full control over the wire:

* the request and "early" stdin leave in ONE ``sendall`` (stdin racing the upgrade);
* ``half_close("close_notify")`` sends a TLS close_notify and keeps reading (what newer Go
  clients do), ``half_close("fin")`` sends a bare TCP FIN with no close_notify (older
  clients), both leave the read side open;
* the end of the stream is observed exactly: reads end at the server's TLS close_notify
  (``close_notify_received``) or at a TCP FIN without one (``ragged_eof``); ``wait_fin``
  then tells whether the TCP FIN follows (``fin_received``) without our answering, and
  ``finish`` answers first (our close_notify, as Go's ``tls.Conn.Close`` does);
* ``rcvbuf`` shrinks the kernel's receive buffer and ``read_slowly`` reads N bytes per
  interval, for back-pressure tests; ``abort`` drops the connection with a RST.

Without a TLS context the same client speaks plain TCP. The response head is parsed with
``h11``; everything after it is the raw stream. ``demux``/``split_streams``/``Demuxer``
decode the 8-byte multiplexed stream headers. Usage::

    with HijackClient.for_user(alice, tls="1.2") as c:
        head = c.request("POST", f"/v1.41/containers/{cid}/attach?stream=1&stdin=1&stdout=1",
                         early=b"hello\\n")
        assert head.status == 101
        c.half_close("close_notify")
        out, err = split_streams(c.read_all(timeout=10))
        assert c.close_notify_received and c.wait_fin(5)
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: Stream ids of the multiplexed framing.
STDIN, STDOUT, STDERR = 0, 1, 2
_HEADER = struct.Struct(">BxxxI")
_RECV = 1 << 16


def tls_context(
    ca: Path, identity: tuple[Path, Path] | None = None, version: str | None = None
) -> ssl.SSLContext:
    """A client context verifying the server against ``ca``; ``identity`` is
    ``(key_path, cert_path)`` (as ``tests.dockercli.User.identity``); ``version`` "1.2" or
    "1.3" pins both the minimum and maximum TLS version."""
    context = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        context.minimum_version = context.maximum_version = TLS_VERSIONS[version]
    if identity is not None:
        key_path, cert_path = identity
        context.load_cert_chain(str(cert_path), str(key_path))
    return context


@dataclass
class Head:
    """The response head (and, for a non-stream response, its body)."""

    status: int
    reason: str
    #: Lower-cased names; a repeated header keeps its last value.
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]] = field(default_factory=list)
    #: The whole body of an ordinary (Content-Length or chunked) response, e.g. an error.
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class StreamError(Exception):
    """The connection ended in a way the test did not expect (timeout, bad TLS)."""


class HijackClient:
    """One connection: ``request`` once, then the hijacked stream. Blocking; every read
    takes a timeout and raises ``TimeoutError`` when it passes."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None = None,
        *,
        server_hostname: str = "localhost",
        timeout: float = 30.0,
        rcvbuf: int | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        #: Plaintext received but not yet handed to the caller.
        self._buf = bytearray()
        self.close_notify_received = False
        self.fin_received = False
        self.ragged_eof = False
        self._sent_close_notify = False
        self.bytes_sent = 0
        self._closed = False
        self.tls: ssl.SSLObject | None = None
        if context is not None:
            self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
            self._handshake()

    @classmethod
    def for_user(cls, user: Any, tls: str | None = None, **kwargs: Any) -> HijackClient:
        """A TLS connection to ``user``'s sdcd with its client certificate
        (``tests.dockercli.User``: ``identity`` and ``sdcd.ca_path``)."""
        sdcd = user.sdcd
        context = tls_context(sdcd.ca_path, user.identity, tls)
        return cls("127.0.0.1", sdcd.docker_port, context, **kwargs)

    # -- TLS plumbing ------------------------------------------------------------------

    def _flush(self) -> None:
        """Send what the TLS engine has queued for the wire."""
        if self.tls is not None and self._out.pending:
            self.sock.sendall(self._out.read())

    def _recv_raw(self, size: int, deadline: float | None) -> bytes:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no data before the deadline")
            self.sock.settimeout(left)
        else:
            self.sock.settimeout(None)
        try:
            return self.sock.recv(size)
        except TimeoutError:
            raise TimeoutError("no data before the deadline") from None
        except ConnectionResetError:
            raise StreamError("connection reset by the server") from None

    def _handshake(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self._recv_raw(_RECV, deadline)
                if not data:
                    raise StreamError("EOF during the TLS handshake") from None
                self._in.write(data)
        self._flush()

    @property
    def tls_version(self) -> str | None:
        return self.tls.version() if self.tls is not None else None

    def _fill(self, deadline: float | None, size: int = _RECV) -> bool:
        """Add plaintext to ``_buf``; False at the end of the stream (then the end flags
        say how it ended)."""
        if self.fin_received or self.close_notify_received or self.ragged_eof:
            return False
        if self.tls is None:
            data = self._recv_raw(size, deadline)
            if not data:
                self.fin_received = True
                return False
            self._buf += data
            return True
        while True:
            try:
                data = self.tls.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                raw = self._recv_raw(size, deadline)
                if raw:
                    self._in.write(raw)
                else:
                    self.fin_received = True
                    self._in.write_eof()
                continue
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLEOFError:
                self.ragged_eof = True
                return False
            if not data:  # close_notify (``read`` returns b"" unless we sent ours too)
                self.close_notify_received = True
                return False
            self._flush()  # e.g. a TLS 1.3 key update answered
            self._buf += data
            return True

    def wait_fin(self, timeout: float = 5.0) -> bool:
        """After the end of the stream: whether the TCP FIN arrives within ``timeout``
        (False if it does not). Bytes on the wire after the server's close_notify are a
        protocol error (``StreamError``)."""
        deadline = time.monotonic() + timeout
        while not self.fin_received:
            try:
                raw = self._recv_raw(_RECV, deadline)
            except TimeoutError:
                return False
            if not raw:
                self.fin_received = True
            elif self.close_notify_received:
                raise StreamError(f"{len(raw)} bytes on the wire after close_notify")
        return True

    def _drain_tls(self) -> None:
        """Decrypt everything already received, so ``unwrap`` (which reads once more
        after sending close_notify) cannot swallow application data."""
        if self.tls is None:
            return
        while True:
            try:
                data = self.tls.read(_RECV)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLEOFError:
                self.ragged_eof = True
                return
            if not data:
                self.close_notify_received = True
                return
            self._buf += data

    # -- request -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | dict | list | None = None,
        upgrade: bool = True,
        early: bytes = b"",
    ) -> Head:
        """Send an HTTP/1.1 request and read the response head. ``upgrade`` adds
        ``Connection: Upgrade`` and ``Upgrade: tcp`` (what docker clients send for attach
        and exec start); a dict/list ``body`` is sent as JSON; ``early`` bytes (stdin)
        go out in the same ``sendall`` as the request. For a stream response (101, or a
        200 without a length) the bytes after the head are kept as the stream's start; an
        ordinary response's body is read into ``Head.body``."""
        all_headers = {"Host": "docker", "User-Agent": "sdcd-tests-hijackclient"}
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        if upgrade:
            all_headers.update({"Connection": "Upgrade", "Upgrade": "tcp"})
        all_headers.update(headers or {})
        all_headers["Content-Length"] = str(len(body or b""))
        self._h11 = conn = h11.Connection(h11.CLIENT)
        wire = conn.send(h11.Request(method=method, target=path, headers=list(all_headers.items())))
        if body:
            wire += conn.send(h11.Data(data=body))
        wire += conn.send(h11.EndOfMessage())
        self.send_raw_plaintext(wire + early)
        return self._read_head()

    def _read_head(self) -> Head:
        conn = self._h11
        deadline = time.monotonic() + self.timeout
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                more = self._fill(deadline)
                if more:
                    conn.receive_data(bytes(self._buf))
                    self._buf.clear()
                else:
                    conn.receive_data(b"")
                continue
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue
            if isinstance(event, h11.InformationalResponse | h11.Response):
                break
            raise StreamError(f"unexpected {event!r} before the response head")
        raw = [(k.decode(), v.decode()) for k, v in event.headers]
        head = Head(event.status_code, event.reason.decode(), {k.lower(): v for k, v in raw}, raw)
        if event.status_code == 101:
            trailing, _closed = conn.trailing_data
            self._buf[:0] = trailing
        elif "content-length" in head.headers or "chunked" in head.headers.get(
            "transfer-encoding", ""
        ):
            head.body = self._read_h11_body(deadline)
        else:
            self._take_h11_buffer()
        return head

    def _read_h11_body(self, deadline: float) -> bytes:
        conn, body = self._h11, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(self._buf) if self._fill(deadline) else b"")
                self._buf.clear()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return bytes(body)

    def _take_h11_buffer(self) -> None:
        """A 200 stream without a length (old clients): h11 reads it as a body that ends
        with the connection; take what it has buffered and read the rest raw."""
        conn = self._h11
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                self._buf[:0] = event.data
            else:
                return

    # -- the stream: writing ---------------------------------------------------------

    def send_raw_plaintext(self, data: bytes) -> None:
        """Send application bytes (encrypted when TLS) in one ``sendall``."""
        self.bytes_sent += len(data)
        if self.tls is None:
            self.sock.sendall(data)
            return
        view = memoryview(data)
        while view:
            n = self.tls.write(view[: 1 << 14])
            view = view[n:]
        self._flush()

    def send(self, data: bytes) -> None:
        """Write to the hijacked stream (stdin)."""
        self.send_raw_plaintext(data)

    def half_close(self, mode: str = "close_notify") -> None:
        """End our side, keep reading. "close_notify": a TLS close_notify alert and
        nothing else (TCP stays open both ways); "fin": ``shutdown(SHUT_WR)`` on the TCP
        socket with no close_notify (for plain TCP the only mode there is)."""
        if mode == "close_notify":
            if self.tls is None:
                raise ValueError("close_notify needs TLS")
            self._drain_tls()
            # SSL_shutdown: queues close_notify, then wants the peer's (not waited for)
            with contextlib.suppress(ssl.SSLWantReadError):
                self.tls.unwrap()
            self._sent_close_notify = True
            self._flush()
        elif mode == "fin":
            self.sock.shutdown(socket.SHUT_WR)
        else:
            raise ValueError(mode)

    # -- the stream: reading -------------------------------------------------------------

    @property
    def eof(self) -> bool:
        return self.fin_received or self.close_notify_received or self.ragged_eof

    @property
    def clean_close(self) -> bool:
        """The server ended the stream with a TLS close_notify followed by a TCP FIN
        (plain TCP: a FIN)."""
        if self.tls is None:
            return self.fin_received
        return self.close_notify_received and self.fin_received and not self.ragged_eof

    def recv(self, size: int = _RECV, timeout: float | None = None) -> bytes:
        """Up to ``size`` bytes of the stream; b"" at its end."""
        if not self._buf:
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            self._fill(deadline, max(size, 1024) if self.tls is None else size)
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def read_into(self, sink: Callable[[bytes], None], timeout: float | None = None) -> int:
        """Hand every chunk to ``sink`` until the end of the stream; the byte count.
        ``timeout`` bounds the whole read (default: the client's timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        total = 0
        while True:
            if self._buf:
                chunk = bytes(self._buf)
                self._buf.clear()
                total += len(chunk)
                sink(chunk)
            elif not self._fill(deadline):
                return total

    def read_all(self, timeout: float | None = None) -> bytes:
        """Everything until the end of the stream."""
        out = bytearray()
        self.read_into(out.extend, timeout)
        return bytes(out)

    def read_until(self, wanted: bytes, timeout: float | None = None) -> bytes:
        """Read until ``wanted`` has arrived (in the raw stream, headers included); all
        read so far. Raises ``StreamError`` if the stream ends first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = bytearray()
        while wanted not in out:
            if not self._buf and not self._fill(deadline):
                raise StreamError(f"stream ended before {wanted!r}: {bytes(out[-200:])!r}")
            out += self._buf
            self._buf.clear()
        return bytes(out)

    def read_slowly(
        self,
        chunk: int,
        interval: float,
        duration: float,
        sink: Callable[[bytes], None] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> int:
        """A slow reader: at most ``chunk`` bytes every ``interval`` seconds for
        ``duration`` seconds (``tick`` is called after each read, e.g. to sample memory).
        Returns the bytes read; stops early at the end of the stream."""
        end = time.monotonic() + duration
        total = 0
        while time.monotonic() < end:
            data = self.recv(chunk, timeout=max(self.timeout, interval))
            if not data:
                break
            total += len(data)
            if sink is not None:
                sink(data)
            if tick is not None:
                tick()
            time.sleep(interval)
        return total

    # -- ending ---------------------------------------------------------------------------

    def finish(self, timeout: float = 5.0) -> bool:
        """End like Go's ``tls.Conn.Close`` (the docker CLI): our close_notify unless sent,
        then wait for the server's FIN; whether it came. Does not close the socket."""
        if self.tls is not None and not self._sent_close_notify:
            self.half_close("close_notify")
        return self.wait_fin(timeout)

    def abort(self) -> None:
        """Drop the connection at once (RST, no close_notify): a client that dies."""
        if not self._closed:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    def __enter__(self) -> HijackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the multiplexed framing ----------------------------------------------------------------


class Demuxer:
    """Incremental decoder of the 8-byte stream headers ``[stream, 0, 0, 0, size]``.
    ``counts`` has the payload bytes per stream; with ``keep`` the frames too (leave it off
    for hundreds of megabytes)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.frames: list[tuple[int, bytes]] = []
        self.counts = {STDIN: 0, STDOUT: 0, STDERR: 0}
        self.frame_count = 0
        self._pending = bytearray()
        self._left = 0  # payload bytes still due for the current frame
        self._stream = -1

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._left:
                take = view[: self._left]
                self._left -= len(take)
                self.counts[self._stream] += len(take)
                if self.keep:
                    self._pending += take
                    if not self._left:
                        self.frames.append((self._stream, bytes(self._pending)))
                        self._pending.clear()
                view = view[len(take) :]
                continue
            need = _HEADER.size - len(self._pending)
            self._pending += view[:need]
            view = view[need:]
            if len(self._pending) < _HEADER.size:
                return
            stream, size = _HEADER.unpack(self._pending)
            if stream not in self.counts or self._pending[1:4] != b"\0\0\0":
                raise ValueError(f"bad stream header {bytes(self._pending)!r}")
            self._pending.clear()
            self._stream, self._left = stream, size
            self.frame_count += 1
            if size == 0 and self.keep:
                self.frames.append((stream, b""))

    @property
    def complete(self) -> bool:
        """No frame is cut off (call at the end of the stream)."""
        return not self._left and not self._pending

    def stream(self, stream: int) -> bytes:
        return b"".join(d for s, d in self.frames if s == stream)


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """The frames of a whole multiplexed stream; ``ValueError`` if it is cut or malformed."""
    d = Demuxer()
    d.feed(data)
    if not d.complete:
        raise ValueError("the stream ends inside a frame")
    return d.frames


def split_streams(data: bytes) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a whole multiplexed stream."""
    frames = demux(data)
    return (
        b"".join(d for s, d in frames if s == STDOUT),
        b"".join(d for s, d in frames if s == STDERR),
    )
