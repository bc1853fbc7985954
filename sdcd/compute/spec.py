"""From a node spec to the OCI runtime ``config.json`` runc runs.

The **node spec** is the plain-JSON description of a container that ``sdcd.core`` makes
from the Docker config and hands to ``ICompute.prepare``::

    {"id": "<64 hex>", "name": "/foo",
     "hostname": "<12 hex or the user's>", "domainname": "",
     "args": ["sh", "-c", "..."],        # Entrypoint + Cmd, already merged
     "env": ["PATH=...", "K=V"],         # image env merged with the user's (user wins)
     "cwd": "/",                         # WorkingDir ("" means "/")
     "user": "" | "name" | "uid" | "name:group" | "uid:gid",
     "tty": false, "open_stdin": false, "labels": {"k": "v"}, "stop_signal": "SIGTERM",
     "tty_size": [24, 80],               # optional: the tty's size when none was set since
     "resources": {"memory": bytes, "memory_swap": bytes (memory + swap; -1 unlimited,
                   0 = twice the memory), "cpu_shares": int (0 default),
                   "cpu_quota": µs per cpu_period (0 no cap), "cpu_period": 100000,
                   "pids_limit": int (0 none)},
     "network": {"ip": "172.30.0.5", "prefix": 16, "gateway": "172.30.0.1", "mac": "02:42:.."},
     "dns": [...], "dns_search": [...], "dns_options": [...], "extra_hosts": ["name:1.2.3.4"],
     "read_only": false,                 # optional: HostConfig.ReadonlyRootfs
     "shm_size": 67108864,               # optional, bytes
     "init": false}                      # optional; ignored

``runtime_spec`` gives the container what dockerd gives a default (unprivileged)
container: its 14 capabilities, the masked and read-only /proc and /sys paths, the
device allow-list, a seccomp profile (``sdcd.compute.seccomp``), and the package's
cgroup limits. It is pure: the caller resolves the user (``sdcd.compute.users``) and
writes the /etc files (``sdcd.compute.etcfiles``) first.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sdcd.compute.etcfiles import write_files
from sdcd.compute.seccomp import default_profile

__all__ = [
    "DEFAULT_CAPS",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "container_env",
    "memory_limits",
    "runtime_spec",
    "write_files",
]

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024

#: dockerd's default capability set, in its order (OCI names).
DEFAULT_CAPS: list[str] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

#: Hidden from the container (dockerd's list, including the RAPL power side channel).
MASKED_PATHS: list[str] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]

#: Visible but read-only (dockerd's list).
READONLY_PATHS: list[str] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

#: (path, major, minor) of the device nodes every container gets, mode 0666 root:root.
DEFAULT_DEVICES = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
]

#: Device cgroup rules after "deny all": (type, major, minor, access); None is "*".
ALLOWED_DEVICE_RULES: list[tuple[str, int | None, int | None, str]] = [
    ("c", None, None, "m"),  # mknod of any device (using one needs a rule below)
    ("b", None, None, "m"),
    ("c", 1, 3, "rwm"),  # null
    ("c", 1, 5, "rwm"),  # zero
    ("c", 1, 7, "rwm"),  # full
    ("c", 1, 8, "rwm"),  # random
    ("c", 1, 9, "rwm"),  # urandom
    ("c", 5, 0, "rwm"),  # tty
    ("c", 5, 1, "rwm"),  # console
    ("c", 5, 2, "rwm"),  # ptmx
    ("c", 136, None, "rwm"),  # pts/*
]

#: Network sysctls dockerd sets in a container's own netns: non-root may bind ports
#: below 1024 and use ICMP echo sockets (ping without CAP_NET_RAW).
NETWORK_SYSCTLS = {
    "net.ipv4.ip_unprivileged_port_start": "0",
    "net.ipv4.ping_group_range": "0 2147483647",
}

#: The /etc files the node writes for each container (``etcfiles.write_files``).
ETC_FILES = ("hosts", "resolv.conf", "hostname")


def container_env(spec: dict) -> list[str]:
    """The process environment as dockerd builds it.

    PATH (default), HOSTNAME and (with a tty) TERM=xterm come first; the container's
    own env replaces them or is appended in order; a bare "KEY" entry unsets KEY.
    """
    env = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={spec['hostname']}"]
    if spec.get("tty"):
        env.append("TERM=xterm")
    for entry in spec.get("env", []):
        key = entry.split("=", 1)[0]
        if "=" not in entry:
            env = [e for e in env if e.split("=", 1)[0] != key]
            continue
        index = next((i for i, e in enumerate(env) if e.split("=", 1)[0] == key), None)
        if index is None:
            env.append(entry)
        else:
            env[index] = entry
    return env


def _capabilities(drop: list[str] | None = None) -> dict:
    """Docker's default set minus ``--cap-drop`` (names with or without ``CAP_``; ``ALL``
    drops everything). Nothing can be added: ``--cap-add`` is refused upstream."""
    wanted = {("CAP_" + d.upper()).replace("CAP_CAP_", "CAP_") for d in drop or []}
    caps = [] if "CAP_ALL" in wanted else [c for c in DEFAULT_CAPS if c not in wanted]
    return {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)}


def _process(spec: dict, uid: int, gid: int, extra_gids: list[int]) -> dict:
    user: dict = {"uid": uid, "gid": gid}
    if extra_gids:
        user["additionalGids"] = list(extra_gids)
    return {
        "terminal": bool(spec.get("tty")),
        "user": user,
        "args": list(spec["args"]),
        "env": container_env(spec),
        "cwd": spec.get("cwd") or "/",
        "capabilities": _capabilities(spec.get("cap_drop")),
        "noNewPrivileges": bool(spec.get("no_new_privileges")),
        "oomScoreAdj": 0,
    }


def _mounts(spec: dict, files_dir: Path) -> list[dict]:
    """The filesystem mounts of a default container, then our /etc files."""
    shm_size = spec.get("shm_size") or DEFAULT_SHM_SIZE
    nosuid_noexec_nodev = ["nosuid", "noexec", "nodev"]
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": nosuid_noexec_nodev},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": [*nosuid_noexec_nodev, "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": [*nosuid_noexec_nodev, "relatime", "ro"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": nosuid_noexec_nodev,
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [*nosuid_noexec_nodev, "mode=1777", f"size={shm_size}"],
        },
    ]
    bind_options = ["rbind", "rprivate"] + (["ro"] if spec.get("read_only") else [])
    for name in ETC_FILES:
        mounts.append(
            {
                "destination": f"/etc/{name}",
                "type": "bind",
                "source": os.path.abspath(files_dir / name),
                "options": list(bind_options),
            }
        )
    mounts.extend(_tmpfs_mounts(spec))
    for destination in sorted(spec.get("volumes") or ()):
        mounts.append(
            {
                "destination": destination,
                "type": "bind",
                "source": os.path.abspath(volume_dir(files_dir.parent, destination)),
                "options": ["rbind", "rprivate"],
            }
        )
    return mounts


def volume_dir(container_dir: Path, destination: str) -> Path:
    """Where an anonymous volume of the container lives on the node."""
    digest = hashlib.sha256(destination.encode()).hexdigest()[:16]
    return container_dir / "volumes" / digest


def _tmpfs_mounts(spec: dict) -> list[dict]:
    """``--tmpfs /path[:opts]``: memory-backed, counted against the container's memory
    cgroup; nosuid,nodev,noexec by default as dockerd does."""
    out = []
    for destination, options in sorted((spec.get("tmpfs") or {}).items()):
        # (options were checked at create: sdcd.core.containers)
        opts = ["nosuid", "nodev", "noexec", *filter(None, (options or "").split(","))]
        out.append({"destination": destination, "type": "tmpfs", "source": "tmpfs",
                    "options": opts})  # fmt: skip
    return out


def memory_limits(resources: dict) -> dict:
    """OCI ``memory`` (limit, swap = memory + swap) with dockerd's MemorySwap rules.

    0 swap means "as much swap as memory" (total twice the memory), -1 unlimited swap.
    Without a memory limit there is nothing to set. Raises ValueError for a total
    below the memory (core refuses that before it gets here).
    """
    memory = resources.get("memory") or 0
    if memory <= 0:
        return {}
    swap = resources.get("memory_swap") or 0
    if swap == 0:
        swap = 2 * memory
    elif swap != -1 and swap < memory:
        raise ValueError("Minimum memoryswap limit should be larger than memory limit")
    limits = {"limit": memory}
    if _swap_accounting():
        limits["swap"] = swap
    return limits


def _swap_accounting() -> bool:
    """Whether the node can limit swap (cgroup v1 needs memsw; v2 always can)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return True
    return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")


