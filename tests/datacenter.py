"""A test datacenter on one machine: compute nodes, each a real ``twistd sdcd-agent`` in
its own network namespace with its own address on a fabric bridge (``tests.fabric``),
one Redis (the session's), and one or two ``twistd sdcd`` with no node of their own.

Node certificates come from the first sdcd's internal CA through ``sdcd-admin node
enrol``, as an operator makes them; the second sdcd gets an ``api`` certificate from the
same CA (``sdcd-admin api-cert``), the first's docker TLS files and its blob directory
(the shared image store), so a client cannot tell the two apart.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import uuid
from pathlib import Path

from tests.conftest import BIN, Daemon, env_for_tools, free_port, wait_for
from tests.fabric import Fabric
from tests.nodecleanup import purge_node

#: What each test node offers placement (MiB): small, so "too big" is easy to ask for.
NODE_MEMORY = 8192
NODE_DISK = 1024 * 1024


class Agent:
    """One compute node: ``twistd -n sdcd-agent`` inside its netns."""

    def __init__(
        self,
        root: Path,
        fabric: Fabric,
        index: int,
        redis: str,
        prefix: str,
        octet: int,
        memory: int = NODE_MEMORY,
        disk: int = NODE_DISK,
    ) -> None:
        self.root = root
        self.index = index
        self.fabric = fabric
        self.node_id = str(uuid.uuid4())
        self.address = fabric.address(index)
        self.data_dir = root / "data"
        self.tls_dir = root / "tls"
        # (inside the node's own netns: the name only has to be unique there)
        self.bridge = f"sdcn{index}"
        # /22: room for 1,000 containers a node (the fleet bench makes 1,100 over three)
        self.subnet = f"10.{octet}.{4 * index}.0/22"
        self.config_path = root / "sdcd-agent.toml"
        self.log_path = root / "agent.log"
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f'data_dir = "{self.data_dir}"\n'
            f'[agent]\nhost = "{self.address}"\nport = 2377\naddress = "{self.address}"\n'
            f'tls_dir = "{self.tls_dir}"\n'
            f'[redis]\nurl = "{redis}"\nprefix = "{prefix}"\n'
            f'[compute]\nbridge = "{self.bridge}"\nsubnet = "{self.subnet}"\n'
            f"memory = {memory}\ndisk = {disk}\n"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        seen = len(self.log())
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            [
                *self.fabric.nsenter(self.index),
                str(BIN / "twistd"),
                "--pidfile=",
                "-n",
                "sdcd-agent",
                "-c",
                str(self.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env_for_tools(),
            cwd=self.root,
        )
        log.close()

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sdcd-agent exited {self.proc.returncode}: {self.log()}")
            return "serving on" in self.log()[seen:]

        wait_for(serving, 30)

    def kill(self) -> None:
        """SIGKILL, as a node's crash: its containers go on under conmon."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def purge(self) -> None:
        """Everything the node left: container processes, mounts, namespaces."""
        self.stop()
        purge_node(self)


class Datacenter:
    """``count`` agents and one sdcd (``add_sdcd`` for a second) over one Redis."""

    def __init__(
        self,
        root: Path,
        redis_url: str,
        count: int = 3,
        memory: int = NODE_MEMORY,
        disk: int = NODE_DISK,
    ) -> None:
        self.root = root
        self.redis_url = redis_url
        self.prefix = f"dc-{uuid.uuid4().hex[:8]}:"
        self.fabric = Fabric("d" + uuid.uuid4().hex[:4], count)
        self.count = count
        self.memory, self.disk = memory, disk
        #: Node subnets are 10.<octet>.<4i>.0/22 (one random octet: concurrent runs differ).
        self.octet = random.randrange(150, 200)
        self.daemons: list[Daemon] = []
        self.agents: list[Agent] = []

    def up(self) -> Datacenter:
        try:
            self.fabric.up()
            first = self._daemon(self.root / "sdcd1", "")
            first.start()
            for i in range(1, self.count + 1):
                agent = Agent(
                    self.root / f"node{i}",
                    self.fabric,
                    i,
                    self.redis_url,
                    self.prefix,
                    self.octet,
                    self.memory,
                    self.disk,
                )
                first.admin(
                    "node", "enrol", agent.node_id, "--name", agent.address,
                    "--out", str(agent.tls_dir),
                )  # fmt: skip
                self.agents.append(agent)
                agent.start()
            self.wait_nodes(self.count)
        except BaseException:
            self.down()
            raise
        return self

    def _daemon(self, root: Path, extra: str) -> Daemon:
        d = Daemon(
            root,
            compute="local = false\n",
            extra=(
                f'[redis]\nurl = "{self.redis_url}"\nprefix = "{self.prefix}"\n'
                f'[internal]\nenabled = true\nhost = "{self.fabric.gateway}"\n'
                f'port = {free_port()}\naddress = "{self.fabric.gateway}"\n'
                f'name = "{root.name}"\n' + extra
            ),
        )
        self.daemons.append(d)
        return d

    def add_sdcd(self) -> Daemon:
        """A second sdcd over the same Redis, image store and internal CA."""
        first = self.daemons[0]
        certs = self.root / "sdcd2-internal"
        first.admin("api-cert", "sdcd2", "--out", str(certs))
        tls = first.data_dir / "tls"
        second = self._daemon(
            self.root / "sdcd2",
            f'cert_dir = "{certs}"\n'
            f'[tls]\ncert = "{tls / "server-cert.pem"}"\nkey = "{tls / "server-key.pem"}"\n'
            f'ca = "{tls / "ca.pem"}"\n'
            f'[images]\nblob_dir = "{first.data_dir / "blobs"}"\n',
        )
        second.start()
        return second

    def wait_nodes(self, count: int, timeout: float = 30) -> None:
        """Until the first sdcd has reached ``count`` nodes."""

        def reached() -> bool:
            return self.daemons[0].log().count("compute node ") >= count

        wait_for(reached, timeout)

    def redis_cli(self, *args: str) -> str:
        sock = self.redis_url.removeprefix("unix://")
        return subprocess.run(
            ["redis-cli", "-s", sock, *args], capture_output=True, text=True, timeout=10
        ).stdout

    def agent_of(self, node_id: str) -> Agent:
        return next(a for a in self.agents if a.node_id == node_id)

    def down(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.purge()
        for d in self.daemons:
            with contextlib.suppress(Exception):
                d.destroy()
        self.fabric.down()


__all__ = ["NODE_MEMORY", "Agent", "Datacenter"]
