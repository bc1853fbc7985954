"""Exec routes: ``POST /containers/{id}/exec`` (served by ContainerRoutes through
``create``) and ``/exec/{id}/start|resize|json``; parse, call the ExecService, render
as dockerd does."""

from __future__ import annotations

from klein import Klein
from twisted.python.failure import Failure

from sdcd.api.errors import render_failure
from sdcd.api.hijack import ExecStartResource, parse_detach_keys
from sdcd.api.params import integer, json_body, read_json
from sdcd.core.errors import InvalidArgument
from sdcd.core.execs import ExecService
from sdcd.store.records import ExecRecord


def tty_size(request) -> tuple[int, int]:
    """``h`` and ``w`` of a resize: whole numbers a tty can have."""
    height, width = integer(request, "h", 0), integer(request, "w", 0)
    if not (0 <= height < 65536 and 0 <= width < 65536):
        raise InvalidArgument(f"invalid tty size: {height}x{width}")
    return height, width


def inspect_view(record: ExecRecord) -> dict:
    """``GET /exec/{id}/json`` as dockerd shapes it."""
    config = record.config
    cmd = config["Cmd"]
    return {
        "ID": record.id,
        "Running": record.running,
        "ExitCode": record.exit_code,
        "ProcessConfig": {
            "tty": config["Tty"],
            "entrypoint": cmd[0],
            "arguments": cmd[1:],
            "privileged": False,
            "user": config["User"],
        },
        "OpenStdin": config["AttachStdin"],
        "OpenStderr": config["AttachStderr"],
        "OpenStdout": config["AttachStdout"],
        "CanRemove": False,
        "ContainerID": record.container,
        "DetachKeys": config["DetachKeys"],
        "Pid": record.pid,
    }


class ExecRoutes:
    """Mounted under ``/exec/`` by ``DockerAPI``."""

    app = Klein()

    def __init__(self, execs: ExecService) -> None:
        self._execs = execs

    def resource(self):
        return self.app.resource()

    async def create(self, request, ref: str) -> bytes:
        """``POST /containers/{ref}/exec``."""
        body = read_json(request)
        if body.get("DetachKeys"):
            parse_detach_keys(body["DetachKeys"])
        exec_id = await self._execs.create(request.sdcd_account, ref, body)
        return json_body(request, {"Id": exec_id}, 201)

    async def running_ids(self, account, cid: str) -> list[str] | None:
        """``ExecIDs`` of container inspect (null when none run, as dockerd)."""
        return await self._execs.running_ids(account.login, cid) or None

    @app.handle_errors(Exception)
    def _error(self, request, failure: Failure) -> bytes:
        return render_failure(request, failure)

    @app.route("/<exec_id>/start", methods=["POST"])
    def start(self, request, exec_id: str):
        return ExecStartResource(self._execs, exec_id)

    @app.route("/<exec_id>/resize", methods=["POST"])
    async def resize(self, request, exec_id: str) -> bytes:
        height, width = tty_size(request)
        await self._execs.resize(request.sdcd_account, exec_id, height, width)
        request.setResponseCode(200)
        return b""

    @app.route("/<exec_id>/json", methods=["GET"])
    async def inspect(self, request, exec_id: str) -> bytes:
        record = await self._execs.get(request.sdcd_account, exec_id)
        return json_body(request, inspect_view(record))
