"""The datacenter's compute nodes as sdcd reaches them: the in-process node of the
embedded mode (if any) and a ``RemoteCompute`` for every agent in the node registry.

The registry is the truth about which nodes exist; the fleet follows it (a look every
heartbeat, and at once when asked for a node it does not know yet), so an agent that
starts, moves or comes back is reached without restarting sdcd. Every listener given to
``subscribe`` hears the events of every node, including nodes that appear later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from sdcd.compute.interface import ComputeError
from sdcd.compute.remote import RemoteCompute
from sdcd.store.nodes import HEARTBEAT_SECONDS


class Fleet:
    """node id -> ``ICompute``."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        registry: Any,
        material: Any = None,
        blobs: Any = None,
        local: Any = None,
    ) -> None:
        self._reactor = reactor
        self._registry = registry
        self._material = material
        self._blobs = blobs
        self.local = local
        self._computes: dict[str, Any] = {}
        if local is not None:
            self._computes[local.node_id] = local
        self._listeners: list[Callable[[dict], None]] = []
        self._loop: task.LoopingCall | None = None
        self._refreshing: defer.Deferred | None = None

    async def start(self) -> None:
        """Reach every registered node now, then follow the registry."""
        await self.refresh()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(HEARTBEAT_SECONDS, now=False)

    def _tick(self) -> None:
        d = defer.ensureDeferred(self.refresh())
        d.addErrback(lambda f: self.log.failure("following the node registry", f))

    async def refresh(self) -> None:
        """One look at the registry (concurrent callers share it)."""
        if self._refreshing is not None:
            waiting: defer.Deferred = defer.Deferred()
            self._refreshing.addBoth(lambda v: (waiting.callback(None), v)[1])
            await waiting
            return
        self._refreshing = defer.ensureDeferred(self._refresh())
        try:
            await self._refreshing
        finally:
            self._refreshing = None

    async def _refresh(self) -> None:
        if self._registry is None or self._material is None:
            return
        for node in await self._registry.nodes():
            if node["id"] in self._computes and self._computes[node["id"]] is self.local:
                continue
            port = node.get("port")
            if not port:
                continue
            known = self._computes.get(node["id"])
            if known is not None:
                known.moved(node["address"], int(port))
                continue
            self._add(node)

    def _add(self, node: dict) -> None:
        remote = RemoteCompute(
            self._reactor,
            node["id"],
            node["address"],
            int(node["port"]),
            self._material,
            self._blobs,
            name=node.get("hostname") or node["id"],
        )
        self._computes[node["id"]] = remote
        for listener in self._listeners:
            remote.subscribe(listener)
        self.log.info(
            "compute node {id} ({host}) at {address}:{port}",
            id=node["id"],
            host=node.get("hostname"),
            address=node["address"],
            port=node["port"],
        )

    async def compute(self, node_id: str) -> Any:
        """The node's ``ICompute``; ``ComputeError`` ("unavailable") for a node the
        registry does not know."""
        found = self._computes.get(node_id)
        if found is None:
            await self.refresh()
            found = self._computes.get(node_id)
        if found is None:
            raise ComputeError(f"compute node {node_id} is not known", "unavailable")
        return found

    def known(self) -> dict[str, Any]:
        """Every node reached so far."""
        return dict(self._computes)

    def subscribe(self, listener: Callable[[dict], None]) -> None:
        self._listeners.append(listener)
        for compute in self._computes.values():
            compute.subscribe(listener)

    async def close(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for compute in self._computes.values():
            if compute is not self.local:
                await compute.close()


__all__ = ["Fleet"]
