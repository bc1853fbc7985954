"""The embedded default's private ``redis-server``: spawned, supervised, stopped.

It listens only on a unix socket under the data directory (no TCP port to clash with or
to expose) and keeps an append-only file there, so accounts and everything else survive
restarts. It is started through ``setpriv --pdeathsig TERM`` so that it ends cleanly
(flushing its AOF) even when its parent dies without stopping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
from pathlib import Path

from twisted.internet import defer, error, protocol, task
from twisted.logger import Logger

# Unix socket paths longer than this do not fit in sockaddr_un.
MAX_SOCKET_PATH = 107


class EmbeddedRedisError(Exception):
    """The private redis-server cannot be used; the message is for the operator."""


def socket_answers(path: Path, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING on ``path`` (a short blocking probe, used
    once before start-up to refuse a data directory another process is using)."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(path))
            probe.sendall(b"PING\r\n")
            return probe.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class _RedisProcess(protocol.ProcessProtocol):
    """Collects the server's output for diagnostics and reports its end."""

    def __init__(self) -> None:
        self.ended: defer.Deferred = defer.Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-8192:]

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


class EmbeddedRedis:
    """Runs and supervises one redis-server on a unix socket under ``data_dir``."""

    log = Logger()

    def __init__(self, reactor, data_dir: Path, server: str = "redis-server") -> None:
        self._reactor = reactor
        self.data_dir = data_dir / "redis"
        self.socket_path = self.data_dir / "redis.sock"
        self._server = server
        self._process: _RedisProcess | None = None
        self._stopping = False
        self._restarts = 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def check(self) -> None:
        """Refuse, before anything starts, what would make the server fail later."""
        if shutil.which(self._server) is None:
            raise EmbeddedRedisError(f"redis-server not found: {self._server!r} is not on PATH")
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"data directory path too long for a unix socket: {self.socket_path}"
            )
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise EmbeddedRedisError(f"cannot create {self.data_dir}: {e.strerror}") from None
        if socket_answers(self.socket_path):
            raise EmbeddedRedisError(
                f"another redis-server already serves {self.socket_path}: is sdcd or sdcd-admin "
                "already running on this data directory?"
            )

    def _argv(self) -> list[str]:
        return [
            "setpriv",
            "--pdeathsig",
            "TERM",
            "--",
            shutil.which(self._server) or self._server,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def _spawn(self) -> _RedisProcess:
        if self.socket_path.exists():
            self.socket_path.unlink()
        proc = _RedisProcess()
        self._reactor.spawnProcess(proc, "setpriv", self._argv(), env=dict(os.environ))
        proc.ended.addCallback(self._ended, proc)
        self._process = proc
        return proc

    def _ended(self, reason, proc: _RedisProcess) -> None:
        """Restart the server after an unexpected exit, backing off up to 30 s."""
        if self._stopping or proc is not self._process:
            return
        self._restarts += 1
        delay = min(30.0, 0.5 * 2 ** min(self._restarts, 6))
        self.log.error(
            "redis-server exited unexpectedly ({reason}); restarting in {delay}s: {output}",
            reason=reason,
            delay=delay,
            output=proc.output.decode(errors="replace")[-500:],
        )
        self._reactor.callLater(delay, self._restart)

    def _restart(self) -> None:
        if not self._stopping:
            self._spawn()

    @defer.inlineCallbacks
    def start(self, timeout: float = 10.0):
        """Spawn the server and fire once it answers on its socket."""
        self._stopping = False
        proc = self._spawn()
        waited = 0.0
        while not socket_answers(self.socket_path, timeout=0.5):
            if proc.ended.called:
                raise EmbeddedRedisError(
                    "redis-server failed to start: "
                    + proc.output.decode(errors="replace").strip()[-300:]
                )
            if waited >= timeout:
                raise EmbeddedRedisError(f"redis-server did not answer within {timeout}s")
            yield task.deferLater(self._reactor, 0.05, lambda: None)
            waited += 0.05
        self.log.info("embedded redis-server ready on {path}", path=str(self.socket_path))

    @defer.inlineCallbacks
    def stop(self, timeout: float = 10.0):
        """SIGTERM (Redis flushes its AOF and exits), SIGKILL after ``timeout``."""
        self._stopping = True
        proc = self._process
        if proc is None or proc.ended.called:
            return
        try:
            proc.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            return
        killer = self._reactor.callLater(timeout, self._kill, proc)
        reason = yield proc.ended
        if killer.active():
            killer.cancel()
        self.log.info("embedded redis-server stopped ({reason})", reason=reason)

    @staticmethod
    def _kill(proc: _RedisProcess) -> None:
        with contextlib.suppress(error.ProcessExitedAlready):
            proc.transport.signalProcess(signal.SIGKILL)
