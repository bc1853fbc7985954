"""Container networking for real (as root): a bridge of our own, endpoints in named
netns, pings between host and containers, cleanup after crashes."""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess

import pytest
import pytest_twisted
from twisted.internet import utils

from sdcd.compute import network as net
from sdcd.compute.network import BridgeConfig, NetworkError
from tests.fabric import nspython

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for ip netns")

BUSYBOX = "/bin/busybox"
NSENTER = "/usr/bin/nsenter"


def free_subnet() -> str:
    """A 10.213.x.0/24 that no interface on this host uses."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        x = random.randrange(256)
        if f" 10.213.{x}." not in used:
            return f"10.213.{x}.0/24"
    raise RuntimeError("no free 10.213.x.0/24")


def new_id() -> str:
    return secrets.token_hex(32)


def host_ip(cfg: BridgeConfig, n: int) -> str:
    return cfg.subnet.rsplit(".", 1)[0] + f".{n}"


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True)


@pytest.fixture
def bridge():
    """A bridge config with a unique name and subnet; everything under it (the bridge and
    every endpoint created through ``ids``) is removed afterwards, even on failure."""
    cfg = BridgeConfig("sdt" + secrets.token_hex(5), free_subnet())
    yield cfg
    sh("ip", "link", "del", cfg.name)


@pytest.fixture
def ids():
    """Container ids for a test; their netns and veths are removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(new_id())
        return made[-1]

    yield make
    for cid in made:
        sh("ip", "link", "del", net.host_veth_name(cid))
        sh("ip", "netns", "del", net.netns_name(cid))


async def run(*args: str) -> tuple[str, str, int]:
    out, err, code = await utils.getProcessOutputAndValue(args[0], args[1:])
    return out.decode(), err.decode(), code


async def ping(ip: str, netns: str | None = None) -> bool:
    prefix = [NSENTER, f"--net={netns}"] if netns else []
    for _ in range(3):
        _, _, code = await run(*prefix, BUSYBOX, "ping", "-c1", "-W1", ip)
        if code == 0:
            return True
    return False


async def endpoint(ids, cfg: BridgeConfig, n: int) -> tuple[str, str]:
    cid, ip = ids(), host_ip(cfg, n)
    await net.create_endpoint(cid, cfg, ip, net.mac_for_ip(ip))
    return cid, ip


def gone(cid: str) -> bool:
    return not os.path.lexists(net.netns_path(cid)) and not os.path.exists(
        f"/sys/class/net/{net.host_veth_name(cid)}"
    )


def test_names():
    cid = "0123456789ab" + "c" * 52
    assert net.netns_name(cid) == "sdcd-0123456789ab"
    assert net.netns_path(cid) == "/run/netns/sdcd-0123456789ab"
    assert net.host_veth_name(cid) == "vsd0123456789ab"
    assert len(net.host_veth_name(cid)) <= 15
    assert net.mac_for_ip("172.30.0.2") == "02:42:ac:1e:00:02"
    cfg = BridgeConfig("b", "172.30.5.9/16")
    assert (cfg.subnet, cfg.gateway, cfg.prefixlen, cfg.mtu) == (
        "172.30.0.0/16",
        "172.30.0.1",
        16,
        1500,
    )


@pytest_twisted.ensureDeferred
async def test_bridge_is_idempotent(bridge):
    await net.ensure_bridge(bridge)
    await net.ensure_bridge(bridge)
    out, _, _ = await run("/usr/sbin/ip", "-o", "-4", "addr", "show", "dev", bridge.name)
    assert out.count(" inet ") == 1
    assert f" {bridge.gateway}/24 " in out
    with open(f"/sys/class/net/{bridge.name}/address") as f:
        assert f.read().strip() == net.mac_for_ip(bridge.gateway)
    with open(f"/sys/class/net/{bridge.name}/flags") as f:
        assert int(f.read(), 16) & 1  # IFF_UP (operstate stays down until a port is up)
    await net.remove_bridge(bridge.name)
    await net.remove_bridge(bridge.name)
    assert not os.path.exists(f"/sys/class/net/{bridge.name}")


