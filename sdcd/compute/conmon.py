"""Containers under runc, each supervised by its own conmon — the pair podman uses.

Why conmon: it double-forks and calls ``setsid``, so it is neither our child nor in our
process group; it holds the container's stdio, writes the log, and when the container
exits writes the exit code to a file. The container, its log and its exit code therefore
outlive sdcd (a stop, a crash, ``kill -9``); a later sdcd process picks them up from
the files below.

Layout under ``state_dir`` (one per node)::

    runc/                 runc's --root (its state.json per container)
    exits/<cid>           conmon's --exit-dir: the exit code, written last (atomically, by
                          rename) once the log is drained — what ``wait`` watches with inotify
    ctr/<cid>/            conmon's --persist-dir and our per-container files:
        exit, oom         conmon: the exit code again; ``oom`` exists when the memory
                          cgroup OOM-killed a process of the container
        conmon.pid, pid   conmon's pid (-P) and the container's init pid (-p)
        runc.log          runc create's JSON log (the reason a create failed)
        meta.json         bundle, log path, tty, stdin mode — to find the bundle files
                          after a restart
    exec/<exec id>/       one ``conmon --exec`` session: it is that conmon's bundle (attach,
                          ctl, winsz) and persist dir (``exit``); ``process.json`` (the OCI
                          process), ``pid`` (runc exec's pid file), ``conmon.pid``,
                          ``runc.log`` and our ``meta.json`` (container id, tty, stdin)

The socket dir (``--socket-dir-path``) is **not** under ``state_dir``: a unix socket path
must fit in 108 bytes and state dirs can be long, so it is ``<socket_root>/<16 hex of
sha256(state_dir)>/`` (``/run/sdcd/...`` by default, 0700). conmon makes ``<id>`` there a
symlink to the bundle (or exec dir), so ``<sock dir>/<id>/attach`` is a short path.

conmon itself puts three files in the **bundle** directory: ``attach`` (a SOCK_SEQPACKET
listening socket, see ``sdcd.compute.stdio`` for its protocol), ``ctl`` (a fifo taking
``"<type> <height> <width>\\n"`` lines: type 1 resizes the tty, 2 reopens the log) and
``winsz`` (a fifo conmon uses internally). ``delete`` removes them.

The start protocol: conmon gets the write end of a pipe as fd 3 (``_OCI_SYNCPIPE``) and
writes one JSON line once ``runc create`` is done: ``{"data": <pid>}``, or
``{"data": -1, "message": <runc's stderr>}`` when create failed. Then ``runc start``
runs the process. With ``conmon_cgroup`` set, conmon also gets a start pipe as fd 4
(``_OCI_STARTPIPE``) and waits on it until we have moved it into that cgroup — so a
service manager stopping sdcd's cgroup does not take conmon with it. Between ``runc
create`` and ``runc start`` the attach socket already listens: sessions waiting for the
start (``on_next_start``) connect then, so they miss none of the output.

Stdin modes (conmon closes the container's stdin when an attach socket it reads stdin
from reaches EOF — a half-close or a close — unless ``--leave-stdin-open``):

* no tty, ``open_stdin`` and ``stdin_once``: ``-i``; the first attached client that ends
  its stdin (or goes away) closes the container's stdin (``docker run -i``).
* no tty, ``open_stdin`` only: ``-i --leave-stdin-open``; stdin stays open for the next.
* tty: ``-t`` and never ``-i``; conmon writes attach input to the pty master whether or
  not ``-i`` was given, and ``-i`` would make the first detach close that fd for good.

Exec (``exec_launch``), as podman drives it: ``conmon --exec --exec-attach
--exec-process-spec <file>`` with ``-c <cid> -u <exec id> -b <exec dir>``; three pipes:
the sync pipe (fd 3) says ``{"data": <pid>}`` once ``runc exec --detach`` has run (or
``{"data": <0, "message": ...}``) and later ``{"data": <exit code>}``; conmon writes
``{"data": 0}`` on the attach pipe (fd 5, ``_OCI_ATTACHPIPE``) once its attach socket
listens, then its child waits for a byte on the start pipe (fd 4, ``_OCI_STARTPIPE``;
conmon reads that pipe twice: once at start-up, once before running ``runc exec``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal as signal_module
import struct
import termios
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

import attrs
from twisted.internet import defer, protocol, task, threads
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from sdcd.compute.interface import ComputeError
from sdcd.compute.logs import rfc3339nano

_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
_PS = shutil.which("ps") or "/bin/ps"
_CID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_CREATE_TIMEOUT = 120.0
_POLL_INTERVAL = 0.5
#: With inotify watching the exit dir the poll only catches a conmon that died without
#: writing an exit file: it can be rare (each poll reads files per running container).
_POLL_INTERVAL_WITH_INOTIFY = 5.0
#: The exit code reported for a container whose conmon died without writing one.
LOST_EXIT_CODE = 255
#: conmon's ctl fifo message types (conmon's config.h).
_CTL_RESIZE = 1
#: Where the per-node socket dirs go (see the module docstring).
SOCKET_ROOT = Path("/run/sdcd")
_EXEC_POLL_INTERVAL = 0.1
_log = Logger(namespace="sdcd.compute.conmon")


class RuntimeFailure(ComputeError):
    """runc or conmon refused or failed; ``message`` carries runc's own words (for example
    ``runc create failed: unable to start container process: exec: "nope": executable
    file not found in $PATH``) so the core can shape dockerd's reply around them."""


@attrs.frozen
class ExitStatus:
    """How a container's process ended. ``finished_at`` is when conmon wrote the exit file
    (RFC 3339 with nanoseconds, UTC, trailing zeros trimmed as Go prints it)."""

    exit_code: int
    oom_killed: bool
    finished_at: str


