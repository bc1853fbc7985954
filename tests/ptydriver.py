"""Drive a command on a real pseudo-terminal, as a person at a terminal would: the command
gets the pty's slave as its stdin/stdout/stderr and controlling terminal (so the docker
CLI puts it in raw mode and gets SIGWINCH on a resize); the test reads and writes the
master. Everything read is kept raw in ``output`` so a test can look for stray bytes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Sequence

from tests.dockercli import User

DEFAULT_TIMEOUT = 15.0


def docker_env(user: User, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``User.docker`` gives the CLI (its account, TLS, home), plus
    ``extra`` (e.g. ``DOCKER_API_VERSION``) and a ``TERM``."""
    return user.env({"TERM": os.environ.get("TERM", "xterm"), **(extra or {})})


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_controlling_tty() -> None:
    """In the child, after ``setsid``: fd 0 (the slave) becomes the controlling tty."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyProcess:
    """A command on a new pty of ``rows`` x ``cols``. Use as a context manager (or call
    ``close``): the command is killed by its pid if it still runs."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], rows: int = 24, cols: int = 80
    ) -> None:
        self.argv = list(argv)
        self.output = bytearray()
        self._pos = 0
        self.master, slave = os.openpty()
        try:
            _set_winsize(slave, rows, cols)
            self.proc = subprocess.Popen(
                self.argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
                preexec_fn=_make_controlling_tty,
                close_fds=True,
            )
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(self.master, False)
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, timeout: float) -> bool:
        """Read what the master has within ``timeout``; False at EOF (the slave is closed
        everywhere: on Linux reading the master then fails with EIO)."""
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self.output += data
        return True

    def expect(self, pattern: bytes | str, timeout: float = DEFAULT_TIMEOUT) -> re.Match:
        """Wait for ``pattern`` (a regex) in what was read since the last match; return the
        match and move past it. AssertionError with the text seen on timeout or EOF."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self._pos)
            if match:
                self._pos = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                seen = bytes(self.output[self._pos :])
                how = "timed out" if left <= 0 else "EOF"
                raise AssertionError(f"{how} waiting for {pattern!r} from {self.argv}: {seen!r}")

    def send(self, data: bytes | str) -> None:
        """Type ``data`` at the terminal."""
        if isinstance(data, str):
            data = data.encode()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                select.select([], [self.master], [], 1)

    def set_size(self, rows: int, cols: int) -> None:
        """Resize the terminal; the kernel sends SIGWINCH to its foreground process group."""
        _set_winsize(self.master, rows, cols)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The command's exit code, reading its output meanwhile (a full pty would block
        it). AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                seen = bytes(self.output[self._pos :])
                raise AssertionError(f"{self.argv} still runs after {timeout}s: {seen!r}")
            if not self._read(0.05):
                time.sleep(0.02)
        while select.select([self.master], [], [], 0)[0] and self._read(0):
            pass  # what it wrote last
        self.returncode = self.proc.returncode
        return self.returncode

    def rest(self) -> bytes:
        """What was read after the last match."""
        return bytes(self.output[self._pos :])

    def close(self) -> None:
        """Kill the command (by its pid) if it still runs; close the master."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def __enter__(self) -> PtyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def docker_pty(
    user: User,
    *args: str,
    cli: str = "/usr/local/bin/docker",
    api_version: str | None = None,
    rows: int = 24,
    cols: int = 80,
) -> PtyProcess:
    """``docker args...`` as ``user`` on a new pty; ``api_version`` sets
    ``DOCKER_API_VERSION`` (the Debian 20.10 CLI at /usr/bin/docker with "1.24")."""
    extra = {"DOCKER_API_VERSION": api_version} if api_version else {}
    return PtyProcess([cli, *args], docker_env(user, extra), rows=rows, cols=cols)
