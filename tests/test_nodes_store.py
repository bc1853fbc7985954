"""The node registry against a real Redis: registration, heartbeats, and reservations
that never overcommit a node under concurrency."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer

from sdcd.store import redis as redis_store
from sdcd.store.nodes import RedisNodeRegistry, UnknownNode

INFO = {"hostname": "cn1", "address": "10.99.0.11", "memory": 4096, "disk": 10_000,
        "cpus": 8, "subnet": "10.210.1.0/24"}  # fmt: skip


@pytest.fixture
def registry(pool, key_prefix):
    return RedisNodeRegistry(pool, key_prefix)


@pytest_twisted.ensureDeferred
async def test_register_heartbeat_and_list(registry):
    await registry.register("cn1", INFO, 100.0)
    await registry.register("cn2", {**INFO, "hostname": "cn2"}, 101.0)
    await registry.heartbeat("cn1", 130.5)
    nodes = {n["id"]: n for n in await registry.nodes()}
    assert nodes["cn1"]["last_seen"] == 130.5 and nodes["cn2"]["last_seen"] == 101.0
    assert nodes["cn1"]["memory"] == 4096 and nodes["cn1"]["reserved_memory"] == 0
    with pytest.raises(ValueError):
        await registry.register("cn3", {"hostname": "x"}, 1.0)


@pytest_twisted.ensureDeferred
async def test_reserve_until_full_then_release(registry):
    await registry.register("cn1", INFO, 1.0)
    assert await registry.reserve("cn1", "a", 2048, 100)
    assert await registry.reserve("cn1", "a", 2048, 100)  # idempotent per owner
    assert await registry.reserve("cn1", "b", 2048, 100)
    assert not await registry.reserve("cn1", "c", 1, 0)  # memory full
    assert await registry.reserve("cn1", "c", 1024, 0, overcommit=1.25)
    node = (await registry.nodes())[0]
    assert (node["reserved_memory"], node["reserved_disk"]) == (5120, 200)
    assert await registry.release("cn1", "a") and not await registry.release("cn1", "a")
    assert await registry.reservations("cn1") == {"b": (2048, 100), "c": (1024, 0)}
    assert not await registry.reserve("cn1", "d", 1, 20_000)  # disk
    with pytest.raises(UnknownNode):
        await registry.reserve("nope", "x", 1, 1)


@pytest_twisted.ensureDeferred
async def test_concurrent_reservations_never_overcommit(registry):
    await registry.register("cn1", INFO, 1.0)
    results = await defer.gatherResults(
        [defer.ensureDeferred(registry.reserve("cn1", f"c{i}", 128, 0)) for i in range(100)]
    )
    assert sum(results) == 4096 // 128  # exactly as many as fit
    node = (await registry.nodes())[0]
    assert node["reserved_memory"] == 4096


@pytest_twisted.ensureDeferred
async def test_heartbeat_registers_then_beats(registry):
    from twisted.internet import task

    from sdcd.compute.heartbeat import Heartbeat
    from sdcd.store.nodes import HEARTBEAT_SECONDS

    clock = task.Clock()
    clock.advance(1000)
    beat = Heartbeat(registry, "cn9", INFO, clock)
    await beat.start()
    assert (await registry.nodes())[0]["last_seen"] == 1000
    clock.advance(HEARTBEAT_SECONDS)
    for _ in range(50):  # the beat is one Redis write away
        if (await registry.nodes())[0]["last_seen"] == 1000 + HEARTBEAT_SECONDS:
            break
        await task.deferLater(reactor(), 0.01, lambda: None)
    assert (await registry.nodes())[0]["last_seen"] == 1000 + HEARTBEAT_SECONDS
    beat.stop()


@pytest_twisted.ensureDeferred
async def test_docker_info_counts_the_nodes_that_are_up(registry, pool, key_prefix):
    from sdcd.compute.host import host_facts
    from sdcd.core.system import SystemService
    from sdcd.store.nodes import DOWN_AFTER_SECONDS
    from sdcd.store.records import Account

    # (silence is measured on Redis's clock: heartbeats are stamped with the real time)
    now = time.time()
    await registry.register("cn1", INFO, now)
    await registry.register("cn2", {**INFO, "cpus": 4, "memory": 2048}, now)
    await registry.register("cn3", INFO, now - DOWN_AFTER_SECONDS - 1)
    store = redis_store.RedisStateStore(pool, key_prefix)
    system = SystemService(store, "dc", host_facts(), registry, clock=lambda: now + 3600)
    view = await system.view(Account(login="x", uuid="u", created="t"))
    assert (view.nodes, view.nodes_down, view.ncpu) == (2, 1, 12)
    assert view.mem_total == (4096 + 2048) * 1024 * 1024


def reactor():
    from twisted.internet import reactor as the_reactor

    return the_reactor
