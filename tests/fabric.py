"""A test fabric: N "compute nodes" as network namespaces on one L2 segment.

The segment is a bridge in the root netns (``<prefix>br``, address .1 of the fabric
network); node i is netns ``<prefix>n<i>`` whose ``fab0`` (a veth whose root end
``<prefix>v<i>`` is a bridge port) has address .(i+1) and a default route via .1. So the
root netns (where sdcd runs in tests) reaches every node and the nodes reach each other.

Bridged frames between nodes pass the root netns's iptables FORWARD chain when
br_netfilter is on (``net.bridge.bridge-nf-call-iptables=1``, as on the test host); that
is harmless only while the FORWARD policy there is ACCEPT. ``forward_blockers()`` says
what would get in the way; nothing here changes host sysctls or iptables.

Everything is synchronous (subprocess): this is test set-up, not reactor code.
"""

from __future__ import annotations

import ipaddress
import os
import random
import subprocess

NETNS_DIR = "/run/netns"
NSENTER = "/usr/bin/nsenter"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def sh(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run a command, capturing its output (text)."""
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def free_network(second: int = 213) -> str:
    """A 10.<second>.x.0/24 that no interface in the root netns uses."""
    used = sh("ip", "-o", "-4", "addr").stdout
    for _ in range(200):
        x = random.randrange(256)
        if f" 10.{second}.{x}." not in used:
            return f"10.{second}.{x}.0/24"
    raise RuntimeError(f"no free 10.{second}.x.0/24")


def nspython(netns: str, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` (python, with ``args`` in sys.argv[1:]) in ``netns`` by nsenter: the
    mount namespace, and so /sys, stay the root netns's."""
    return subprocess.run(
        [NSENTER, f"--net={NETNS_DIR}/{netns}", PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def forward_blockers() -> list[str]:
    """What on this host would drop bridged traffic between the fabric's nodes: a
    FORWARD policy other than ACCEPT (nft or legacy iptables) while br_netfilter hands
    bridged frames to iptables. Empty when nothing would."""
    nf = sh("sysctl", "-n", "net.bridge.bridge-nf-call-iptables").stdout.strip()
    if nf != "1":
        return []
    found = []
    for tool in ("iptables", "iptables-legacy"):
        rules = sh(tool, "-S", "FORWARD").stdout.splitlines()
        found += [f"{tool}: {r}" for r in rules if r.startswith("-P FORWARD") and "ACCEPT" not in r]
    return found


class Fabric:
    """``count`` node netns on a root-netns bridge; ``up()`` builds, ``down()`` removes."""

    def __init__(self, prefix: str, count: int = 3, network: str | None = None) -> None:
        if len(f"{prefix}v{count}") > 15 or len(f"{prefix}br") > 15:
            raise ValueError(f"prefix {prefix!r} too long for interface names")
        self.prefix = prefix
        self.count = count
        self.network = ipaddress.IPv4Network(network or free_network())
        if self.network.num_addresses < count + 3:
            raise ValueError(f"{self.network} too small for {count} nodes")

    @property
    def bridge(self) -> str:
        """The segment's bridge in the root netns."""
        return f"{self.prefix}br"

    @property
    def gateway(self) -> str:
        """The bridge's address (.1): the root netns as seen from the nodes."""
        return str(self.network.network_address + 1)

    def netns(self, i: int) -> str:
        """Node ``i``'s netns name (1-based)."""
        return f"{self.prefix}n{i}"

    def address(self, i: int) -> str:
        """Node ``i``'s address on ``fab0`` (.(i+1))."""
        return str(self.network.network_address + 1 + i)

    def veth(self, i: int) -> str:
        """The root end of node ``i``'s veth (a port of the bridge)."""
        return f"{self.prefix}v{i}"

    def nsenter(self, i: int) -> list[str]:
        """The command prefix that runs something in node ``i``'s netns."""
        return [NSENTER, f"--net={NETNS_DIR}/{self.netns(i)}"]

    def up(self) -> Fabric:
        """Build it all; on failure what was built is removed and the error raised."""
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self) -> None:
        plen = self.network.prefixlen
        sh("ip", "link", "add", self.bridge, "type", "bridge", check=True)
        sh("ip", "address", "add", f"{self.gateway}/{plen}", "dev", self.bridge, check=True)
        sh("ip", "link", "set", self.bridge, "up", check=True)
        for i in range(1, self.count + 1):
            ns, veth = self.netns(i), self.veth(i)
            sh("ip", "netns", "add", ns, check=True)
            sh(
                "ip",
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                "fab0",
                "netns",
                ns,
                check=True,
            )
            sh("ip", "link", "set", veth, "master", self.bridge, "up", check=True)
            for cmd in (
                ["address", "add", f"{self.address(i)}/{plen}", "dev", "fab0"],
                ["link", "set", "fab0", "up"],
                ["link", "set", "lo", "up"],
                ["route", "add", "default", "via", self.gateway],
            ):
                sh("ip", "-n", ns, *cmd, check=True)

    def down(self) -> None:
        """Remove the nodes' netns, veths and the bridge; idempotent, also after a
        partial ``up()``. Only names built from this fabric's prefix are touched."""
        for i in range(1, self.count + 1):
            sh("ip", "link", "del", self.veth(i))  # takes fab0 with it
            if os.path.lexists(f"{NETNS_DIR}/{self.netns(i)}"):
                sh("ip", "netns", "del", self.netns(i))
        sh("ip", "link", "del", self.bridge)

    def __enter__(self) -> Fabric:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