def _cgroup_v2() -> bool:
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def _resources(spec: dict) -> dict:
    res = spec.get("resources") or {}
    out: dict = {
        "devices": [{"allow": False, "access": "rwm"}]
        + [_device_rule(*rule) for rule in ALLOWED_DEVICE_RULES],
    }
    memory = memory_limits(res)
    if memory:
        out["memory"] = memory
    cpu = {}
    if res.get("cpu_shares"):
        cpu["shares"] = res["cpu_shares"]
    if res.get("cpu_quota"):
        cpu["quota"] = res["cpu_quota"]
        cpu["period"] = res.get("cpu_period") or 100000
    if cpu:
        out["cpu"] = cpu
    if res.get("pids_limit", 0) > 0:
        out["pids"] = {"limit": res["pids_limit"]}
    return out


def _device_rule(kind: str, major: int | None, minor: int | None, access: str) -> dict:
    rule: dict = {"allow": True, "type": kind, "access": access}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


def _devices() -> list[dict]:
    return [
        {
            "path": path,
            "type": "c",
            "major": major,
            "minor": minor,
            "fileMode": 0o666,
            "uid": 0,
            "gid": 0,
        }
        for path, major, minor in DEFAULT_DEVICES
    ]


def _namespaces(netns_path: str) -> list[dict]:
    """Own pid/ipc/uts/mount, the prepared network namespace, own cgroup ns on v2."""
    namespaces = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "network", "path": netns_path},
    ]
    if _cgroup_v2():
        namespaces.append({"type": "cgroup"})
    return namespaces


