"""``POST /build``: the query parsed into ``BuildOptions``, the build's messages as
dockerd's JSON stream (``{"stream": ...}``, ``{"aux": {"ID": ...}}``, pull progress,
``errorDetail`` with the failed RUN's exit code as ``code``, which the CLI exits with)."""

from __future__ import annotations

import json
from typing import Any

from sdcd.api.params import arg, flag
from sdcd.api.streams import JSONStream, RequestConsumer, progress_message
from sdcd.core.build import BuildOptions
from sdcd.core.errors import CoreError, InvalidArgument
from sdcd.core.images import Progress
from sdcd.images.registry import Credentials, RegistryError, header_json


def build_options(request) -> BuildOptions:
    """The query dockerd's classic builder reads; 400 for what we cannot honour."""
    if arg(request, "remote"):
        raise InvalidArgument(
            "remote build contexts are not supported: compute nodes have no internet access; "
            "send the context from the client"
        )
    if arg(request, "version") == "2":
        raise InvalidArgument("BuildKit is not supported: use the classic builder (version=1)")
    platform = arg(request, "platform") or ""
    if platform and platform.split("/")[:2] != ["linux", "amd64"]:
        raise InvalidArgument(f"platform {platform} is not supported: only linux/amd64")
    return BuildOptions(
        dockerfile=arg(request, "dockerfile") or "Dockerfile",
        tags=tuple(t.decode() for t in request.args.get(b"t", []) if t),
        build_args=_json_map(arg(request, "buildargs"), "buildargs"),
        labels={k: v or "" for k, v in _json_map(arg(request, "labels"), "labels").items()},
        nocache=flag(request, "nocache"),
        pull=flag(request, "pull"),
        rm=flag(request, "rm", default=True),
        forcerm=flag(request, "forcerm"),
        quiet=flag(request, "q"),
        target=arg(request, "target") or "",
        memory=_int(arg(request, "memory"), "memory"),
        auth=registry_config(request.getHeader(b"x-registry-config")),
    )


def _json_map(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what}: not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(v, str) or v is None for v in value.values()
    ):
        raise InvalidArgument(f"invalid {what}: must be a map of strings")
    return value


def _int(text: str | None, what: str) -> int:
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what}: {text}") from None
    if value < 0:
        raise InvalidArgument(f"invalid {what}: {text}")
    return value


def registry_config(header: bytes | str | None) -> dict[str, Credentials]:
    """``X-Registry-Config``: base64url JSON of registry address -> auth config."""
    try:
        data = header_json(header, "X-Registry-Config") or {}
    except RegistryError as e:
        raise InvalidArgument(e.message) from None
    return {
        _host(address): Credentials.from_json(auth)
        for address, auth in data.items()
        if isinstance(auth, dict)
    }


def _host(address: str) -> str:
    """``https://index.docker.io/v1/`` stays as it is; ``http://host:5000`` -> ``host:5000``."""
    if "index.docker.io" in address:
        return "https://index.docker.io/v1/"
    return address.split("://", 1)[-1].rstrip("/").split("/", 1)[0]


class BuildStream:
    """The build's messages to the client; a RUN's output is paused while the client
    reads slowly (its producer is registered with the request)."""

    def __init__(self, request) -> None:
        self._json = JSONStream(request)
        self._consumer = RequestConsumer(request)

    @property
    def started(self) -> bool:
        return self._json.started

    def stream(self, text: str) -> None:
        self._json.send({"stream": text})

    def aux(self, value: dict[str, Any]) -> None:
        self._json.send({"aux": value})

    def progress(self, p: Progress) -> None:
        self._json.send(progress_message(p))

    def error(self, e: CoreError) -> None:
        detail: dict[str, Any] = {"message": e.message}
        code = getattr(e, "code", None)
        if code:
            detail["code"] = code
        self._json.send({"errorDetail": detail, "error": e.message})

    def register_producer(self, producer, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregister_producer(self) -> None:
        self._consumer.unregisterProducer()
