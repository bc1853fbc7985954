"""How containers look on the wire: ``docker inspect`` and ``docker ps`` bodies, shaped
per API version as dockerd shapes them."""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from sdcd import timestamps
from sdcd.core.containers import NODE_DOWN, anonymous_volumes
from sdcd.store.records import ContainerRecord, ContainerState

NETWORK_ID_PREFIX = "sdcd-net-"


def unix_created(record: ContainerRecord) -> int:
    return int(timestamps.parse(record.created))


def human_duration(seconds: float) -> str:
    """dockerd's go-units HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def status_text(state: ContainerState, now: float) -> str:
    """The ``Status`` column of ``docker ps``; "(node down)" after the state its compute
    node last reported when the node stopped answering."""
    text = _status_text(state, now)
    if state.error.startswith(NODE_DOWN):
        return text + " (node down)"
    return text


def _status_text(state: ContainerState, now: float) -> str:
    if state.status == "running":
        return f"Up {human_duration(now - timestamps.parse(state.started_at))}"
    if state.status == "paused":
        return f"Up {human_duration(now - timestamps.parse(state.started_at))} (Paused)"
    if state.status == "restarting":
        ago = human_duration(now - timestamps.parse(state.finished_at))
        return f"Restarting ({state.exit_code}) {ago} ago"
    if state.status == "exited":
        ago = human_duration(now - timestamps.parse(state.finished_at))
        return f"Exited ({state.exit_code}) {ago} ago"
    if state.status == "dead":
        return "Dead"
    if state.removing:
        return "Removal In Progress"
    return "Created"


def _port_key(key: str) -> tuple[int, str]:
    port, _, proto = key.partition("/")
    return int(port.split("-")[0]), proto or "tcp"


def ps_ports(record: ContainerRecord) -> list[dict[str, Any]]:
    """``Ports`` of a ps entry: published ports as SDC shows them (no NAT: the public
    port is the container's own), exposed ones without a public side."""
    out = []
    exposed = dict.fromkeys(record.config.get("ExposedPorts") or {})
    exposed.update(record.ports or {})
    for key in sorted(exposed, key=_port_key):
        port, proto = _port_key(key)
        bindings = (record.ports or {}).get(key)
        if bindings:
            for b in bindings:
                out.append(
                    {
                        "IP": b.get("HostIp") or "0.0.0.0",
                        "PrivatePort": port,
                        "PublicPort": int(b.get("HostPort") or port),
                        "Type": proto,
                    }
                )
        else:
            out.append({"PrivatePort": port, "Type": proto})
    return out


def network_ports(record: ContainerRecord) -> dict[str, Any]:
    ports: dict[str, Any] = dict.fromkeys(record.config.get("ExposedPorts") or {})
    ports.update(record.ports or {})
    return ports


def _endpoint(record: ContainerRecord, running: bool) -> dict[str, Any]:
    net = record.network
    return {
        "IPAMConfig": None,
        "Links": None,
        "Aliases": None,
        "NetworkID": NETWORK_ID_PREFIX + net.get("network", "bridge"),
        "EndpointID": record.id if running else "",
        "Gateway": net["gateway"],
        "IPAddress": net["ip"],
        "IPPrefixLen": net["prefix"],
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "MacAddress": net["mac"],
        "DriverOpts": None,
    }


def command_text(record: ContainerRecord) -> str:
    return " ".join(shlex.quote(a) if " " in a or not a else a for a in record.args)


def summary_fields(record: ContainerRecord, state: ContainerState) -> dict[str, Any]:
    """What ``containerfilters`` filters on."""
    image_names = [record.image, record.image_id, record.image_id.split(":", 1)[-1][:12]]
    return {
        "id": record.id,
        "names": ["/" + record.name],
        "image": record.image,
        "image_id": record.image_id,
        "created": unix_created(record),
        "state": state.status,
        "exit_code": state.exit_code,
        "labels": dict(record.config.get("Labels") or {}),
        "ancestors": image_names,
        "sequence": record.seq,
    }


def summary(record, state, now: float, version, size: dict | None) -> dict[str, Any]:
    """One entry of ``GET /containers/json``."""
    running = state.status in ("running", "paused", "restarting")
    out: dict[str, Any] = {
        "Id": record.id,
        "Names": ["/" + record.name],
        "Image": record.image,
        "ImageID": record.image_id,
        "Command": command_text(record),
        "Created": unix_created(record),
        "Ports": ps_ports(record),
        "Labels": dict(record.config.get("Labels") or {}),
        "State": state.status,
        "Status": status_text(state, now),
        "HostConfig": {"NetworkMode": record.host_config.get("NetworkMode") or "default"},
        "NetworkSettings": {"Networks": {"bridge": _endpoint(record, running)}},
        "Mounts": mounts(record),
    }
    if size is not None:
        out["SizeRw"] = size.get("rw", 0)
        out["SizeRootFs"] = size.get("rootfs", 0)
    return out


def mounts(record: ContainerRecord) -> list[dict[str, Any]]:
    """The anonymous volumes and tmpfs mounts, as dockerd lists them."""
    out = []
    for destination in anonymous_volumes(record.config, record.host_config):
        name = hashlib.sha256((record.id + destination).encode()).hexdigest()
        out.append({"Type": "volume", "Name": name, "Source": "", "Destination": destination,
                    "Driver": "local", "Mode": "", "RW": True, "Propagation": ""})  # fmt: skip
    return out


def node_view(node_id: str, node: dict | None) -> dict[str, Any]:
    """Swarm's ``Node`` of a container's inspect: which compute node runs it."""
    if node is None:
        return {"ID": node_id, "Name": node_id}
    return {
        "ID": node_id,
        "IP": node["address"],
        "Addr": node["address"],
        "Name": node["hostname"],
        "Cpus": node["cpus"],
        "Memory": node["memory"] * 1024 * 1024,
        "Labels": {},
    }


def inspect(record, state, version, size: dict | None, node: dict | None = None) -> dict:
    """``GET /containers/{id}/json``."""
    running = state.status in ("running", "paused", "restarting")
    net = record.network
    out: dict[str, Any] = {
        "Id": record.id,
        "Created": record.created,
        "Path": record.args[0] if record.args else "",
        "Args": list(record.args[1:]),
        "State": {
            "Status": state.status,
            "Running": running,
            "Paused": state.status == "paused",
            "Restarting": state.status == "restarting",
            "OOMKilled": state.oom_killed,
            "Dead": state.status == "dead",
            "Pid": state.pid if running else 0,
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": state.started_at,
            "FinishedAt": state.finished_at,
        },
        "Image": record.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": "",
        "Node": node_view(record.node, node),
        "Name": "/" + record.name,
        "RestartCount": state.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": _host_config(record),
        "GraphDriver": {"Name": "overlay", "Data": None},
        "Mounts": mounts(record),
        "Config": _config(record),
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": record.id if running else "",
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": network_ports(record),
            "SandboxKey": f"/run/netns/sdcd-{record.id[:12]}",
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": record.id if running else "",
            "Gateway": net["gateway"],
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": net["ip"],
            "IPPrefixLen": net["prefix"],
            "IPv6Gateway": "",
            "MacAddress": net["mac"],
            "Networks": {"bridge": _endpoint(record, running)},
        },
    }
    if version < (1, 25):
        out.pop("Platform")
    if size is not None:
        out["SizeRw"] = size.get("rw", 0)
        out["SizeRootFs"] = size.get("rootfs", 0)
    return out


