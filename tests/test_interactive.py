"""Interactive use of sdcd with the real docker CLI on a real pty (tests/ptydriver.py):
``run -it``, window resizes, ``start -ai``, attach and detach keys, ^C, piped stdin —
with the current CLI and Debian's 20.10 CLI at API 1.24 — and the raw bytes a tty gives."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid

import pytest

from tests.conftest import Daemon, needs_root, running_daemon
from tests.dockercli import User
from tests.hijackclient import tls_context
from tests.ptydriver import docker_env, docker_pty
from tests.registry import Registry

pytestmark = needs_root


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("interactive"))


@pytest.fixture(scope="module")
def user(sdcd: Daemon, registry: Registry, tmp_path_factory):
    u = User(sdcd, tmp_path_factory.mktemp("tty"), "ttyuser")
    u.ok("pull", f"{registry.host}/busybox")
    u.ok("tag", f"{registry.host}/busybox", "busybox")
    yield u
    ids = u.ok("ps", "-aq").split()
    if ids:
        u.docker("rm", "-f", *ids)


def name() -> str:
    return "i" + uuid.uuid4().hex[:8]


CLIS = [
    pytest.param({}, id="current"),
    pytest.param({"cli": "/usr/bin/docker", "api_version": "1.24"}, id="old-1.24"),
]
#: busybox ash's prompt; its line editor then asks the terminal where the cursor is.
PROMPT = rb"/ # (\x1b\[6n)?"
#: A shell command that waits until the CLI's post-start resize has reached the tty.
#: (busybox's ``stty size`` on a 0x0 tty prints an error but exits 0.)
WAIT_FOR_SIZE = 'until [ -n "$(stty size 2>/dev/null)" ]; do sleep 0.05; done'


def settled_size(p, wanted: bytes, seconds: float = 10) -> bytes:
    """``stty size`` in the shell on ``p`` until it says ``wanted`` (the CLI's resize
    after SIGWINCH takes a moment) or time is up; the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        p.send("stty size\r")
        size = p.expect(rb"\r\n(\d+ \d+)\r\n").group(1)
        p.expect(PROMPT)
        if size == wanted or time.monotonic() > deadline:
            return size
        time.sleep(0.1)


@pytest.fixture
def names(user):
    """Container names for one test; each is removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(name())
        return made[-1]

    yield make
    if made:
        user.docker("rm", "-f", *made)


def running(user: User, ref: str) -> bool:
    return user.ok("inspect", "-f", "{{.State.Running}}", ref).strip() == "true"


def run_cli(user: User, cli: dict, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """``docker args`` with ``cli`` (a CLIS entry), no pty, ``stdin`` piped."""
    extra = {"DOCKER_API_VERSION": cli["api_version"]} if cli else {}
    return subprocess.run(
        [cli.get("cli", "/usr/local/bin/docker"), *args],
        input=stdin,
        capture_output=True,
        env=docker_env(user, extra),
        timeout=30,
    )


# -- docker run -it -----------------------------------------------------------------------


@pytest.mark.parametrize("cli", CLIS)
def test_run_it_shell_exit_code(user, names, cli):
    n = names()
    with docker_pty(user, "run", "-it", "--name", n, "busybox", "sh", **cli) as p:
        p.expect(PROMPT)
        p.send("echo $((6*7))\r")
        p.expect(rb"\r\n42\r\n")
        p.expect(PROMPT)
        p.send("exit 3\r")
        assert p.wait() == 3
    assert b"\x00" not in p.output


@pytest.mark.parametrize("cli", CLIS)
def test_stty_size_follows_window_resize(user, names, cli):
    n = names()
    with docker_pty(user, "run", "-it", "--name", n, "busybox", "sh", rows=24, cols=80, **cli) as p:
        p.expect(PROMPT)
        p.send("stty size\r")
        p.expect(rb"\r\n24 80\r\n")
        p.expect(PROMPT)
        p.set_size(40, 120)  # SIGWINCH to the CLI, which posts /resize
        assert settled_size(p, b"40 120") == b"40 120"
        p.send("exit\r")
        assert p.wait() == 0


@pytest.mark.parametrize("cli", CLIS)
def test_run_it_output_is_exactly_the_tty_bytes(user, names, cli):
    """No stray bytes (a NUL was once seen): what the process writes, through the pty's
    ONLCR, and nothing else — 400 lines, so several of conmon's 8 KiB packets."""
    lines = "i=0; while [ $i -lt 400 ]; do echo line$i-abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done"
    script = f"{WAIT_FOR_SIZE}; stty size; {lines}; echo done"
    n = names()
    argv = ("run", "-it", "--rm", "--name", n, "busybox", "sh", "-c", script)
    with docker_pty(user, *argv, rows=33, cols=99, **cli) as p:
        assert p.wait() == 0
    body = b"".join(b"line%d-abcdefghijklmnopqrstuvwxyz\r\n" % i for i in range(400))
    assert bytes(p.output) == b"33 99\r\n" + body + b"done\r\n"


