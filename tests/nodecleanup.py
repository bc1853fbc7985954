"""Remove whatever a test daemon's compute node left on the machine: container
processes (conmon and what it supervises), runc state, overlay mounts, network
namespaces, veths, cgroups, and the daemon's bridge. Only things under the daemon's own
data dir, or named from its own containers' ids, are touched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _pids_with_arg(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def _cgroup_pids(cid: str) -> list[int]:
    pids = []
    for procs in CGROUP_ROOT.glob(f"*/sdcd/{cid}/cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _run(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, timeout=30)


def purge_node(daemon) -> None:
    """Everything ``daemon``'s node holds, gone; then its bridge."""
    node = Path(daemon.data_dir) / "node"
    containers = node / "containers"
    ids = [p.name for p in containers.iterdir()] if containers.exists() else []
    for pid in _pids_with_arg(str(node)) + [p for cid in ids for p in _cgroup_pids(cid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    for root in node.glob("runtime/**/"):
        for cid in ids:
            if (root / cid).is_dir() and (root / cid / "state.json").exists():
                _run("runc", "--root", str(root), "delete", "--force", cid)
    for cid in ids:
        _run("umount", "-l", str(containers / cid / "bundle" / "rootfs"))
        _run("ip", "link", "del", f"vsd{cid[:12]}")
        _run("ip", "netns", "del", f"sdcd-{cid[:12]}")
        for cg in CGROUP_ROOT.glob(f"*/sdcd/{cid}"):
            with contextlib.suppress(OSError):
                cg.rmdir()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(str(node)):
            _run("umount", "-l", mount_point)
    _run("ip", "link", "del", daemon.bridge)
    # The node's attach-socket dir (short, under /run: socket paths are limited).
    runtime = node / "runtime"
    digest = hashlib.sha256(str(runtime.resolve()).encode()).hexdigest()[:16]
    shutil.rmtree(Path("/run/sdcd") / digest, ignore_errors=True)
