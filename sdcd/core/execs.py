"""``docker exec``: what create/start/resize/inspect of an exec session decide.

Redis keeps every exec's record (config, pid, running, exit code) until its container is
removed, so ``exec inspect`` answers after the process ended and after an sdcd restart;
the node keeps the process's own exit status on disk, and a record that still says
"running" is checked against the node when it is read (its watcher may have died with an
earlier sdcd process).
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sdcd import timestamps
from sdcd.compute.interface import ComputeError
from sdcd.core.containers import ContainerService, compute_error
from sdcd.core.errors import Conflict, InvalidArgument, NotFound
from sdcd.store.interface import NotFound as StoreNotFound
from sdcd.store.records import Account, ContainerRecord, ExecRecord

#: Exec records a container keeps: beyond this many, the oldest that do not run (ended,
#: or never started) are forgotten (a health-check style loop of execs, or a client that
#: creates and never starts, must not grow Redis without bound).
MAX_KEPT_PER_CONTAINER = 256
#: dockerd's exit code for an exec whose process could not be started.
CANNOT_START = 126


def exec_config(body: Any) -> dict:
    """The exec's config from a ``POST /containers/{id}/exec`` body, checked: what the
    node will be asked to run, and what ``exec inspect`` shows."""
    if not isinstance(body, dict):
        raise InvalidArgument("exec config must be a JSON object")
    cmd = body.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    if not cmd:
        raise InvalidArgument("No exec command specified")
    env = body.get("Env") or []
    for name, value in (("Cmd", cmd), ("Env", env)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{name} must be a list of strings")
    if body.get("Privileged"):
        raise InvalidArgument("privileged exec is not supported: no container runs privileged")
    user, workdir = body.get("User") or "", body.get("WorkingDir") or ""
    if not isinstance(user, str) or not isinstance(workdir, str):
        raise InvalidArgument("User and WorkingDir must be strings")
    if workdir and not workdir.startswith("/"):
        raise InvalidArgument(
            f"the working directory '{workdir}' is invalid, it needs to be an absolute path"
        )
    return {
        "Cmd": cmd,
        "Env": env,
        "User": user,
        "WorkingDir": workdir,
        "Tty": bool(body.get("Tty")),
        "AttachStdin": bool(body.get("AttachStdin")),
        "AttachStdout": bool(body.get("AttachStdout")),
        "AttachStderr": bool(body.get("AttachStderr")),
        "DetachKeys": body.get("DetachKeys") or "",
        "Privileged": False,
    }


def _check_running(record: ContainerRecord, status: str) -> None:
    if status == "paused":
        raise Conflict(f"Container {record.id} is paused, unpause the container before exec")
    if status == "restarting":
        raise Conflict(f"Container {record.id} is restarting, wait until the container is running")
    if status != "running":
        raise Conflict(f"Container {record.id} is not running")


class ExecService:
    """Exec sessions of every account, on the node of their container."""

    log = Logger()

    def __init__(self, store, containers: ContainerService) -> None:
        self._store = store
        self._containers = containers
        #: exec id -> Deferred fired once the process runs (or failed to): a resize that
        #: races the start waits for it instead of failing.
        self._starting: dict[str, defer.Deferred] = {}
        #: exec id -> Deferred fired with the updated record once the exit is recorded.
        self._exits: dict[str, defer.Deferred] = {}

    async def create(self, account: Account, ref: str, body: Any) -> str:
        config = exec_config(body)
        record, state = await self._containers.get(account, ref)
        _check_running(record, state.status)
        exec_id = secrets.token_hex(32)
        await self._forget_finished(account.login, record.id)
        try:
            await self._store.create_exec(
                ExecRecord(
                    id=exec_id,
                    login=account.login,
                    container=record.id,
                    created=timestamps.now(),
                    config=config,
                )
            )
        except StoreNotFound:
            raise NotFound(f"No such container: {ref}") from None
        action = "exec_create: " + " ".join(config["Cmd"])
        self._containers.publish(record, action, {"execID": exec_id})
        return exec_id

    async def _forget_finished(self, login: str, cid: str) -> None:
        if await self._store.count_execs(login, cid) < MAX_KEPT_PER_CONTAINER:
            return
        kept = await self._store.container_execs(login, cid)
        idle = [e for e in kept if not e.running and e.id not in self._starting]
        idle.sort(key=lambda e: timestamps.parse(e.created))
        excess = len(kept) - MAX_KEPT_PER_CONTAINER + 1
        await self._store.forget_execs(login, cid, [e.id for e in idle[:excess]])

    async def get(self, account: Account, exec_id: str) -> ExecRecord:
        """The account's exec (exact id only, as dockerd), brought up to date with the
        node when it still says running."""
        record = await self._store.get_exec(account.login, exec_id)
        if record is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        if record.started and record.exit_code is None and exec_id not in self._starting:
            record = await self._refresh(record)
        return record

    async def _refresh(self, record: ExecRecord) -> ExecRecord:
        try:
            compute = await self._node(record)
            node = await compute.exec_inspect(record.id)
        except ComputeError:
            return record
        if node.get("exit_code") is None:
            return record
        return await self._finished(record, node["exit_code"], publish=False)

    async def running_ids(self, login: str, cid: str) -> list[str]:
        """The container's execs that run now (``ExecIDs`` in container inspect)."""
        return [e.id for e in await self._store.container_execs(login, cid) if e.running]

    async def check_start(self, account: Account, exec_id: str) -> ExecRecord:
        """Whether the exec may start now (404/409 before the connection is taken over)."""
        if exec_id in self._starting:
            raise Conflict(f"Error: Exec command {exec_id} is already running")
        return await self._check_start(account, exec_id)

    async def _check_start(self, account: Account, exec_id: str) -> ExecRecord:
        record = await self.get(account, exec_id)
        if record.exit_code is not None:
            raise Conflict(f"Error: Exec command {exec_id} has already run")
        if record.started:
            raise Conflict(f"Error: Exec command {exec_id} is already running")
        container, state = await self._containers.get(account, record.container)
        _check_running(container, state.status)
        return record

    async def start(
        self, account: Account, exec_id: str, sink, size: tuple[int, int] | None = None
    ):
        """Run the exec: attached to ``sink`` (an IStreamSink), or detached with None.
        Returns the node's IStdioSession; ``exited(exec_id)`` fires once its exit code
        is recorded."""
        if exec_id in self._starting:
            raise Conflict(f"Error: Exec command {exec_id} is already running")
        # From here a resize waits for the start (rather than writing a size to the
        # record that this start has already read).
        self._starting[exec_id] = starting = defer.Deferred()
        try:
            record = await self._check_start(account, exec_id)
            self._exits[exec_id] = defer.Deferred()
            session = await self._run(record, sink, size)
        finally:
            del self._starting[exec_id]
            starting.callback(None)
        return session

    async def _run(self, record: ExecRecord, sink, size):
        config = record.config
        record = await self._save(record, started=True)
        node_config = {
            "args": config["Cmd"],
            "env": config["Env"],
            "user": config["User"],
            "cwd": config["WorkingDir"],
            "tty": config["Tty"],
            "stdin": config["AttachStdin"],
            "stdout": config["AttachStdout"],
            "stderr": config["AttachStderr"],
            "size": list(size or record.size or ()) or None,
        }
        try:
            compute = await self._node(record)
            session = await compute.exec_start(record.container, record.id, node_config, sink)
        except ComputeError as e:
            code = await self._node_exit_code(record)
            await self._finished(record, CANNOT_START if code is None else code)
            raise compute_error(e, record.container) from None
        record = await self._save(record, running=True, pid=int(getattr(session, "pid", 0) or 0))
        await self._publish(record, "exec_start: " + " ".join(config["Cmd"]))
        d = defer.ensureDeferred(self._watch(record))
        d.addErrback(lambda f: self.log.failure("watching exec {id}", f, id=record.id))
        return session

    async def _node(self, record: ExecRecord):
        """The ICompute of the exec's container's node (a container gone meanwhile is
        the node's "not found", as the node would say)."""
        try:
            return await self._containers.compute_for(record.login, record.container)
        except NotFound as e:
            raise ComputeError(str(e), "not_found") from None

    async def _node_exit_code(self, record: ExecRecord) -> int | None:
        try:
            compute = await self._node(record)
            return (await compute.exec_inspect(record.id)).get("exit_code")
        except ComputeError:
            return None

    async def _watch(self, record: ExecRecord) -> None:
        try:
            compute = await self._node(record)
            code = await compute.exec_wait(record.id)
        except ComputeError:  # the container (and its execs) went away
            code = None
        if code is None:
            self._exits.pop(record.id, defer.Deferred()).callback(record)
            return
        await self._finished(record, code)

    async def _finished(self, record: ExecRecord, code: int, publish: bool = True) -> ExecRecord:
        record = await self._save(record, running=False, exit_code=int(code))
        if publish:
            await self._publish(record, "exec_die", {"exitCode": str(code)})
        waiting = self._exits.pop(record.id, None)
        if waiting is not None:
            waiting.callback(record)
        return record

    def exited(self, exec_id: str) -> defer.Deferred:
        """Fires with the record once the exec's exit is recorded (at once if it is)."""
        waiting = self._exits.get(exec_id)
        if waiting is None:
            return defer.succeed(None)
        mine: defer.Deferred = defer.Deferred()

        def relay(value):
            mine.callback(value)
            return value

        waiting.addBoth(relay)
        return mine

    async def resize(self, account: Account, exec_id: str, height: int, width: int) -> None:
        """A resize before start is kept for the start; one racing the start waits for
        the process to run."""
        if exec_id in self._starting:
            mine: defer.Deferred = defer.Deferred()
            self._starting[exec_id].addBoth(lambda v: (mine.callback(None), v)[1])
            await mine
        record = await self.get(account, exec_id)
        if not record.started:
            await self._save(record, size=(height, width))
            return
        if not record.config["Tty"]:
            return
        if record.exit_code is not None:
            raise Conflict(f"Exec {exec_id} is not running")
        try:
            compute = await self._node(record)
            await compute.exec_resize(record.container, exec_id, height, width)
        except ComputeError as e:
            raise compute_error(e, record.container) from None

    async def _save(self, record: ExecRecord, **changes) -> ExecRecord:
        updated = ExecRecord(**{**record.to_json(), **changes})
        await self._store.update_exec(updated)
        return updated

    async def _publish(self, record: ExecRecord, action: str, extra: dict | None = None) -> None:
        found = await self._store.get_container(record.login, record.container)
        if found:
            self._containers.publish(found[0], action, {"execID": record.id, **(extra or {})})
