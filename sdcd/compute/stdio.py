"""Interactive stdio of containers and exec sessions on this node, through conmon's attach
sockets. Transport-neutral: output goes to an ``IStreamSink``, input comes in through
``StdioSession.write_stdin``/``close_stdin``; the API's hijack layer (or the agent relaying
it, issue 7) adapts a connection to both, and registers each side as the other's producer.

conmon's attach protocol (conmon 2.1.6, ``src/conn_sock.c`` and ``src/ctr_stdio.c``):

* ``<sock dir>/<id>/attach`` is a listening AF_UNIX **SOCK_SEQPACKET** socket (backlog
  10). Each accepted client gets all output from then on: every read conmon makes of the
  process's stdout or stderr (at most 8192 bytes) becomes one packet ``[stream id][data]``,
  2 for stdout, 3 for stderr; with a tty everything comes as stdout (2), raw pty bytes.
* conmon writes to clients with a *blocking* write, one client after the other. A client
  that stops reading stops conmon — and so the container's output, its log and every other
  client. That is our back-pressure: a paused sink stops reading the socket; the kernel
  queues at most ~10 packets per socket, so nothing grows (dockerd's broadcaster behaves
  the same way).
* What a client sends is raw stdin, no header; conmon reads each packet with
  ``read(fd, buf, 32768)`` and a longer packet is cut, so we send at most ``STDIN_PACKET``.
* EOF from a client (``shutdown(SHUT_WR)``, what podman's ``CloseWrite`` does, or a close)
  makes conmon stop reading that client and — when it was started with ``-i`` and without
  ``--leave-stdin-open`` — close the process's stdin (``cat`` then exits). Output keeps
  flowing to the half-closed client.
* Once the process has exited and its output is drained conmon closes every client; then
  it writes the exit file.

A client with no stdin of its own must not close its socket on a container whose conmon
closes stdin on EOF (``stdin_once``): its EOF would close the stdin that a client with
stdin still writes to. Such a session, when closed, shuts down only its read side (conmon's
next write to it fails, and conmon stops writing to it) and keeps the descriptor until the
container exits. This is "parking" below.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from twisted.internet import abstract, defer, error, main, task
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python import failure
from zope.interface import implementer

from sdcd.compute.conmon import Runtime, RuntimeFailure
from sdcd.compute.interface import IStdioSession, IStreamSink

#: Stream ids in conmon's packets (its ``stdpipe_t``).
_STREAMS = {2: "stdout", 3: "stderr"}
#: The largest stdin packet: conmon 2.1.6 reads 32768 bytes a packet (some other
#: versions 32767).
STDIN_PACKET = 32767
#: conmon's packets are at most 8193 bytes; read with room to spare (never truncate).
_RECV_SIZE = 65536
#: Packets read per reactor wake-up while the sink keeps up.
_PACKETS_PER_READ = 64
#: Stdin buffered before the process is attached (attach before start) before we pause
#: the stdin source.
_PENDING_STDIN_LIMIT = 1 << 16
_CONNECT_TIMEOUT = 10.0
#: How long a detaching session may take to hand over stdin it has buffered.
_DETACH_FLUSH_TIMEOUT = 5.0
_SUN_PATH_MAX = 107


class _PacketTransport(abstract.FileDescriptor):
    """A connected SOCK_SEQPACKET socket in the reactor. Not ``adoptStreamConnection``:
    Twisted's stream transport sends up to 128 KiB at once (conmon cuts stdin packets at
    32 KiB) and reads one packet per reactor wake-up."""

    def __init__(self, sock: socket.socket, session: StdioSession, reactor: Any) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.session: StdioSession | None = session
        self.connected = 1
        self._reading = False
        self._abort_call: Any = None

    def fileno(self) -> int:
        return self.socket.fileno()

    def startReading(self) -> None:
        self._reading = True
        super().startReading()

    def stopReading(self) -> None:
        self._reading = False
        super().stopReading()

    def doRead(self) -> Any:
        """Read what is there (up to a bound) and hand it over in one go: one sink write
        (one TLS write) per run of same-stream packets rather than per 8 KiB packet."""
        packets = []
        result = None
        for _ in range(_PACKETS_PER_READ):
            try:
                packet = self.socket.recv(_RECV_SIZE)
            except BlockingIOError:
                break
            except OSError:
                result = main.CONNECTION_LOST
                break
            if not packet:
                result = main.CONNECTION_DONE
                break
            packets.append(packet)
        if packets and self.session is not None:
            self.session._packets(packets)
        return result

    def writeSomeData(self, data: Any) -> Any:
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                sent += self.socket.send(view[sent : sent + STDIN_PACKET])
            except BlockingIOError:
                break
            except OSError:
                return sent or main.CONNECTION_LOST
        return sent

    def _closeWriteConnection(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_WR)

    def connectionLost(self, reason: failure.Failure) -> None:
        self.producer = None  # the stdin source is the session owner's to stop, not ours
        super().connectionLost(reason)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self.socket.close()
        session, self.session = self.session, None
        if session is not None:
            session._transport_lost()

    def detach(self) -> None:
        """Close, but first hand conmon the stdin still buffered — reading (and dropping)
        output meanwhile, since a conmon blocked on writing to us reads no stdin."""
        self.session = None
        self.producer = None
        if len(self.dataBuffer) <= self.offset and not self._tempDataLen:
            self._abort()
            return
        self.startReading()
        self.disconnecting = 1
        self.startWriting()
        self._abort_call = self.reactor.callLater(_DETACH_FLUSH_TIMEOUT, self._abort)

    def _abort(self) -> None:
        if not self.disconnected:
            self.connectionLost(failure.Failure(error.ConnectionDone()))

    def park(self) -> socket.socket:
        """Stop all traffic but keep the descriptor (module docstring): shut our read side
        down, so conmon's next write to us fails, then drain what is queued (a conmon
        blocked on us wakes up). Returns the socket, for the caller to close later."""
        self.session = None
        self.producer = None
        self.stopReading()
        self.stopWriting()
        self.disconnected = 1
        self.connected = 0
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RD)
        for _ in range(1000):
            try:
                if not self.socket.recv(_RECV_SIZE):
                    break
            except OSError:
                break
        return self.socket


@implementer(IPushProducer, IConsumer, IStdioSession)
class StdioSession:
    """One client's view of a process's stdio: output to ``sink``, stdin from
    ``write_stdin``. A push producer towards the sink (paused, it stops reading conmon) and
    a consumer for stdin (``registerProducer`` the stdin source: it is paused while conmon
    does not take stdin fast enough).

    ``done`` fires once the session is over, with "exited" (the process's output ended;
    ``sink.end()`` was called) or "detached" (``close()``). ``bytes_in``/``bytes_out``
    count stdin accepted and output delivered, for the caller's session log."""

    def __init__(
        self,
        reactor: Any,
        sink: IStreamSink | None,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> None:
        self.reactor = reactor
        self.sink = sink
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        #: The exec'd process's pid (exec sessions), else 0.
        self.pid = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.done: defer.Deferred[str] = defer.Deferred()
        self._transport: _PacketTransport | None = None
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._stdin_closed = False
        self._stdin_producer: Any = None
        self._stdin_streaming = True
        self._stdin_paused_by_us = False
        self._paused = False
        self._ended = False
        #: Set by ``attach``: what to do instead of a close (park) and on close (cancel a
        #: start hook).
        self._park: Any = None
        self._on_close: Any = None
        if sink is not None:
            sink.registerProducer(self, True)

    # -- stdin ---------------------------------------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        """Send bytes to the process's stdin (dropped when the session has no stdin, or
        after ``close_stdin``)."""
        if not self.stdin or self._stdin_closed or self._ended or not data:
            return
        self.bytes_in += len(data)
        if self._transport is not None:
            self._transport.write(data)
            return
        self._pending.append(bytes(data))
        self._pending_len += len(data)
        producer = self._stdin_producer
        full = self._pending_len > _PENDING_STDIN_LIMIT
        if full and producer is not None and self._stdin_streaming and not self._stdin_paused_by_us:
            self._stdin_paused_by_us = True
            producer.pauseProducing()

    def close_stdin(self) -> None:
        """The client's stdin ended: half-close towards conmon once what was written has
        gone, so that (with ``-i``) the process sees EOF while its output keeps coming. A
        no-op for a session without stdin."""
        if not self.stdin or self._stdin_closed or self._ended:
            return
        self._stdin_closed = True
        if self._transport is not None:
            if self._transport.producer is not None:
                self._transport.unregisterProducer()
            self._transport.loseWriteConnection()

    # IConsumer (stdin)
    def write(self, data: bytes) -> None:
        self.write_stdin(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._stdin_producer = producer
        self._stdin_streaming = streaming
        if self._transport is not None and self._transport.connected and not self._stdin_closed:
            self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._stdin_producer = None
        if self._transport is not None and self._transport.producer is not None:
            self._transport.unregisterProducer()

    # -- output --------------------------------------------------------------------------

    def _packets(self, packets: list[bytes]) -> None:
        """conmon's packets (a stream byte, then data), consecutive ones of a stream
        joined."""
        run: list[memoryview] = []
        run_stream = None
        for packet in packets:
            stream = _STREAMS.get(packet[0])
            if stream != run_stream and run:
                self._deliver(run_stream, run)
                run = []
            run_stream = stream
            run.append(memoryview(packet)[1:])
        if run:
            self._deliver(run_stream, run)

    def _deliver(self, stream: str | None, run: list[memoryview]) -> None:
        if self._ended or self.sink is None or stream is None:
            return
        if not (self.stdout if stream == "stdout" else self.stderr):
            return
        data = b"".join(run)
        if data:
            self.bytes_out += len(data)
            self.sink.write(stream, data)

    # IPushProducer (output)
    def pauseProducing(self) -> None:
        self._paused = True
        if self._transport is not None and self._transport.connected:
            self._transport.stopReading()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._transport is not None and self._transport.connected and not self._ended:
            self._transport.startReading()

    def stopProducing(self) -> None:
        self.close()

    # -- life ----------------------------------------------------------------------------

    def close(self) -> None:
        """Detach: this session ends; the process and other sessions go on."""
        if self._ended:
            return
        transport, self._transport = self._transport, None
        if self._on_close is not None:
            self._on_close()
        if transport is not None:
            if self._park is not None:
                self._park(transport.park())
            else:
                transport.detach()
        self._end("detached")

    def _transport_lost(self) -> None:
        self._transport = None
        self._end("exited")

    def _end(self, how: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._pending = []
        if self.sink is not None:
            self.sink.unregisterProducer()
            if how == "exited":
                self.sink.end()
        self.done.callback(how)

    async def _connect(self, path: Path) -> None:
        """Connect to a conmon attach socket and start relaying."""
        sock = await _connect_seqpacket(self.reactor, path)
        if self._ended:  # closed while connecting
            sock.close()
            return
        transport = _PacketTransport(sock, self, self.reactor)
        self._transport = transport
        pending, self._pending, self._pending_len = self._pending, [], 0
        for chunk in pending:
            transport.write(chunk)
        if self._stdin_producer is not None and not self._stdin_closed:
            transport.registerProducer(self._stdin_producer, self._stdin_streaming)
            if self._stdin_paused_by_us:
                self._stdin_paused_by_us = False
                self._stdin_producer.resumeProducing()
        if self._stdin_closed:
            transport.loseWriteConnection()
        if not self._paused:
            transport.startReading()


async def _connect_seqpacket(reactor: Any, path: Path) -> socket.socket:
    """A non-blocking SOCK_SEQPACKET connection to ``path``; EAGAIN (conmon's backlog of
    10 is full: conmon is busy) is retried. A path too long for ``sun_path`` is reached
    through ``/proc/self/fd`` of an O_PATH descriptor, as podman does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    deadline = reactor.seconds() + _CONNECT_TIMEOUT
    try:
        while True:
            try:
                _connect_once(sock, path)
                return sock
            except BlockingIOError:
                if reactor.seconds() > deadline:
                    raise RuntimeFailure(f"conmon does not accept on {path}") from None
                await task.deferLater(reactor, 0.01)
            except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
                raise RuntimeFailure("the process is not running", kind="conflict") from None
    except BaseException:
        sock.close()
        raise


