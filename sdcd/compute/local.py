"""``LocalCompute``: the compute node in this process (the embedded default; issue 7's
agent wraps the same class).

On disk, under ``root``::

    layers/                    the layer cache (one unpacked dir per diff_id)
    runtime/                   runc's state, conmon's exit/persist dirs
    containers/<id>/spec.json  the node spec, written first (a crashed create is finished
                               or undone from it)
                   state.json  the node state (survives sdcd restarts)
                   bundle/     config.json for runc; rootfs/ is the overlay mount
                   upper/ work/ files/ (hosts, resolv.conf, hostname)  container.log

Containers run under conmon, which outlives sdcd: on start the node re-attaches to the
running ones, records the exits it missed and applies restart policies to them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from sdcd import timestamps
from sdcd.compute import archive, etcfiles, network, rootfs, stats, stdio, users
from sdcd.compute import changes as changes_module
from sdcd.compute import spec as runtime_spec
from sdcd.compute.conmon import ExitStatus, Runtime, RuntimeFailure
from sdcd.compute.host import host_facts
from sdcd.compute.interface import ComputeError, ICompute
from sdcd.compute.layers import LayerCache
from sdcd.compute.logs import LogFollower
from sdcd.compute.threadwriter import ExportStopped, ThreadedWriter

BACKOFF_START = 0.1
BACKOFF_CAP = 60.0
#: A run this long resets the restart back-off (as dockerd does).
STABLE_RUN = 10.0
#: What a container id (a container dir's name) looks like.
_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class _Busy:
    """Marks an operation under way, so that others can wait for it to end."""

    def __init__(self) -> None:
        self._waiters: list[defer.Deferred] | None = None

    @property
    def busy(self) -> bool:
        return self._waiters is not None

    def begin(self) -> None:
        self._waiters = []

    def end(self) -> None:
        waiters, self._waiters = self._waiters or [], None
        for d in waiters:
            d.callback(None)

    def wait(self) -> defer.Deferred:
        """Fires when the operation has ended (at once when none is under way)."""
        if self._waiters is None:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d


class _Container:
    """What the node keeps in memory of one container."""

    def __init__(self, directory: Path, spec: dict, state: dict) -> None:
        self.dir = directory
        self.spec = spec
        self.state = state
        self.stopping = False
        self.restart_call = None
        self.watching = False
        #: An exit being recorded (runtime state deleted, policy applied), and a restart
        #: by policy under way: stop/start/remove wait for them rather than race them.
        self.exiting = _Busy()
        self.restarting = _Busy()

    async def settled(self) -> None:
        """Once no policy restart and no exit recording is under way."""
        while self.exiting.busy or self.restarting.busy:
            await self.restarting.wait()
            await self.exiting.wait()

    @property
    def id(self) -> str:
        return self.spec["id"]

    def save(self) -> None:
        _write_json(self.dir / "state.json", self.state)


def _initial_state(cid: str) -> dict:
    return {
        "id": cid,
        "status": "created",
        "pid": 0,
        "exit_code": 0,
        "oom_killed": False,
        "started_at": "",
        "finished_at": "",
        "restart_count": 0,
        "error": "",
        "manually_stopped": False,
        "backoff": 0,
    }


def _public(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ("manually_stopped", "backoff")}


@implementer(ICompute)
class LocalCompute:
    """One compute node, in process."""

    log = Logger()

    def __init__(
        self,
        reactor,
        root: Path,
        blob_path: Callable[[str], Path],
        bridge: network.BridgeConfig,
        dns: tuple[str, ...] = (),
        node_id: str = "",
        fetch_blob: Callable[[str, int | None], Any] | None = None,
    ) -> None:
        self._reactor = reactor
        self._root = root
        self._blob_path = blob_path
        #: An agent's node fetches the layers it lacks from the image store first.
        self._fetch_blob = fetch_blob
        self._bridge = bridge
        self._dns = list(dns)
        self.node_id = node_id or self._stored_node_id()
        self._layers = LayerCache(root / "layers", reactor)
        self._runtime = Runtime(root / "runtime", reactor)
        self._containers: dict[str, _Container] = {}
        self._listeners: list[Callable[[dict], None]] = []
        self._followers: dict[str, set] = {}
        #: The last tty size asked for per container: applied at every start (a resize
        #: sent before attach and start is not lost).
        self._sizes: dict[str, tuple[int, int]] = {}

    def _stored_node_id(self) -> str:
        self._root.mkdir(parents=True, exist_ok=True)
        path = self._root / "node-id"
        if not path.exists():
            path.write_text(str(uuid.uuid4()))
        return path.read_text().strip()

    # -- start-up ---------------------------------------------------------------------

    async def open(self) -> None:
        """Bring the node up: the bridge, then every container it holds, re-attached."""
        (self._root / "containers").mkdir(parents=True, exist_ok=True)
        await network.ensure_bridge(self._bridge)
        for directory in sorted((self._root / "containers").iterdir()):
            try:
                await self._recover(directory)
            except Exception:
                # One container the node cannot make sense of must not keep the node
                # (and every other container) down; it stays as recorded.
                self.log.failure("recovering container {d}", d=directory.name)

    async def _recover(self, directory: Path) -> None:
        try:
            spec = json.loads((directory / "spec.json").read_text())
        except (OSError, ValueError):
            self.log.warn("removing unreadable container dir {d}", d=str(directory))
            await self._purge(directory.name, directory)
            return
        try:
            state = json.loads((directory / "state.json").read_text())
        except (OSError, ValueError):
            state = _initial_state(spec["id"])
        c = _Container(directory, spec, state)
        self._containers[c.id] = c
        runtime = await self._runtime.state(c.id)
        live = (runtime or {}).get("status")
        if live in ("running", "paused"):
            # Under conmon still — also when the node went down before it recorded the
            # start (or the pause) that got it there.
            self._adopt(c, runtime)
            self._watch(c)
            return
        exit_status = self._runtime.exit_status(c.id)
        if state["status"] in ("running", "paused") or (live == "stopped" and exit_status):
            await self._exited(c, exit_status, recovering=True)
            return
        if live is not None:  # a start cut short before its process ran
            await self._runtime.delete(c.id)
        if state["status"] == "restarting":
            self._schedule_restart(c, 0)

    @staticmethod
    def _adopt(c: _Container, runtime: dict) -> None:
        """Make the recorded state say what runc says runs."""
        if c.state["status"] == runtime["status"] and c.state["pid"] == runtime.get("pid"):
            return
        if c.state["status"] not in ("running", "paused"):
            c.state.update(
                started_at=runtime.get("created") or timestamps.now(),
                manually_stopped=False,
                error="",
            )
        c.state.update(status=runtime["status"], pid=runtime.get("pid") or 0)
        c.save()

    # -- ICompute ---------------------------------------------------------------------

    async def info(self) -> dict:
        facts = host_facts()
        return {
            "id": self.node_id,
            "hostname": facts.hostname,
            "address": self._bridge.gateway,
            "subnet": self._bridge.subnet,
            "gateway": self._bridge.gateway,
            "ncpu": facts.ncpu,
            "memory": facts.mem_total,
            "disk": shutil.disk_usage(self._root).total,
        }

    def subscribe(self, listener: Callable[[dict], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[dict], None]) -> None:
        """Stop calling ``listener`` (the agent's subscription connection closed)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, c: _Container, action: str) -> None:
        event = {
            "id": c.id,
            "owner": c.spec.get("owner"),
            "action": action,
            "state": _public(c.state),
        }
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.failure("node event listener failed")

    def _get(self, cid: str) -> _Container:
        c = self._containers.get(cid)
        if c is None:
            raise ComputeError(f"No such container: {cid}", "not_found")
        return c

    async def prepare(self, spec: dict) -> None:
        cid = spec["id"]
        directory = self._root / "containers" / cid
        c = self._containers.get(cid)
        if c is None:
            await threads.deferToThread(self._make_dirs, directory, spec)
            c = _Container(directory, spec, _initial_state(cid))
            c.save()
            self._containers[cid] = c
        await self._mount(c)
        await threads.deferToThread(self._write_etc, c)
        await self._endpoint(c)

    def _write_etc(self, c: _Container) -> None:
        """hosts, resolv.conf, hostname (in a thread: reads the host's resolv.conf); the
        anonymous volumes' directories, filled from the image on first use as dockerd
        does."""
        resolvers = self._dns or etcfiles.host_resolvers()
        runtime_spec.write_files(c.spec, c.dir / "files", resolvers)
        for destination in c.spec.get("volumes") or ():
            target = runtime_spec.volume_dir(c.dir, destination)
            if target.exists():
                continue
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                source = users.resolve_in_root(c.dir / "bundle" / "rootfs", destination)
            except OSError:
                source = None
            if source is not None and source.is_dir():
                shutil.copytree(source, tmp, symlinks=True)
            else:
                tmp.mkdir(parents=True)
            os.replace(tmp, target)

    @staticmethod
    def _make_dirs(directory: Path, spec: dict) -> None:
        for sub in ("bundle/rootfs", "upper", "work", "files"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        _write_json(directory / "spec.json", spec)

    async def _mount(self, c: _Container) -> None:
        target = c.dir / "bundle" / "rootfs"
        # (st_dev differs from the parent's: one stat, not a parse of every mount)
        if os.path.ismount(target):
            return
        diff_ids = []
        for layer in c.spec["image_layers"]:
            if self._layers.has(layer["diff_id"]):
                blob = self._blob_path(layer["digest"])
            elif self._fetch_blob is not None:
                blob = await self._fetch_blob(layer["digest"], layer.get("size"))
            else:
                blob = self._blob_path(layer["digest"])
            await self._layers.ensure(layer["diff_id"], blob, layer["media_type"])
            diff_ids.append(layer["diff_id"])
        if diff_ids:
            cwd, lower = self._layers.lower_dirs(diff_ids)
        else:
            cwd, lower = c.dir, [Path("empty")]
            (c.dir / "empty").mkdir(exist_ok=True)
        try:
            await rootfs.mount_overlay(lower, c.dir / "upper", c.dir / "work", target, cwd=cwd)
        except rootfs.RootfsError as e:
            raise ComputeError(f"cannot mount the container's root filesystem: {e}") from None

    async def _endpoint(self, c: _Container) -> None:
        if await network.endpoint_exists(c.id):
            return
        net = c.spec["network"]
        await network.create_endpoint(c.id, self._bridge, net["ip"], net["mac"])

    def _bundle_config(self, c: _Container) -> dict:
        target = c.dir / "bundle" / "rootfs"
        try:
            uid, gid, extra, _home = users.resolve_user(target, c.spec.get("user") or "")
        except users.UserError as e:
            raise ComputeError(str(e), "invalid") from None
        try:
            return runtime_spec.runtime_spec(
                c.spec, target, network.netns_path(c.id), f"/sdcd/{c.id}",
                c.dir / "files", uid, gid, extra,
            )  # fmt: skip
        except ValueError as e:
            raise ComputeError(str(e), "invalid") from None

    async def start(self, cid: str) -> dict:
        c = self._get(cid)
        await c.settled()
        if c.state["status"] in ("running", "paused"):
            raise ComputeError(f"Container {cid} is already running", "conflict")
        self._cancel_restart(c)
        c.state["manually_stopped"] = False
        c.state["restart_count"] = 0
        c.state["backoff"] = 0
        return await self._run(c)

    async def _run(self, c: _Container) -> dict:
        """Start the process; the node state as of the start (a process that exits at
        once is reported by its "die" event, after "start")."""
        await self._mount(c)
        await self._endpoint(c)
        # The /etc files again: a create cut short may not have written them.
        await threads.deferToThread(self._write_etc, c)
        config = await threads.deferToThread(self._bundle_config, c)
        _write_json(c.dir / "bundle" / "config.json", config)
        log_path = None if c.spec.get("log_driver") == "none" else self._log_path(c)
        try:
            pid = await self._runtime.start(
                c.id,
                c.dir / "bundle",
                log_path,
                tty=bool(c.spec.get("tty")),
                open_stdin=bool(c.spec.get("open_stdin")),
                stdin_once=bool(c.spec.get("stdin_once")),
                size=self._sizes.get(c.id) or _tty_size(c.spec),
            )
        except RuntimeFailure as e:
            message = f"OCI runtime create failed: {e.message}: unknown"
            c.state.update(
                status="created" if c.state["status"] == "created" else "exited",
                exit_code=_exec_failure_code(e.message),
                error=message,
                pid=0,
            )
            c.save()
            for follower in list(self._followers.get(c.id, ())):
                follower.container_exited()
            raise ComputeError(message, "invalid") from None
        c.state.update(
            status="running", pid=pid, started_at=timestamps.now(), error="", oom_killed=False
        )
        c.save()
        started = _public(c.state)
        self._emit(c, "start")
        self._watch(c)
        return started

    def _watch(self, c: _Container) -> None:
        if c.watching:
            return
        c.watching = True
        d = defer.ensureDeferred(self._runtime.wait(c.id))

        def exited(status):
            c.watching = False
            return defer.ensureDeferred(self._exited(c, status))

        d.addCallback(exited)
        d.addErrback(lambda f: f.trap(defer.CancelledError))  # close() stops watching
        d.addErrback(lambda f: self.log.failure("watching {cid}", f, cid=c.id))

    async def _exited(self, c: _Container, status, recovering: bool = False) -> None:
        if c.id not in self._containers:
            return
        if c.exiting.busy:  # one exit, seen twice (the watcher and stop)
            await c.exiting.wait()
            return
        c.exiting.begin()
        try:
            await self._record_exit(c, status)
        finally:
            c.exiting.end()

    async def _record_exit(self, c: _Container, status) -> None:
        ran = 0.0
        if status is None:
            c.state.update(
                exit_code=255, error="container process lost", finished_at=timestamps.now()
            )
        else:
            c.state.update(
                exit_code=status.exit_code,
                oom_killed=status.oom_killed,
                finished_at=status.finished_at,
            )
            ran = _seconds_between(c.state.get("started_at"), status.finished_at)
        c.state.update(status="exited", pid=0)
        await self._runtime.delete(c.id)
        if c.state.get("oom_killed"):
            self._emit(c, "oom")
        restart = self._should_restart(c)
        if ran >= STABLE_RUN:
            c.state["backoff"] = 0
        if restart:
            c.state["status"] = "restarting"
        c.save()
        self._emit(c, "die")
        if restart:
            delay = min(BACKOFF_START * 2 ** c.state["backoff"], BACKOFF_CAP)
            c.state["backoff"] += 1
            c.save()
            self._schedule_restart(c, delay)
        for follower in list(self._followers.get(c.id, ())):
            follower.container_exited()

    def _should_restart(self, c: _Container) -> bool:
        if c.stopping or c.state.get("manually_stopped"):
            return False
        policy = c.spec.get("restart_policy") or {}
        name = policy.get("Name") or "no"
        if name in ("always", "unless-stopped"):
            return True
        if name == "on-failure":
            limit = policy.get("MaximumRetryCount") or 0
            failed = c.state["exit_code"] != 0
            return failed and (limit == 0 or c.state["restart_count"] < limit)
        return False

    def _schedule_restart(self, c: _Container, delay: float) -> None:
        self._cancel_restart(c)
        c.restart_call = self._reactor.callLater(delay, self._restart_now, c)

    def _cancel_restart(self, c: _Container) -> None:
        if c.restart_call is not None and c.restart_call.active():
            c.restart_call.cancel()
        c.restart_call = None

    def _restart_now(self, c: _Container) -> None:
        c.restart_call = None
        if c.id not in self._containers or c.state.get("manually_stopped"):
            return
        c.state["restart_count"] += 1
        c.restarting.begin()
        d = defer.ensureDeferred(self._run(c))

        def failed(f):
            self.log.failure("restarting {cid}", f, cid=c.id)
            c.state["status"] = "exited"
            c.save()
            self._emit(c, "die")

        d.addErrback(failed)
        d.addBoth(lambda _: c.restarting.end())

    async def stop(self, cid: str, timeout: float) -> dict:
        c = self._get(cid)
        c.state["manually_stopped"] = True
        self._cancel_restart(c)
        await c.settled()  # a policy restart under way: then stop what it started
        self._cancel_restart(c)
        if c.state["status"] == "restarting":
            c.state["status"] = "exited"
            c.save()
            return _public(c.state)
        if c.state["status"] not in ("running", "paused"):
            c.save()
            return _public(c.state)
        c.stopping = True
        try:
            status = await self._stop_process(c, timeout)
            if status is not None and c.state["status"] in ("running", "paused"):
                await self._exited(c, status)
            await c.settled()
        finally:
            c.stopping = False
        return _public(c.state)

    async def _stop_process(self, c: _Container, timeout: float) -> ExitStatus | None:
        """Stop signal, then SIGKILL after ``timeout``: the exit. None when the process
        exited by itself meanwhile (recording that exit removed its runtime state under
        our feet): then that recorded exit is the one to report."""
        try:
            if c.state["status"] == "paused":
                await self._runtime.resume(c.id)
            signal = c.spec.get("stop_signal") or "SIGTERM"
            return await self._runtime.stop(c.id, signal, timeout)
        except RuntimeFailure as e:
            await c.settled()
            if c.state["status"] in ("running", "paused"):
                raise ComputeError(e.message, e.kind) from None
            return None

    async def kill(self, cid: str, signal: str) -> None:
        c = self._get(cid)
        if c.state["status"] not in ("running", "paused"):
            raise ComputeError(f"Container {cid} is not running", "conflict")
        if signal in ("SIGKILL", "9", "KILL"):
            c.state["manually_stopped"] = True
            c.save()
        try:
            await self._runtime.kill(cid, signal)
        except RuntimeFailure as e:
            if e.kind != "invalid" and c.state["status"] not in ("running", "paused"):
                raise ComputeError(f"Container {cid} is not running", "conflict") from None
            raise ComputeError(e.message, e.kind) from None

    async def pause(self, cid: str) -> None:
        c = self._get(cid)
        await self._runtime.pause(cid)
        c.state["status"] = "paused"
        c.save()
        self._emit(c, "pause")

    async def unpause(self, cid: str) -> None:
        c = self._get(cid)
        await self._runtime.resume(cid)
        c.state["status"] = "running"
        c.save()
        self._emit(c, "unpause")

    async def top(self, cid: str, ps_args: str) -> dict:
        self._get(cid)
        try:
            titles, processes = await self._runtime.top(cid, ps_args)
        except RuntimeFailure as e:
            raise ComputeError(str(e), "failed") from None
        return {"Titles": titles, "Processes": processes}

    async def resize(self, cid: str, height: int, width: int) -> None:
        c = self._get(cid)
        if not c.spec.get("tty"):
            return
        self._sizes[cid] = (int(height), int(width))
        if c.state["status"] in ("running", "paused"):
            with contextlib.suppress(RuntimeFailure):  # exited meanwhile: kept for the next
                await self._runtime.resize(cid, height, width)

    async def attach(self, cid: str, options: dict, sink: stdio.IStreamSink) -> stdio.StdioSession:
        """Join the container's stdio: now when it runs, else from its next start (as
        dockerd: ``docker start -ai`` and attach-then-start rely on that)."""
        self._get(cid)
        try:
            return await stdio.attach(
                self._runtime,
                cid,
                sink,
                stdin=bool(options.get("stdin")),
                stdout=bool(options.get("stdout", True)),
                stderr=bool(options.get("stderr", True)),
                wait_start=True,
            )
        except RuntimeFailure as e:
            raise ComputeError(e.message, e.kind) from None

    async def exec_start(
        self, cid: str, exec_id: str, config: dict, sink: stdio.IStreamSink | None
    ) -> stdio.StdioSession:
        """Run an exec session; ``config``: ``args``, ``env``, ``user``, ``cwd``, ``tty``,
        ``stdin``/``stdout``/``stderr``, ``size`` ([height, width] or None). No sink:
        detached."""
        c = self._get(cid)
        if c.state["status"] == "paused":
            raise ComputeError(
                f"Container {cid} is paused, unpause the container before exec", "conflict"
            )
        if c.state["status"] != "running":
            raise ComputeError(f"Container {cid} is not running", "conflict")
        process = await threads.deferToThread(self._exec_process, c, config)
        # No size yet (clients before API 1.42 resize only after the start): the
        # container's own tty size, usually the same terminal, beats a 0x0 pty.
        size = config.get("size") or self._sizes.get(cid)
        try:
            return await stdio.exec_start(
                self._runtime,
                cid,
                exec_id,
                process,
                sink,
                stdin=bool(config.get("stdin")),
                stdout=bool(config.get("stdout", True)),
                stderr=bool(config.get("stderr", True)),
                size=(int(size[0]), int(size[1])) if size else None,
            )
        except RuntimeFailure as e:
            raise ComputeError(e.message, e.kind) from None

    def _exec_process(self, c: _Container, config: dict) -> dict:
        """The container's own OCI process (capabilities, rlimits, user...) with the
        exec's args, tty, cwd and user, and its env as dockerd builds it: the
        container's, then the exec's on top (TERM=xterm with a tty)."""
        config_json = json.loads((c.dir / "bundle" / "config.json").read_text())
        tty = bool(config.get("tty"))
        process = dict(config_json["process"], args=list(config["args"]), terminal=tty)
        env_spec = dict(c.spec, tty=tty, env=[*c.spec.get("env", []), *config.get("env", [])])
        process["env"] = runtime_spec.container_env(env_spec)
        if config.get("cwd"):
            process["cwd"] = config["cwd"]
        if config.get("user"):
            target = c.dir / "bundle" / "rootfs"
            try:
                uid, gid, extra, _home = users.resolve_user(target, config["user"])
            except users.UserError as e:
                raise ComputeError(str(e), "invalid") from None
            process["user"] = {"uid": uid, "gid": gid, "additionalGids": list(extra)}
        return process

    async def exec_resize(self, cid: str, exec_id: str, height: int, width: int) -> None:
        self._get(cid)
        try:
            await stdio.exec_resize(self._runtime, cid, exec_id, height, width)
        except RuntimeFailure as e:
            raise ComputeError(e.message, e.kind) from None

    async def exec_inspect(self, exec_id: str) -> dict:
        try:
            return stdio.exec_status(self._runtime, exec_id)
        except RuntimeFailure as e:
            raise ComputeError(e.message, e.kind) from None

    async def exec_wait(self, exec_id: str) -> int:
        try:
            return await stdio.exec_wait(self._runtime, exec_id)
        except RuntimeFailure as e:
            raise ComputeError(e.message, e.kind) from None

    async def remove(self, cid: str) -> None:
        if not _VALID_ID.match(cid):  # never a path outside containers/
            raise ComputeError(f"No such container: {cid}", "not_found")
        c = self._containers.get(cid)
        directory = c.dir if c else self._root / "containers" / cid
        if c is not None:
            c.state["manually_stopped"] = True
            self._cancel_restart(c)
            c.stopping = True
            await c.settled()
        await self._purge(cid, directory, c)

    async def _purge(self, cid: str, directory: Path, c: _Container | None = None) -> None:
        """Kill and forget the container; unmount before deleting its directory (never
        delete through a mounted rootfs)."""
        if not _VALID_ID.match(cid):  # not a container's dir: only its own contents
            await rootfs.unmount(directory / "bundle" / "rootfs")
            await threads.deferToThread(shutil.rmtree, directory, True)
            return
        state = await self._runtime.state(cid)
        if state is not None and state.get("status") in ("running", "paused", "created"):
            if state.get("status") == "paused":
                await self._runtime.resume(cid)
            await self._runtime.kill(cid, "SIGKILL", all_procs=True)
            await self._runtime.wait(cid)
        if c is not None:  # the watcher records the exit (and saves state.json) first
            await c.exiting.wait()
        await self._runtime.delete(cid)
        self._runtime.fail_start_hooks(cid, ComputeError(f"No such container: {cid}", "not_found"))
        for exec_id in self._runtime.exec_ids(cid):
            self._runtime.exec_remove(exec_id)
        self._sizes.pop(cid, None)
        self._containers.pop(cid, None)
        for follower in list(self._followers.pop(cid, ())):
            follower.container_exited()
        await rootfs.unmount(directory / "bundle" / "rootfs")
        await network.remove_endpoint(cid)
        await threads.deferToThread(shutil.rmtree, directory, True)

    async def state(self, cid: str) -> dict | None:
        c = self._containers.get(cid)
        return _public(c.state) if c else None

    async def list(self) -> dict:
        return {cid: _public(c.state) for cid, c in self._containers.items()}

    async def logs(self, cid: str, options: dict, consumer) -> None:
        c = self._get(cid)
        running = c.state["status"] in ("running", "paused", "restarting")
        follow = bool(options.get("follow")) and running and options.get("until") is None
        follower = LogFollower(
            self._log_path(c),
            self._reactor,
            since=options.get("since"),
            until=options.get("until"),
            tail=options.get("tail"),
            follow=follow,
        )
        followers = self._followers.setdefault(cid, set())
        followers.add(follower)
        try:
            await follower.run(consumer, stop_on_exit=True)
        finally:
            followers.discard(follower)

    @staticmethod
    def _log_path(c: _Container) -> Path:
        return c.dir / "container.log"

    async def stats(self, cid: str) -> dict:
        """One stats sample. Running and paused containers are read from their cgroups;
        any other state gets the zero sample dockerd sends for a container that does not
        run (also when it exits between the check and the read)."""
        c = self._get(cid)
        if c.state["status"] not in ("running", "paused"):
            return stats.empty_sample(cid)
        return await stats.sample(cid)

    async def changes(self, cid: str) -> list[dict]:
        """``docker diff``: the container's upper directory against its image's layers,
        leaving out the mount points the runtime made there (dockerd keeps those in its
        init layer)."""
        c = self._get(cid)
        lowers = await self._lowers(c)
        skip = [*_RUNTIME_MOUNTS, *c.spec.get("volumes", []), *c.spec.get("tmpfs", {})]
        return await threads.deferToThread(_changes, c.dir / "upper", lowers, skip)

    async def _lowers(self, c: _Container) -> list[Path]:
        diff_ids = [layer["diff_id"] for layer in c.spec["image_layers"]]
        if not diff_ids:
            return []
        cwd, names = self._layers.lower_dirs(diff_ids)
        return [cwd / name for name in names]

    async def commit_layer(self, cid: str) -> dict:
        """``docker commit``: the container's changes as a gzipped image layer, published
        in the blob store. {"digest", "diff_id", "size", "media_type"}."""
        c = self._get(cid)
        lowers = await self._lowers(c)
        skip = [*_RUNTIME_MOUNTS, *c.spec.get("volumes", []), *c.spec.get("tmpfs", {})]
        absent = _absent_mount_points(skip, lowers)
        return await threads.deferToThread(_write_layer, c.dir / "upper", absent, self._blob_path)

    async def archive_stat(self, cid: str, path: str) -> dict:
        """``docker cp``'s PathStat of ``path`` inside the container (running or not)."""
        c = self._get(cid)
        await self._mount(c)
        return await self._archive(archive.stat_path, c.dir / "bundle" / "rootfs", path)

    async def archive_get(self, cid: str, path: str, consumer) -> None:
        """``docker cp c:path -``: the tar, written to ``consumer`` with back-pressure."""
        c = self._get(cid)
        await self._mount(c)
        root = c.dir / "bundle" / "rootfs"
        await self._archive(archive.stat_path, root, path)  # 404 before any byte
        bridge = ThreadedWriter(self._reactor, consumer)
        try:
            await self._archive(archive.read_tar, root, path, bridge.write)
        except ExportStopped:
            pass
        finally:
            bridge.done()

    async def archive_put(self, cid: str, path: str, read, no_overwrite: bool) -> None:
        """``docker cp - c:path``: extract the tar ``read(n)`` gives (called in a thread)
        into the directory ``path``; checked whole before anything is written."""
        c = self._get(cid)
        await self._mount(c)
        root = c.dir / "bundle" / "rootfs"
        await self._archive(archive.write_tar, root, path, read, no_overwrite)

    @staticmethod
    async def _archive(function, *args):
        try:
            return await threads.deferToThread(function, *args)
        except archive.ArchiveError as e:
            raise ComputeError(e.message, e.kind) from None
        except FileNotFoundError:
            raise ComputeError(
                f"Could not find the file {args[1]} in container", "not_found"
            ) from None

    async def export(self, cid: str, consumer) -> None:
        """``docker export``: a tar of the container's root as mounted, written to
        ``consumer`` (an IConsumer) from a thread, a chunk at a time: the thread waits
        while the consumer has paused us, and stops if it stops us."""
        c = self._get(cid)
        await self._mount(c)
        bridge = ThreadedWriter(self._reactor, consumer)
        how = "complete"
        try:
            await threads.deferToThread(
                changes_module.export_tar, c.dir / "bundle" / "rootfs", bridge.write
            )
        except ExportStopped:
            how = "stopped, the client went away"
        except defer.CancelledError:  # the request was cancelled with its connection
            how = "stopped, the client went away"
            raise
        finally:
            self.log.info("export of {cid} ended: {how}", cid=cid[:12], how=how)
            bridge.done()

    async def disk_usage(self, cid: str) -> dict:
        c = self._get(cid)
        rw = await threads.deferToThread(_du, c.dir / "upper")
        layers = 0
        for layer in c.spec["image_layers"]:
            layers += await threads.deferToThread(_du, self._layers.path(layer["diff_id"]))
        return {"rw": rw, "rootfs": rw + layers}

    async def prune_layers(self) -> list[str]:
        in_use = {
            layer["diff_id"] for c in self._containers.values() for layer in c.spec["image_layers"]
        }
        return await self._layers.prune(in_use)

    async def close(self) -> None:
        """Stop timers and stop watching exits; the containers keep running under conmon
        (a node opened later over the same root picks them up). A closed node must not
        act on them any more: it would record exits and restart containers twice."""
        for c in self._containers.values():
            self._cancel_restart(c)
        self._runtime.close()


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _seconds_between(start: str | None, end: str | None) -> float:
    try:
        return timestamps.parse(end) - timestamps.parse(start)
    except (TypeError, ValueError, AttributeError):
        return 0.0


#: Mount points runc makes in the container's upper directory when the image lacks them.
_RUNTIME_MOUNTS = ("/proc", "/sys", "/dev", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


def _absent_mount_points(skip: list[str], lowers: list[Path]) -> list[str]:
    """Mount points the image lacked (runc made them): mount points the image already
    had stay in a diff or a layer (a change to them is real)."""
    return [p for p in skip if not any((lower / p.lstrip("/")).exists() for lower in lowers)]


def _changes(upper: Path, lowers: list[Path], skip: list[str]) -> list[dict]:
    return changes_module.changes(upper, lowers, _absent_mount_points(skip, lowers))


def _write_layer(upper: Path, skip: list[str], blob_path) -> dict:
    """Gzip the layer tar of ``upper`` into a temporary file beside the blob store,
    hashing the tar (diff_id) and the gzip (digest) as they are written; then publish it
    under its digest (atomic rename after fsync)."""
    directory = blob_path("sha256:" + "0" * 64).parent.parent / "tmp"  # cleared at start
    directory.mkdir(parents=True, exist_ok=True)
    diff = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="layer-")
    try:
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingFile(raw)
            with gzip.GzipFile(fileobj=hashing, mode="wb", compresslevel=1, mtime=0) as gz:

                def write(chunk: bytes) -> None:
                    diff.update(chunk)
                    gz.write(chunk)

                changes_module.layer_tar(upper, write, skip)
            raw.flush()
            os.fsync(raw.fileno())
        digest = "sha256:" + hashing.sha.hexdigest()
        os.replace(tmp, blob_path(digest))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return {
        "digest": digest,
        "diff_id": "sha256:" + diff.hexdigest(),
        "size": hashing.size,
        "media_type": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }


class _HashingFile:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()


def _tty_size(spec: dict) -> tuple[int, int] | None:
    """The spec's ``tty_size`` (the client's console size at create), if it has one."""
    size = spec.get("tty_size")
    return (int(size[0]), int(size[1])) if size else None


def _exec_failure_code(message: str) -> int:
    """dockerd's exit codes for a process that could not start."""
    if "not found" in message or "no such file" in message.lower():
        return 127
    if "permission denied" in message.lower():
        return 126
    return 128
