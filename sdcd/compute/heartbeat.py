"""A compute node's registration and heartbeat in the node registry (issue 7): the node
says what it is and that it is alive, every ``HEARTBEAT_SECONDS``. Until the agent
exists (issue 7) the in-process node of ``twistd sdcd`` runs this itself."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from sdcd.store.nodes import HEARTBEAT_SECONDS

MIB = 1024 * 1024


def local_node_info(
    address: str, subnet: str, data_dir: Path, mem_total: int, cpus: int
) -> dict[str, Any]:
    """This machine as a compute node: memory and disk (where containers live) in MiB."""
    return {
        "hostname": socket.gethostname(),
        "address": address,
        "memory": mem_total // MIB,
        "disk": shutil.disk_usage(data_dir).total // MIB,
        "cpus": cpus or os.cpu_count() or 1,
        "subnet": subnet,
    }


class Heartbeat:
    """Register the node, then beat; a failed beat is logged and the next one tries
    again (Redis may be restarting: the node stays up as long as it comes back in time)."""

    log = Logger()

    def __init__(self, registry, node_id: str, info: dict[str, Any], clock) -> None:
        self._registry = registry
        self._node_id = node_id
        self._info = info
        self._clock = clock
        self._loop: task.LoopingCall | None = None

    async def start(self) -> None:
        await self._registry.register(self._node_id, self._info, self._clock.seconds())
        self._loop = task.LoopingCall(self._beat)
        self._loop.clock = self._clock
        self._loop.start(HEARTBEAT_SECONDS, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _beat(self) -> None:
        d = defer.ensureDeferred(self._registry.heartbeat(self._node_id, self._clock.seconds()))
        d.addErrback(lambda f: self.log.failure("node heartbeat failed", f))
