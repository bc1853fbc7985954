"""What ``docker info`` and ``docker version`` say: the datacenter seen by one account."""

from __future__ import annotations

import attrs

from sdcd import __version__
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


class SystemService:
    """Builds the per-account view of the datacenter."""

    version = __version__

    def __init__(self, store, datacenter: str, host_facts) -> None:
        self._store = store
        self._datacenter = datacenter
        self._host = host_facts

    async def view(self, account: Account) -> AccountView:
        # The datacenter is the one in-process compute node (until issue 7).
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
            nodes=1,
            ncpu=self._host.ncpu,
            mem_total=self._host.mem_total,
            kernel_version=self._host.kernel_version,
            architecture=self._host.architecture,
        )
