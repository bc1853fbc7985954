"""The IP allocator against a real Redis: unique under concurrency, idempotent per owner,
sequential with a cursor, exhaustible."""

from __future__ import annotations

import ipaddress

import pytest
import pytest_twisted
from twisted.internet import defer

from sdcd.store.ipam import NoAddressesLeft, RedisIPAllocator


@pytest.fixture
def ipam(pool, key_prefix):
    return RedisIPAllocator(pool, key_prefix)


async def allocate_many(ipam, n: int, subnet: str = "10.0.0.0/16", network: str = "n"):
    return await defer.gatherResults(
        [defer.ensureDeferred(ipam.allocate(network, subnet, f"c{i}")) for i in range(n)],
        consumeErrors=True,
    )


@pytest_twisted.ensureDeferred
async def test_concurrent_allocations_are_unique(ipam):
    ips = await allocate_many(ipam, 200)
    assert len(set(ips)) == 200
    net = ipaddress.ip_network("10.0.0.0/16")
    assert all(ipaddress.ip_address(ip) in net for ip in ips)
    assert "10.0.0.0" not in ips and "10.0.0.1" not in ips
    allocations = await ipam.allocations("n")
    assert allocations == {ip: f"c{i}" for i, ip in enumerate(ips)}


@pytest_twisted.ensureDeferred
async def test_concurrent_allocations_in_small_subnet_never_share(ipam):
    # 20 owners race for the 5 addresses of a /29 (6 hosts, minus the gateway).
    results = await defer.DeferredList(
        [defer.ensureDeferred(ipam.allocate("n", "10.9.0.0/29", f"c{i}")) for i in range(20)],
        consumeErrors=True,
    )
    won = [value for ok, value in results if ok]
    lost = [value for ok, value in results if not ok]
    assert sorted(won) == [f"10.9.0.{i}" for i in range(2, 7)]
    assert len(lost) == 15 and all(f.check(NoAddressesLeft) for f in lost)


@pytest_twisted.ensureDeferred
async def test_same_owner_gets_same_address(ipam):
    first = await ipam.allocate("n", "10.1.0.0/24", "web")
    again = await ipam.allocate("n", "10.1.0.0/24", "web")
    assert first == again == "10.1.0.2"
    assert await ipam.address_of("n", "web") == first
    assert await ipam.allocations("n") == {first: "web"}
    same = await defer.gatherResults(
        [defer.ensureDeferred(ipam.allocate("n", "10.1.0.0/24", "db")) for _ in range(10)]
    )
    assert set(same) == {"10.1.0.3"}


@pytest_twisted.ensureDeferred
async def test_release_and_reuse_after_the_cursor_wraps(ipam):
    subnet = "10.2.0.0/29"  # hosts .1-.6; .1 is the gateway
    a = await ipam.allocate("n", subnet, "a")
    b = await ipam.allocate("n", subnet, "b")
    assert (a, b) == ("10.2.0.2", "10.2.0.3")
    await ipam.release("n", "a")
    await ipam.release("n", "a")  # idempotent
    await ipam.release("n", "nobody")
    assert await ipam.address_of("n", "a") is None
    assert await ipam.allocations("n") == {b: "b"}
    # The just-released .2 is offered last: the cursor goes on to .4, .5, .6 first.
    assert [await ipam.allocate("n", subnet, o) for o in "cde"] == [
        "10.2.0.4",
        "10.2.0.5",
        "10.2.0.6",
    ]
    assert await ipam.allocate("n", subnet, "f") == a
    with pytest.raises(NoAddressesLeft):
        await ipam.allocate("n", subnet, "g")


@pytest_twisted.ensureDeferred
async def test_exhaustion_of_a_small_subnet(ipam):
    subnet = "10.3.0.8/29"
    got = [await ipam.allocate("n", subnet, f"c{i}") for i in range(5)]
    assert got == [f"10.3.0.{i}" for i in range(10, 15)]
    with pytest.raises(NoAddressesLeft):
        await ipam.allocate("n", subnet, "late")
    assert await ipam.address_of("n", "late") is None
    assert await ipam.allocate("n", subnet, "c3") == "10.3.0.13"  # holders still answered
    await ipam.release("n", "c1")
    assert await ipam.allocate("n", subnet, "late") == "10.3.0.11"


@pytest_twisted.ensureDeferred
async def test_gateway_and_reserved_are_skipped(ipam):
    subnet = "10.4.0.0/29"
    reserved = ["10.4.0.3", "10.4.0.5", "192.168.1.1"]  # one outside the subnet: ignored
    got = [await ipam.allocate("n", subnet, f"c{i}", reserved) for i in range(3)]
    assert got == ["10.4.0.2", "10.4.0.4", "10.4.0.6"]
    with pytest.raises(NoAddressesLeft):
        await ipam.allocate("n", subnet, "c9", reserved)


@pytest_twisted.ensureDeferred
async def test_networks_are_independent(ipam, pool, key_prefix):
    assert await ipam.allocate("a", "10.5.0.0/24", "x") == "10.5.0.2"
    assert await ipam.allocate("b", "10.5.0.0/24", "y") == "10.5.0.2"
    assert await ipam.allocations("a") == {"10.5.0.2": "x"}
    other = RedisIPAllocator(pool, key_prefix + "other:")
    assert await other.allocations("a") == {}


@pytest_twisted.ensureDeferred
async def test_nearly_full_large_subnet_is_probed_in_bounded_steps(ipam, pool, key_prefix):
    # Fill a /20 (4093 usable) except one address far behind the cursor, directly in
    # Redis: the allocator must still find it, across several bounded Lua calls.
    net = ipaddress.ip_network("10.6.0.0/20")
    hosts = [str(ip) for ip in net.hosts()][1:]  # minus the gateway
    free = hosts[100]
    taken = {ip: f"o{i}" for i, ip in enumerate(hosts) if ip != free}
    await pool.hmset(f"{key_prefix}ipam:n:ips", taken)
    await pool.set(f"{key_prefix}ipam:n:cursor", int(ipaddress.ip_address(hosts[200])) - 0x0A060000)
    assert await ipam.allocate("n", str(net), "new") == free
    with pytest.raises(NoAddressesLeft):
        await ipam.allocate("n", str(net), "newer")
