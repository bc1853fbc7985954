"""A compute node's container networking: one Linux bridge per node, and per container a
named network namespace joined to the bridge by a veth pair.

Everything is done with ``ip`` (iproute2) run as a subprocess through Twisted, so the
reactor never blocks and no netlink library is needed. Work is batched (``ip -batch``) so
that a whole endpoint costs two processes. Names derive from the container id so that
after a crash the node can find, finish or remove what a half-done call left behind:

* netns ``sdcd-<id[:12]>`` at ``/run/netns/sdcd-<id[:12]>``
* host-side veth ``vsd<id[:12]>`` (15 characters, the kernel's limit), enslaved to the
  bridge; its peer lives in the netns as ``eth0``.

Packets between containers on one bridge pass through iptables' FORWARD chain when
``br_netfilter`` is on (``net.bridge.bridge-nf-call-iptables=1``); this module never
touches iptables, so an operator's FORWARD policy of DROP (as dockerd sets) blocks
container-to-container traffic until the bridge is allowed there.

Every check works in the network namespace this process runs in, which need not be the
one ``/sys/class/net`` shows: sysfs belongs to the netns of whoever mounted it, so an
agent started as ``nsenter --net=/run/netns/<node> twistd ...`` still sees the root
netns's interfaces there. Links are therefore looked up with ``if_nametoindex`` (an
ioctl on a socket of our netns), counters read from ``/proc/self/net/dev`` and a bridge
port's master asked of ``ip``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import socket
from typing import Any

import attrs
from twisted.internet import defer, protocol, threads

NETNS_DIR = "/run/netns"
SYS_NET = "/sys/class/net"  # the mounter's netns, not necessarily ours: not read here
PROC_NET_DEV = "/proc/self/net/dev"
IP = shutil.which("ip") or "/usr/sbin/ip"
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
_COUNTERS = ("bytes", "packets", "errors", "dropped")

# The first ``ip netns add`` on a boot turns /run/netns into a shared bind mount; two of
# them racing can stack two such mounts. Serialise additions until that mount exists.
_first_netns_lock = defer.DeferredLock()


class NetworkError(Exception):
    """An ``ip`` command failed; carries the command and what it printed on stderr."""

    def __init__(self, command: list[str], stderr: str, stdin: str = "") -> None:
        self.command = command
        self.stderr = stderr
        self.stdin = stdin
        shown = " ".join(command) + (f" <<< {stdin.strip()!r}" if stdin else "")
        super().__init__(f"{shown}: {stderr.strip() or 'failed'}")


def _default_gateway(cfg: BridgeConfig) -> str:
    return str(next(ipaddress.IPv4Network(cfg.subnet, strict=False).hosts()))


@attrs.frozen
class BridgeConfig:
    """A node's bridge: its name, the containers' subnet and the bridge's own address
    (the containers' default gateway; the first host address unless given)."""

    name: str
    subnet: str = attrs.field(converter=lambda s: str(ipaddress.IPv4Network(s, strict=False)))
    gateway: str = attrs.field(default=attrs.Factory(_default_gateway, takes_self=True))
    mtu: int = 1500

    @property
    def prefixlen(self) -> int:
        """The subnet's prefix length, for addresses given as ``ip/prefix``."""
        return ipaddress.IPv4Network(self.subnet).prefixlen


class _Collect(protocol.ProcessProtocol):
    """Feeds stdin, gathers stdout/stderr, fires with (exit code, stdout, stderr)."""

    def __init__(self, stdin: bytes) -> None:
        self._stdin = stdin
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        code = -1 if code is None else code
        out = b"".join(self._out).decode(errors="replace")
        self.done.callback((code, out, b"".join(self._err).decode(errors="replace")))


async def _run(args: list[str], stdin: str = "", *, check: bool = True) -> tuple[int, str, str]:
    """Run ``args`` (absolute executable first) without blocking the reactor."""
    from twisted.internet import reactor

    proto = _Collect(stdin.encode())
    reactor.spawnProcess(proto, args[0], args, env=_ENV)
    code, out, err = await proto.done
    if check and code != 0:
        raise NetworkError(args, err or out, stdin)
    return code, out, err


async def _ip_batch(lines: list[str], netns: str | None = None) -> None:
    """Run iproute2 commands in one process (in ``netns`` when given), stopping at the
    first failure."""
    args = [IP, *(["-n", netns] if netns else []), "-batch", "-"]
    await _run(args, "".join(line + "\n" for line in lines))


def _link_exists(name: str) -> bool:
    """Whether ``name`` is a link in this process's netns: one ioctl (SIOCGIFINDEX) on a
    socket, which is answered by the socket's netns, unlike /sys."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


async def _link_master(name: str) -> str | None:
    """The bridge ``name`` is enslaved to (None if none, or no such link)."""
    code, out, _ = await _run([IP, "-o", "link", "show", "dev", name], check=False)
    fields = out.split()
    if code != 0 or "master" not in fields[:-1]:
        return None
    return fields[fields.index("master") + 1]


async def ensure_bridge(cfg: BridgeConfig) -> None:
    """Create the bridge if missing, give it ``gateway/prefix`` and bring it up.

    The bridge gets a fixed MAC derived from its gateway so that it does not change as
    ports come and go (containers' ARP caches would go stale). iptables is left alone."""
    if not _link_exists(cfg.name):
        try:
            await _ip_batch([f"link add {cfg.name} type bridge"])
        except NetworkError:
            if not _link_exists(cfg.name):  # lost a race to a concurrent caller is fine
                raise
    await _ip_batch(
        [
            f"link set dev {cfg.name} address {mac_for_ip(cfg.gateway)} mtu {cfg.mtu}",
            f"address replace {cfg.gateway}/{cfg.prefixlen} dev {cfg.name}",
            f"link set dev {cfg.name} up",
        ]
    )


async def remove_bridge(name: str) -> None:
    """Delete the bridge (its ports are released, not deleted); idempotent."""
    if _link_exists(name):
        try:
            await _ip_batch([f"link del dev {name}"])
        except NetworkError:
            if _link_exists(name):
                raise


def netns_name(container_id: str) -> str:
    """The container's netns name. Only the first 12 characters of the id are used, so a
    name from ``list_endpoints`` minus its prefix works as an id for ``remove_endpoint``."""
    return "sdcd-" + container_id[:12]


def netns_path(container_id: str) -> str:
    """Where the container's netns is bind-mounted (for runc's ``linux.namespaces``)."""
    return os.path.join(NETNS_DIR, netns_name(container_id))


def host_veth_name(container_id: str) -> str:
    """The host end of the container's veth (15 characters, IFNAMSIZ - 1)."""
    return "vsd" + container_id[:12]


def mac_for_ip(ip: str) -> str:
    """A locally administered MAC made from the IPv4 address, as dockerd assigns them, so
    a container keeps its MAC with its IP."""
    packed = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


async def create_endpoint(container_id: str, bridge: BridgeConfig, ip: str, mac: str) -> None:
    """Give the container its netns, wired to ``bridge`` with ``ip`` and ``mac`` on eth0,
    lo up and a default route via the bridge's gateway.

    Calling it again for an endpoint that is complete with this address changes nothing;
    anything else left under the container's names (a crash mid-way, another address) is
    removed first. On failure the partial state is removed before the error is raised."""
    if await _endpoint_complete(container_id, bridge, ip, mac):
        return
    await remove_endpoint(container_id)
    try:
        await _create(container_id, bridge, ip, mac)
    except BaseException:
        await _remove_quietly(container_id)
        raise


async def _create(container_id: str, bridge: BridgeConfig, ip: str, mac: str) -> None:
    ns, veth, mtu = netns_name(container_id), host_veth_name(container_id), bridge.mtu
    host = [
        f"netns add {ns}",
        # The peer is born inside the netns as eth0: no temporary name on the host.
        f"link add {veth} mtu {mtu} type veth peer name eth0 mtu {mtu} address {mac} netns {ns}",
        f"link set dev {veth} master {bridge.name} up",
    ]
    if os.path.ismount(NETNS_DIR):
        await _ip_batch(host)
    else:
        await _first_netns_lock.run(_ip_batch, host)
    await _ip_batch(
        [
            f"address add {ip}/{bridge.prefixlen} dev eth0",
            "link set dev eth0 up",
            "link set dev lo up",
            f"route add default via {bridge.gateway} dev eth0",
        ],
        netns=ns,
    )


async def _endpoint_complete(container_id: str, bridge: BridgeConfig, ip: str, mac: str) -> bool:
    """Whether the endpoint is already fully wired as asked (only probes the netns when
    it exists, so a fresh create costs nothing here)."""
    path, veth = netns_path(container_id), host_veth_name(container_id)
    if not (os.path.ismount(path) and _link_exists(veth)):
        return False
    if await _link_master(veth) != bridge.name:
        return False
    code, out, _ = await _run(
        [IP, "-n", netns_name(container_id), "-o", "-batch", "-"],
        "address show dev eth0\nlink show dev eth0\nroute show default\n",
        check=False,
    )
    return (
        code == 0
        and f" {ip}/{bridge.prefixlen} " in out
        and f" {mac.lower()} " in out
        and ",UP" in out
        and f"default via {bridge.gateway} dev eth0" in out
    )


async def remove_endpoint(container_id: str) -> None:
    """Delete the host veth (which takes its peer with it) and then the netns. Deleting
    the veth explicitly matters: a netns is torn down asynchronously by the kernel, so
    its veth would otherwise linger for a moment. Idempotent."""
    veth, path = host_veth_name(container_id), netns_path(container_id)
    lines = []
    if _link_exists(veth):
        lines.append(f"link del dev {veth}")
    if os.path.lexists(path):
        lines.append(f"netns del {netns_name(container_id)}")
    if not lines:
        return
    try:
        await _ip_batch(lines)
    except NetworkError:
        if _link_exists(veth) or os.path.lexists(path):  # gone meanwhile is as good
            raise


async def _remove_quietly(container_id: str) -> None:
    with contextlib.suppress(NetworkError):
        await remove_endpoint(container_id)


async def endpoint_exists(container_id: str) -> bool:
    """Whether anything of the container's endpoint (netns or host veth) exists."""
    return os.path.lexists(netns_path(container_id)) or _link_exists(host_veth_name(container_id))


async def list_endpoints(prefix: str = "sdcd-") -> list[str]:
    """The netns names under /run/netns that start with ``prefix``, sorted: what this
    node's reconciliation compares with the containers it knows."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


async def interface_counters(container_id: str) -> dict[str, int]:
    """The container's eth0 counters as the container sees them (``rx_bytes``,
    ``tx_packets``, ...), read from the host veth's line in /proc/self/net/dev with rx and
    tx swapped: what the host end receives, the container sent."""
    veth = host_veth_name(container_id)
    counters = await threads.deferToThread(read_counters, container_id)
    if counters is None:
        raise NetworkError(["read", PROC_NET_DEV], f"no interface {veth}")
    return counters


def read_counters(container_id: str) -> dict[str, int] | None:
    """``interface_counters`` for callers already in a thread (stats sampling); None when
    the container has no host veth. Blocks: the file lists every interface of the netns."""
    host = _proc_net_dev(host_veth_name(container_id))
    if host is None:
        return None
    return {
        f"{container_dir}_{what}": host[f"{host_dir}_{what}"]
        for host_dir, container_dir in (("rx", "tx"), ("tx", "rx"))
        for what in _COUNTERS
    }


# /proc/net/dev's columns after "name:": 8 receive then 8 transmit fields, of which the
# first four of each are bytes, packets, errs, drop (rx drop includes rx_missed_errors).
_DEV_FIELDS = 8


def _proc_net_dev(name: str) -> dict[str, int] | None:
    """One interface's ``{rx,tx}_{bytes,packets,errors,dropped}`` from this process's
    netns (/proc/self/net follows the reader's netns), or None if it is not listed.
    Names are right-aligned in 6 columns and cannot contain ":" or spaces; one regex
    search over the whole file keeps a 1000-interface file at the kernel's cost."""
    with open(PROC_NET_DEV, "rb") as f:
        data = f.read()
    found = re.search(rb"^ *" + re.escape(name.encode()) + rb":(.*)$", data, re.MULTILINE)
    if found is None:
        return None
    values = [int(v) for v in found.group(1).split()]
    return {
        f"{direction}_{what}": values[base + i]
        for direction, base in (("rx", 0), ("tx", _DEV_FIELDS))
        for i, what in enumerate(_COUNTERS)
    }
