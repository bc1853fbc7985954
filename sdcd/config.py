"""The sdcd configuration: a TOML file, validated completely before anything starts.

Every user error is a ``ConfigError`` carrying one line that names the problem, so that
``twistd sdcd`` can print it and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs


class ConfigError(Exception):
    """A problem with the configuration, worded for the operator in one line."""


@attrs.frozen
class Listen:
    """Where one TLS endpoint listens."""

    host: str
    port: int


@attrs.frozen
class TLSFiles:
    """Paths of the server's certificate, key and CA; empty means generated on first start."""

    cert: Path | None
    key: Path | None
    ca: Path | None
    ca_key: Path | None


@attrs.frozen
class RedisConfig:
    """Either an embedded redis-server (url is None) or a Redis reached by URL."""

    url: str | None
    server: str
    prefix: str


@attrs.frozen
class ComputeConfig:
    """The in-process compute node: its bridge network and defaults."""

    bridge: str = "sdcd0"
    subnet: str = "172.30.0.0/16"
    default_memory: int = 1024
    dns: tuple[str, ...] = ()
    node_id: str = ""
    local: bool = True
    memory_overcommit: float = 1.0
    disk_overcommit: float = 10.0


@attrs.frozen
class InternalConfig:
    """The internal API towards compute node agents: where sdcd serves the image store's
    blobs to them, and its own certificate from the datacenter's internal CA (empty:
    issued from the CA under data_dir, made on first use)."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 2377
    address: str = ""
    name: str = ""
    cert_dir: Path | None = None


@attrs.frozen
class Config:
    """The validated configuration of one sdcd process."""

    path: Path
    datacenter: str
    public_host: str
    data_dir: Path
    docker: Listen
    cloudapi: Listen | None
    tls: TLSFiles
    redis: RedisConfig
    clock_skew: int
    log_format: str
    log_file: Path | None
    insecure_registries: tuple[str, ...] = ()
    registry_timeout: int = 15
    max_builds_per_account: int = 4
    registry_ca_files: tuple[Path, ...] = ()
    compute: ComputeConfig = attrs.field(factory=lambda: ComputeConfig())
    internal: InternalConfig = attrs.field(factory=lambda: InternalConfig())
    blob_dir: Path | None = None
    packages: tuple = ()

    @property
    def docker_url(self) -> str:
        """The endpoint clients are told to use (CloudAPI services, the setup helper)."""
        host = self.public_host
        if ":" in host:
            host = f"[{host}]"
        return f"tcp://{host}:{self.docker.port}"


# SCHEMA below: section -> key -> (validator, default).


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string")
    return value


def _optional_string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string")
    return value


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{where} must be a port number from 0 to 65535, not {value!r}")
    return value


def _host(value: Any, where: str) -> str:
    value = _string(value, where)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not all(part and len(part) < 64 for part in value.split(".")) or " " in value:
            raise ConfigError(
                f"{where} must be an IP address or host name, not {value!r}"
            ) from None
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where} must be a positive whole number, not {value!r}")
    return value


def _ratio(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise ConfigError(f"{where} must be a number above 0 (1.0: no overcommit)")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    return value


def _host_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of host[:port] strings")
    return tuple(value)


def _path_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of file paths")
    return tuple(value)


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def check(value: Any, where: str) -> str:
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(choices)}, not {value!r}")
        return value

    return check


def _redis_url(value: Any, where: str) -> str:
    value = _optional_string(value, where)
    if value and not value.startswith(("redis://", "unix://")):
        raise ConfigError(f"{where} must start with redis:// or unix://, not {value!r}")
    return value


def _bridge_name(value: Any, where: str) -> str:
    value = _string(value, where)
    if len(value) > 15 or not value.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(
            f"{where} must be an interface name (at most 15 letters/digits), not {value!r}"
        )
    return value


def _subnet(value: Any, where: str) -> str:
    value = _string(value, where)
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        raise ConfigError(f"{where} must be an IPv4 subnet like 172.30.0.0/16: {e}") from None
    if net.prefixlen > 29:
        raise ConfigError(f"{where} is too small: {value}")
    return value


def _address_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of IP addresses")
    for v in value:
        try:
            ipaddress.ip_address(v)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: {v!r} is not an IP address") from None
    return tuple(value)


SCHEMA: dict[str, dict[str, tuple[Callable[[Any, str], Any], Any]]] = {
    "": {
        "datacenter": (_string, "dc1"),
        "public_host": (_host, "localhost"),
        "data_dir": (_string, "/var/lib/sdcd"),
    },
    "docker": {
        "host": (_host, "0.0.0.0"),
        "port": (_port, 2376),
    },
    "cloudapi": {
        "enabled": (_bool, True),
        "host": (_host, "0.0.0.0"),
        "port": (_port, 8443),
        "clock_skew": (_positive_int, 300),
    },
    "tls": {
        "cert": (_optional_string, ""),
        "key": (_optional_string, ""),
        "ca": (_optional_string, ""),
        "ca_key": (_optional_string, ""),
    },
    "redis": {
        "url": (_redis_url, ""),
        "server": (_string, "redis-server"),
        "prefix": (_optional_string, "sdcd:"),
    },
    "images": {
        "insecure_registries": (_host_list, ()),
        "registry_timeout": (_positive_int, 15),
        "ca_files": (_path_list, ()),
        "max_builds_per_account": (_positive_int, 4),
        "blob_dir": (_optional_string, ""),
    },
    "compute": {
        "bridge": (_bridge_name, "sdcd0"),
        "subnet": (_subnet, "172.30.0.0/16"),
        "default_memory": (_positive_int, 1024),
        "dns": (_address_list, ()),
        "node_id": (_optional_string, ""),
        "local": (_bool, True),
        "memory_overcommit": (_ratio, 1.0),
        "disk_overcommit": (_ratio, 10.0),
    },
    "internal": {
        "enabled": (_bool, False),
        "host": (_host, "0.0.0.0"),
        "port": (_port, 2377),
        "address": (_optional_string, ""),
        "name": (_optional_string, ""),
        "cert_dir": (_optional_string, ""),
    },
    "log": {
        "format": (_choice("text", "json"), "text"),
        "file": (_optional_string, ""),
    },
}


def _section(
    raw: Mapping[str, Any],
    name: str,
    schema_of: Mapping[str, Mapping[str, tuple]] | None = None,
    tables: tuple[str, ...] = ("packages",),
) -> dict[str, Any]:
    """Validate one section (``""`` is the top level) of ``schema_of`` (sdcd's SCHEMA by
    default; the agent has its own) and fill in defaults. ``tables``: top-level keys that
    are parsed elsewhere."""
    schemas = SCHEMA if schema_of is None else schema_of
    schema = schemas[name]
    table = raw if name == "" else raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    values = {}
    for key, value in table.items():
        if name == "" and (key in schemas or key in tables):
            continue
        if key not in schema:
            where = f"[{name}] " if name else ""
            raise ConfigError(f"unknown setting {where}{key!r}")
        values[key] = schema[key][0](value, f"{name + '.' if name else ''}{key}")
    for key, (_, default) in schema.items():
        values.setdefault(key, default)
    return values


def _path(base: Path, value: str) -> Path | None:
    """Resolve a configured path relative to the config file's directory."""
    if not value:
        return None
    return (base / os.path.expanduser(value)).resolve()


