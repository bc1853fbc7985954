"""Shared fixtures: a real redis-server, a real `twistd sdcd` on loopback TLS, accounts
made with the real `sdcd-admin`, and clients that speak TLS with certificates made from
SSH keys."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

#: Tests that run containers (runc, conmon, network namespaces) need root.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {predicate}")
        time.sleep(interval)


def env_for_tools() -> dict[str, str]:
    """The environment for subprocesses: this venv first, the checkout importable."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a unix socket for the whole test session."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    where = tmp_path_factory.mktemp("redis")
    sock = where / "redis.sock"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--dir",
            str(where),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(sock.exists, 10)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def key_prefix() -> str:
    """A unique key prefix: tests share one Redis without seeing each other's data."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def pool(redis_url):
    """A txredisapi connection pool to the session's Redis, closed after the test."""
    import pytest_twisted

    from sdcd.store import redis as redis_store

    pool = pytest_twisted.blockon(redis_store.connect(redis_url))
    yield pool
    pytest_twisted.blockon(pool.disconnect())


#: Every Daemon made in this test session: purged (processes, mounts, namespaces, bridge)
#: when the session ends, whatever the test did.
_DAEMONS: list[Daemon] = []


class Daemon:
    """One `twistd -n sdcd` subprocess with its own data directory and ports."""

    def __init__(self, root: Path, **settings) -> None:
        _DAEMONS.append(self)
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.docker_port = free_port()
        self.cloudapi_port = free_port()
        self.public_host = settings.pop("public_host", "localhost")
        self.config_path = root / "sdcd.toml"
        self.log_path = root / "sdcd.log"
        self.extra = settings.pop("extra", "")
        # Tests are not about capacity (except those that say so): the host's memory
        # must not cap how many 1 GiB containers a test module makes.
        self.compute_extra = settings.pop(
            "compute", "memory_overcommit = 100\ndisk_overcommit = 100\n"
        )
        # Each daemon's node gets its own bridge and subnet: daemons of several tests (or
        # of a concurrent run) never share one.
        self.bridge = "sdt" + uuid.uuid4().hex[:8]
        self.subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}.0/24"
        self.proc: subprocess.Popen | None = None
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(
            f'datacenter = "testdc"\n'
            f'public_host = "{self.public_host}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'[docker]\nhost = "127.0.0.1"\nport = {self.docker_port}\n'
            f'[cloudapi]\nhost = "127.0.0.1"\nport = {self.cloudapi_port}\n'
            f'[compute]\nbridge = "{self.bridge}"\nsubnet = "{self.subnet}"\n'
            + self.compute_extra
            + self.extra
        )

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def docker_host(self) -> str:
        return f"tcp://{self.public_host}:{self.docker_port}"

    @property
    def cloudapi_url(self) -> str:
        return f"https://127.0.0.1:{self.cloudapi_port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        seen = len(self.log())
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            [str(BIN / "twistd"), "--pidfile=", "-n", "sdcd", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env_for_tools(),
            cwd=self.root,
        )
        log.close()

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sdcd exited {self.proc.returncode}: {self.log()}")
            return "docker listening on" in self.log()[seen:]

        wait_for(listening, 30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def destroy(self) -> None:
        """Stop sdcd and remove everything its compute node left on the machine."""
        from tests.nodecleanup import purge_node

        try:
            self.stop()
        finally:
            purge_node(self)
            self.purged = True

    def admin(self, *args: str, check: bool = True, input: str | None = None):
        """Run the real `sdcd-admin` against this daemon's configuration."""
        result = subprocess.run(
            [str(BIN / "sdcd-admin"), "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env=env_for_tools(),
            input=input,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"sdcd-admin {args} failed: {result.stderr}")
        return result


def running_daemon(root: Path, **settings):
    """A started Daemon for a fixture to yield from; stopped when the fixture ends."""
    d = Daemon(root, **settings)
    d.start()
    try:
        yield d
    finally:
        d.destroy()


@pytest.fixture
def daemon(tmp_path):
    """A running sdcd on the embedded default, stopped (and its Redis with it) after."""
    d = Daemon(tmp_path / "sdcd")
    d.start()
    try:
        yield d
    finally:
        d.destroy()


@pytest.fixture(scope="session", autouse=True)
def _purge_daemons():
    """Whatever a test forgot: no daemon's node outlives the session."""
    yield
    for d in _DAEMONS:
        if not getattr(d, "purged", False):
            d.destroy()


@pytest.fixture(scope="module")
def registry():
    """Debian's docker-registry on loopback holding the test ``busybox`` image (a module
    that needs another registry defines its own ``registry``)."""
    from tests.imagebuilder import busybox_image, push
    from tests.registry import Registry

    with Registry() as reg:
        push(reg.url, "busybox", "latest", busybox_image())
        yield reg


# Accounts for container tests: a module defines ``sdcd`` (its daemon); these use it.


@pytest.fixture(scope="module")
def alice(sdcd, registry, tmp_path_factory):
    """An approved account with busybox pulled; its containers removed at the end."""
    from tests.dockercli import busybox_user, remove_all

    u = busybox_user(sdcd, tmp_path_factory.mktemp("alice"), registry, "alice")
    yield u
    remove_all(u)


@pytest.fixture(scope="module")
def bob(sdcd, registry, tmp_path_factory):
    """A second account like ``alice``, for tenancy tests."""
    from tests.dockercli import busybox_user, remove_all

    u = busybox_user(sdcd, tmp_path_factory.mktemp("bob"), registry, "bob")
    yield u
    remove_all(u)


@pytest.fixture
def docker_py(sdcd, alice, monkeypatch):
    """A docker-py client for ``alice`` over TLS (the machine's CA-bundle variables would
    override docker-py's ``ca.pem``: unset for the test)."""
    docker = pytest.importorskip("docker")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    tls = docker.tls.TLSConfig(
        client_cert=(str(alice.certs / "cert.pem"), str(alice.certs / "key.pem")),
        ca_cert=str(alice.certs / "ca.pem"),
        verify=True,
    )
    client = docker.DockerClient(base_url=f"https://localhost:{sdcd.docker_port}", tls=tls)
    yield client
    client.close()
