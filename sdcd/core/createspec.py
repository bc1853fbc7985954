"""The body of ``POST /containers/create``: checked, refused where sdcd does not grant,
and normalised the way dockerd stores it. Pure logic: no I/O.

Two rules shape this module. First, whatever would give a container the host — a
privilege, a device, a host path, a host namespace, a weaker confinement — is refused
with a 400 naming the option; nothing is silently ignored (SDC ignored such flags).
Second, everything else means what it means to dockerd at the request's API version:
the same defaults, the same merge of image and user config, the same messages.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import signal
from collections.abc import Callable, Collection
from typing import Any

from sdcd.core.errors import InvalidArgument, NotFound

MAX_DATA_VOLUMES = 8  # SDC's limit of volumes per container
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
LOG_DRIVERS = ("json-file", "none")
JSON_FILE_OPTIONS = frozenset(
    {"max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag"}
)
#: dockerd's default capabilities: adding one of these changes nothing, so it is allowed.
DEFAULT_CAPABILITIES = frozenset(
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ]
)
#: Networks every account has; others are the caller's to know (``known_networks``).
BUILTIN_NETWORKS = ("bridge", "default")
#: HostConfig fields that clients of API < 1.25 could also send at the body's top level.
LEGACY_TOP_LEVEL = ("Memory", "MemorySwap", "CpuShares", "CpusetCpus", "VolumeDriver")

_HOSTNAME_RE = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])\.)*"
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
)
_VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_PORT_RE = re.compile(r"(\d+)(?:-(\d+))?(?:/([a-zA-Z]+))?")
_HOST_PORT_RE = re.compile(r"(\d+)(?:-(\d+))?")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?", re.IGNORECASE)
_BIND_MODES = frozenset({"ro", "rw", "z", "Z", "nocopy", "consistent", "cached", "delegated"})
_PROPAGATIONS = frozenset({"shared", "rshared", "slave", "rslave", "private", "rprivate"})
_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


def _refuse(option: str) -> InvalidArgument:
    return InvalidArgument(f"{option} is not supported")


# -- types: what Go's JSON decoding would have refused ----------------------------------


def _bool(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArgument(f"{where} must be a boolean")
    return value


def _opt_bool(value: Any, where: str) -> bool | None:
    return None if value is None else _bool(value, where)


def _int(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where} must be an integer")
    return value


def _opt_int(value: Any, where: str) -> int | None:
    return None if value is None else _int(value, where)


def _str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string")
    return value


def _strs(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{where} must be a list of strings")
    return list(value)


def _cmd(value: Any, where: str) -> list[str] | None:
    """dockerd's StrSlice: a list of strings, or one string taken as a one-item list."""
    return [value] if isinstance(value, str) else _strs(value, where)


