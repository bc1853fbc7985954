"""``docker build``: what each Dockerfile instruction does to the image being built.
Pure functions over a stage's state; ``sdcd.core.build`` runs the steps that need a
container (RUN, COPY, ADD) and records the images.

The classic builder's rules we follow (moby ``builder/dockerfile/dispatchers.go``):
ENV/LABEL/ARG values are expanded with the stage's ARGs and ENV (ENV wins); a shell-form
RUN/CMD/ENTRYPOINT uses the stage's SHELL; ENTRYPOINT drops the base image's CMD unless
the stage set a CMD itself; WORKDIR is relative to the previous one; the image's
OnBuild triggers run right after its FROM and are not inherited.
"""

from __future__ import annotations

import copy
import hashlib
import json
import posixpath
import re
from typing import Any

import attrs

from sdcd.core import dockerfile
from sdcd.core.errors import InvalidArgument
from sdcd.store.records import LayerRecord

DEFAULT_SHELL = ["/bin/sh", "-c"]

_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$", re.IGNORECASE)
_SIGNAL = re.compile(r"^(?:SIG)?[A-Z][A-Z0-9+-]*$|^\d+$")
#: A range in EXPOSE may not make more ports than this (a tenant's ``1-65535``).
MAX_EXPOSED = 1024


class BuildError(InvalidArgument):
    """A step cannot run; ``code`` is the exit code a failed RUN gave (else 1)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@attrs.define
class BuildArgs:
    """``--build-arg`` values, the global ARGs (before the first FROM) and which of the
    given ones a stage declared (dockerd warns about the rest)."""

    given: dict[str, str | None] = attrs.field(factory=dict)
    meta: dict[str, str | None] = attrs.field(factory=dict)
    used: set[str] = attrs.field(factory=set)

    def value(self, name: str, default: str | None) -> str | None:
        """An ARG's value: the build's ``--build-arg``, else its default, else the global
        ARG of that name."""
        if name in self.given and self.given[name] is not None:
            self.used.add(name)
            return self.given[name]
        if default is not None:
            return default
        return self.meta.get(name)

    def unused(self) -> list[str]:
        return sorted(set(self.given) - self.used)


@attrs.define
class StageState:
    """The image a stage has built so far and what its next steps see."""

    image_id: str
    layers: tuple[LayerRecord, ...]
    doc: dict[str, Any]
    args: dict[str, str | None] = attrs.field(factory=dict)
    cmd_set: bool = False
    escape: str = "\\"
    scratch: bool = False

    @property
    def config(self) -> dict[str, Any]:
        return self.doc.setdefault("config", {})

    def env(self) -> dict[str, str]:
        """What ``$VAR`` means in this stage: its ARGs, overridden by ENV."""
        values = {k: v for k, v in self.args.items() if v is not None}
        for entry in self.config.get("Env") or []:
            key, _, value = entry.partition("=")
            values[key] = value
        return values

    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)

    def run_args(self) -> list[str]:
        """``name=value`` for the ARGs a RUN sees that ENV does not already set, as
        dockerd puts them in the step's environment and its cache key."""
        env_names = {e.partition("=")[0] for e in self.config.get("Env") or []}
        return [
            f"{k}={v}" for k, v in sorted(self.args.items()) if v is not None and k not in env_names
        ]