def _kind_of(message: str) -> str:
    """Map runc's wording to ComputeError kinds, so callers need not parse messages."""
    lowered = message.lower()
    if "does not exist" in lowered:
        return "not_found"
    if "executable file not found" in lowered or "unable to start container process" in lowered:
        return "invalid"
    if "not running" in lowered or "not paused" in lowered or "already" in lowered:
        return "conflict"
    if "unknown signal" in lowered or "invalid signal" in lowered:
        return "invalid"
    return "failed"


def _runc_message(stderr: bytes) -> str:
    """runc's error text from its stderr (JSON log lines with --log-format=json)."""
    messages = []
    for raw in stderr.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            messages.append(line)
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "fatal"):
            messages.append(str(record.get("msg", "")))
    return "; ".join(m for m in messages if m) or stderr.decode("utf-8", "replace").strip()


def _signal_arg(sig: str | int) -> str:
    """runc kill's signal argument: a number, or a name with or without ``SIG``."""
    if isinstance(sig, int):
        return str(sig)
    text = sig.strip().upper()
    if not text:
        raise RuntimeFailure("invalid signal: empty", kind="invalid")
    if text.isdigit():
        return text
    name = text if text.startswith("SIG") else "SIG" + text
    if not hasattr(signal_module.Signals, name):
        raise RuntimeFailure(f"Invalid signal: {sig}", kind="invalid")
    return name


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


class _ConmonLauncher(protocol.ProcessProtocol):
    """Talks to the conmon we spawn until it has daemonised: collects its stderr and the
    first line of the sync pipe (fd 3). ``synced`` fires with that line parsed (or None on
    EOF); ``ended`` fires with the launcher's exit code once its pipes are closed."""

    def __init__(self) -> None:
        self.synced: defer.Deferred[dict | None] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._sync = b""
        self.stderr = b""

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            self._sync += data
            if b"\n" in self._sync and not self.synced.called:
                line = self._sync.split(b"\n", 1)[0]
                # conmon keeps the pipe open for its whole life; we are done with it.
                self.transport.closeChildFD(3)
                self.synced.callback(self._parse(line))
        elif childFD in (1, 2):
            self.stderr += data

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 3 and not self.synced.called:
            self.synced.callback(self._parse(self._sync) if self._sync.strip() else None)

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else code)

    @staticmethod
    def _parse(line: bytes) -> dict | None:
        try:
            value = json.loads(line)
        except ValueError:
            return {"data": -1, "message": line.decode("utf-8", "replace")}
        return value if isinstance(value, dict) else None


@attrs.frozen
class _StdinMode:
    """A container's stdin set-up, turned into conmon flags (module docstring)."""

    tty: bool
    open_stdin: bool
    stdin_once: bool

    @property
    def closes_stdin(self) -> bool:
        return self.open_stdin and not self.tty and self.stdin_once

    def conmon_flags(self) -> list[str]:
        if self.tty:
            return ["-t"]
        if not self.open_stdin:
            return []
        return ["-i"] if self.stdin_once else ["-i", "--leave-stdin-open"]


class StartHook(Protocol):
    """What ``Runtime.on_next_start`` calls (an attach session waiting for a start)."""

    def created(self) -> Awaitable[None]: ...

    def failed(self, error: Exception) -> None: ...


class _ExecLauncher(protocol.ProcessProtocol):
    """The pipes of a ``conmon --exec --exec-attach``: ``ready`` fires with the attach
    pipe's message (the attach socket listens), ``started`` with the sync pipe's first
    message (pid, or runc's error), ``exited`` with its second (the exit code) or None
    when conmon went away without one."""

    def __init__(self) -> None:
        self.ready: defer.Deferred[dict | None] = defer.Deferred()
        self.started: defer.Deferred[dict | None] = defer.Deferred()
        self.exited: defer.Deferred[dict | None] = defer.Deferred()
        self._partial = {3: b"", 5: b""}
        self.stderr = b""

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in self._partial:
            *lines, self._partial[childFD] = (self._partial[childFD] + data).split(b"\n")
            for line in lines:
                self._message(childFD, _ConmonLauncher._parse(line))
        elif len(self.stderr) < 65536:
            self.stderr += data

    def _message(self, fd: int, message: dict | None) -> None:
        order = [self.ready] if fd == 5 else [self.started, self.exited]
        for d in order:
            if not d.called:
                d.callback(message)
                return

    def childConnectionLost(self, childFD: int) -> None:
        if childFD in self._partial:
            rest = self._partial[childFD].strip()
            if rest:
                self._message(childFD, _ConmonLauncher._parse(rest))
            self._partial[childFD] = b""
            for d in [self.ready] if childFD == 5 else [self.started, self.exited]:
                if not d.called:
                    d.callback(None)

    def processEnded(self, reason: Any) -> None:
        for d in (self.ready, self.started, self.exited):
            if not d.called:
                d.callback(None)