def _strmap(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(f"{where} must be an object of strings")
    return dict(value)


def _obj(value: Any, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object")
    return copy.deepcopy(value)


def _list(value: Any, where: str) -> list | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be a list")
    return copy.deepcopy(value)


def _objs(value: Any, where: str) -> list[dict] | None:
    items = _list(value, where)
    if items is not None and not all(isinstance(i, dict) for i in items):
        raise InvalidArgument(f"{where} must be a list of objects")
    return items


Kind = Callable[[Any, str], Any]

# field -> (type, default when absent or null); defaults are copied, never shared.
CONFIG_FIELDS: dict[str, tuple[Kind, Any]] = {
    "Hostname": (_str, ""),
    "Domainname": (_str, ""),
    "User": (_str, ""),
    "AttachStdin": (_bool, False),
    "AttachStdout": (_bool, False),
    "AttachStderr": (_bool, False),
    "ExposedPorts": (_obj, None),
    "Tty": (_bool, False),
    "OpenStdin": (_bool, False),
    "StdinOnce": (_bool, False),
    "Env": (_strs, []),
    "Cmd": (_cmd, None),
    "Healthcheck": (_obj, None),
    "ArgsEscaped": (_bool, False),
    "Image": (_str, ""),
    "Volumes": (_obj, None),
    "WorkingDir": (_str, ""),
    "Entrypoint": (_cmd, None),
    "NetworkDisabled": (_bool, False),
    "MacAddress": (_str, ""),
    "OnBuild": (_strs, None),
    "Labels": (_strmap, {}),
    "StopSignal": (_str, ""),
    "StopTimeout": (_opt_int, None),
    "Shell": (_strs, None),
}

HOST_FIELDS: dict[str, tuple[Kind, Any]] = {
    "Binds": (_strs, None),
    "ContainerIDFile": (_str, ""),
    "LogConfig": (_obj, None),
    "NetworkMode": (_str, ""),
    "PortBindings": (_obj, {}),
    "RestartPolicy": (_obj, None),
    "AutoRemove": (_bool, False),
    "VolumeDriver": (_str, ""),
    "VolumesFrom": (_strs, None),
    "CapAdd": (_strs, None),
    "CapDrop": (_strs, None),
    "Capabilities": (_strs, None),
    "CgroupnsMode": (_str, ""),
    "Dns": (_strs, []),
    "DnsOptions": (_strs, []),
    "DnsSearch": (_strs, []),
    "ExtraHosts": (_strs, None),
    "GroupAdd": (_strs, None),
    "IpcMode": (_str, ""),
    "Cgroup": (_str, ""),
    "Links": (_strs, None),
    "OomScoreAdj": (_int, 0),
    "PidMode": (_str, ""),
    "Privileged": (_bool, False),
    "PublishAllPorts": (_bool, False),
    "ReadonlyRootfs": (_bool, False),
    "SecurityOpt": (_strs, None),
    "StorageOpt": (_strmap, None),
    "Tmpfs": (_strmap, None),
    "UTSMode": (_str, ""),
    "UsernsMode": (_str, ""),
    "ShmSize": (_int, 0),
    "Sysctls": (_strmap, None),
    "Runtime": (_str, ""),
    "ConsoleSize": (_list, None),
    "Isolation": (_str, ""),
    "Mounts": (_objs, None),
    "MaskedPaths": (_strs, None),
    "ReadonlyPaths": (_strs, None),
    "Init": (_opt_bool, None),
    # Resources
    "CpuShares": (_int, 0),
    "Memory": (_int, 0),
    "NanoCpus": (_int, 0),
    "CgroupParent": (_str, ""),
    "BlkioWeight": (_int, 0),
    "BlkioWeightDevice": (_objs, []),
    "BlkioDeviceReadBps": (_objs, None),
    "BlkioDeviceWriteBps": (_objs, None),
    "BlkioDeviceReadIOps": (_objs, None),
    "BlkioDeviceWriteIOps": (_objs, None),
    "CpuPeriod": (_int, 0),
    "CpuQuota": (_int, 0),
    "CpuRealtimePeriod": (_int, 0),
    "CpuRealtimeRuntime": (_int, 0),
    "CpusetCpus": (_str, ""),
    "CpusetMems": (_str, ""),
    "Devices": (_objs, []),
    "DeviceCgroupRules": (_strs, None),
    "DeviceRequests": (_objs, None),
    "KernelMemory": (_int, 0),
    "KernelMemoryTCP": (_int, 0),
    "MemoryReservation": (_int, 0),
    "MemorySwap": (_int, 0),
    "MemorySwappiness": (_opt_int, None),
    "OomKillDisable": (_opt_bool, False),
    "PidsLimit": (_opt_int, None),
    "Ulimits": (_objs, None),
    "CpuCount": (_int, 0),
    "CpuPercent": (_int, 0),
    "IOMaximumIOps": (_int, 0),
    "IOMaximumBandwidth": (_int, 0),
}

#: Stored only when given (dockerd's ``omitempty``), so inspect does not grow them.
_HOST_OMIT_EMPTY = frozenset(
    {"Capabilities", "StorageOpt", "Tmpfs", "Sysctls", "Mounts", "Init"}
    | {"MaskedPaths", "ReadonlyPaths"}  # null means "the defaults"
)

# Resource knobs the package overrides: set, they earn a warning instead of silence.
_PACKAGE_OVERRIDES = (
    "CpuShares", "NanoCpus", "CpuPeriod", "CpuQuota", "CpusetCpus", "CpusetMems",
    "MemorySwap", "MemoryReservation", "KernelMemory", "KernelMemoryTCP", "BlkioWeight",
    "CpuRealtimePeriod", "CpuRealtimeRuntime", "IOMaximumIOps", "IOMaximumBandwidth",
    "CpuCount", "CpuPercent",
)  # fmt: skip


def _fields(source: dict, table: dict[str, tuple[Kind, Any]], prefix: str) -> dict[str, Any]:
    out = {}
    for name, (kind, default) in table.items():
        value = source.get(name)
        out[name] = copy.deepcopy(default) if value is None else kind(value, prefix + name)
    return out


def _raw_host_config(body: dict, legacy: bool) -> dict:
    """The HostConfig object as dockerd decodes it.

    Clients of API < 1.25 could put HostConfig fields at the top level: with no
    ``HostConfig`` at all they are the whole of it; beside one, a few of them (memory,
    swap, CPU shares and set, volume driver) fill the inner one's unset fields.
    """
    inner = body.get("HostConfig")
    if inner is not None and not isinstance(inner, dict):
        raise InvalidArgument("HostConfig must be an object")
    if not legacy:
        return dict(inner or {})
    top = {k: body[k] for k in HOST_FIELDS if body.get(k) is not None}
    if body.get("Cpuset") is not None:
        top.setdefault("CpusetCpus", body["Cpuset"])
    if inner is None:
        return top
    host = dict(inner)
    for key in LEGACY_TOP_LEVEL:
        if not host.get(key) and top.get(key):
            host[key] = top[key]
    return host


# -- refusals ------------------------------------------------------------------------------


def refusals_check(body: dict, *, known_networks: Collection[str] = ()) -> None:
    """Raise a 400 naming the option for anything sdcd does not grant.

    Checks the HostConfig as any API version would read it, and the top-level copies
    old clients could send as well, so no spelling of an option slips through.
    ``known_networks`` are network names the caller has (besides bridge/default);
    another name is a 404 as in dockerd.
    """
    if not isinstance(body, dict):
        raise InvalidArgument("config cannot be empty in order to create a container")
    hosts = [_raw_host_config(body, legacy=True)]
    if body.get("HostConfig") is not None:
        hosts.append(_raw_host_config({k: v for k, v in body.items() if k != "HostConfig"}, True))
    for host in hosts:
        for check in _HOST_CHECKS:
            check(host)
        _check_network(host, known_networks)
    _check_config(body, hosts[0], known_networks)


def _check_host_access(host: dict) -> None:
    if _bool(host.get("Privileged"), "HostConfig.Privileged"):
        raise _refuse("--privileged")
    if _opt_bool(host.get("OomKillDisable"), "HostConfig.OomKillDisable"):
        raise _refuse("--oom-kill-disable")
    if _opt_bool(host.get("Init"), "HostConfig.Init"):
        raise _refuse("--init")
    for field, option in (
        ("Devices", "--device"),
        ("DeviceRequests", "--gpus"),
        ("DeviceCgroupRules", "--device-cgroup-rule"),
        ("Sysctls", "--sysctl"),
        ("StorageOpt", "--storage-opt"),
        ("CgroupParent", "--cgroup-parent"),
        ("Cgroup", "--cgroup"),
    ):
        if host.get(field):
            raise _refuse(option)


def _check_capabilities(host: dict) -> None:
    for field, option in (("CapAdd", "--cap-add"), ("Capabilities", "HostConfig.Capabilities")):
        for cap in _strs(host.get(field), f"HostConfig.{field}") or ():
            name = cap.upper().removeprefix("CAP_")
            if name not in DEFAULT_CAPABILITIES:
                raise _refuse(f"{option}={cap}")
    _strs(host.get("CapDrop"), "HostConfig.CapDrop")


def _check_namespaces(host: dict) -> None:
    """Host namespaces are refused; joining another container's too (the node cannot
    promise it runs there); anything else dockerd would also reject."""
    modes = (
        ("PidMode", "--pid", ("",)),
        ("IpcMode", "--ipc", ("", "private", "shareable", "none")),
        ("UsernsMode", "--userns", ("",)),
        ("UTSMode", "--uts", ("",)),
        ("CgroupnsMode", "--cgroupns", ("", "private")),
    )
    for field, option, allowed in modes:
        mode = _str(host.get(field), f"HostConfig.{field}")
        if mode in allowed:
            continue
        if mode == "host" or mode.startswith("container:"):
            raise _refuse(f"{option}={mode}")
        raise InvalidArgument(f"invalid {option} mode: {mode}")


def _check_security_opts(host: dict) -> None:
    for opt in _strs(host.get("SecurityOpt"), "HostConfig.SecurityOpt") or ():
        _check_security_opt(opt)
    masked = _strs(host.get("MaskedPaths"), "HostConfig.MaskedPaths")
    readonly = _strs(host.get("ReadonlyPaths"), "HostConfig.ReadonlyPaths")
    if masked == [] or readonly == []:
        raise _refuse("--security-opt systempaths=unconfined")
    if masked is not None or readonly is not None:
        raise _refuse("HostConfig.MaskedPaths/ReadonlyPaths")


def _check_security_opt(opt: str) -> None:
    """Options that tighten (no-new-privileges) pass; any that could loosen the
    confinement sdcd applies (its seccomp profile, masked paths, no AppArmor or SELinux
    relabelling to trust) is refused."""
    key, sep, value = opt.partition("=")
    if not sep:
        key, sep, value = opt.partition(":")
    if key == "no-new-privileges":
        if sep and value not in _TRUE + _FALSE:
            raise InvalidArgument(f"invalid --security-opt: {opt!r}")
        return
    if key == "seccomp" and value == "builtin":
        return
    if key == "writable-cgroups" and value in _FALSE:
        return
    if key in ("seccomp", "apparmor", "label", "systempaths", "writable-cgroups"):
        shown = "<profile>" if key == "seccomp" and value.lstrip().startswith("{") else value
        raise _refuse(f"--security-opt {key}={shown}")
    raise InvalidArgument(f"invalid --security-opt: {opt!r}")


def _check_runtime(host: dict) -> None:
    runtime = _str(host.get("Runtime"), "HostConfig.Runtime")
    if runtime not in ("", "runc"):
        raise _refuse(f"--runtime={runtime}")
    isolation = _str(host.get("Isolation"), "HostConfig.Isolation")
    if isolation not in ("", "default"):
        raise _refuse(f"--isolation={isolation}")
    driver = _str(host.get("VolumeDriver"), "HostConfig.VolumeDriver")
    if driver not in ("", "local"):
        raise _refuse(f"--volume-driver={driver}")
    adj = _int(host.get("OomScoreAdj"), "HostConfig.OomScoreAdj")
    if not -1000 <= adj <= 1000:
        raise InvalidArgument(f"Invalid value {adj}, range for oom score adj is [-1000, 1000]")
    if adj < 0:
        raise _refuse("--oom-score-adj below 0")
    if _int(host.get("ShmSize"), "HostConfig.ShmSize") < 0:
        raise InvalidArgument("SHM size can not be less than 0")


def _check_volumes(host: dict) -> None:
    for bind in _strs(host.get("Binds"), "HostConfig.Binds") or ():
        parse_bind(bind)
    for mount in _objs(host.get("Mounts"), "HostConfig.Mounts") or ():
        _check_mount(mount)
    for spec in _strs(host.get("VolumesFrom"), "HostConfig.VolumesFrom") or ():
        name, _, mode = spec.partition(":")
        if not name or (mode and not set(mode.split(",")) <= {"ro", "rw", "z", "Z"}):
            raise InvalidArgument(f"invalid mode for --volumes-from: {spec}")
    for path in _strmap(host.get("Tmpfs"), "HostConfig.Tmpfs") or {}:
        if not path.startswith("/") or path == "/":
            raise InvalidArgument(f"invalid --tmpfs destination: {path!r}")


def parse_bind(bind: str) -> tuple[str, str, str]:
    """``(volume name or "", destination, mode)`` of one ``-v`` string; a host path is
    refused in SDC's words, a bad spec in dockerd's."""
    parts = bind.split(":")
    if len(parts) == 1:
        source, dest, mode = "", parts[0], ""
    elif len(parts) in (2, 3):
        source, dest, mode = parts[0], parts[1], parts[2] if len(parts) == 3 else ""
    else:
        raise InvalidArgument(f"invalid volume specification: '{bind}'")
    if source.startswith("/"):
        raise InvalidArgument(f"host volumes are not supported: -v {bind}")
    if source and not _VOLUME_NAME_RE.fullmatch(source):
        raise InvalidArgument(
            f'create {source}: "{source}" includes invalid characters for a local volume '
            f'name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass '
            "a host directory, use absolute path"
        )
    _check_destination(dest, bind)
    for flag in mode.split(",") if mode else ():
        if flag in _PROPAGATIONS:
            raise InvalidArgument(f"invalid volume specification: '{bind}': {flag} applies "
                                  "only to host binds")  # fmt: skip
        if flag not in _BIND_MODES:
            raise InvalidArgument(f"invalid mode: {flag}")
    return source, dest, mode


def _check_destination(dest: str, spec: str) -> None:
    if not dest.startswith("/"):
        raise InvalidArgument(
            f"invalid volume specification: '{spec}': mount path must be absolute"
        )
    if dest.rstrip("/") == "":
        raise InvalidArgument(f"invalid volume specification: '{spec}': destination can't be '/'")


def _check_mount(mount: dict) -> None:
    kind = mount.get("Type") or ""
    source = mount.get("Source") or ""
    if kind in ("bind", "npipe", "cluster"):
        raise InvalidArgument(
            f"host volumes are not supported: --mount type={kind},source={source}"
        )
    if kind not in ("volume", "tmpfs"):
        raise InvalidArgument(f"mount type unknown: {kind!r}")
    target = mount.get("Target")
    if not isinstance(target, str):
        raise InvalidArgument("invalid mount config: Target must be a string")
    _check_destination(target, f"type={kind},target={target}")
    if kind == "volume":
        driver = ((mount.get("VolumeOptions") or {}).get("DriverConfig") or {}).get("Name")
        if driver not in (None, "", "local"):
            raise _refuse(f"--mount volume-driver={driver}")
        if source and not _VOLUME_NAME_RE.fullmatch(source):
            raise InvalidArgument(f"invalid mount config: invalid volume name {source!r}")
    elif source:
        raise InvalidArgument('invalid mount config for type "tmpfs": Source must not be set')


def _check_logging(host: dict) -> None:
    log_config(host)


def _check_restart(host: dict) -> None:
    policy = restart_policy(host)
    if _bool(host.get("AutoRemove"), "HostConfig.AutoRemove") and policy["Name"] != "no":
        raise InvalidArgument("can't create 'AutoRemove' container with restart policy")


def _check_ports(host: dict) -> None:
    parse_ports({}, host.get("PortBindings") or {}, False)


def _check_dns(host: dict) -> None:
    for server in _strs(host.get("Dns"), "HostConfig.Dns") or ():
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"{server} is not an ip address") from None
    for field in ("DnsSearch", "DnsOptions"):
        for value in _strs(host.get(field), f"HostConfig.{field}") or ():
            if not value or any(c.isspace() for c in value):
                raise InvalidArgument(f"invalid {field} entry: {value!r}")
    for entry in _strs(host.get("ExtraHosts"), "HostConfig.ExtraHosts") or ():
        name, sep, ip = entry.partition(":")
        if not sep or not name or any(c.isspace() for c in name):
            raise InvalidArgument(f"bad format for add-host: {entry!r}")
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise InvalidArgument(f"invalid IP address in add-host: {ip!r}") from None


_HOST_CHECKS: tuple[Callable[[dict], None], ...] = (
    _check_host_access,
    _check_capabilities,
    _check_namespaces,
    _check_security_opts,
    _check_runtime,
    _check_volumes,
    _check_logging,
    _check_restart,
    _check_ports,
    _check_dns,
)


def _check_network(host: dict, known: Collection[str]) -> None:
    mode = _str(host.get("NetworkMode"), "HostConfig.NetworkMode")
    if mode in ("host", "none") or mode.startswith("container:"):
        raise _refuse(f"--net={mode}")
    if mode and mode not in BUILTIN_NETWORKS and mode not in known:
        raise NotFound(f"network {mode} not found")


def _check_config(body: dict, host: dict, known: Collection[str]) -> None:
    if _str(body.get("MacAddress"), "MacAddress"):
        raise _refuse("--mac-address")
    networking = _obj(body.get("NetworkingConfig"), "NetworkingConfig") or {}
    endpoints = _obj(networking.get("EndpointsConfig"), "NetworkingConfig.EndpointsConfig")
    for name, endpoint in (endpoints or {}).items():
        _check_endpoint(name, endpoint, known)
    if len(data_volume_destinations(body, host)) > MAX_DATA_VOLUMES:
        raise InvalidArgument(f"too many data volumes: max {MAX_DATA_VOLUMES}")
    ports = _obj(body.get("ExposedPorts"), "ExposedPorts") or {}
    for key in ports:
        _expand_port(key)


def _check_endpoint(name: str, endpoint: Any, known: Collection[str]) -> None:
    if name not in BUILTIN_NETWORKS and name not in known:
        raise NotFound(f"network {name} not found")
    endpoint = _obj(endpoint, f"NetworkingConfig.EndpointsConfig.{name}") or {}
    ipam = _obj(endpoint.get("IPAMConfig"), "IPAMConfig") or {}
    if ipam.get("IPv4Address") or ipam.get("IPv6Address"):
        raise _refuse("--ip")
    if ipam.get("LinkLocalIPs"):
        raise _refuse("--link-local-ip")
    if endpoint.get("MacAddress"):
        raise _refuse("--mac-address")


def data_volume_destinations(body: dict, host: dict) -> set[str]:
    """Where the container's data volumes go: ``-v /path``, ``-v name:/path`` and
    ``--mount type=volume`` (SDC allowed at most ``MAX_DATA_VOLUMES``)."""
    dests = {p.rstrip("/") or "/" for p in _obj(body.get("Volumes"), "Volumes") or {}}
    for bind in _strs(host.get("Binds"), "HostConfig.Binds") or ():
        dests.add(parse_bind(bind)[1].rstrip("/"))
    for mount in _objs(host.get("Mounts"), "HostConfig.Mounts") or ():
        if mount.get("Type") == "volume" and isinstance(mount.get("Target"), str):
            dests.add(mount["Target"].rstrip("/"))
    return dests


# -- ports ---------------------------------------------------------------------------------


def _expand_port(key: str) -> list[str]:
    """``"80"``, ``"80/tcp"``, ``"8000-8010/udp"`` -> ``["80/tcp"]``, ... one per port."""
    match = _PORT_RE.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise InvalidArgument(f'invalid port specification: "{key}"')
    first, last, proto = match.groups()
    start, end = int(first), int(last or first)
    proto = (proto or "tcp").lower()
    if proto not in PORT_PROTOCOLS:
        raise InvalidArgument(f"invalid proto: {proto} (tcp, udp or sctp)")
    if not 1 <= start <= end <= 65535:
        raise InvalidArgument(f'invalid port specification: "{key}"')
    return [f"{port}/{proto}" for port in range(start, end + 1)]


def _port_number(key: str) -> int:
    return int(key.split("/", 1)[0])


def _published(key: str, bindings: Any) -> list[str]:
    """The ports of one PortBindings entry that are published (all or none); SDC has
    no NAT, so a host port other than the container's own is refused."""
    ports = _expand_port(key)
    if bindings is None or bindings == []:
        return []
    if not isinstance(bindings, list) or not all(isinstance(b, dict) for b in bindings):
        raise InvalidArgument(f"HostConfig.PortBindings[{key}] must be a list of objects")
    first, last = _port_number(ports[0]), _port_number(ports[-1])
    for binding in bindings:
        host_ip = binding.get("HostIp") or ""
        host_port = binding.get("HostPort")
        host_port = "" if host_port is None else str(host_port)
        shown = f"-p {host_ip + ':' if host_ip else ''}{host_port}:{key}"
        if host_ip not in ("", "0.0.0.0", "::"):
            raise InvalidArgument(
                f"publish port: binding to a host IP address is not supported ({shown})"
            )
        if not host_port:
            continue
        match = _HOST_PORT_RE.fullmatch(host_port)
        if match is None:
            raise InvalidArgument(f"invalid hostPort: {host_port}")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if (low, high) != (first, last):
            raise InvalidArgument(f"publish port: remapping of port numbers not allowed ({shown})")
    return ports


def parse_ports(exposed: dict | None, port_bindings: dict | None, publish_all: bool) -> dict:
    """The published ports, ``{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "80"}]}``.

    SDC semantics: no NAT, so a published port is the container's own port on its own
    IP. ``-p 80`` and ``-p 80:80`` publish 80; ``-p 8080:80`` and a host IP are refused;
    ranges are expanded to single ports as dockerd does; ``-P`` publishes every exposed
    port (pass the image's ``ExposedPorts`` merged with the container's). Exposed ports
    that are not published are not in the result (dockerd shows them as ``null`` in
    ``NetworkSettings.Ports``: add them from the config when rendering).
    """
    exposed = _obj(exposed, "ExposedPorts") or {}
    port_bindings = _obj(port_bindings, "HostConfig.PortBindings") or {}
    published: set[str] = set()
    for key, bindings in port_bindings.items():
        published.update(_published(key, bindings))
    exposed_ports = {port for key in exposed for port in _expand_port(key)}
    if publish_all:
        published |= exposed_ports
    return {
        port: [{"HostIp": "0.0.0.0", "HostPort": str(_port_number(port))}]
        for port in sorted(published, key=lambda p: (_port_number(p), p))
    }


def _normal_port_bindings(bindings: dict) -> dict:
    """PortBindings as dockerd stores them: one key per port, strings for HostIp/Port."""
    out: dict[str, list[dict[str, str]]] = {}
    for key, entries in bindings.items():
        _published(key, entries)  # validates
        for port in _expand_port(key):
            out[port] = [
                {"HostIp": b.get("HostIp") or "", "HostPort": _host_port_for(b, port)}
                for b in entries or ()
            ]
    return out


def _host_port_for(binding: dict, port: str) -> str:
    host_port = binding.get("HostPort")
    return "" if host_port in (None, "") else str(_port_number(port))


# -- restart policy, logging -------------------------------------------------------------


def restart_policy(host_config: dict) -> dict:
    """``HostConfig.RestartPolicy`` validated as dockerd does, ``""`` read as ``"no"``."""
    policy = _obj(host_config.get("RestartPolicy"), "HostConfig.RestartPolicy") or {}
    name = _str(policy.get("Name"), "HostConfig.RestartPolicy.Name")
    count = _int(policy.get("MaximumRetryCount"), "HostConfig.RestartPolicy.MaximumRetryCount")
    if name == "":
        return {"Name": "no", "MaximumRetryCount": 0}
    if name not in RESTART_POLICIES:
        raise InvalidArgument(f"invalid restart policy '{name}'")
    if name == "on-failure":
        if count < 0:
            raise InvalidArgument("maximum retry count cannot be negative")
    elif count != 0:
        raise InvalidArgument(f"maximum retry count cannot be used with restart policy '{name}'")
    return {"Name": name, "MaximumRetryCount": count}


def log_config(host_config: dict) -> dict:
    """``HostConfig.LogConfig`` with its default: logs are kept on the node as json-file
    (``none`` keeps none); other drivers are refused, not silently replaced."""
    config = _obj(host_config.get("LogConfig"), "HostConfig.LogConfig") or {}
    driver = _str(config.get("Type"), "HostConfig.LogConfig.Type") or "json-file"
    options = _strmap(config.get("Config"), "HostConfig.LogConfig.Config") or {}
    if driver not in LOG_DRIVERS:
        raise InvalidArgument(f"unsupported log driver: {driver} (--log-driver)")
    if driver == "json-file":
        for key, value in options.items():
            if key not in JSON_FILE_OPTIONS:
                raise InvalidArgument(f"unknown log opt '{key}' for json-file log driver")
            if key == "max-file" and (not value.isdigit() or int(value) < 1):
                raise InvalidArgument("max-file cannot be less than 1")
            if key == "max-size" and value != "-1" and not _SIZE_RE.fullmatch(value):
                raise InvalidArgument(f"invalid size: '{value}'")
    return {"Type": driver, "Config": options}


# -- merging with the image --------------------------------------------------------------


def merge_entrypoint_cmd(
    image_config: dict, config: dict
) -> tuple[list[str] | None, list[str] | None]:
    """The container's Entrypoint and Cmd after dockerd's merge with the image.

    A given Entrypoint (even ``[]`` or ``[""]``) replaces the image's; the image's Cmd
    is used only when both Entrypoint and Cmd given are empty; then ``[""]`` means no
    entrypoint at all. ``None`` is "not given" (JSON null or absent).
    """
    entrypoint = _cmd(config.get("Entrypoint"), "Entrypoint")
    cmd = _cmd(config.get("Cmd"), "Cmd")
    if not entrypoint:
        if not cmd:
            cmd = _cmd(image_config.get("Cmd"), "image Cmd")
        if entrypoint is None:
            entrypoint = _cmd(image_config.get("Entrypoint"), "image Entrypoint")
    if entrypoint == [""]:
        entrypoint = None
    return entrypoint, cmd


def merge_command(image_config: dict, config: dict) -> list[str]:
    """The process arguments (path first): merged entrypoint + cmd; 400 when empty."""
    entrypoint, cmd = merge_entrypoint_cmd(image_config or {}, config)
    args = (entrypoint or []) + (cmd or [])
    if not args:
        raise InvalidArgument("No command specified")
    return args


def _env_key(entry: str) -> str:
    return entry.split("=", 1)[0]


def merge_env(image_env: list[str] | None, env: list[str] | None) -> list[str]:
    """dockerd's merge: the user's entries in their order, then the image's entries
    whose name the user did not give. An entry without ``=`` is kept as given (inspect
    shows it); it hides the image's variable, and the process does not get it."""
    if not env:
        return list(image_env or [])
    given = {_env_key(e) for e in env}
    return list(env) + [e for e in image_env or () if _env_key(e) not in given]


# -- memory, normalisation -----------------------------------------------------------------


def parse_memory(host_config: dict) -> int:
    """``HostConfig.Memory`` in bytes, 0 when unset (the package's default applies).
    Old clients' top-level ``Memory`` is already folded in by ``normalize_create``."""
    memory = _int(host_config.get("Memory"), "HostConfig.Memory")
    if memory < 0:
        raise InvalidArgument(f"invalid memory limit: {memory}")
    return memory


def resource_warnings(host_config: dict) -> list[str]:
    """What ``create`` should say in ``Warnings`` about resource options the package
    decides instead (memory picks the package; these do not)."""
    return [
        f"{field} is ignored: resources come from the package"
        for field in _PACKAGE_OVERRIDES
        if host_config.get(field)
    ]


def normalize_create(body: dict, version: tuple[int, int]) -> tuple[dict, dict]:
    """``(Config, HostConfig)`` of a create body, typed and defaulted as dockerd stores
    them, for the request's API version (fields of API < 1.25 bodies at the top level
    are read; ``IpcMode`` defaults to ``private`` from 1.40, ``shareable`` before).
    ``Cmd``/``Entrypoint`` stay ``None`` when not given so the image merge can tell."""
    if not isinstance(body, dict) or not body:
        raise InvalidArgument("config cannot be empty in order to create a container")
    config = _fields(body, CONFIG_FIELDS, "")
    host = _fields(_raw_host_config(body, legacy=version < (1, 25)), HOST_FIELDS, "HostConfig.")
    _finish_config(config)
    _finish_host(host, version)
    return config, host


def _finish_config(config: dict) -> None:
    for entry in config["Env"]:
        if not _env_key(entry):
            raise InvalidArgument(f"invalid environment variable: {entry}")
    if config["ExposedPorts"] is not None:
        config["ExposedPorts"] = {p: {} for k in config["ExposedPorts"] for p in _expand_port(k)}
    if config["Volumes"] is not None:
        for path in config["Volumes"]:
            _check_destination(path, path)
        config["Volumes"] = {path: {} for path in config["Volumes"]} or None
    for field in ("Hostname", "Domainname"):
        value = config[field]
        if value and (len(value) > 63 or not _HOSTNAME_RE.fullmatch(value)):
            raise InvalidArgument(f"invalid {field.lower()} format: {value}")
    workdir = config["WorkingDir"]
    if workdir and not workdir.startswith("/"):
        raise InvalidArgument(
            f"the working directory '{workdir}' is invalid, it needs to be an absolute path"
        )
    if config["StopSignal"] and not valid_signal(config["StopSignal"]):
        raise InvalidArgument(f"Invalid signal: {config['StopSignal']}")
    for key in ("Healthcheck", "StopTimeout", "Shell", "ArgsEscaped", "StopSignal", "MacAddress"):
        if config[key] in (None, False, ""):
            del config[key]


def _finish_host(host: dict, version: tuple[int, int]) -> None:
    host["NetworkMode"] = host["NetworkMode"] or "default"
    host["LogConfig"] = log_config(host)
    host["RestartPolicy"] = restart_policy(host)
    host["PortBindings"] = _normal_port_bindings(host["PortBindings"])
    host["ShmSize"] = host["ShmSize"] or DEFAULT_SHM_SIZE
    host["Runtime"] = host["Runtime"] or "runc"
    host["IpcMode"] = host["IpcMode"] or ("private" if version >= (1, 40) else "shareable")
    if host["ConsoleSize"] is None:
        host["ConsoleSize"] = [0, 0]
    for key in _HOST_OMIT_EMPTY:
        if host.get(key) in (None, {}, []):
            del host[key]


def valid_signal(name: str) -> bool:
    """A signal as dockerd's ``ParseSignal`` reads it: a number or a name, ``SIG``
    optional, including ``RTMIN+n`` and ``RTMAX-n``."""
    if name.isdigit():
        return 0 < int(name) <= 64
    bare = name.upper().removeprefix("SIG")
    if bare in {s.name.removeprefix("SIG") for s in signal.Signals}:
        return True
    match = re.fullmatch(r"RTM(IN|AX)([+-])(\d+)", bare)
    if match is None:
        return False
    base = signal.SIGRTMIN if match.group(1) == "IN" else signal.SIGRTMAX
    sign = 1 if match.group(2) == "+" else -1
    return signal.SIGRTMIN <= base + sign * int(match.group(3)) <= signal.SIGRTMAX