def _connect_once(sock: socket.socket, path: Path) -> None:
    target = os.fsencode(path)
    if len(target) <= _SUN_PATH_MAX:
        sock.connect(target)
        return
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class _WaitForStart:
    """A session waiting for its container's next start (``Runtime.on_next_start``)."""

    def __init__(self, runtime: Runtime, cid: str, session: StdioSession, want_stdin: bool):
        self.runtime, self.cid, self.session, self.want_stdin = runtime, cid, session, want_stdin

    async def created(self) -> None:
        _configure(self.runtime, self.cid, self.session, self.want_stdin)
        if self.session._ended:
            return
        try:
            await self.session._connect(self.runtime.attach_socket_path(self.cid))
        except Exception:
            self.session._end("exited")
            raise

    def failed(self, error: Exception) -> None:
        self.session._end("exited")


def _configure(runtime: Runtime, cid: str, session: StdioSession, want_stdin: bool) -> None:
    """Fit the session to how the container was started: stdin only with OpenStdin; park
    instead of closing a session without stdin when conmon closes stdin on EOF."""
    config = runtime.stdio_config(cid)
    session.stdin = want_stdin and bool(config.get("open_stdin"))
    if not session.stdin:
        session._pending, session._pending_len = [], 0
    if config.get("closes_stdin") and not session.stdin:

        def park(sock: socket.socket) -> None:
            runtime.wait(cid).addBoth(lambda _: sock.close())

        session._park = park