class ExecLaunch:
    """A ``conmon --exec`` whose attach socket listens and whose process waits for
    ``start()`` — connect to ``socket_path`` first to miss none of its output."""

    def __init__(self, runtime: Runtime, exec_id: str, transport: Any, launcher: _ExecLauncher):
        self.runtime = runtime
        self.exec_id = exec_id
        self.socket_path = runtime.sock_dir / exec_id / "attach"
        self._transport = transport
        self._launcher = launcher
        launcher.exited.addCallback(lambda _: runtime._exec_ended(exec_id))

    async def start(self) -> int:
        """Let conmon run ``runc exec``; return the process's pid. When runc cannot run
        it, record the exit code dockerd gives (126, or 127 for no such executable) and
        raise RuntimeFailure with runc's words."""
        self._transport.writeToChild(4, b"0")
        self._transport.closeChildFD(4)
        self._transport.closeChildFD(5)
        try:
            message = await _with_timeout(
                self.runtime.reactor, self._launcher.started, _CREATE_TIMEOUT
            )
        except defer.TimeoutError:
            self.abort()
            raise RuntimeFailure(f"exec {self.exec_id} did not start in time") from None
        pid = (message or {}).get("data")
        if isinstance(pid, int) and pid > 0:
            self.runtime._exec_launching.discard(self.exec_id)
            return pid
        directory = self.runtime.exec_dir(self.exec_id)
        text = str(
            (message or {}).get("message")
            or Runtime._runc_log_error(directory)
            or self._launcher.stderr.decode("utf-8", "replace").strip()
            or "conmon failed"
        ).strip()
        lowered = text.lower()
        kind = "conflict" if "stopped" in lowered or "not running" in lowered else "invalid"
        code = 127 if "not found" in lowered or "no such file" in lowered else 126
        with contextlib.suppress(OSError):
            _write_atomic(directory / "exit", str(code))
        self.runtime._exec_ended(self.exec_id)
        raise RuntimeFailure(text, kind=kind)

    def abort(self) -> None:
        """Give up before ``start()``: kill this conmon (an EOF on the start pipe would
        run the process anyway) and record the exec as never having run (exit 126)."""
        directory = self.runtime.exec_dir(self.exec_id)
        pid = _live_conmon(directory / "conmon.pid", self.exec_id)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_module.SIGKILL)
        with contextlib.suppress(OSError):
            self._transport.closeChildFD(4)
        with contextlib.suppress(OSError):
            if not (directory / "exit").exists():
                _write_atomic(directory / "exit", "126")
        self.runtime._exec_ended(self.exec_id)


