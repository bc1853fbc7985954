"""Rendering of ``/_ping``, ``/version`` and ``/info`` in dockerd's shapes, by API version."""

from __future__ import annotations

import datetime
from typing import Any

from sdcd.api.versions import MAX_VERSION, MIN_VERSION, render
from sdcd.core.system import AccountView

GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
SERVER_HEADER = "sdcd/{version} (linux)"


def _arch(machine: str) -> str:
    return GO_ARCH.get(machine, machine)


def version_body(version: str, view_kernel: str, machine: str, api: tuple[int, int]) -> dict:
    """``GET /version``; ``ApiVersion`` is the highest this server speaks, as dockerd's."""
    details = {
        "ApiVersion": render(MAX_VERSION),
        "MinAPIVersion": render(MIN_VERSION),
        "GitCommit": "sdcd",
        "GoVersion": "python",
        "Os": "linux",
        "Arch": _arch(machine),
        "KernelVersion": view_kernel,
        "BuildTime": "",
    }
    body: dict[str, Any] = {"Version": version, **details}
    if api < (1, 25):
        del body["MinAPIVersion"]
        body["Experimental"] = False
    else:
        body["Platform"] = {"Name": "sdcd"}
        body["Components"] = [{"Name": "Engine", "Version": version, "Details": details}]
    return body


def info_body(view: AccountView, version: str, api: tuple[int, int]) -> dict:
    """``GET /info``: SDC's fields (``Driver: sdc``, ``SDCAccount``) in dockerd's shape."""
    body: dict[str, Any] = {
        "ID": f"sdcd:{view.datacenter}",
        "Containers": view.containers,
        "ContainersRunning": view.containers_running,
        "ContainersPaused": view.containers_paused,
        "ContainersStopped": view.containers_stopped,
        "Images": view.images,
        "Driver": "sdc",
        "DriverStatus": [
            ["SDCAccount", view.login],
            ["Compute nodes", str(view.nodes)],
            *([["Compute nodes down", str(view.nodes_down)]] if view.nodes_down else []),
            ["Memory free", _gib(view.mem_free)],
            *(
                [["Disk", f"{_gib(view.disk_free)} free of {_gib(view.disk_total)}"]]
                if view.disk_total
                else []
            ),
        ],
        "SystemStatus": None,
        "Plugins": {
            "Volume": ["local"],
            "Network": ["bridge"],
            "Authorization": None,
            "Log": ["json-file", "none"],
        },
        "MemoryLimit": True,
        "SwapLimit": True,
        "KernelMemory": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": False,
        "PidsLimit": True,
        "IPv4Forwarding": True,
        "BridgeNfIptables": False,
        "BridgeNfIp6tables": False,
        "Debug": False,
        "NFd": 0,
        "OomKillDisable": False,
        "NGoroutines": 0,
        "SystemTime": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "NEventsListener": 0,
        "KernelVersion": view.kernel_version,
        "OperatingSystem": "SmartDataCenter",
        "OSType": "linux",
        "Architecture": view.architecture,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "IndexConfigs": {},
            "Mirrors": [],
        },
        "NCPU": view.ncpu,
        "MemTotal": view.mem_total,
        "DockerRootDir": "",
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": view.datacenter,
        "Labels": [f"com.joyent.datacenter={view.datacenter}"],
        "ExperimentalBuild": False,
        "ServerVersion": version,
        "SecurityOptions": [],
        "Warnings": None,
    }
    if api <= (1, 24):
        body["ExecutionDriver"] = f"sdc-{version}"
    if api >= (1, 25):
        body.update(
            {
                "Runtimes": {"runc": {"path": "runc"}},
                "DefaultRuntime": "runc",
                "Swarm": {
                    "NodeID": "",
                    "NodeAddr": "",
                    "LocalNodeState": "inactive",
                    "ControlAvailable": False,
                    "Error": "",
                    "RemoteManagers": None,
                },
                "LiveRestoreEnabled": True,
                "Isolation": "",
                "InitBinary": "",
                "ContainerdCommit": {"ID": "", "Expected": ""},
                "RuncCommit": {"ID": "", "Expected": ""},
                "InitCommit": {"ID": "", "Expected": ""},
            }
        )
    if api >= (1, 40):
        body["CgroupVersion"] = "1"
    return body


def _gib(size: int) -> str:
    """Bytes as the CLI shows sizes in ``docker info`` (GiB, two decimals)."""
    return f"{size / 1024**3:.2f} GiB"