def test_console_size_from_create_is_the_size_at_start(user, names):
    """The CLI resizes only after start; the ConsoleSize it sends at create is the size
    the process starts with (a first ``stty size`` sees it)."""
    n = names()
    body = {"Image": "busybox", "Tty": True, "Cmd": ["sh", "-c", "stty size"]}
    body["HostConfig"] = {"ConsoleSize": [33, 99, 5]}
    assert user.api_post_json(f"/v1.41/containers/create?name={n}", body).status == 400
    body["HostConfig"] = {"ConsoleSize": [33, 99]}
    assert user.api_post_json(f"/v1.41/containers/create?name={n}", body).status == 201
    user.ok("start", n)
    assert user.ok("wait", n).strip() == "0"
    assert user.ok("logs", n) == "33 99\n"  # text mode: the pty's \r\n read as \n


def test_ctrl_c_reaches_the_container(user, names):
    n = names()
    with docker_pty(user, "run", "-it", "--name", n, "busybox", "sh") as p:
        p.expect(PROMPT)
        p.send("sleep 100\r")
        p.expect(rb"sleep 100\r\n")
        time.sleep(0.3)
        p.send(b"\x03")  # the pty in the container turns ^C into SIGINT for sleep
        p.expect(PROMPT, timeout=10)
        assert running(user, n)
        p.send("echo $((6*7))\r")
        p.expect(rb"\r\n42\r\n")
        p.send("exit 0\r")
        assert p.wait() == 0


# -- start -ai, attach ----------------------------------------------------------------------


def test_start_ai(user, names):
    n = names()
    user.ok("create", "-it", "--name", n, "busybox", "sh")
    with docker_pty(user, "start", "-ai", n) as p:
        p.expect(PROMPT)
        p.send("echo $((6*7))\r")
        p.expect(rb"\r\n42\r\n")
        p.send("exit 4\r")
        assert p.wait() == 4
    assert user.ok("inspect", "-f", "{{.State.ExitCode}}", n).strip() == "4"


@pytest.mark.parametrize("cli", CLIS)
def test_attach_detach_keeps_running_then_exit(user, names, cli):
    n = names()
    user.ok("run", "-d", "-it", "--name", n, "busybox", "sh")
    with docker_pty(user, "attach", n, **cli) as p:
        p.send("echo $((6*7))\r")
        p.expect(rb"\r\n42\r\n")
        p.send(b"\x10\x11")  # ctrl-p ctrl-q
        # Both CLIs detect the keys themselves and report the detach as an error
        # ("read escape sequence", exit 1), whatever the daemon.
        assert p.wait() in (0, 1)
        assert b"read escape sequence" in p.output
    assert running(user, n)
    with docker_pty(user, "attach", n, **cli) as p:
        p.send("echo again\r")
        p.expect(rb"\r\nagain\r\n")
        p.send("exit 5\r")
        assert p.wait() == 5
    assert user.ok("wait", n).strip() == "5"
    assert not running(user, n)


def test_tty_attach_stream_is_raw_and_ends_with_close_notify(user, names):
    """The API's tty attach: the process's bytes as they are (a NUL and an escape
    included, no 8-byte headers), then a TLS close_notify."""
    n = names()
    body = {"Image": "busybox", "Tty": True, "Cmd": ["sh", "-c", r"printf 'a\000b\033[1mc\n'"]}
    assert user.api_post_json(f"/v1.41/containers/create?name={n}", body).status == 201
    context = tls_context(user.sdcd.ca_path, user.identity)
    raw = socket.create_connection(("127.0.0.1", user.sdcd.docker_port), timeout=15)
    with context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
        s.sendall(
            f"POST /v1.41/containers/{n}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        data = s.recv(65536)
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        user.ok("start", n)
        while chunk := s.recv(65536):  # b"" only after a close_notify (else SSLEOFError)
            data += chunk
    head, _, stream = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"application/vnd.docker.raw-stream" in head
    assert stream == b"a\x00b\x1b[1mc\r\n"


# -- stdin without a tty ------------------------------------------------------------------


@pytest.mark.parametrize("cli", CLIS)
def test_stdin_pipe_cat(user, names, cli):
    result = run_cli(user, cli, "run", "-i", "--name", names(), "busybox", "cat", stdin=b"hello\n")
    assert (result.returncode, result.stdout) == (0, b"hello\n"), result.stderr


@pytest.mark.parametrize("cli", CLIS)
def test_run_i_exit_code(user, names, cli):
    result = run_cli(user, cli, "run", "-i", "--name", names(), "busybox", "sh", "-c", "exit 7")
    assert result.returncode == 7, result.stderr


# -- docker exec -it ------------------------------------------------------------------------


@pytest.mark.parametrize("cli", CLIS)
def test_exec_it_shell_exit_code_and_resize(user, names, cli):
    n = names()
    user.ok("run", "-d", "--name", n, "busybox", "sleep", "300")
    with docker_pty(user, "exec", "-it", n, "sh", rows=24, cols=80, **cli) as p:
        p.expect(PROMPT)
        p.send("echo $((6*7))\r")
        p.expect(rb"\r\n42\r\n")
        p.expect(PROMPT)
        p.send("stty size\r")
        p.expect(rb"\r\n24 80\r\n")
        p.expect(PROMPT)
        p.set_size(40, 120)  # SIGWINCH to the CLI, which posts /exec/{id}/resize
        assert settled_size(p, b"40 120") == b"40 120"
        p.send("exit 3\r")
        assert p.wait() == 3
    assert running(user, n)  # the exec ended, the container did not
