"""One sample of a container's resource use, in the shape of Docker Engine API 1.41's
``GET /containers/{id}/stats`` (moby's ``StatsJSON``), read from the node's cgroup v1
hierarchies, ``/proc/stat`` and the container's host-side veth.

Where it comes from (the container's cgroup is ``/sdcd/<id>`` in every hierarchy: the
node gives runc an absolute ``cgroupsPath``):

* ``cpu_stats.cpu_usage``: ``cpuacct.usage`` (total ns), ``cpuacct.usage_percpu`` (one
  per possible CPU, as dockerd reports them) and ``cpuacct.stat`` user/system (in
  USER_HZ ticks, turned into ns as dockerd does); ``throttling_data`` from ``cpu.stat``.
* ``cpu_stats.system_cpu_usage``: the host's ``cpu`` line of ``/proc/stat``, its first
  seven fields (user .. softirq, so not steal/guest) summed, times 1e9 / CLK_TCK — the
  same sum dockerd makes, so that CPU % computed by clients matches. ``online_cpus`` is
  the number of ``cpuN`` lines there.
* ``memory_stats``: ``memory.usage_in_bytes``, ``memory.max_usage_in_bytes``,
  ``memory.failcnt``, ``memory.limit_in_bytes`` (capped at the host's MemTotal, as dockerd
  does for an unlimited container), and every ``memory.stat`` key as is (the CLI
  subtracts ``total_inactive_file`` on cgroup v1).
* ``pids_stats``: ``pids.current`` and ``pids.max`` ("max" is no limit: left out).
* ``networks.eth0``: the host veth's counters with rx and tx swapped
  (``sdcd.compute.network``).
* ``blkio_stats``: ``blkio.throttle.io_service_bytes_recursive`` and
  ``..._io_serviced_recursive`` (the throttle files count every I/O that reaches a device,
  whatever the I/O scheduler; the CFQ-only files do not exist on this kernel); the other
  blkio lists are empty, as dockerd gives them without CFQ.

Fields moby marks ``omitempty`` are left out when zero, so the JSON reads like dockerd's.
``name`` is the caller's (the node does not know renames); ``precpu_stats``/``preread``
come from the caller's previous sample through ``with_previous``. cgroup v2 is not read:
there the cgroup files are missing and a sample looks like a stopped container's.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from twisted.internet import defer, threads

from sdcd.compute import network

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
MEMINFO = Path("/proc/meminfo")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_S = 1_000_000_000
#: Go's zero time.Time, which dockerd writes as ``read``/``preread`` when it has none.
ZERO_TIME = "0001-01-01T00:00:00Z"
_BLKIO_LISTS = (
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "io_queue_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
    "sectors_recursive",
)


def sample(cid: str) -> defer.Deferred:
    """Deferred sample of the running container ``cid`` (small file reads, in a thread).
    A container whose cgroup is gone (it exited meanwhile) gives ``empty_sample``."""
    return threads.deferToThread(read_sample, cid)


def read_sample(cid: str) -> dict:
    """The sample, read now (blocking: call it in a thread)."""
    read = _now()
    try:
        memory = _memory_stats(_cgroup("memory", cid))
        cpu = _cpu_stats(_cgroup("cpuacct", cid), _cgroup("cpu", cid))
        pids = _pids_stats(_cgroup("pids", cid))
    except FileNotFoundError:
        return empty_sample(cid)
    result = {
        "read": read,
        "preread": ZERO_TIME,
        "id": cid,
        "pids_stats": pids,
        "blkio_stats": _blkio_stats(_cgroup("blkio", cid)),
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu,
        "precpu_stats": _zero_cpu(),
        "memory_stats": memory,
    }
    networks = _networks(cid)
    if networks:
        result["networks"] = networks
    return result


def empty_sample(cid: str) -> dict:
    """What dockerd sends for a container that does not run: its zero ``StatsJSON``
    (zero times and counters, no ``networks``, null blkio lists) with only the id set."""
    return {
        "read": ZERO_TIME,
        "preread": ZERO_TIME,
        "id": cid,
        "pids_stats": {},
        "blkio_stats": dict.fromkeys(_BLKIO_LISTS),
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _zero_cpu(),
        "precpu_stats": _zero_cpu(),
        "memory_stats": {},
    }


def with_previous(current: dict, previous: dict | None) -> dict:
    """``current`` with ``precpu_stats`` and ``preread`` from the previous sample, as
    dockerd's stats stream fills them: zero CPU stats and Go's zero time for the first
    sample of a stream (``previous`` None). Only CPU is carried over, as in dockerd."""
    out = dict(current)
    if previous is None:
        out["precpu_stats"], out["preread"] = _zero_cpu(), ZERO_TIME
    else:
        out["precpu_stats"] = copy.deepcopy(previous["cpu_stats"])
        out["preread"] = previous["read"]
    return out


def _now() -> str:
    """RFC 3339 with nanoseconds, UTC (Go's RFC3339Nano drops trailing zeros)."""
    ns = time.time_ns()
    seconds, frac = divmod(ns, NS_PER_S)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _hierarchy(controller: str) -> Path:
    """The v1 hierarchy holding ``controller``: its own mount, or a co-mount such as
    ``cpu,cpuacct`` (both layouts exist; this machine mounts each alone)."""
    own = CGROUP_ROOT / controller
    if own.is_dir():
        return own
    with contextlib.suppress(OSError):
        for entry in CGROUP_ROOT.iterdir():
            if controller in entry.name.split(","):
                return entry
    return own


def _cgroup(controller: str, cid: str) -> Path:
    return _hierarchy(controller) / "sdcd" / cid


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _read_keyed(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (memory.stat, cpu.stat, cpuacct.stat)."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _zero_cpu() -> dict:
    """Go's zero ``CPUStats`` as JSON (its omitempty fields left out)."""
    return {
        "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def _cpu_stats(cpuacct: Path, cpu: Path) -> dict:
    ticks = _read_keyed(cpuacct / "cpuacct.stat")
    usage = {
        "total_usage": _read_int(cpuacct / "cpuacct.usage"),
        "usage_in_kernelmode": ticks.get("system", 0) * NS_PER_S // CLK_TCK,
        "usage_in_usermode": ticks.get("user", 0) * NS_PER_S // CLK_TCK,
    }
    percpu = [int(v) for v in (cpuacct / "cpuacct.usage_percpu").read_text().split()]
    if percpu:
        usage["percpu_usage"] = percpu
    throttled: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError):
        throttled = _read_keyed(cpu / "cpu.stat")
    stats = {"cpu_usage": usage}
    system, online = system_cpu()
    if system:
        stats["system_cpu_usage"] = system
    if online:
        stats["online_cpus"] = online
    stats["throttling_data"] = {
        "periods": throttled.get("nr_periods", 0),
        "throttled_periods": throttled.get("nr_throttled", 0),
        "throttled_time": throttled.get("throttled_time", 0),
    }
    return stats


def system_cpu() -> tuple[int, int]:
    """(host CPU time in ns as dockerd counts it, number of online CPUs) from /proc/stat."""
    total, online = 0, 0
    for line in PROC_STAT.read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            total = sum(int(v) for v in fields[1:8]) * NS_PER_S // CLK_TCK
        elif fields[0].startswith("cpu"):
            online += 1
    return total, online


def _memory_stats(memory: Path) -> dict:
    limit = _read_int(memory / "memory.limit_in_bytes")
    host = _host_memory()
    if host and limit > host:
        limit = host
    stats = {
        "usage": _read_int(memory / "memory.usage_in_bytes"),
        "max_usage": _read_int(memory / "memory.max_usage_in_bytes"),
        "stats": _read_keyed(memory / "memory.stat"),
        "failcnt": _read_int(memory / "memory.failcnt"),
        "limit": limit,
    }
    return {k: v for k, v in stats.items() if v}


def _host_memory() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _pids_stats(pids: Path) -> dict:
    out = {"current": _read_int(pids / "pids.current")}
    with contextlib.suppress(FileNotFoundError, ValueError):
        out["limit"] = _read_int(pids / "pids.max")  # "max": no limit, left out
    return {k: v for k, v in out.items() if v}


def _blkio_stats(blkio: Path) -> dict:
    stats: dict[str, list] = {name: [] for name in _BLKIO_LISTS}
    for name in ("io_service_bytes_recursive", "io_serviced_recursive"):
        with contextlib.suppress(OSError):
            stats[name] = _blkio_entries(blkio / f"blkio.throttle.{name}")
    return stats


def _blkio_entries(path: Path) -> list[dict]:
    """``MAJ:MIN Op value`` lines; the closing ``Total n`` line is not an entry."""
    entries = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        major, _, minor = fields[0].partition(":")
        with contextlib.suppress(ValueError):
            entries.append(
                {"major": int(major), "minor": int(minor), "op": fields[1], "value": int(fields[2])}
            )
    return entries


def _networks(cid: str) -> dict:
    """``{"eth0": counters}``, or nothing when the container has no veth (any more).
    The host end's rx is what the container sent: its tx, and the other way round."""
    try:
        counters = network.read_counters(cid)  # this netns's (procfs), not /sys's
    except (OSError, ValueError):
        return {}
    return {"eth0": counters} if counters else {}