class Runtime:
    """Starts, watches and controls containers on this node (runc + conmon)."""

    def __init__(
        self,
        state_dir: Path,
        reactor: Any,
        runc: str = "/usr/sbin/runc",
        conmon: str = "/usr/bin/conmon",
        conmon_cgroup: str | None = None,
        socket_root: Path = SOCKET_ROOT,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.reactor = reactor
        self.runc = runc
        self.conmon = conmon
        #: When set (e.g. "/sdcd/conmon"), every conmon is moved into this cgroup in every
        #: mounted hierarchy before it forks the runtime — out of sdcd's service cgroup.
        self.conmon_cgroup = conmon_cgroup
        self.runc_root = self.state_dir / "runc"
        self.exit_dir = self.state_dir / "exits"
        self.ctr_dir = self.state_dir / "ctr"
        self.exec_root = self.state_dir / "exec"
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
        self.sock_dir = Path(socket_root) / digest
        for d in (self.runc_root, self.exit_dir, self.ctr_dir, self.exec_root):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._ensure_socket_dir()
        self._waiters: dict[str, list[defer.Deferred[ExitStatus]]] = {}
        #: Sessions to connect once conmon has created the container, before runc start.
        self._start_hooks: dict[str, list[StartHook]] = {}
        #: Exec sessions this process launched: their waiters, fired from the sync pipe.
        self._exec_waiters: dict[str, list[defer.Deferred[int]]] = {}
        #: Exec sessions between launch and start (no pid files yet: not "lost").
        self._exec_launching: set[str] = set()
        #: Containers between their files being reset and conmon's pidfile: not "lost".
        self._starting: set[str] = set()
        self._poller = task.LoopingCall(self._poll)
        self._poller.clock = reactor
        self._polling = False
        self._notifier = self._start_inotify()

    # -- paths ---------------------------------------------------------------------------

    def persist_dir(self, cid: str) -> Path:
        """The container's conmon persist dir (exit, oom, pidfiles, meta)."""
        return self.ctr_dir / _check_cid(cid)

    def attach_socket_path(self, cid: str) -> Path:
        """conmon's attach socket by its short path (``<sock dir>/<cid>/attach``) — or,
        for a container an older sdcd started with another socket dir, in its bundle (a
        long path: ``sdcd.compute.stdio`` connects to those through /proc/self/fd)."""
        short = self.sock_dir / _check_cid(cid) / "attach"
        if not os.path.lexists(short.parent):
            bundle = self._meta(cid).get("bundle")
            if bundle and (Path(bundle) / "attach").exists():
                return Path(bundle) / "attach"
        return short

    def stdio_config(self, cid: str) -> dict:
        """How the container's stdio was set up by its last start: ``tty``,
        ``open_stdin``, ``stdin_once`` and ``closes_stdin`` (whether conmon closes the
        container's stdin when an attach socket reaches EOF). Empty when unknown."""
        meta = self._meta(_check_cid(cid))
        if not meta:
            return {}
        tty, open_stdin = bool(meta.get("tty")), bool(meta.get("open_stdin"))
        # Containers started before stdin modes were recorded ran with a bare -i.
        closes = meta.get("closes_stdin", open_stdin)
        return {
            "tty": tty,
            "open_stdin": open_stdin,
            "stdin_once": bool(meta.get("stdin_once")),
            "closes_stdin": bool(closes),
        }

    def is_running(self, cid: str) -> bool:
        """Whether the container's conmon lives and has not recorded an exit (cheap: no
        runc call). A paused container counts as running."""
        return self.conmon_pid(cid) is not None and self.exit_status(cid) is None

    def ctl_fifo_path(self, cid: str) -> Path | None:
        """conmon's control fifo, in the bundle; None when the bundle is unknown."""
        bundle = self._meta(cid).get("bundle")
        return Path(bundle) / "ctl" if bundle else None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(
        self,
        cid: str,
        bundle: Path,
        log_path: Path | None,
        tty: bool,
        open_stdin: bool,
        log_max: int = -1,
        stdin_once: bool = False,
        size: tuple[int, int] | None = None,
    ) -> int:
        """Create the container under a new conmon and start its process; return its pid.

        A stale runc container of that id (created or stopped) is deleted first; a
        running or paused one is a conflict. When runc cannot create the process (no
        such executable, bad config) this raises RuntimeFailure with runc's message and
        leaves no runc state behind. ``stdin_once``: see the module docstring. ``size``
        (height, width) is the tty's size before the process runs. Sessions waiting in
        ``on_next_start`` connect between create and start."""
        _check_cid(cid)
        bundle = Path(bundle).absolute()
        if cid in self._starting:
            raise RuntimeFailure(f"container {cid} is already starting", kind="conflict")
        self._starting.add(cid)
        mode = _StdinMode(tty, open_stdin, stdin_once)
        try:
            await self._clear_stale(cid)
            persist = self._reset_files(cid, bundle, log_path, mode)
            pid = await self._create(cid, bundle, persist, log_path, mode, log_max)
        except Exception as e:
            self.fail_start_hooks(cid, e)
            raise
        finally:
            self._starting.discard(cid)
        if size is not None and tty:
            # conmon applies a ctl-fifo resize when its loop gets to it, which can be
            # after ``runc start`` has run the process: set the size on the created
            # process's own tty now, and tell conmon too.
            _set_tty_size(pid, *size)
            with contextlib.suppress(RuntimeFailure):
                await self.resize(cid, *size)
        await self._run_start_hooks(cid)
        _out, err, code = await self._run_runc("start", cid)
        if code != 0:
            message = _runc_message(err)
            await self._discard(cid)
            raise RuntimeFailure(message, kind=_kind_of(message))
        return pid

    def on_next_start(self, cid: str, hook: StartHook) -> None:
        """Call ``hook.created()`` (awaited) when the container's next start has created
        it and before its process runs, or ``hook.failed(error)`` if that start fails
        before. For attaching before a start without losing the first output."""
        self._start_hooks.setdefault(_check_cid(cid), []).append(hook)

    def cancel_start_hook(self, cid: str, hook: StartHook) -> None:
        """Forget a hook given to ``on_next_start`` (its session went away)."""
        hooks = self._start_hooks.get(cid, [])
        with contextlib.suppress(ValueError):
            hooks.remove(hook)
        if not hooks:
            self._start_hooks.pop(cid, None)

    async def _run_start_hooks(self, cid: str) -> None:
        for hook in self._start_hooks.pop(cid, []):
            try:
                await hook.created()
            except Exception:
                _log.failure("a start hook of {cid} failed", cid=cid)

    def fail_start_hooks(self, cid: str, error: Exception) -> None:
        """End the sessions waiting for the container's next start (it is removed)."""
        for hook in self._start_hooks.pop(cid, []):
            try:
                hook.failed(error)
            except Exception:
                _log.failure("a start hook of {cid} failed", cid=cid)

    async def _clear_stale(self, cid: str) -> None:
        if not (self.runc_root / cid).exists():
            return
        state = await self.state(cid)
        if state is None:
            return
        if state.get("status") in ("running", "paused") or self.conmon_pid(cid):
            raise RuntimeFailure(f"container {cid} is already running", kind="conflict")
        await self._run_runc("delete", "--force", cid)

    def _reset_files(self, cid: str, bundle: Path, log_path: Path | None, mode: _StdinMode) -> Path:
        """Forget a previous run's exit/oom/pid files; record where this run's files are."""
        persist = self.persist_dir(cid)
        persist.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in ("exit", "oom", "conmon.pid", "pid", "runc.log"):
            with contextlib.suppress(FileNotFoundError):
                (persist / name).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.exit_dir / cid).unlink()
        meta = {
            "bundle": str(bundle),
            "log_path": str(log_path) if log_path else None,
            "tty": mode.tty,
            "open_stdin": mode.open_stdin,
            "stdin_once": mode.stdin_once,
            "closes_stdin": mode.closes_stdin,
            "started_at": rfc3339nano(time.time_ns()),
        }
        _write_atomic(persist / "meta.json", json.dumps(meta))
        return persist

    def _conmon_args(
        self,
        cid: str,
        bundle: Path,
        persist: Path,
        log_path: Path | None,
        mode: _StdinMode,
        log_max: int,
    ) -> list[str]:
        if log_path is not None and ":" in str(log_path):
            raise RuntimeFailure(f"log path may not contain ':': {log_path}", kind="invalid")
        args = [
            self.conmon,
            "--api-version", "1",
            "-c", cid,
            "-u", cid,
            "-n", cid,
            "-r", self.runc,
            "-b", str(bundle),
            "-p", str(persist / "pid"),
            "-P", str(persist / "conmon.pid"),
            "--exit-dir", str(self.exit_dir),
            "--persist-dir", str(persist),
            "--socket-dir-path", str(self.sock_dir),
            "-l", f"k8s-file:{log_path}" if log_path is not None else "none",
            "--runtime-arg", f"--root={self.runc_root}",
            "--runtime-arg", "--log-format=json",
            "--runtime-arg", f"--log={persist / 'runc.log'}",
        ]  # fmt: skip
        if log_max > 0:
            args += ["--log-size-max", str(log_max)]
        return args + mode.conmon_flags()

    async def _create(
        self,
        cid: str,
        bundle: Path,
        persist: Path,
        log_path: Path | None,
        mode: _StdinMode,
        log_max: int,
    ) -> int:
        """Spawn conmon, which runs ``runc create``; return the container's pid."""
        args = self._conmon_args(cid, bundle, persist, log_path, mode, log_max)
        self._ensure_socket_dir()
        env = dict(_ENV, _OCI_SYNCPIPE="3")
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", 3: "r"}
        if self.conmon_cgroup:
            env["_OCI_STARTPIPE"] = "4"
            fds[4] = "w"
        launcher = _ConmonLauncher()
        try:
            transport = self.reactor.spawnProcess(
                launcher, args[0], args, env=env, path=str(persist), childFDs=fds
            )
        except OSError as e:
            raise RuntimeFailure(f"cannot run {args[0]}: {e}") from e
        if self.conmon_cgroup:
            await self._move_to_cgroup(transport.pid)
            transport.writeToChild(4, b"0")
            transport.closeChildFD(4)
        try:
            message = await _with_timeout(self.reactor, launcher.synced, _CREATE_TIMEOUT)
        except defer.TimeoutError:
            self._kill_conmon(cid)
            await self._discard(cid)
            raise RuntimeFailure(f"conmon did not create {cid} in time") from None
        code = await launcher.ended
        pid = message.get("data") if message else None
        if isinstance(pid, int) and pid > 0:
            return pid
        text = (message or {}).get("message") or self._runc_log_error(persist)
        if not text:
            stderr = launcher.stderr.decode("utf-8", "replace").strip()
            text = f"conmon failed (exit {code}): {stderr}" if stderr else "conmon failed"
        text = str(text).strip()
        await self._discard(cid)
        raise RuntimeFailure(text, kind=_kind_of(text))

    async def _move_to_cgroup(self, pid: int) -> None:
        def move() -> None:
            for hierarchy in Path("/sys/fs/cgroup").iterdir():
                if not (hierarchy / "cgroup.procs").exists():
                    continue
                target = hierarchy / self.conmon_cgroup.strip("/")
                with contextlib.suppress(OSError):
                    target.mkdir(parents=True, exist_ok=True)
                    (target / "cgroup.procs").write_text(str(pid))

        await threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), move)

    @staticmethod
    def _runc_log_error(persist: Path) -> str:
        """The last error runc create logged (when its stderr reached conmon empty)."""
        try:
            lines = (persist / "runc.log").read_text().splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("level") in ("error", "fatal"):
                    return str(record.get("msg", ""))
        return ""

    async def _discard(self, cid: str) -> None:
        """After a failed start: no runc state, no attach leftovers, no stale pid files."""
        await self._run_runc("delete", "--force", cid)
        self._remove_conmon_files(cid, keep_exit=True)

    async def kill(self, cid: str, signal: str | int, all_procs: bool = False) -> None:
        """Send a signal to the container's init (or, with ``all_procs``, every process)."""
        sig = _signal_arg(signal)
        args = ["kill", *(["--all"] if all_procs else []), _check_cid(cid), sig]
        _out, err, code = await self._run_runc(*args)
        if code != 0:
            message = _runc_message(err)
            raise RuntimeFailure(message, kind=_kind_of(message))

    async def stop(self, cid: str, signal: str = "SIGTERM", timeout: float = 10.0) -> ExitStatus:
        """Send ``signal``, wait up to ``timeout`` seconds, then SIGKILL; return the exit.

        A paused container is thawed after the signal so that it can act on it (a frozen
        process cannot die), as dockerd does."""
        done = self.exit_status(cid)
        if done is not None:
            return done
        state = await self.state(cid)
        if state is None:
            raise RuntimeFailure(f"container {cid} does not exist", kind="not_found")
        with contextlib.suppress(RuntimeFailure):
            await self.kill(cid, signal)
        if state.get("status") == "paused":
            with contextlib.suppress(RuntimeFailure):
                await self.resume(cid)
        waiting = self.wait(cid)
        result = await defer.race([waiting, task.deferLater(self.reactor, max(timeout, 0))])
        if result[0] == 0:
            return result[1]
        with contextlib.suppress(RuntimeFailure):
            await self.kill(cid, "SIGKILL", all_procs=True)
        return await self.wait(cid)

    def wait(self, cid: str) -> defer.Deferred[ExitStatus]:
        """A Deferred that fires with the container's exit status once it has exited —
        also for a container whose conmon an earlier sdcd process started. Cancellable."""
        _check_cid(cid)
        done = self.exit_status(cid)
        if done is not None:
            return defer.succeed(done)
        if not self._known(cid):
            return defer.fail(RuntimeFailure(f"no such container: {cid}", kind="not_found"))
        waiters = self._waiters.setdefault(cid, [])

        def cancel(d: defer.Deferred) -> None:
            with contextlib.suppress(ValueError):
                waiters.remove(d)
            if not waiters and self._waiters.get(cid) is waiters:
                del self._waiters[cid]

        d: defer.Deferred[ExitStatus] = defer.Deferred(cancel)
        waiters.append(d)
        self._ensure_polling()
        return d

    def exit_status(self, cid: str) -> ExitStatus | None:
        """The exit status conmon recorded, or None when the container has not exited."""
        exit_file = self.exit_dir / _check_cid(cid)
        try:
            text = exit_file.read_text().strip()
            finished_ns = exit_file.stat().st_mtime_ns
        except OSError:
            return None
        try:
            code = int(text)
        except ValueError:
            return None
        oom = (self.persist_dir(cid) / "oom").exists()
        return ExitStatus(code, oom, rfc3339nano(finished_ns, fixed=False))

    async def state(self, cid: str) -> dict | None:
        """``runc state``: id, pid, status (created/running/paused/stopped), bundle, ...;
        None when runc does not know the container."""
        out, err, code = await self._run_runc("state", _check_cid(cid))
        if code != 0:
            message = _runc_message(err)
            if _kind_of(message) == "not_found":
                return None
            raise RuntimeFailure(message, kind=_kind_of(message))
        return json.loads(out)

    async def list(self) -> list[dict]:
        """Every container in runc's state (``runc list --format json``)."""
        out, err, code = await self._run_runc("list", "--format", "json")
        if code != 0:
            raise RuntimeFailure(_runc_message(err))
        return json.loads(out or b"null") or []

    async def pause(self, cid: str) -> None:
        """Freeze every process of the container (freezer cgroup)."""
        await self._simple("pause", cid)

    async def resume(self, cid: str) -> None:
        """Thaw a paused container."""
        await self._simple("resume", cid)

    async def top(self, cid: str, ps_args: str = "-ef") -> tuple[list[str], list[list[str]]]:
        """``docker top``: run ``ps <ps_args>`` on the host and keep the rows of the
        container's processes (the pids ``runc ps`` lists), split as dockerd splits them."""
        out, err, code = await self._run_runc("ps", "--format", "json", _check_cid(cid))
        if code != 0:
            message = _runc_message(err)
            raise RuntimeFailure(message, kind=_kind_of(message))
        pids = set(json.loads(out or b"null") or [])
        out, err, code = await _output(self.reactor, _PS, ps_args.split())
        if code != 0:
            detail = (err or out).decode("utf-8", "replace").strip()
            raise RuntimeFailure(f"Error running ps: exit status {code}: {detail}")
        return _parse_ps(out.decode("utf-8", "replace"), pids)

    async def resize(self, cid: str, height: int, width: int) -> None:
        """Set the container's tty size through conmon's control fifo."""
        fifo = self.ctl_fifo_path(cid)
        if fifo is None or self.conmon_pid(cid) is None:
            raise RuntimeFailure(f"container {cid} is not running", kind="conflict")
        _write_ctl(fifo, f"{_CTL_RESIZE} {int(height)} {int(width)}\n", cid)

    # -- exec ----------------------------------------------------------------------------

    def exec_dir(self, exec_id: str) -> Path:
        """The exec session's directory (conmon's bundle and persist dir for it)."""
        return self.exec_root / _check_cid(exec_id)

    async def exec_launch(
        self, cid: str, exec_id: str, process: dict, tty: bool, stdin: bool
    ) -> ExecLaunch:
        """Run ``conmon --exec`` for the OCI ``process`` in the running container ``cid``
        and wait until its attach socket listens; the process runs on ``start()``. An exec
        id runs once: a second launch is a conflict, as is a container that is not
        running. ``stdin``: the process reads a pipe that the first attach socket's EOF
        closes; without it, /dev/null. With ``tty`` its stdin is the pty."""
        _check_cid(cid)
        directory = self.exec_dir(exec_id)
        if not self.is_running(cid):
            raise RuntimeFailure(f"Container {cid} is not running", kind="conflict")
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise RuntimeFailure(f"exec {exec_id} has already run", kind="conflict") from None
        spec = dict(process, terminal=bool(tty))
        meta = {"cid": cid, "tty": bool(tty), "stdin": bool(stdin)}
        meta["created_at"] = rfc3339nano(time.time_ns())
        _write_atomic(directory / "process.json", json.dumps(spec))
        _write_atomic(directory / "meta.json", json.dumps(meta))
        args = self._exec_args(cid, exec_id, directory, tty, stdin)
        self._ensure_socket_dir()
        self._exec_waiters[exec_id] = []
        self._exec_launching.add(exec_id)
        env = dict(_ENV, _OCI_SYNCPIPE="3", _OCI_STARTPIPE="4", _OCI_ATTACHPIPE="5")
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", 3: "r", 4: "w", 5: "r"}
        launcher = _ExecLauncher()
        try:
            transport = self.reactor.spawnProcess(
                launcher, args[0], args, env=env, path=str(directory), childFDs=fds
            )
        except OSError as e:
            _write_atomic(directory / "exit", "126")
            self._exec_ended(exec_id)
            raise RuntimeFailure(f"cannot run {args[0]}: {e}") from e
        if self.conmon_cgroup:
            await self._move_to_cgroup(transport.pid)
        transport.writeToChild(4, b"0")  # conmon's first read: go on
        launch = ExecLaunch(self, exec_id, transport, launcher)
        try:
            ready = await _with_timeout(self.reactor, launcher.ready, _CREATE_TIMEOUT)
        except defer.TimeoutError:
            ready = None
        if ready is None or ready.get("data") != 0:
            launch.abort()
            stderr = launcher.stderr.decode("utf-8", "replace").strip()
            raise RuntimeFailure(f"conmon failed to set up exec {exec_id}: {stderr}")
        return launch

    def _exec_args(self, cid: str, exec_id: str, directory: Path, tty: bool, stdin: bool):
        args = [
            self.conmon,
            "--api-version", "1",
            "-c", cid,
            "-u", exec_id,
            "-r", self.runc,
            "-b", str(directory),
            "-p", str(directory / "pid"),
            "-P", str(directory / "conmon.pid"),
            "--persist-dir", str(directory),
            "--socket-dir-path", str(self.sock_dir),
            "-l", "none",
            "--runtime-arg", f"--root={self.runc_root}",
            "--runtime-arg", "--log-format=json",
            "--runtime-arg", f"--log={directory / 'runc.log'}",
            "-e", "--exec-attach",
            "--exec-process-spec", str(directory / "process.json"),
        ]  # fmt: skip
        if tty:
            args.append("-t")
        elif stdin:
            args.append("-i")
        return args

    def exec_status(self, exec_id: str) -> dict:
        """``{"cid", "running", "exit_code" (None while it runs or before it started),
        "pid" (0 before)}`` from the exec's files — also for an exec an earlier sdcd
        process started. An exec whose conmon died without an exit code is recorded as
        exited with LOST_EXIT_CODE."""
        directory = self.exec_dir(exec_id)
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            raise RuntimeFailure(f"No such exec instance: {exec_id}", kind="not_found") from None
        pid = _read_int(directory / "pid") or 0
        code = _read_int(directory / "exit")
        alive = _live_conmon(directory / "conmon.pid", exec_id) is not None
        if code is None and not alive and exec_id not in self._exec_launching:
            code = _read_int(directory / "exit")  # written just before conmon exits
            if code is None:  # killed; or it never got to run the process
                code = LOST_EXIT_CODE if pid else 126
                with contextlib.suppress(OSError):
                    _write_atomic(directory / "exit", str(code))
        return {"cid": meta.get("cid"), "running": code is None and pid > 0 and alive,
                "exit_code": code, "pid": pid}  # fmt: skip

    def exec_wait(self, exec_id: str) -> defer.Deferred[int]:
        """A Deferred that fires with the exec's exit code once it has one."""
        return defer.ensureDeferred(self._exec_wait(exec_id))

    async def _exec_wait(self, exec_id: str) -> int:
        while True:
            status = self.exec_status(exec_id)
            if status["exit_code"] is not None:
                self._unlink_exec_socket(exec_id)
                return status["exit_code"]
            waiters = self._exec_waiters.get(exec_id)
            if waiters is not None:  # launched here: the sync pipe tells us at once
                d: defer.Deferred[int] = defer.Deferred()
                waiters.append(d)
                await d
            else:
                await task.deferLater(self.reactor, _EXEC_POLL_INTERVAL)

    def _exec_ended(self, exec_id: str) -> None:
        self._exec_launching.discard(exec_id)
        for d in self._exec_waiters.pop(exec_id, []):
            d.callback(None)
        self._unlink_exec_socket(exec_id)

    def _unlink_exec_socket(self, exec_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.sock_dir / exec_id).unlink()

    async def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        """Set the exec session's tty size (its conmon's ctl fifo)."""
        directory = self.exec_dir(exec_id)
        if _live_conmon(directory / "conmon.pid", exec_id) is None:
            raise RuntimeFailure(f"exec {exec_id} is not running", kind="conflict")
        _write_ctl(directory / "ctl", f"{_CTL_RESIZE} {int(height)} {int(width)}\n", exec_id)

    def exec_ids(self, cid: str) -> list[str]:
        """The exec sessions recorded for the container."""
        found = []
        for directory in sorted(self.exec_root.iterdir()):
            with contextlib.suppress(OSError, ValueError):
                if json.loads((directory / "meta.json").read_text()).get("cid") == cid:
                    found.append(directory.name)
        return found

    def exec_remove(self, exec_id: str) -> None:
        """Forget an exec session: kill its conmon if it still runs, remove its files."""
        directory = self.exec_dir(exec_id)
        pid = _live_conmon(directory / "conmon.pid", exec_id)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_module.SIGKILL)
        self._exec_ended(exec_id)
        shutil.rmtree(directory, ignore_errors=True)

    async def delete(self, cid: str) -> None:
        """Remove the container from runc (killing it) and conmon's files for it. The log
        stays (the caller owns it). Idempotent."""
        _check_cid(cid)
        await self._run_runc("delete", "--force", cid)
        deadline = self.reactor.seconds() + 5.0
        while self.conmon_pid(cid) is not None and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, 0.02)
        self._kill_conmon(cid)
        status = self.exit_status(cid) or ExitStatus(
            137, False, rfc3339nano(time.time_ns(), fixed=False)
        )
        self._fire(cid, status)
        self._remove_conmon_files(cid, keep_exit=False)

    def conmon_pid(self, cid: str) -> int | None:
        """The pid of the container's conmon while it is alive, else None."""
        return _live_conmon(self.persist_dir(cid) / "conmon.pid", cid)

    def close(self) -> None:
        """Stop watching (tests; service shutdown). Containers are not touched."""
        if self._polling:
            self._poller.stop()
            self._polling = False
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        for cid in list(self._waiters):
            for d in self._waiters.pop(cid):
                d.cancel()
        for exec_id in list(self._exec_waiters):
            for d in self._exec_waiters.pop(exec_id):
                d.cancel()
        self._tidy_socket_dir()

    def _ensure_socket_dir(self) -> None:
        """(Re)make the socket dir: conmon cannot start without it, and another Runtime
        over the same state dir may have removed it when it closed."""
        self.sock_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sock_dir.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.sock_dir, 0o700)

    def _tidy_socket_dir(self) -> None:
        """Drop the socket dir's symlinks whose conmon is gone (conmon 2.1.6 leaves them
        behind), and the dir itself once empty: nothing of a stopped node stays in /run."""
        try:
            entries = list(self.sock_dir.iterdir())
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if not _CID.match(name):
                continue
            exec_dir = self.exec_root / name
            if exec_dir.is_dir():
                done = (exec_dir / "exit").exists()
                alive = _live_conmon(exec_dir / "conmon.pid", name) is not None
            else:  # an exited container's conmon is only draining: its socket is no use
                done = self.exit_status(name) is not None
                alive = self.conmon_pid(name) is not None
            if done or not alive:
                with contextlib.suppress(OSError):
                    entry.unlink()
        with contextlib.suppress(OSError):
            self.sock_dir.rmdir()

    # -- helpers -------------------------------------------------------------------------

    async def _simple(self, verb: str, cid: str) -> None:
        _out, err, code = await self._run_runc(verb, _check_cid(cid))
        if code != 0:
            message = _runc_message(err)
            raise RuntimeFailure(message, kind=_kind_of(message))

    async def _run_runc(self, *args: str) -> tuple[bytes, bytes, int]:
        argv = ["--root", str(self.runc_root), "--log-format", "json", *args]
        return await _output(self.reactor, self.runc, argv)

    def _known(self, cid: str) -> bool:
        """Whether this node started the container (start writes meta.json first)."""
        return (self.persist_dir(cid) / "meta.json").exists()

    def _meta(self, cid: str) -> dict:
        try:
            return json.loads((self.persist_dir(cid) / "meta.json").read_text())
        except (OSError, ValueError):
            return {}

    def _kill_conmon(self, cid: str) -> None:
        pid = self.conmon_pid(cid)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_module.SIGKILL)

    def _remove_conmon_files(self, cid: str, keep_exit: bool) -> None:
        bundle = self._meta(cid).get("bundle")
        if bundle:
            for name in ("attach", "ctl", "winsz"):
                with contextlib.suppress(OSError):
                    (Path(bundle) / name).unlink()
        with contextlib.suppress(OSError):
            (self.sock_dir / cid).unlink()
        persist = self.persist_dir(cid)
        keep = {"meta.json", "exit", "oom"} if keep_exit else set()
        if persist.is_dir():
            for child in persist.iterdir():
                if child.name not in keep:
                    with contextlib.suppress(OSError):
                        child.unlink()
            if not keep_exit:
                with contextlib.suppress(OSError):
                    persist.rmdir()
        if not keep_exit:
            with contextlib.suppress(OSError):
                (self.exit_dir / cid).unlink()

    # -- exit watching -------------------------------------------------------------------

    def _start_inotify(self) -> Any:
        """Watch the exit dir: conmon renames each exit file into place (IN_MOVED_TO)."""
        try:
            from twisted.internet import inotify
        except ImportError:  # not Linux: the poller alone does the job
            return None
        notifier = inotify.INotify(self.reactor)
        notifier.startReading()
        notifier.watch(
            FilePath(str(self.exit_dir)),
            mask=inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE,
            callbacks=[self._exit_event],
        )
        return notifier

    def _exit_event(self, _watch: Any, path: FilePath, _mask: int) -> None:
        cid = path.basename()
        if isinstance(cid, bytes):
            cid = cid.decode("utf-8", "replace")
        if cid in self._waiters:
            status = self.exit_status(cid)
            if status is not None:
                self._fire(cid, status)

    def _fire(self, cid: str, status: ExitStatus) -> None:
        for d in self._waiters.pop(cid, []):
            d.callback(status)
        if not self._waiters and self._polling:
            self._poller.stop()
            self._polling = False

    def _ensure_polling(self) -> None:
        """A slow safety net beside inotify: catches missed events and lost conmons."""
        if not self._polling:
            self._polling = True
            interval = _POLL_INTERVAL if self._notifier is None else _POLL_INTERVAL_WITH_INOTIFY
            self._poller.start(interval, now=False).addErrback(lambda f: None)

    async def _poll(self) -> None:
        for cid in list(self._waiters):
            status = self.exit_status(cid)
            if status is None and cid not in self._starting and self.conmon_pid(cid) is None:
                status = await self._lost(cid)
            if status is not None:
                self._fire(cid, status)

    async def _lost(self, cid: str) -> ExitStatus | None:
        """conmon is gone. Unless it wrote the exit file meanwhile or runc still runs the
        process (then keep waiting), record the container as exited with LOST_EXIT_CODE."""
        status = self.exit_status(cid)
        if status is not None:
            return status
        state = await self.state(cid)
        if state is not None and state.get("status") in ("created", "running", "paused"):
            return None
        if self.exit_status(cid) is not None or self.conmon_pid(cid) is not None:
            return self.exit_status(cid)
        if cid in self._starting or not self._known(cid):
            return None
        _write_atomic(self.exit_dir / cid, str(LOST_EXIT_CODE))
        return self.exit_status(cid)