@pytest_twisted.ensureDeferred
async def test_two_endpoints_reach_host_and_each_other(bridge, ids):
    await net.ensure_bridge(bridge)
    (a, ip_a), (b, ip_b) = await endpoint(ids, bridge, 10), await endpoint(ids, bridge, 11)
    assert await net.endpoint_exists(a) and await net.endpoint_exists(b)
    assert {net.netns_name(a), net.netns_name(b)} <= set(await net.list_endpoints())
    assert net.netns_name(a) not in await net.list_endpoints("nothing-")

    out, _, _ = await run(NSENTER, f"--net={net.netns_path(a)}", "/usr/sbin/ip", "-o", "addr")
    assert f"eth0    inet {ip_a}/24" in out and "lo    inet 127.0.0.1/8" in out
    out, _, _ = await run(NSENTER, f"--net={net.netns_path(a)}", "/usr/sbin/ip", "route")
    assert f"default via {bridge.gateway} dev eth0" in out
    out, _, _ = await run(NSENTER, f"--net={net.netns_path(a)}", "/usr/sbin/ip", "-o", "link")
    assert net.mac_for_ip(ip_a) in out

    before = await net.interface_counters(a)
    assert await ping(ip_a) and await ping(ip_b)
    assert await ping(ip_b, net.netns_path(a))
    assert await ping(bridge.gateway, net.netns_path(b))
    after = await net.interface_counters(a)
    for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
        assert after[key] > before[key], key
    assert set(after) >= {"rx_errors", "tx_errors", "rx_dropped", "tx_dropped"}


@pytest_twisted.ensureDeferred
async def test_remove_endpoint_cleans_everything(bridge, ids):
    await net.ensure_bridge(bridge)
    cid, _ = await endpoint(ids, bridge, 20)
    await net.remove_endpoint(cid)
    assert gone(cid)
    assert not await net.endpoint_exists(cid)
    assert net.netns_name(cid) not in await net.list_endpoints()
    await net.remove_endpoint(cid)  # idempotent
    with pytest.raises(NetworkError):
        await net.interface_counters(cid)


@pytest_twisted.ensureDeferred
async def test_create_again_on_a_complete_endpoint_changes_nothing(bridge, ids):
    await net.ensure_bridge(bridge)
    cid, ip = await endpoint(ids, bridge, 30)
    inode = os.stat(net.netns_path(cid)).st_ino
    await net.create_endpoint(cid, bridge, ip, net.mac_for_ip(ip))
    assert os.stat(net.netns_path(cid)).st_ino == inode
    # Asked for another address, it is rebuilt with that one.
    other = host_ip(bridge, 31)
    await net.create_endpoint(cid, bridge, other, net.mac_for_ip(other))
    assert await ping(other)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("crash_after", ["netns", "veth", "veth_in_netns", "address"])