def parse(text: str, path: Path) -> Config:
    """Validate a TOML document; relative paths are taken from the file's directory."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    sections = {name: _section(raw, name) for name in SCHEMA}
    top, docker, cloud = sections[""], sections["docker"], sections["cloudapi"]
    tls, redis, log = sections["tls"], sections["redis"], sections["log"]
    images = sections["images"]
    base = path.parent
    if bool(tls["cert"]) != bool(tls["key"]):
        raise ConfigError("tls.cert and tls.key must be given together")
    if log["format"] == "json" and not log["file"]:
        raise ConfigError("log.file is required when log.format is json")
    if cloud["enabled"] and cloud["port"] == docker["port"] and cloud["port"] != 0:
        raise ConfigError("cloudapi.port must differ from docker.port")
    internal = sections["internal"]
    if not sections["compute"]["local"] and not internal["enabled"]:
        raise ConfigError("compute.local = false needs [internal] enabled (agents' nodes)")
    return Config(
        compute=ComputeConfig(**sections["compute"]),
        internal=InternalConfig(
            **{**internal, "cert_dir": _path(base, internal["cert_dir"])},
        ),
        blob_dir=_path(base, images["blob_dir"]),
        packages=_packages(raw.get("packages")),
        path=path,
        datacenter=top["datacenter"],
        public_host=top["public_host"],
        data_dir=_path(base, top["data_dir"]),
        docker=Listen(docker["host"], docker["port"]),
        cloudapi=Listen(cloud["host"], cloud["port"]) if cloud["enabled"] else None,
        tls=TLSFiles(*(_path(base, tls[k]) for k in ("cert", "key", "ca", "ca_key"))),
        redis=RedisConfig(url=redis["url"] or None, server=redis["server"], prefix=redis["prefix"]),
        clock_skew=cloud["clock_skew"],
        log_format=log["format"],
        log_file=_path(base, log["file"]),
        insecure_registries=images["insecure_registries"],
        registry_timeout=images["registry_timeout"],
        max_builds_per_account=images["max_builds_per_account"],
        registry_ca_files=tuple(_path(base, p) for p in images["ca_files"]),
    )


def _packages(tables: Any) -> tuple:
    """``[[packages]]``; none configured means the built-in set."""
    from sdcd.core import packages

    if tables is None:
        return packages.DEFAULT_PACKAGES
    if not isinstance(tables, list) or not tables:
        raise ConfigError("packages must be a non-empty array of tables ([[packages]])")
    try:
        return packages.parse_packages(tables)
    except ValueError as e:
        raise ConfigError(f"packages: {e}") from None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the configuration file at ``path``."""
    path = Path(path).absolute()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file {path} is not UTF-8 text") from None
    return parse(text, path)