def _set_tty_size(pid: int, height: int, width: int) -> None:
    """Size the tty on fd 0 of a created (not yet started) container process: runc init
    holds the console's slave there until ``runc start``. Best effort (quick syscalls)."""
    try:
        fd = os.open(f"/proc/{pid}/fd/0", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if os.isatty(fd):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_ctl(fifo: Path, line: str, ident: str) -> None:
    """One message to a conmon's ctl fifo (non-blocking: a fifo nobody reads is an error,
    not a hang)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RuntimeFailure(f"cannot resize {ident}: {e.strerror}", kind="conflict") from e
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _live_conmon(pidfile: Path, ident: str) -> int | None:
    """The pid in ``pidfile`` if it is a live conmon for ``ident`` (its -c or -u)."""
    pid = _read_int(pidfile)
    if not pid:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not cmdline or not cmdline[0].endswith(b"conmon") or ident.encode() not in cmdline:
        return None
    return pid


def _check_cid(cid: str) -> str:
    if not isinstance(cid, str) or not _CID.match(cid):
        raise RuntimeFailure(f"invalid container id: {cid!r}", kind="invalid")
    return cid


class _Collector(protocol.ProcessProtocol):
    """Collects a short-lived program's output and its exit code (128+n for signal n)."""

    def __init__(self) -> None:
        self.done: defer.Deferred[tuple[bytes, bytes, int]] = defer.Deferred()
        self._out: list[bytes] = []
        self._err: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        signal = getattr(value, "signal", None)
        code = 128 + signal if signal else (getattr(value, "exitCode", 0) or 0)
        self.done.callback((b"".join(self._out), b"".join(self._err), code))


def _output(reactor: Any, executable: str, args: list[str]) -> defer.Deferred:
    """Run a program; Deferred (stdout, stderr, exit code)."""
    collector = _Collector()
    reactor.spawnProcess(collector, executable, [executable, *args], env=_ENV)
    return collector.done


def _parse_ps(output: str, pids: set[int]) -> tuple[list[str], list[list[str]]]:
    """Split ``ps`` output as dockerd does: titles by whitespace; each row into as many
    fields as there are titles, the last one (the command) keeping its spaces."""
    lines = output.splitlines()
    if not lines:
        raise RuntimeFailure("Couldn't find PID field in ps output")
    titles = lines[0].split()
    try:
        pid_index = titles.index("PID")
    except ValueError:
        raise RuntimeFailure("Couldn't find PID field in ps output") from None
    processes = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) <= pid_index:
            continue
        try:
            pid = int(fields[pid_index])
        except ValueError:
            raise RuntimeFailure(f"Unexpected pid '{fields[pid_index]}'") from None
        if pid in pids:
            head = fields[: len(titles) - 1]
            processes.append([*head, " ".join(fields[len(titles) - 1 :])])
    return titles, processes


def _with_timeout(reactor: Any, d: defer.Deferred, seconds: float) -> defer.Deferred:
    """``d`` with a timeout that raises defer.TimeoutError (without cancelling ``d``'s
    producer beyond the Deferred itself)."""
    return d.addTimeout(seconds, reactor)