async def attach(
    runtime: Runtime,
    cid: str,
    sink: IStreamSink,
    stdin: bool = False,
    stdout: bool = True,
    stderr: bool = True,
    wait_start: bool = False,
) -> StdioSession:
    """Attach to the container's stdio. Running: from now on. Not running and
    ``wait_start``: the session connects when the next start has created the container,
    before its process runs (``docker start -ai``, attach-then-start), so it misses no
    output; otherwise not running is a conflict. ``stdin`` is honoured only for a
    container started with ``open_stdin``."""
    session = StdioSession(runtime.reactor, sink, stdin=stdin, stdout=stdout, stderr=stderr)
    if runtime.is_running(cid):
        _configure(runtime, cid, session, stdin)
        try:
            await session._connect(runtime.attach_socket_path(cid))
        except RuntimeFailure:
            session.close()
            raise RuntimeFailure(f"Container {cid} is not running", kind="conflict") from None
        return session
    if not wait_start:
        session.close()
        raise RuntimeFailure(f"Container {cid} is not running", kind="conflict")
    hook = _WaitForStart(runtime, cid, session, stdin)
    runtime.on_next_start(cid, hook)
    session._on_close = lambda: runtime.cancel_start_hook(cid, hook)
    return session


async def exec_start(
    runtime: Runtime,
    cid: str,
    exec_id: str,
    process: dict,
    sink: IStreamSink | None,
    stdin: bool = False,
    stdout: bool = True,
    stderr: bool = True,
    size: tuple[int, int] | None = None,
) -> StdioSession:
    """Run an exec session (``process``: an OCI process — args, env, cwd, user,
    capabilities, ``terminal`` for a tty) in the running container. With a sink the
    session is connected before the process runs (it misses nothing); without one it is
    detached and its ``done`` fires when the process has exited. ``size``: the tty's size
    before the process runs. Exit status: ``exec_status``/``exec_wait``, kept on disk.
    Errors: kind "conflict" (container not running, exec id used), "invalid" (runc cannot
    run it; the exec is then recorded with exit code 126 or 127)."""
    tty = bool(process.get("terminal"))
    attached = sink is not None
    if size is not None and tty:
        # runc sizes the pty itself before the process runs (conmon's ctl fifo is read
        # only after runc exec has started it: a first ``stty size`` could see 0x0).
        process = dict(process, consoleSize={"height": int(size[0]), "width": int(size[1])})
    launch = await runtime.exec_launch(cid, exec_id, process, tty=tty, stdin=stdin and attached)
    session = StdioSession(
        runtime.reactor, sink, stdin=stdin and attached, stdout=stdout, stderr=stderr
    )
    if size is not None and tty:
        with contextlib.suppress(RuntimeFailure):
            await runtime.exec_resize(exec_id, *size)
    if attached:
        try:
            await session._connect(launch.socket_path)
        except Exception:
            launch.abort()
            session.close()
            raise
    try:
        session.pid = await launch.start()
    except Exception:
        session.close()
        raise
    if not attached:
        runtime.exec_wait(exec_id).addBoth(lambda _: session._end("exited"))
    return session


def exec_status(runtime: Runtime, exec_id: str) -> dict:
    """``{"cid", "running", "exit_code", "pid"}`` of an exec session, from its files (so
    also after an sdcd restart). Kind "not_found" for an unknown exec id."""
    return runtime.exec_status(exec_id)


def exec_wait(runtime: Runtime, exec_id: str) -> defer.Deferred[int]:
    """Fires with the exec's exit code once it has one."""
    return runtime.exec_wait(exec_id)


async def exec_resize(runtime: Runtime, cid: str, exec_id: str, height: int, width: int) -> None:
    """Resize the exec session's tty (conflict when it does not run in ``cid``)."""
    status = runtime.exec_status(exec_id)
    if status["cid"] != cid:
        raise RuntimeFailure(f"No such exec instance: {exec_id}", kind="not_found")
    if not status["running"]:
        raise RuntimeFailure(f"exec {exec_id} is not running", kind="conflict")
    await runtime.exec_resize(exec_id, height, width)
