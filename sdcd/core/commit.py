"""``docker commit``: what the new image's config says. Pure functions; the service in
``sdcd.core.containers`` gets the layer from the node and records the image.

dockerd builds the committed image from the container's own config (its Cmd, Env,
Entrypoint... as created), applies ``--change`` Dockerfile instructions on top, and
appends one layer and one history entry to the base image's.
"""

from __future__ import annotations

import copy
import json
import posixpath
import shlex
from typing import Any

from sdcd.core.errors import InvalidArgument

#: Instructions ``--change`` may use (dockerd's list for commit and import).
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "USER",
                       "VOLUME", "WORKDIR", "STOPSIGNAL")  # fmt: skip

#: Container config fields an image config keeps (dockerd's image ``config`` section).
IMAGE_CONFIG_FIELDS = ("Hostname", "Domainname", "User", "AttachStdin", "AttachStdout",
                       "AttachStderr", "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env",
                       "Cmd", "Healthcheck", "ArgsEscaped", "Image", "Volumes", "WorkingDir",
                       "Entrypoint", "OnBuild", "Labels", "StopSignal", "StopTimeout",
                       "Shell")  # fmt: skip


def apply_changes(config: dict, changes: list[str]) -> dict:
    """``config`` with each ``--change`` line applied; 400 for anything else."""
    config = copy.deepcopy(config)
    for line in changes:
        for piece in filter(None, (p.strip() for p in line.split("\n"))):
            instruction, _, rest = piece.partition(" ")
            _apply(config, instruction.upper(), rest.strip())
    return config


def _apply(config: dict, instruction: str, rest: str) -> None:
    if instruction not in CHANGE_INSTRUCTIONS:
        raise InvalidArgument(f"{instruction.lower()} is not a valid change command")
    if not rest:
        raise InvalidArgument(f"{instruction} requires at least one argument")
    if instruction in ("CMD", "ENTRYPOINT"):
        config["Cmd" if instruction == "CMD" else "Entrypoint"] = _command(rest)
        if instruction == "ENTRYPOINT":
            config["Cmd"] = None  # as in a Dockerfile: a new entrypoint drops the cmd
    elif instruction == "ENV":
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in config.get("Env") or [])
        env.update(_pairs(rest, "ENV"))
        config["Env"] = [f"{k}={v}" for k, v in env.items()]
    elif instruction == "LABEL":
        config["Labels"] = {**(config.get("Labels") or {}), **_pairs(rest, "LABEL")}
    elif instruction == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for port in rest.split():
            number, _, proto = port.partition("/")
            if not number.isdigit() or proto not in ("", "tcp", "udp", "sctp"):
                raise InvalidArgument(f"invalid port for EXPOSE: {port}")
            ports[f"{number}/{proto or 'tcp'}"] = {}
        config["ExposedPorts"] = ports
    elif instruction == "VOLUME":
        volumes = dict(config.get("Volumes") or {})
        for path in _list(rest):
            volumes[path] = {}
        config["Volumes"] = volumes
    elif instruction == "WORKDIR":
        config["WorkingDir"] = posixpath.join(config.get("WorkingDir") or "/", rest)
    elif instruction == "USER":
        config["User"] = rest
    elif instruction == "STOPSIGNAL":
        config["StopSignal"] = rest
    elif instruction == "ONBUILD":
        config["OnBuild"] = [*(config.get("OnBuild") or []), rest]


def _command(rest: str) -> list[str]:
    """Exec form (a JSON array of strings) or shell form (``/bin/sh -c``)."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", rest]


def _list(rest: str) -> list[str]:
    if rest.startswith("["):
        value = json.loads(rest) if rest.endswith("]") else None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"invalid JSON array: {rest}")
        return value
    return rest.split()


def _pairs(rest: str, instruction: str) -> dict[str, str]:
    """``k=v k2="v 2"`` (or the old ``key value`` form)."""
    try:
        words = shlex.split(rest)
    except ValueError as e:
        raise InvalidArgument(f"{instruction}: {e}") from None
    if "=" not in words[0]:
        if len(words) < 2:
            raise InvalidArgument(f"{instruction} must have two arguments")
        return {words[0]: " ".join(words[1:])}
    pairs = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"{instruction} names must be followed by '=': {word}")
        pairs[key] = value
    return pairs


def image_config(
    base: dict[str, Any],
    container: dict[str, Any],
    diff_id: str,
    *,
    container_id: str,
    created: str,
    author: str,
    comment: str,
    created_by: str,
) -> dict[str, Any]:
    """The committed image's config document: the base image's, with the container's
    config (changes applied) and one more layer and history entry."""
    config = {k: container.get(k) for k in IMAGE_CONFIG_FIELDS if k in container}
    history = list(base.get("history") or [])
    entry = {"created": created, "created_by": created_by}
    if author:
        entry["author"] = author
    if comment:
        entry["comment"] = comment
    history.append(entry)
    rootfs = base.get("rootfs") or {"type": "layers", "diff_ids": []}
    return {
        "architecture": base.get("architecture") or "amd64",
        "os": base.get("os") or "linux",
        "author": author,
        "comment": comment,
        "config": config,
        "container": container_id,
        "container_config": config,
        "created": created,
        "docker_version": "sdcd",
        "history": history,
        "rootfs": {"type": "layers", "diff_ids": [*rootfs.get("diff_ids", []), diff_id]},
    }
