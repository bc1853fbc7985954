"""``etc/sdcd-agent.toml``: one compute node's agent, validated at start-up."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

import attrs

from sdcd import config as sdcd_config
from sdcd.config import (
    ConfigError,
    _address_list,
    _bool,
    _bridge_name,
    _host,
    _optional_string,
    _port,
    _positive_int,
    _redis_url,
    _string,
    _subnet,
)


def _mib(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a whole number of MiB (0: measure it)")
    return value


SCHEMA = {
    "": {"data_dir": (_string, "/var/lib/sdcd-agent")},
    "agent": {
        "host": (_host, "0.0.0.0"),
        "port": (_port, 2377),
        "address": (_string, ""),
        "tls_dir": (_string, "/etc/sdcd-agent/tls"),
        "max_fetches": (_positive_int, 4),
    },
    "redis": {"url": (_redis_url, ""), "prefix": (_optional_string, "sdcd:")},
    "compute": {
        "bridge": (_bridge_name, "sdcd0"),
        "subnet": (_subnet, "172.30.0.0/16"),
        "dns": (_address_list, ()),
        "memory": (_mib, 0),
        "disk": (_mib, 0),
        "route_peers": (_bool, True),
    },
}


@attrs.frozen
class AgentConfig:
    path: Path
    data_dir: Path
    host: str
    port: int
    address: str
    tls_dir: Path
    max_fetches: int
    redis_url: str
    redis_prefix: str
    bridge: str
    subnet: str
    dns: tuple[str, ...]
    memory: int
    disk: int
    route_peers: bool


def _section(raw: dict, name: str) -> dict:
    return sdcd_config._section(raw, name, SCHEMA, tables=())


def parse(text: str, path: Path) -> AgentConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for name in raw:
        if name not in SCHEMA and isinstance(raw[name], dict):
            raise ConfigError(f"unknown section [{name}]")
    top, agent, redis, compute = (_section(raw, n) for n in ("", "agent", "redis", "compute"))
    if not redis["url"]:
        raise ConfigError("redis.url is required: the agent registers its node there")
    try:
        ipaddress.ip_address(agent["address"])
    except ValueError:
        raise ConfigError(
            "agent.address must be the IP address sdcd and the other nodes reach this node at"
        ) from None
    base = path.parent
    return AgentConfig(
        path=path,
        data_dir=(base / os.path.expanduser(top["data_dir"])).resolve(),
        host=agent["host"],
        port=agent["port"],
        address=agent["address"],
        tls_dir=(base / os.path.expanduser(agent["tls_dir"])).resolve(),
        max_fetches=agent["max_fetches"],
        redis_url=redis["url"],
        redis_prefix=redis["prefix"],
        bridge=compute["bridge"],
        subnet=compute["subnet"],
        dns=compute["dns"],
        memory=compute["memory"],
        disk=compute["disk"],
        route_peers=compute["route_peers"],
    )


def load(path: str | os.PathLike[str]) -> AgentConfig:
    path = Path(path).absolute()
    try:
        return parse(path.read_text(), path)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
