"""Routing between nodes' container subnets, for real: a fabric of node netns, in each a
bridge with its own subnet and one container, routes kept by ``sdcd.compute.routes``
run inside the node netns (as the agent runs there, with the root netns's /sys)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest

from sdcd.compute import network as net
from sdcd.compute import routes
from tests.fabric import Fabric, forward_blockers, nspython, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for ip netns")

NODES = 3

NODE = """
import json, sys
from twisted.internet import defer, task
from sdcd.compute import network as net, routes

async def main(_reactor, op, raw):
    a = json.loads(raw)
    cfg = net.BridgeConfig(a["bridge"], a["subnet"])
    if op == "setup":
        await net.ensure_bridge(cfg)
        await net.create_endpoint(a["cid"], cfg, a["ip"], net.mac_for_ip(a["ip"]))
    elif op == "routes":
        await routes.enable_forwarding()
        try:
            await routes.sync_routes(a["peers"], cfg.subnet)
        except net.NetworkError:
            print("failed:", end="")
        print(json.dumps(await routes.current_routes()))
    else:
        await net.remove_endpoint(a["cid"])
        await net.remove_bridge(a["bridge"])

task.react(lambda r: defer.ensureDeferred(main(r, *sys.argv[1:])))
"""


class Node:
    """One node of the fabric: its bridge, subnet and single container."""

    def __init__(self, fabric: Fabric, i: int, subnet: str) -> None:
        self.fabric, self.i = fabric, i
        self.args = {
            "bridge": fabric.prefix + "nb",  # the same name on every node: netns are apart
            "subnet": subnet,
            "cid": secrets.token_hex(32),
            "ip": subnet.rsplit(".", 1)[0] + ".10",
        }

    def run(self, op: str, **extra: object) -> str:
        done = nspython(self.fabric.netns(self.i), NODE, op, json.dumps(self.args | extra))
        assert done.returncode == 0, done.stderr
        return done.stdout

    def ping(self, ip: str, tries: int = 2) -> bool:
        ns = net.netns_path(self.args["cid"])
        cmd = ["nsenter", f"--net={ns}", "/bin/busybox", "ping", "-c1", "-W1", ip]
        return any(subprocess.run(cmd, capture_output=True).returncode == 0 for _ in range(tries))


@pytest.fixture
def nodes():
    fabric = Fabric("f" + secrets.token_hex(3), NODES)
    third = secrets.randbelow(200)
    made = [Node(fabric, i, f"10.214.{third + i}.0/24") for i in range(1, NODES + 1)]
    try:
        fabric.up()
        for node in made:
            node.run("setup")
        yield made
    finally:
        for node in made:
            if os.path.lexists(f"/run/netns/{fabric.netns(node.i)}"):
                nspython(fabric.netns(node.i), NODE, "teardown", json.dumps(node.args))
            sh("ip", "netns", "del", net.netns_name(node.args["cid"]))
        fabric.down()
        assert not os.path.exists(f"/sys/class/net/{fabric.bridge}")


def peers_of(node: Node, nodes: list[Node]) -> dict[str, str]:
    return {o.args["subnet"]: o.fabric.address(o.i) for o in nodes if o is not node}


def test_host_does_not_drop_bridged_fabric_traffic():
    assert forward_blockers() == []


def test_containers_on_different_nodes_reach_each_other(nodes):
    one, two, three = nodes
    fabric = one.fabric
    assert not one.ping(two.args["ip"], tries=1)  # no routes yet
    for node in nodes:
        got = json.loads(node.run("routes", peers=peers_of(node, nodes)))
        assert got == peers_of(node, nodes)
    assert one.ping(two.args["ip"]) and three.ping(one.args["ip"])
    shown = sh("ip", "-n", fabric.netns(1), "route", "show", "proto", str(routes.ROUTE_PROTO))
    assert f"{two.args['subnet']} via {fabric.address(2)} dev fab0" in shown.stdout

    # Node two leaves: node one's route to it goes, a route of someone else stays.
    other = ["ip", "-n", fabric.netns(1), "route", "add", "10.215.0.0/24", "via", fabric.gateway]
    assert sh(*other).returncode == 0
    left = peers_of(one, [one, three])
    assert json.loads(one.run("routes", peers=left)) == left
    table = sh("ip", "-n", fabric.netns(1), "-o", "route").stdout
    assert two.args["subnet"] not in table and "10.215.0.0/24 via" in table
    assert not one.ping(two.args["ip"], tries=1) and one.ping(three.args["ip"])


def test_bad_peers_are_skipped(nodes):
    one, two, _ = nodes
    own = one.args["subnet"]
    good = {two.args["subnet"]: two.fabric.address(2)}
    bad = {
        "not a subnet": "10.0.0.1",
        "10.216.0.0/24": "nonsense",
        own: two.fabric.address(2),  # never route our own subnet
        own.rsplit(".", 1)[0] + ".128/25": two.fabric.address(2),  # nor part of it
        "0.0.0.0/0": two.fabric.address(2),
        "fd00::/64": two.fabric.address(2),
    }
    assert json.loads(one.run("routes", peers=good | bad)) == good
    # A next hop that is not on any link fails, after the other changes were made.
    unreachable = {"10.217.0.0/24": "192.0.2.1"}
    out = one.run("routes", peers={"10.218.0.0/24": two.fabric.address(2)} | unreachable)
    assert out.startswith("failed:")
    assert json.loads(out.removeprefix("failed:")) == {"10.218.0.0/24": two.fabric.address(2)}
    assert json.loads(one.run("routes", peers={})) == {}
