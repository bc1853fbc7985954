"""Facts about the machine a compute node runs on (read once, cheaply)."""

from __future__ import annotations

import os
import platform

import attrs


@attrs.frozen
class HostFacts:
    """What ``docker info``/``docker version`` report about a node."""

    hostname: str
    kernel_version: str
    architecture: str
    ncpu: int
    mem_total: int


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def host_facts() -> HostFacts:
    """This machine's facts."""
    uname = platform.uname()
    return HostFacts(
        hostname=uname.node,
        kernel_version=uname.release,
        architecture=uname.machine,
        ncpu=os.cpu_count() or 1,
        mem_total=_mem_total(),
    )