def scratch_doc() -> dict[str, Any]:
    """The config document of ``FROM scratch``: nothing at all."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": None, "Cmd": None},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }


def cache_key(parent: str, run_config: dict[str, Any]) -> str:
    """dockerd finds a cached step by its parent image and the step's run config (its
    Cmd names the instruction, with file checksums for COPY/ADD): the same here, as a
    digest filed per account."""
    text = json.dumps([parent, run_config], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def nop(text: str) -> list[str]:
    """The Cmd a step without a process records (``/bin/sh -c #(nop) ...``)."""
    return ["/bin/sh", "-c", f"#(nop) {text}"]


def new_doc(
    state: StageState, run_config: dict, created: str, created_by: str, diff_id: str | None
) -> dict[str, Any]:
    """The next image's config document: the stage's, one more history entry (and
    layer), ``container_config`` the step's run config as dockerd records it."""
    doc = copy.deepcopy(state.doc)
    doc["created"] = created
    doc["container_config"] = run_config
    doc["docker_version"] = "sdcd"
    entry: dict[str, Any] = {"created": created, "created_by": created_by}
    if diff_id is None:
        entry["empty_layer"] = True
    doc["history"] = [*(doc.get("history") or []), entry]
    rootfs = doc.get("rootfs") or {"type": "layers", "diff_ids": []}
    diff_ids = list(rootfs.get("diff_ids") or [])
    if diff_id is not None:
        diff_ids.append(diff_id)
    doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    return doc


def apply(state: StageState, inst: dockerfile.Instruction, build_args: BuildArgs) -> str:
    """Apply a step that only changes the config (everything but FROM, RUN, COPY and
    ADD) to ``state``; answer the text its history entry records."""
    handler = _HANDLERS.get(inst.command)
    if handler is None:
        raise BuildError(f"unknown instruction: {inst.command}")
    return handler(state, inst, build_args)


def _env(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    pairs = _pairs(state, inst)
    env = {}
    for entry in state.config.get("Env") or []:
        key, _, value = entry.partition("=")
        env[key] = value
    for key, value in pairs:
        env[key] = value or ""
    state.config["Env"] = [f"{k}={v}" for k, v in env.items()]
    return "ENV " + " ".join(f"{k}={v}" for k, v in pairs)


def _label(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    pairs = _pairs(state, inst)
    state.config["Labels"] = {**(state.config.get("Labels") or {}),
                              **{k: v or "" for k, v in pairs}}  # fmt: skip
    return "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)


def _pairs(state: StageState, inst: dockerfile.Instruction) -> list[tuple[str, str | None]]:
    try:
        return dockerfile.key_values(inst, state.env(), state.escape)
    except dockerfile.DockerfileError as e:
        raise BuildError(e.message) from None


def _arg(state: StageState, inst: dockerfile.Instruction, build_args: BuildArgs) -> str:
    names = []
    for name, default in _pairs(state, inst):
        state.args[name] = build_args.value(name, default)
        names.append(name if default is None else f"{name}={default}")
    return "ARG " + " ".join(names)


def _workdir(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    path = _one(state, inst)
    state.config["WorkingDir"] = posixpath.normpath(
        posixpath.join(state.config.get("WorkingDir") or "/", path)
    )
    return "WORKDIR " + state.config["WorkingDir"]


def _user(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    state.config["User"] = _one(state, inst)
    return "USER " + state.config["User"]


def _one(state: StageState, inst: dockerfile.Instruction) -> str:
    text = inst.json[0] if inst.json and len(inst.json) == 1 else inst.rest
    value = dockerfile.expand(text, state.env(), state.escape)
    if not value:
        raise BuildError(f"{inst.command} requires exactly one argument")
    return value


def _cmd(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    state.config["Cmd"] = dockerfile.shell_command(inst, state.shell())
    state.config["ArgsEscaped"] = True if inst.json is None else None
    state.cmd_set = True
    return "CMD " + _go_list(state.config["Cmd"])


def _entrypoint(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    state.config["Entrypoint"] = dockerfile.shell_command(inst, state.shell())
    if not state.cmd_set:
        state.config["Cmd"] = None
    return "ENTRYPOINT " + _go_list(state.config["Entrypoint"])


def _expose(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    ports = dict(state.config.get("ExposedPorts") or {})
    for word in dockerfile.split_words(inst.rest, state.env(), state.escape):
        match = _PORT.match(word)
        if match is None:
            raise BuildError(f"invalid containerPort: {word}")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 0 < low <= high <= 65535 or high - low >= MAX_EXPOSED:
            raise BuildError(f"invalid port range: {word}")
        for port in range(low, high + 1):
            ports[f"{port}/{(match.group(3) or 'tcp').lower()}"] = {}
    state.config["ExposedPorts"] = ports
    return "EXPOSE " + " ".join(sorted(ports))


def _volume(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    env = state.env()
    if inst.json is not None:
        paths = [dockerfile.expand(p, env, state.escape) for p in inst.json]
    else:
        paths = dockerfile.split_words(inst.rest, env, state.escape)
    if not paths or any(not p.strip() for p in paths):
        raise BuildError("VOLUME specified can not be an empty string")
    state.config["Volumes"] = {**(state.config.get("Volumes") or {}), **{p: {} for p in paths}}
    return "VOLUME [" + " ".join(paths) + "]"


def _stopsignal(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    value = _one(state, inst)
    if not _SIGNAL.match(value.upper()):
        raise BuildError(f"Invalid signal: {value}")
    state.config["StopSignal"] = value
    return "STOPSIGNAL " + value


def _shell(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    if not inst.json:
        raise BuildError("SHELL requires the arguments to be in JSON form")
    state.config["Shell"] = list(inst.json)
    return "SHELL " + _go_list(inst.json)


def _healthcheck(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    try:
        state.config["Healthcheck"] = dockerfile.healthcheck(inst)
    except dockerfile.DockerfileError as e:
        raise BuildError(e.message) from None
    return "HEALTHCHECK " + inst.rest


def _onbuild(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    try:
        dockerfile.onbuild_instructions([inst.rest])
    except dockerfile.DockerfileError as e:
        raise BuildError(e.message) from None
    state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), inst.rest]
    return "ONBUILD " + inst.rest


def _maintainer(state: StageState, inst: dockerfile.Instruction, _args: BuildArgs) -> str:
    state.doc["author"] = dockerfile.expand(inst.rest, state.env(), state.escape)
    return "MAINTAINER " + state.doc["author"]


def _go_list(items: list[str]) -> str:
    """A list as Go's ``%q`` prints it in dockerd's history: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


_HANDLERS = {
    "ENV": _env,
    "LABEL": _label,
    "ARG": _arg,
    "WORKDIR": _workdir,
    "USER": _user,
    "CMD": _cmd,
    "ENTRYPOINT": _entrypoint,
    "EXPOSE": _expose,
    "VOLUME": _volume,
    "STOPSIGNAL": _stopsignal,
    "SHELL": _shell,
    "HEALTHCHECK": _healthcheck,
    "ONBUILD": _onbuild,
    "MAINTAINER": _maintainer,
}

#: Steps that change only the config (no container, no layer).
CONFIG_ONLY = frozenset(_HANDLERS)