async def test_create_after_a_crash_midway(bridge, ids, crash_after):
    await net.ensure_bridge(bridge)
    cid, ip = ids(), host_ip(bridge, 40)
    ns, veth = net.netns_name(cid), net.host_veth_name(cid)
    steps = [["netns", "add", ns]]
    if crash_after in ("veth", "veth_in_netns", "address"):
        steps.append(["link", "add", veth, "type", "veth", "peer", "name", "tmp" + cid[:8]])
    if crash_after in ("veth_in_netns", "address"):
        steps.append(["link", "set", "tmp" + cid[:8], "netns", ns, "name", "eth0"])
    if crash_after == "address":
        steps.append(["-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
    for step in steps:
        assert sh("ip", *step).returncode == 0, step
    await net.create_endpoint(cid, bridge, ip, net.mac_for_ip(ip))
    assert await ping(ip)
    assert sh("ip", "link", "show", "tmp" + cid[:8]).returncode != 0
    await net.remove_endpoint(cid)
    assert gone(cid)


@pytest_twisted.ensureDeferred
async def test_failed_create_leaves_nothing(bridge, ids):
    cid = ids()  # the bridge was never created: enslaving the veth fails
    with pytest.raises(NetworkError) as failure:
        await net.create_endpoint(cid, bridge, host_ip(bridge, 50), net.mac_for_ip("10.0.0.1"))
    assert bridge.name in str(failure.value) and failure.value.stderr
    assert failure.value.command[0].endswith("ip")
    assert gone(cid)


# Run inside another netns by nsenter: /sys still shows the root netns there.
IN_NETNS = """
import json, os, sys
from twisted.internet import defer, task, utils
from sdcd.compute import network as net

async def main(_reactor, op, cid, name, subnet):
    cfg, out = net.BridgeConfig(name, subnet), {}
    if op == "up":
        ip = cfg.subnet.rsplit(".", 1)[0] + ".10"
        await net.ensure_bridge(cfg)
        await net.create_endpoint(cid, cfg, ip, net.mac_for_ip(ip))
        inode = os.stat(net.netns_path(cid)).st_ino
        await net.create_endpoint(cid, cfg, ip, net.mac_for_ip(ip))  # complete: kept
        out["kept"] = os.stat(net.netns_path(cid)).st_ino == inode
        ping = ["--net=" + net.netns_path(cid), "/bin/busybox", "ping", "-c1", "-W2", cfg.gateway]
        out["ping"] = (await utils.getProcessOutputAndValue("/usr/bin/nsenter", ping))[2]
        out["counters"] = await net.interface_counters(cid)
    else:
        await net.remove_endpoint(cid)
        await net.remove_bridge(name)
        try:
            await net.interface_counters(cid)
        except net.NetworkError:
            out["counters"] = None
    out["exists"] = await net.endpoint_exists(cid)
    print(json.dumps(out))

task.react(lambda r: defer.ensureDeferred(main(r, *sys.argv[1:])))
"""


def test_works_in_a_netns_that_sys_does_not_show(bridge):
    """The agent runs as ``nsenter --net=... twistd sdcd-agent``: its /sys is the root
    netns's. A root-netns link named like our bridge must not fool it."""
    ns, cid = "sdt" + secrets.token_hex(5), new_id()
    try:
        assert sh("ip", "netns", "add", ns).returncode == 0
        # A decoy in the root netns with the bridge's name: /sys/class/net shows it.
        assert sh("ip", "link", "add", bridge.name, "type", "bridge").returncode == 0
        up = nspython(ns, IN_NETNS, "up", cid, bridge.name, bridge.subnet)
        assert up.returncode == 0, up.stderr
        result = json.loads(up.stdout)
        assert result["exists"] and result["kept"] and result["ping"] == 0
        assert result["counters"]["tx_packets"] > 0 and result["counters"]["rx_packets"] > 0
        links = sh("ip", "-n", ns, "-o", "link").stdout
        assert f": {bridge.name}: " in links
        assert f"{net.host_veth_name(cid)}@" in links and f"master {bridge.name} " in links
        assert net.host_veth_name(cid) not in sh("ip", "-o", "link").stdout

        down = nspython(ns, IN_NETNS, "down", cid, bridge.name, bridge.subnet)
        assert down.returncode == 0, down.stderr
        assert json.loads(down.stdout) == {"counters": None, "exists": False}
        links = sh("ip", "-n", ns, "-o", "link").stdout.splitlines()
        assert [line.split()[1] for line in links] == ["lo:"]
        assert not os.path.lexists(net.netns_path(cid))
        assert os.path.exists(f"/sys/class/net/{bridge.name}")  # the decoy is untouched
    finally:
        sh("ip", "netns", "del", net.netns_name(cid))
        sh("ip", "netns", "del", ns)


def test_counters_from_proc_net_dev():
    """/proc/self/net/dev parsing, on the loopback of this netns."""
    lo = net._proc_net_dev("lo")
    assert lo is not None and set(lo) == {
        f"{d}_{w}" for d in ("rx", "tx") for w in ("bytes", "packets", "errors", "dropped")
    }
    assert net._proc_net_dev("nosuchlink0") is None
    assert net.read_counters("f" * 64) is None
    assert net._link_exists("lo") and not net._link_exists("nosuchlink0")
    assert not net._link_exists("x" * 40)