def _config(record: ContainerRecord) -> dict[str, Any]:
    config = dict(record.config)
    for key, default in (
        ("Domainname", ""),
        ("User", ""),
        ("AttachStdin", False),
        ("AttachStdout", False),
        ("AttachStderr", False),
        ("Tty", False),
        ("OpenStdin", False),
        ("StdinOnce", False),
        ("Env", []),
        ("Cmd", None),
        ("Image", record.image),
        ("Volumes", None),
        ("WorkingDir", ""),
        ("Entrypoint", None),
        ("OnBuild", None),
        ("Labels", {}),
    ):
        config.setdefault(key, default)
    return config


def _host_config(record: ContainerRecord) -> dict[str, Any]:
    host = dict(record.host_config)
    package = record.package or {}
    memory = package.get("memory", 0) * 1024 * 1024
    host.update(
        {
            "Memory": memory,
            "MemorySwap": package.get("swap", 0) * 1024 * 1024,
            "CpuShares": package.get("cpu_shares", 0),
            "NanoCpus": 0,
            "CpuQuota": package.get("cpu_cap", 0) * 1000,
            "CpuPeriod": 100000 if package.get("cpu_cap") else 0,
            "PidsLimit": package.get("pids") or None,
        }
    )
    host.setdefault("NetworkMode", "default")
    host.setdefault("Privileged", False)
    host.setdefault("PublishAllPorts", False)
    host.setdefault("ReadonlyRootfs", False)
    host.setdefault("AutoRemove", False)
    host.setdefault("LogConfig", {"Type": "json-file", "Config": {}})
    return host
