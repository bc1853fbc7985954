"""What ``docker info`` and ``docker version`` say: the datacenter seen by one account."""

from __future__ import annotations

import time

import attrs

from sdcd import __version__
from sdcd.core.placement import node_views
from sdcd.store.nodes import DOWN_AFTER_SECONDS
from sdcd.store.records import Account


@attrs.frozen
class AccountView:
    """The datacenter as one account sees it: its own objects, the shared capacity."""

    login: str
    datacenter: str
    containers: int
    containers_running: int
    containers_paused: int
    containers_stopped: int
    images: int
    nodes: int
    ncpu: int
    mem_total: int
    kernel_version: str
    architecture: str
    nodes_down: int = 0
    #: Of the nodes that are up, in bytes: memory and disk not reserved by containers.
    mem_free: int = 0
    disk_total: int = 0
    disk_free: int = 0


MIB = 1024 * 1024


class SystemService:
    """Builds the per-account view of the datacenter."""

    version = __version__

    def __init__(self, store, datacenter: str, host_facts, nodes=None, clock=time.time) -> None:
        self._store = store
        self._datacenter = datacenter
        self._host = host_facts
        self._nodes = nodes
        self._clock = clock

    async def view(self, account: Account) -> AccountView:
        """The account's objects and the datacenter's capacity: the compute nodes that
        are up (heartbeat within the window), their CPUs and memory summed."""
        nodes, down, ncpu, mem_total = 1, 0, self._host.ncpu, self._host.mem_total
        mem_free, disk_total, disk_free = mem_total, 0, 0
        if self._nodes is not None:
            records = await self._nodes.nodes()
            views = node_views(records, self._clock(), DOWN_AFTER_SECONDS)
            up = [(r, view) for r, view in zip(records, views, strict=True) if view.up]
            nodes, down = len(up), len(records) - len(up)
            ncpu = sum(int(r["cpus"]) for r, _ in up)
            mem_total = sum(int(r["memory"]) for r, _ in up) * MIB
            mem_free = sum(view.memory_free for _, view in up) * MIB
            disk_total = sum(int(r["disk"]) for r, _ in up) * MIB
            disk_free = sum(view.disk_free for _, view in up) * MIB
        states = [state.status for _, state in await self._store.list_containers(account.login)]
        running = sum(s in ("running", "restarting") for s in states)
        paused = states.count("paused")
        return AccountView(
            login=account.login,
            datacenter=self._datacenter,
            containers=len(states),
            containers_running=running,
            containers_paused=paused,
            containers_stopped=len(states) - running - paused,
            images=len(await self._store.list_images(account.login)),
            nodes=nodes,
            nodes_down=down,
            ncpu=ncpu,
            mem_total=mem_total,
            mem_free=mem_free,
            disk_total=disk_total,
            disk_free=disk_free,
            kernel_version=self._host.kernel_version,
            architecture=self._host.architecture,
        )
