"""``LocalCompute.stats`` on real runc containers: a CPU burner and a memory holder in
the smallest package, sampled from their cgroups and veths (``sdcd.compute.stats``)."""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import defer

from sdcd.compute import stats
from sdcd.compute.interface import ComputeError
from tests.test_compute import LocalHarness, eventually, sleep, within

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for runc and netns")

MIB = 1024 * 1024
BURN = ["sh", "-c", "while :; do :; done"]
# 50 MiB in the container's /dev/shm (tmpfs, charged to its memory cgroup).
HOLD = ["sh", "-c", "dd if=/dev/zero of=/dev/shm/f bs=1048576 count=50 2>/dev/null; sleep 60"]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    harness = LocalHarness(tmp_path_factory.mktemp("stats"))
    try:
        pytest_twisted.blockon(defer.ensureDeferred(harness.open()))
        yield harness
    finally:
        pytest_twisted.blockon(defer.ensureDeferred(harness.teardown()))


async def _started(node: LocalHarness, args: list[str]) -> dict:
    spec = node.spec(args)
    await within(node.compute.prepare(spec))
    await within(node.compute.start(spec["id"]))
    return spec


@pytest.fixture(scope="module")
def burner(node):
    return pytest_twisted.blockon(defer.ensureDeferred(_started(node, BURN)))


@pytest.fixture(scope="module")
def holder(node):
    return pytest_twisted.blockon(defer.ensureDeferred(_started(node, HOLD)))


def _cpu_percent(sample: dict) -> float:
    """What ``docker stats`` shows (its formula from the API docs)."""
    cpu, pre = sample["cpu_stats"], sample["precpu_stats"]
    cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    system_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    return cpu_delta / system_delta * cpu["online_cpus"] * 100.0


@pytest_twisted.ensureDeferred
async def test_cpu_usage_grows_and_is_capped_by_the_package(node, burner):
    first = await within(node.compute.stats(burner["id"]))
    await sleep(1.0)
    second = await within(node.compute.stats(burner["id"]))
    cpu, pre = second["cpu_stats"], first["cpu_stats"]
    assert cpu["cpu_usage"]["total_usage"] > pre["cpu_usage"]["total_usage"]
    assert cpu["system_cpu_usage"] > pre["system_cpu_usage"]
    assert cpu["online_cpus"] == os.cpu_count()
    assert len(cpu["cpu_usage"]["percpu_usage"]) >= cpu["online_cpus"]
    assert sum(cpu["cpu_usage"]["percpu_usage"]) == pytest.approx(
        cpu["cpu_usage"]["total_usage"], rel=0.05
    )
    assert cpu["cpu_usage"]["usage_in_usermode"] > 0
    # The package caps the container at a quarter of a CPU: it is throttled.
    assert cpu["throttling_data"]["throttled_periods"] > 0
    assert 5.0 < _cpu_percent(stats.with_previous(second, first)) < 40.0
    assert second["read"] > first["read"]
    assert second["id"] == burner["id"]


@pytest_twisted.ensureDeferred
async def test_memory_and_pids(node, holder):
    cid = holder["id"]

    async def held() -> dict | None:
        sample = await node.compute.stats(cid)
        written = sample["memory_stats"].get("stats", {}).get("total_shmem", 0)
        return sample if written >= 50 * MIB else None  # dd has written it all

    sample = await eventually(held)
    memory = sample["memory_stats"]
    assert memory["limit"] == holder["resources"]["memory"] == 128 * MIB
    assert memory["max_usage"] >= memory["usage"]
    # What the CLI shows (usage minus inactive file pages) still holds the tmpfs file.
    assert memory["usage"] - memory["stats"]["total_inactive_file"] > 40 * MIB
    assert memory["usage"] > 50 * MIB
    assert sample["pids_stats"]["current"] >= 1
    assert sample["pids_stats"]["limit"] == holder["resources"]["pids_limit"]
    assert set(sample["blkio_stats"]) >= {"io_service_bytes_recursive", "sectors_recursive"}
    assert all(isinstance(v, list) for v in sample["blkio_stats"].values())


@pytest_twisted.ensureDeferred
async def test_network_counters_grow(node, holder):
    cid = holder["id"]
    before = (await within(node.compute.stats(cid)))["networks"]["eth0"]
    payload = b"x" * 1000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(5):
            s.sendto(payload, (holder["network"]["ip"], 9))

    async def grown() -> dict | None:
        after = (await node.compute.stats(cid))["networks"]["eth0"]
        ok = after["rx_bytes"] >= before["rx_bytes"] + 5 * len(payload)
        return after if ok and after["tx_bytes"] > before["tx_bytes"] else None

    after = await eventually(grown)
    assert after["rx_packets"] >= before["rx_packets"] + 5
    assert set(after) == {
        f"{d}_{w}" for d in ("rx", "tx") for w in ("bytes", "packets", "errors", "dropped")
    }


@pytest_twisted.ensureDeferred
async def test_not_running_gives_the_zero_sample(node):
    spec = node.spec(["true"])
    await within(node.compute.prepare(spec))
    sample = await within(node.compute.stats(spec["id"]))
    assert sample == stats.empty_sample(spec["id"])
    assert sample["read"] == stats.ZERO_TIME
    assert sample["memory_stats"] == {} and sample["pids_stats"] == {}
    assert "networks" not in sample
    assert sample["cpu_stats"]["cpu_usage"]["total_usage"] == 0


@pytest_twisted.ensureDeferred
async def test_unknown_container_is_not_found(node):
    with pytest.raises(ComputeError) as e:
        await within(node.compute.stats("0" * 64))
    assert e.value.kind == "not_found"


def test_with_previous():
    first = {"read": "2024-01-01T00:00:00.5Z", "cpu_stats": {"cpu_usage": {"total_usage": 7}}}
    second = {"read": "2024-01-01T00:00:01.5Z", "cpu_stats": {"cpu_usage": {"total_usage": 9}}}
    opening = stats.with_previous(first, None)
    assert opening["preread"] == stats.ZERO_TIME
    assert opening["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert opening["precpu_stats"]["throttling_data"]["periods"] == 0
    following = stats.with_previous(second, first)
    assert following["preread"] == first["read"]
    assert following["precpu_stats"] == first["cpu_stats"]
    assert following["cpu_stats"] == second["cpu_stats"]
    assert "precpu_stats" not in second  # the sample itself is not changed
