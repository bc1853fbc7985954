"""Container routes (``/containers/...``): parse the request, call the ContainerService,
render as dockerd does for the request's API version."""

from __future__ import annotations

import base64
import json
from typing import Any

from klein import Klein
from twisted.internet import defer, task
from twisted.python.failure import Failure

from sdcd.api import containerviews as views
from sdcd.api.errors import render_failure
from sdcd.api.execs import ExecRoutes, tty_size
from sdcd.api.filters import parse_filters
from sdcd.api.hijack import AttachResource
from sdcd.api.logstream import LogWriter
from sdcd.api.params import arg, flag, integer, json_body, no_content, read_json
from sdcd.api.streams import RequestConsumer
from sdcd.core import containerfilters
from sdcd.core.containers import ZERO_TIME, ContainerService
from sdcd.core.errors import InvalidArgument


class ContainerRoutes:
    """Mounted under ``/containers/`` by ``DockerAPI``."""

    app = Klein()

    def __init__(self, containers: ContainerService, clock, exec_routes: ExecRoutes) -> None:
        self._containers = containers
        self._clock = clock
        self._exec_routes = exec_routes

    def resource(self):
        return self.app.resource()

    @property
    def events(self):
        """The account event log (``/events`` is served by DockerAPI)."""
        return self._containers.events

    def prune_layers(self) -> None:
        """After an image is deleted: drop unpacked layers no container uses (in the
        background; the layer cache is only a cache)."""
        self._containers.prune_layers()

    @app.handle_errors(Exception)
    def _error(self, request, failure: Failure) -> bytes:
        return render_failure(request, failure)

    @app.route("/create", methods=["POST"])
    async def create(self, request) -> bytes:
        body = read_json(request)
        cid, warnings = await self._containers.create(
            request.sdcd_account, body, request.sdcd_version, arg(request, "name") or None
        )
        return json_body(request, {"Id": cid, "Warnings": warnings}, 201)

    @app.route("/json", methods=["GET"])
    async def list(self, request) -> bytes:
        account = request.sdcd_account
        pairs = await self._containers.list(account)
        by_ref = {}
        for record, state in pairs:
            by_ref[record.id] = by_ref["/" + record.name] = by_ref[record.name] = (record, state)
        summaries = {r.id: views.summary_fields(r, s) for r, s in pairs}

        def lookup(ref: str):
            pair = by_ref.get(ref) or next(
                (p for cid, p in by_ref.items() if len(ref) >= 1 and cid.startswith(ref)), None
            )
            return summaries[pair[0].id] if pair else None

        chosen = containerfilters.filter_containers(
            list(summaries.values()),
            parse_filters(arg(request, "filters")),
            flag(request, "all"),
            integer(request, "limit", -1) or -1,
            arg(request, "before"),
            arg(request, "since"),
            lookup,
        )
        now = self._clock()
        with_size = flag(request, "size")
        out = []
        for item in chosen:
            record, state = by_ref[item["id"]]
            size = await self._containers.disk_usage(record) if with_size else None
            out.append(views.summary(record, state, now, request.sdcd_version, size))
        return json_body(request, out)

    @app.route("/<ref>/json", methods=["GET"])
    async def inspect(self, request, ref: str) -> bytes:
        record, state = await self._containers.get(request.sdcd_account, ref)
        size = await self._containers.disk_usage(record) if flag(request, "size") else None
        node = await self._containers.node(record)
        state = self._containers.as_seen(record, state, await self._containers.down_nodes())
        view = views.inspect(record, state, request.sdcd_version, size, node)
        view["ExecIDs"] = await self._exec_routes.running_ids(request.sdcd_account, record.id)
        return json_body(request, view)

    @app.route("/<ref>/start", methods=["POST"])
    async def start(self, request, ref: str) -> bytes:
        await self._containers.start(request.sdcd_account, ref)
        return no_content(request)

    @app.route("/<ref>/stop", methods=["POST"])
    async def stop(self, request, ref: str) -> bytes:
        await self._containers.stop(request.sdcd_account, ref, integer(request, "t"))
        return no_content(request)

    @app.route("/<ref>/restart", methods=["POST"])
    async def restart(self, request, ref: str) -> bytes:
        await self._containers.restart(request.sdcd_account, ref, integer(request, "t"))
        return no_content(request)

    @app.route("/<ref>/kill", methods=["POST"])
    async def kill(self, request, ref: str) -> bytes:
        await self._containers.kill(request.sdcd_account, ref, arg(request, "signal"))
        return no_content(request)

    @app.route("/<ref>/pause", methods=["POST"])
    async def pause(self, request, ref: str) -> bytes:
        await self._containers.pause(request.sdcd_account, ref)
        return no_content(request)

    @app.route("/<ref>/unpause", methods=["POST"])
    async def unpause(self, request, ref: str) -> bytes:
        await self._containers.unpause(request.sdcd_account, ref)
        return no_content(request)

    @app.route("/<ref>/rename", methods=["POST"])
    async def rename(self, request, ref: str) -> bytes:
        name = arg(request, "name")
        if not name:
            raise InvalidArgument("name is required")
        await self._containers.rename(request.sdcd_account, ref, name)
        return no_content(request)

    @app.route("/<ref>/top", methods=["GET"])
    async def top(self, request, ref: str) -> bytes:
        result = await self._containers.top(request.sdcd_account, ref, arg(request, "ps_args"))
        return json_body(request, result)

    @app.route("/<ref>/resize", methods=["POST"])
    async def resize(self, request, ref: str) -> bytes:
        height, width = tty_size(request)
        await self._containers.resize(request.sdcd_account, ref, height, width)
        request.setResponseCode(200)
        return b""

    @app.route("/<ref>/wait", methods=["POST"])
    async def wait(self, request, ref: str) -> bytes:
        version = request.sdcd_version
        condition = arg(request, "condition") if version >= (1, 30) else None
        waiting = defer.ensureDeferred(
            self._containers.wait(request.sdcd_account, ref, condition or "not-running")
        )
        request.notifyFinish().addErrback(lambda _: waiting.cancel())
        if version >= (1, 30):
            # dockerd sends the headers at once, so that the client knows the wait is
            # registered before it starts the container.
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/json")
            request.write(b"")
        state = await waiting
        body: dict[str, Any] = {"StatusCode": state.exit_code}
        if version >= (1, 30):
            body["Error"] = {"Message": state.error} if state.error else None
        return json_body(request, body)

    @app.route("/<ref>", methods=["DELETE"])
    async def remove(self, request, ref: str) -> bytes:
        await self._containers.remove(request.sdcd_account, ref, flag(request, "force"))
        return no_content(request)

    @app.route("/<ref>/logs", methods=["GET"])
    async def logs(self, request, ref: str) -> bytes:
        stdout, stderr = flag(request, "stdout"), flag(request, "stderr")
        if not (stdout or stderr):
            raise InvalidArgument("Bad parameters: you must choose at least one stream")
        record, _ = await self._containers.get(request.sdcd_account, ref)
        options = {
            "follow": flag(request, "follow"),
            "tail": _tail(arg(request, "tail")),
            "since": _time(arg(request, "since")),
            "until": _time(arg(request, "until")),
        }
        writer = LogWriter(
            request,
            streams={s for s, on in (("stdout", stdout), ("stderr", stderr)) if on},
            timestamps=flag(request, "timestamps"),
            multiplexed=not record.config.get("Tty"),
            version=request.sdcd_version,
        )
        await self._containers.logs(request.sdcd_account, record.id, options, writer)
        writer.finish()
        return b""

    async def commit(self, request) -> bytes:
        """``POST /commit`` (served by DockerAPI): ``container``, ``repo``, ``tag``,
        ``comment``, ``author``, ``changes`` (repeated), ``pause``; a body, if any, is a
        container config that overrides the container's."""
        ref = arg(request, "container")
        if not ref:
            raise InvalidArgument("Bad parameters: container is required")
        options = {
            "repo": arg(request, "repo") or "",
            "tag": arg(request, "tag") or None,
            "comment": arg(request, "comment") or "",
            "author": arg(request, "author") or "",
            "changes": [v.decode("utf-8", "replace") for v in request.args.get(b"changes", [])],
            "pause": flag(request, "pause", default=True),
            "config": read_json(request),
        }
        image_id = await self._containers.commit(request.sdcd_account, ref, options)
        return json_body(request, {"Id": image_id}, 201)

    @app.route("/<ref>/archive", methods=["HEAD", "GET"])
    async def archive_get(self, request, ref: str) -> bytes:
        """``docker cp c:path``: the path's stat in ``X-Docker-Container-Path-Stat``, and
        for GET the tar, streamed as the client reads it."""
        account, path = request.sdcd_account, _archive_path(request)
        found = await self._containers.archive_stat(account, ref, path)
        header = base64.b64encode(json.dumps(found).encode())
        request.setHeader(b"x-docker-container-path-stat", header)
        request.setHeader(b"content-type", b"application/x-tar")
        if request.method == b"GET":
            await self._containers.archive_get(account, ref, path, RequestConsumer(request))
        return b""

    @app.route("/<ref>/archive", methods=["PUT"])
    async def archive_put(self, request, ref: str) -> bytes:
        """``docker cp - c:path``: the body (twisted.web has it in a file) extracted."""
        body = request.content
        body.seek(0)
        await self._containers.archive_put(
            request.sdcd_account, ref, _archive_path(request), body.read,
            flag(request, "noOverwriteDirNonDir"),
        )  # fmt: skip
        request.setResponseCode(200)
        return b""

    @app.route("/<ref>/changes", methods=["GET"])
    async def changes(self, request, ref: str) -> bytes:
        found = await self._containers.changes(request.sdcd_account, ref)
        return json_body(request, found or None)  # dockerd: null when nothing changed

    @app.route("/<ref>/export", methods=["GET"])
    async def export(self, request, ref: str) -> bytes:
        """A tar of the container's filesystem, streamed (the node writes it as the
        client reads it)."""
        account = request.sdcd_account
        await self._containers.get(account, ref)  # 404 before any byte is sent
        request.setHeader(b"content-type", b"application/x-tar")
        await self._containers.export(account, ref, RequestConsumer(request))
        return b""

    @app.route("/<ref>/stats", methods=["GET"])
    async def stats(self, request, ref: str) -> bytes:
        """``docker stats``: a sample a second while ``stream`` (the default) and the
        client stays; ``stream=0`` waits for a second sample so that CPU use can be
        computed (as dockerd), unless ``one-shot``. A container that does not run gets
        one zero sample."""
        stream, one_shot = flag(request, "stream", default=True), flag(request, "one-shot")
        if stream and one_shot:
            raise InvalidArgument("cannot have stream=true and one-shot=true")
        record, state = await self._containers.get(request.sdcd_account, ref)
        request.setHeader(b"content-type", b"application/json")
        previous = None
        if not stream and not one_shot and state.status in ("running", "paused"):
            previous = await self._containers.stats(record, None)
            await _sleep(STATS_INTERVAL)
        while not request.finished and not getattr(request, "_disconnected", False):
            sample = await self._containers.stats(record, previous)
            request.write(json.dumps(sample).encode() + b"\n")
            if not stream or sample["read"] == ZERO_TIME:
                break
            previous = sample
            await _sleep(STATS_INTERVAL)
        return b""

    @app.route("/<ref>/attach", methods=["POST"])
    def attach(self, request, ref: str):
        return AttachResource(self._containers, ref)

    @app.route("/<ref>/exec", methods=["POST"])
    async def exec_create(self, request, ref: str) -> bytes:
        return await self._exec_routes.create(request, ref)


def _archive_path(request) -> str:
    path = arg(request, "path")
    if not path:
        raise InvalidArgument("Bad parameters: path is required")
    return path


#: Seconds between two samples of a ``docker stats`` stream (dockerd's).
STATS_INTERVAL = 1.0


def _sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds)


def _tail(value: str | None) -> int | None:
    if value in (None, "", "all"):
        return None
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value for tail: {value}") from None
    return None if n < 0 else n


def _time(value: str | None) -> str | None:
    """dockerd's since/until: unix seconds with an optional fraction (the CLI converts
    durations and dates to that), kept as text so nanoseconds survive."""
    if value in (None, "", "0"):
        return None
    whole, dot, frac = value.partition(".")
    if not whole.lstrip("-").isdigit() or (dot and not frac.isdigit()):
        raise InvalidArgument(f"invalid value for time: {value}")
    return value
