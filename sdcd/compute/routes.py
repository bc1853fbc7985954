"""Routes between compute nodes' container subnets.

Nodes share one L2 segment and each has its own container subnet on its bridge, so a
container on another node is reached by routing that node's subnet via that node's
address on the segment: no overlay, no encapsulation. This module keeps the routes of
the netns it runs in equal to the set the fleet says, marking them with a protocol
number of our own (``ROUTE_PROTO``) so that it only ever removes routes it made.

Like ``network``, everything is iproute2 run through Twisted (and one procfs write in a
thread): per sync one ``ip route show`` and, when something changed, one ``ip -batch``.
"""

from __future__ import annotations

import ipaddress

from twisted.internet import threads
from twisted.logger import Logger

from sdcd.compute.network import IP, _run

# The rtnetlink protocol number on our routes (/etc/iproute2/rt_protos: 0-4 are the
# kernel's, 8-19x are routing daemons; 211 is unassigned).
ROUTE_PROTO = 211
ROUTE_PROTO_NAME = "sdcd"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

log = Logger()


async def enable_forwarding() -> None:
    """Turn on IPv4 forwarding in this process's netns (procfs sysctls belong to the
    writer's netns), so that the node routes between its bridge and the segment.
    Idempotent; the file is written only when it is not already 1."""
    await threads.deferToThread(_enable_forwarding)


def _enable_forwarding() -> None:
    with open(IP_FORWARD, "r+") as f:
        if f.read().strip() != "1":
            f.seek(0)
            f.write("1\n")


async def sync_routes(peers: dict[str, str], own_subnet: str) -> None:
    """Make this netns's ``ROUTE_PROTO`` routes exactly ``peers`` ({subnet: next hop}).

    Each peer subnet gets ``ip route replace <subnet> via <hop> proto ROUTE_PROTO``; our
    routes whose subnet is no longer among the peers (a node that left) are deleted.
    Invalid entries, and any subnet overlapping ``own_subnet``, are logged and skipped,
    never handed to ``ip``. Every valid change is attempted even if one fails (an
    unreachable next hop, say); then ``network.NetworkError`` is raised for the caller to retry."""
    wanted = _valid_peers(peers, ipaddress.IPv4Network(own_subnet, strict=False))
    current = await current_routes()
    lines = [
        f"route replace {subnet} via {hop} proto {ROUTE_PROTO}"
        for subnet, hop in sorted(wanted.items())
        if current.get(subnet) != hop
    ]
    lines += [
        f"route del {subnet} proto {ROUTE_PROTO}"
        for subnet in sorted(current)
        if subnet not in wanted
    ]
    if lines:
        await _run([IP, "-force", "-batch", "-"], "".join(line + "\n" for line in lines))


async def current_routes() -> dict[str, str]:
    """This netns's routes of protocol ``ROUTE_PROTO`` in the main table, as
    {subnet: next hop} ("" for a route without a gateway, which sync then replaces)."""
    _, out, _ = await _run([IP, "-4", "-o", "route", "show", "proto", str(ROUTE_PROTO)])
    routes = {}
    for line in out.splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            subnet = str(ipaddress.IPv4Network(fields[0], strict=False))
        except ValueError:  # "default" or anything we did not make
            continue
        hop = fields[fields.index("via") + 1] if "via" in fields[:-1] else ""
        routes[subnet] = hop
    return routes


def _valid_peers(peers: dict[str, str], own: ipaddress.IPv4Network) -> dict[str, str]:
    """The usable peers, normalised ({"10.214.2.0/24": "10.213.5.3"})."""
    valid: dict[str, str] = {}
    for subnet, hop in peers.items():
        try:
            net = ipaddress.IPv4Network(subnet, strict=False)
            addr = ipaddress.IPv4Address(hop)
        except (ValueError, TypeError) as e:
            log.warn("route to {subnet!r} via {hop!r} skipped: {e}", subnet=subnet, hop=hop, e=e)
            continue
        if net.overlaps(own) or net.prefixlen == 0 or addr in net or addr.is_unspecified:
            log.warn(
                "route to {subnet} via {hop} skipped: overlaps {own} or loops",
                subnet=net,
                hop=addr,
                own=own,
            )
            continue
        valid[str(net)] = str(addr)
    return valid