def _sysctls(spec: dict) -> dict:
    """Network sysctls, plus the domain name: runc 1.1 ignores OCI 1.1's ``domainname``
    field, and kernel.domainname is allowed in the container's own UTS namespace."""
    sysctl = dict(NETWORK_SYSCTLS)
    if spec.get("domainname"):
        sysctl["kernel.domainname"] = spec["domainname"]
    return sysctl


def runtime_spec(
    spec: dict,
    rootfs: Path,
    netns_path: str,
    cgroups_path: str,
    files_dir: Path,
    uid: int,
    gid: int,
    extra_gids: list[int],
) -> dict:
    """The OCI runtime config for node spec ``spec`` (a dict to dump as config.json).

    ``rootfs`` is the mounted root filesystem, ``netns_path`` the container's prepared
    network namespace, ``cgroups_path`` an absolute cgroup path (so limits do not nest
    under the node's own cgroup), ``files_dir`` where ``write_files`` put the /etc files,
    and uid/gid/extra_gids come from ``users.resolve_user``.
    """
    if not cgroups_path.startswith("/"):
        raise ValueError(f"cgroups_path must be absolute: {cgroups_path!r}")
    return {
        "ociVersion": OCI_VERSION,
        "process": _process(spec, uid, gid, extra_gids),
        "root": {"path": os.path.abspath(rootfs), "readonly": bool(spec.get("read_only"))},
        "hostname": spec["hostname"],
        "mounts": _mounts(spec, files_dir),
        "linux": {
            "namespaces": _namespaces(netns_path),
            "cgroupsPath": cgroups_path,
            "resources": _resources(spec),
            "devices": _devices(),
            "sysctl": _sysctls(spec),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": default_profile(),
            "rootfsPropagation": "rprivate",
        },
    }
