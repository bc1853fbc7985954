"""Side-by-side benchmarks: the same client commands against sdcd and a reference dockerd.

Starts a reference dockerd (Debian's docker.io: its own data dir, socket and bridge,
``--iptables=false``) and an sdcd on the embedded default, both on this machine, runs
each scenario against each in turn, and prints medians and sdcd/dockerd ratios as a
Markdown table (``docs/benchmarks.md`` keeps the latest).

Usage: ``.venv/bin/python -m bench.run [--runs N] [--only NAME]``, as root.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.clients import make_cert, make_key, openssh_line, write_identity  # noqa: E402
from tests.conftest import Daemon, wait_for  # noqa: E402
from tests.test_images import CONFIG, Registry, tar_layer  # noqa: E402

BRIDGE = "sdcdbench0"


class Dockerd:
    """A private dockerd: nothing shared with any system Docker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise SystemExit("dockerd not found: apt-get install docker.io")
        subprocess.run(
            ["ip", "link", "add", BRIDGE, "type", "bridge"], check=False, stderr=subprocess.DEVNULL
        )
        subprocess.run(
            ["ip", "addr", "add", "10.213.0.1/24", "dev", BRIDGE],
            check=False,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                dockerd,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "dockerd.pid"),
                "-H",
                f"unix://{self.socket}",
                "--bridge",
                BRIDGE,
                "--iptables=false",
                "--ip6tables=false",
                "--containerd-namespace",
                "sdcdbench",
                "--containerd-plugins-namespace",
                "sdcdbench-p",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.cli("version").returncode == 0, 60, 0.2)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER_CONFIG"] = str(self.root / "client")
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, env=self.env())

    def connection(self) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(str(self.socket))

    def forget_blobs(self) -> None:
        """rmi already removed the layers: dockerd keeps no other copy."""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["ip", "link", "del", BRIDGE], check=False, stderr=subprocess.DEVNULL)


class Sdcd:
    """An sdcd with one account, reached by the docker CLI as a user would."""

    def __init__(self, root: Path) -> None:
        self.daemon = Daemon(root)
        self.root = root

    def start(self) -> None:
        self.daemon.start()
        key = make_key("ecdsa-256")
        self.daemon.admin("account", "create", "bench", "--approved")
        self.daemon.admin("key", "add", "bench", openssh_line(key))
        certs = self.root / "client"
        write_identity(certs, key, make_cert(key, "bench"))
        shutil.copy(self.daemon.ca_path, certs / "ca.pem")
        self.certs = certs

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(
            DOCKER_HOST=self.daemon.docker_host,
            DOCKER_TLS_VERIFY="1",
            DOCKER_CERT_PATH=str(self.certs),
            DOCKER_CONFIG=str(self.root / "cfg"),
        )
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, env=self.env())

    def forget_blobs(self) -> None:
        """rmi garbage-collects blobs nothing references: the next pull is a full one."""

    def connection(self) -> http.client.HTTPConnection:
        context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        context.load_cert_chain(str(self.certs / "cert.pem"), str(self.certs / "key.pem"))
        return http.client.HTTPSConnection("localhost", self.daemon.docker_port, context=context)

    def stop(self) -> None:
        self.daemon.stop()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


class _Done:
    returncode = 0


def api_requests(target, path: str, count: int = 100) -> _Done:
    """``count`` requests on one keep-alive connection: the server's own cost per request."""
    conn = target.connection()
    try:
        for _ in range(count):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: {resp.status}")
    finally:
        conn.close()
    return _Done()


def big_layers(total_mb: int, count: int) -> list[bytes]:
    """Incompressible layers (random data): the registry transfer is what is measured."""
    size = total_mb * 1024 * 1024 // count
    return [tar_layer({f"data/blob{i}": os.urandom(size)}) for i in range(count)]


def pull_scenario(repo: str):
    """Pull ``repo`` from the bench registry, then remove it again (outside the timing
    would be better; rmi is cheap beside a pull and both daemons pay it)."""

    def run(target):
        result = target.cli("pull", f"{target.registry}/{repo}")
        if result.returncode == 0:
            target.cli("rmi", f"{target.registry}/{repo}")
            target.forget_blobs()
        return result

    return run


def timed(run: Callable[[], subprocess.CompletedProcess]) -> float:
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode(errors="replace"))
    return elapsed


SCENARIOS: dict[str, Callable] = {
    "docker version": lambda t: t.cli("version"),
    "docker info": lambda t: t.cli("info"),
    "100 x GET /v1.41/info, one connection": lambda t: api_requests(t, "/v1.41/info"),
    "100 x GET /_ping, one connection": lambda t: api_requests(t, "/_ping"),
    "docker pull, 200 MB in 1 layer": pull_scenario("big1"),
    "docker pull, 200 MB in 10 layers": pull_scenario("big10"),
}


def run(runs: int, only: str | None) -> list[tuple[str, float, float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="sdcd-bench-") as tmp:
        ref, ours = Dockerd(Path(tmp) / "dockerd"), Sdcd(Path(tmp) / "sdcd")
        (Path(tmp) / "dockerd").mkdir()
        registry = None
        try:
            registry = Registry(Path(tmp) / "registry")
            for repo, count in (("big1", 1), ("big10", 10)):
                layers = big_layers(200, count)
                config = {**CONFIG, "history": [{"created_by": f"layer {i}"} for i in range(count)]}
                registry.push(repo, "latest", layers, config)
            ref.registry = ours.registry = registry.host
            ref.start()
            ours.start()
            for name, scenario in SCENARIOS.items():
                if only and only != name:
                    continue
                for target in (ref, ours):  # warm-up
                    timed(lambda t=target, s=scenario: s(t))
                ref_times, our_times = [], []
                for _ in range(runs):  # interleaved, so drift hits both alike
                    ref_times.append(timed(lambda s=scenario: s(ref)))
                    our_times.append(timed(lambda s=scenario: s(ours)))
                rows.append((name, statistics.median(ref_times), statistics.median(our_times)))
        finally:
            ours.stop()
            ref.stop()
            if registry is not None:
                registry.stop()
    return rows


def table(rows: list[tuple[str, float, float]], runs: int) -> str:
    lines = [
        f"| scenario ({runs} runs, median) | dockerd | sdcd | sdcd/dockerd |",
        "|---|---:|---:|---:|",
    ]
    for name, ref, ours in rows:
        lines.append(
            f"| `{name}` | {ref * 1000:.1f} ms | {ours * 1000:.1f} ms | {ours / ref:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only")
    args = parser.parse_args()
    print(table(run(args.runs, args.only), args.runs))


if __name__ == "__main__":
    main()
