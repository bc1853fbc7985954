"""Containers under real conmon + runc: exit codes, signals, stop, pause, top, OOM, logs,
and containers outliving the process that started them."""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from sdcd.compute.conmon import Runtime, RuntimeFailure
from sdcd.compute.logs import LogFollower, read_entries
from tests.conftest import REPO

RUNC = "/usr/sbin/runc"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Every container of this run nests under this cgroup, removed at the end.
CGROUP_PARENT = f"sdcd-test/conmon-{uuid.uuid4().hex[:8]}"
APPLETS = ["sh", "echo", "sleep", "cat", "true", "printf", "head", "tr", "wc", "dd", "ls"]


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds)


def busybox_rootfs(root, applets) -> None:
    """A minimal root: /bin/busybox and the applets' symlinks."""
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc"):
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in applets:
        (root / "bin" / applet).symlink_to("busybox")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    busybox_rootfs(root, APPLETS)
    yield root
    remove_cgroups(CGROUP_PARENT)
    remove_cgroups("sdcd-test", only_if_empty=True)


def runc_spec(where: Path) -> dict:
    """runc's own default config.json, the base of the test bundles."""
    subprocess.run([RUNC, "spec", "--bundle", str(where)], check=True)
    return json.loads((where / "config.json").read_text())


@pytest.fixture(scope="module")
def base_config(tmp_path_factory):
    return runc_spec(tmp_path_factory.mktemp("spec"))


def remove_cgroups(relative: str, only_if_empty: bool = False) -> None:
    """rmdir the cgroup ``relative`` (children first) in every hierarchy."""
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / relative
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*([] if only_if_empty else dirs), top]:
            with contextlib.suppress(OSError):
                d.rmdir()


class Bundles:
    """Makes OCI bundles over the shared busybox rootfs."""

    def __init__(self, where: Path, rootfs: Path, base: dict) -> None:
        self.where, self.rootfs, self.base = where, rootfs, base

    def make(self, args: list[str], tty: bool = False, memory: int | None = None):
        cid = "t" + uuid.uuid4().hex[:12]
        bundle = self.where / cid
        bundle.mkdir(parents=True)
        config = json.loads(json.dumps(self.base))
        config["process"]["args"] = args
        config["process"]["terminal"] = tty
        config["root"] = {"path": str(self.rootfs), "readonly": False}
        config["hostname"] = cid
        linux = config["linux"]
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
        linux["cgroupsPath"] = f"/{CGROUP_PARENT}/{cid}"
        if memory is not None:
            linux.setdefault("resources", {})["memory"] = {"limit": memory, "swap": memory}
        (bundle / "config.json").write_text(json.dumps(config))
        return cid, bundle


@pytest.fixture
def bundles(tmp_path, rootfs, base_config):
    return Bundles(tmp_path / "bundles", rootfs, base_config)


def cleanup_state(state: Path) -> None:
    """Delete every runc container and kill every conmon this state dir knows."""
    listed = subprocess.run(
        [RUNC, "--root", str(state / "runc"), "list", "--format", "json"],
        capture_output=True,
        text=True,
    )
    for container in json.loads(listed.stdout or "null") or []:
        subprocess.run(
            [RUNC, "--root", str(state / "runc"), "delete", "--force", container["id"]],
            capture_output=True,
        )
    for pidfile in (state / "ctr").glob("*/conmon.pid"):
        pid = int(pidfile.read_text())
        try:
            if b"conmon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def state_dir(tmp_path):
    state = tmp_path / "state"
    yield state
    cleanup_state(state)


@pytest.fixture
def runtime(state_dir):
    rt = Runtime(state_dir, reactor)
    yield rt
    rt.close()


async def run(runtime: Runtime, bundles: Bundles, tmp_path: Path, args: list[str], **kw):
    """Start a container; return (cid, log path)."""
    tty = kw.pop("tty", False)
    cid, bundle = bundles.make(args, tty=tty, memory=kw.pop("memory", None))
    log = tmp_path / f"{cid}.log"
    await runtime.start(cid, bundle, log, tty=tty, open_stdin=kw.pop("open_stdin", False))
    return cid, log


def texts(entries, stream=None):
    return [e.data for e in entries if stream is None or e.stream == stream]


@pytest_twisted.ensureDeferred
async def test_echo_hi_logs_and_exit_zero(runtime, bundles, tmp_path):
    cid, log = await run(runtime, bundles, tmp_path, ["echo", "hi"])
    status = await runtime.wait(cid)
    assert status.exit_code == 0 and not status.oom_killed
    assert status.finished_at.endswith("Z")
    assert texts(read_entries(log)) == [b"hi\n"]
    assert runtime.exit_status(cid) == status
    assert (await runtime.state(cid))["status"] == "stopped"
    # conmon writes the exit file, then exits: on a loaded machine a moment later.
    for _ in range(100):
        if runtime.conmon_pid(cid) is None:
            break
        await sleep(0.05)
    assert runtime.conmon_pid(cid) is None


@pytest_twisted.ensureDeferred
async def test_exit_code_passes_through(runtime, bundles, tmp_path):
    cid, _ = await run(runtime, bundles, tmp_path, ["sh", "-c", "exit 7"])
    assert (await runtime.wait(cid)).exit_code == 7
    # --log-driver none: no log file at all
    cid, bundle = bundles.make(["sh", "-c", "echo lost; exit 9"])
    await runtime.start(cid, bundle, None, tty=False, open_stdin=False)
    assert (await runtime.wait(cid)).exit_code == 9
    assert len(list(tmp_path.glob("*.log"))) == 1  # the first container's only


@pytest_twisted.ensureDeferred
async def test_stdout_and_stderr_kept_apart(runtime, bundles, tmp_path):
    script = "echo out1; echo err1 >&2; echo out2"
    cid, log = await run(runtime, bundles, tmp_path, ["sh", "-c", script])
    await runtime.wait(cid)
    entries = read_entries(log)
    assert texts(entries, "stdout") == [b"out1\n", b"out2\n"]
    assert texts(entries, "stderr") == [b"err1\n"]


@pytest_twisted.ensureDeferred
async def test_kill_sigkill_is_137(runtime, bundles, tmp_path):
    cid, _ = await run(runtime, bundles, tmp_path, ["sleep", "100"])
    state = await runtime.state(cid)
    assert state["status"] == "running" and state["pid"] > 0
    assert runtime.conmon_pid(cid) is not None
    await runtime.kill(cid, "KILL")
    assert (await runtime.wait(cid)).exit_code == 137


@pytest_twisted.ensureDeferred
async def test_stop_with_a_term_handler_is_quick(runtime, bundles, tmp_path):
    script = 'trap "exit 143" TERM; sleep 100 & wait'
    cid, _ = await run(runtime, bundles, tmp_path, ["sh", "-c", script])
    await sleep(0.2)  # let sh install its trap
    started = time.monotonic()
    status = await runtime.stop(cid, "SIGTERM", 10)
    assert status.exit_code == 143
    assert time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_stop_timeout_kills(runtime, bundles, tmp_path):
    # pid 1 without a handler ignores SIGTERM (as under dockerd): the timeout kills it.
    cid, _ = await run(runtime, bundles, tmp_path, ["sleep", "100"])
    started = time.monotonic()
    status = await runtime.stop(cid, "TERM", 0.5)
    assert status.exit_code == 137
    assert 0.5 <= time.monotonic() - started < 3
    # Stopping again answers the same exit at once.
    assert await runtime.stop(cid, "TERM", 5) == status


@pytest_twisted.ensureDeferred
async def test_pause_resume_and_stop_while_paused(runtime, bundles, tmp_path):
    cid, _ = await run(runtime, bundles, tmp_path, ["sleep", "100"])
    await runtime.pause(cid)
    assert (await runtime.state(cid))["status"] == "paused"
    with pytest.raises(RuntimeFailure):
        await runtime.pause(cid)
    await runtime.resume(cid)
    assert (await runtime.state(cid))["status"] == "running"
    await runtime.pause(cid)
    assert (await runtime.stop(cid, "TERM", 0.2)).exit_code == 137


@pytest_twisted.ensureDeferred
async def test_top(runtime, bundles, tmp_path):
    script = "sleep 100 & sleep 101; echo done"
    cid, _ = await run(runtime, bundles, tmp_path, ["sh", "-c", script])
    await sleep(0.1)
    titles, processes = await runtime.top(cid)
    assert titles[:2] == ["UID", "PID"] and titles[-1] == "CMD"
    commands = sorted(p[-1] for p in processes)
    assert commands == ["sh -c sleep 100 & sleep 101; echo done", "sleep 100", "sleep 101"]
    assert all(len(p) == len(titles) for p in processes)
    titles, processes = await runtime.top(cid, "-eo pid,comm")
    assert titles == ["PID", "COMMAND"] and len(processes) == 3
    with pytest.raises(RuntimeFailure, match="ps"):
        await runtime.top(cid, "--no-such-option")
    await runtime.kill(cid, signal.SIGKILL)
    await runtime.wait(cid)


@pytest_twisted.ensureDeferred
async def test_missing_executable_leaves_nothing(runtime, bundles, tmp_path):
    cid, bundle = bundles.make(["nope"])
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.start(cid, bundle, tmp_path / "nope.log", tty=False, open_stdin=False)
    assert 'exec: "nope": executable file not found in $PATH' in caught.value.message
    assert caught.value.kind == "invalid"
    assert await runtime.state(cid) is None
    assert await runtime.list() == []
    assert runtime.conmon_pid(cid) is None
    assert not any((bundle / name).exists() for name in ("attach", "ctl", "winsz"))
    assert not (runtime.sock_dir / cid).exists()


@pytest_twisted.ensureDeferred
async def test_oom_killed(runtime, bundles, tmp_path):
    script = 'x=$(head -c 64m /dev/zero | tr "\\0" a); echo $x | wc -c'
    cid, _ = await run(runtime, bundles, tmp_path, ["sh", "-c", script], memory=16 << 20)
    status = await runtime.wait(cid)
    assert (status.exit_code, status.oom_killed) == (137, True)


@pytest_twisted.ensureDeferred
async def test_errors_name_the_problem(runtime, bundles, tmp_path):
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.kill("nosuch", "TERM")
    assert caught.value.kind == "not_found"
    assert await runtime.state("nosuch") is None
    with pytest.raises(RuntimeFailure):
        await runtime.kill("nosuch", "NOTASIGNAL")
    with pytest.raises(RuntimeFailure):
        await runtime.state("../etc")
    cid, _ = await run(runtime, bundles, tmp_path, ["true"])
    await runtime.wait(cid)
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.kill(cid, "TERM")
    assert caught.value.kind == "conflict"


@pytest_twisted.ensureDeferred
async def test_restart_same_id_appends_to_log(runtime, bundles, tmp_path):
    cid, bundle = bundles.make(["sh", "-c", "echo run; exit 3"])
    log = tmp_path / "again.log"
    await runtime.start(cid, bundle, log, tty=False, open_stdin=False)
    assert (await runtime.wait(cid)).exit_code == 3
    await runtime.start(cid, bundle, log, tty=False, open_stdin=False)
    assert (await runtime.wait(cid)).exit_code == 3
    assert texts(read_entries(log)) == [b"run\n", b"run\n"]
    # A running container cannot be started twice.
    cid2, bundle2 = bundles.make(["sleep", "100"])
    await runtime.start(cid2, bundle2, tmp_path / "b.log", tty=False, open_stdin=False)
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.start(cid2, bundle2, tmp_path / "b.log", tty=False, open_stdin=False)
    assert caught.value.kind == "conflict"
    await runtime.delete(cid2)


@pytest_twisted.ensureDeferred
async def test_delete_kills_and_removes_conmon_files(runtime, bundles, tmp_path):
    cid, log = await run(runtime, bundles, tmp_path, ["sh", "-c", "echo x; sleep 100"])
    bundle = Path((await runtime.state(cid))["bundle"])
    assert runtime.attach_socket_path(cid).exists()
    waiting = runtime.wait(cid)
    await runtime.delete(cid)
    assert (await waiting).exit_code == 137
    assert await runtime.state(cid) is None
    assert runtime.conmon_pid(cid) is None
    assert runtime.exit_status(cid) is None
    assert not runtime.persist_dir(cid).exists()
    assert not any((bundle / name).exists() for name in ("attach", "ctl", "winsz"))
    assert log.exists()
    await runtime.delete(cid)  # idempotent


@pytest_twisted.ensureDeferred
async def test_tty_and_stdin(runtime, bundles, tmp_path):
    cid, log = await run(
        runtime, bundles, tmp_path, ["sh", "-c", "sleep 0.3; echo hi; echo err >&2"], tty=True
    )
    assert runtime.attach_socket_path(cid).is_socket()
    assert runtime.ctl_fifo_path(cid).exists()
    await runtime.resize(cid, 40, 120)
    await runtime.wait(cid)
    assert texts(read_entries(log)) == [b"hi\r\n", b"err\r\n"]
    assert {e.stream for e in read_entries(log)} == {"stdout"}
    # -i without a tty: stdin is a pipe held open by conmon, so cat waits for input.
    cid, _ = await run(runtime, bundles, tmp_path, ["cat"], open_stdin=True)
    await sleep(0.3)
    assert (await runtime.state(cid))["status"] == "running"
    await runtime.kill(cid, "KILL")
    await runtime.wait(cid)


@pytest_twisted.ensureDeferred
async def test_partial_lines_joined(runtime, bundles, tmp_path):
    script = "printf abc; sleep 0.3; echo def; printf tail"
    cid, log = await run(runtime, bundles, tmp_path, ["sh", "-c", script])
    await runtime.wait(cid)
    assert b" P abc\n" in log.read_bytes()
    assert texts(read_entries(log)) == [b"abcdef\n", b"tail"]


class Collector:
    """An ILogConsumer that remembers what it got."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, bytes, str]] = []
        self.producer = None
        self.unregistered = False

    def entry(self, stream, data, time):
        self.entries.append((stream, data, time))

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.unregistered = True


@pytest_twisted.ensureDeferred
async def test_logs_tail_since_and_follow(runtime, bundles, tmp_path):
    script = "i=0; while [ $i -lt 6 ]; do echo line $i; i=$((i+1)); sleep 0.15; done"
    cid, log = await run(runtime, bundles, tmp_path, ["sh", "-c", script])
    await sleep(0.2)
    collector = Collector()
    follower = LogFollower(log, reactor, tail=1, exited=runtime.wait(cid), interval=0.05)
    await follower.run(collector)
    got = [data for _, data, _ in collector.entries]
    assert got[-1] == b"line 5\n" and got[0] in (b"line 0\n", b"line 1\n")
    assert got == [f"line {i}\n".encode() for i in range(int(got[0][5:6]), 6)]
    assert collector.unregistered
    # After the fact: tail, and since from an entry's own time.
    all_entries = read_entries(log)
    assert texts(read_entries(log, tail=2)) == [b"line 4\n", b"line 5\n"]
    third = all_entries[2].time
    # (a float holds a 2026 time only to ~0.25 us: step a microsecond off the entry)
    at = calendar.timegm(time.strptime(third[:19], "%Y-%m-%dT%H:%M:%S")) + int(third[20:29]) / 1e9
    assert texts(read_entries(log, since=at - 1e-6))[0] == b"line 2\n"
    assert texts(read_entries(log, until=at + 1e-6)) == [b"line 0\n", b"line 1\n", b"line 2\n"]


SURVIVOR = """
import sys
from pathlib import Path
from twisted.internet import defer, reactor
from sdcd.compute.conmon import Runtime

async def main():
    rt = Runtime(Path(sys.argv[1]), reactor)
    pid = await rt.start(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), False, False)
    Path(sys.argv[5]).write_text(str(pid))

def failed(f):
    Path(sys.argv[5]).write_text("ERR " + str(f.value))

defer.ensureDeferred(main()).addErrback(failed)
reactor.run()
"""


@pytest_twisted.ensureDeferred
async def test_container_survives_sigkill_of_its_starter(state_dir, bundles, tmp_path):
    script = "i=0; while [ $i -lt 12 ]; do echo line $i; i=$((i+1)); sleep 0.1; done; exit 3"
    cid, bundle = bundles.make(["sh", "-c", script])
    log, done = tmp_path / "survivor.log", tmp_path / "started"
    (tmp_path / "starter.py").write_text(SURVIVOR)
    argv = [str(tmp_path / "starter.py"), str(state_dir), cid, str(bundle), str(log), str(done)]
    child = subprocess.Popen(
        [sys.executable, *argv],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        for _ in range(200):
            if done.exists() and done.read_text():
                break
            await sleep(0.05)
        assert done.read_text().isdigit(), done.read_text()
    finally:
        child.kill()
        child.wait()
    runtime = Runtime(state_dir, reactor)
    try:
        assert (await runtime.state(cid))["status"] == "running"
        assert runtime.conmon_pid(cid) is not None
        before = len(read_entries(log))
        await sleep(0.3)
        assert len(read_entries(log)) > before
        status = await runtime.wait(cid)
        assert status.exit_code == 3
        assert texts(read_entries(log))[-1] == b"line 11\n"
    finally:
        runtime.close()


@pytest_twisted.ensureDeferred
async def test_wait_for_a_container_started_by_another_runtime(state_dir, bundles, tmp_path):
    first = Runtime(state_dir, reactor)
    cid, _ = await run(first, bundles, tmp_path, ["sh", "-c", "sleep 0.3; exit 5"])
    first.close()
    second = Runtime(state_dir, reactor)
    try:
        assert (await second.wait(cid)).exit_code == 5
        # And once it has exited, a new runtime answers at once.
        assert second.exit_status(cid).exit_code == 5
    finally:
        second.close()


@pytest_twisted.ensureDeferred
async def test_lost_conmon_reported(runtime, bundles, tmp_path):
    cid, _ = await run(runtime, bundles, tmp_path, ["sleep", "100"])
    waiting = runtime.wait(cid)
    os.kill(runtime.conmon_pid(cid), signal.SIGKILL)
    await sleep(0.2)
    assert not waiting.called  # the container itself still runs
    await runtime.kill(cid, "KILL")
    status = await waiting
    assert status.exit_code == 255


@pytest_twisted.ensureDeferred
async def test_conmon_moved_to_its_own_cgroup(state_dir, bundles, tmp_path):
    where = f"{CGROUP_PARENT}/conmon"
    runtime = Runtime(state_dir, reactor, conmon_cgroup=where)
    try:
        cid, _ = await run(runtime, bundles, tmp_path, ["sleep", "100"])
        groups = Path(f"/proc/{runtime.conmon_pid(cid)}/cgroup").read_text()
        assert f"memory:/{where}\n" in groups
        await runtime.delete(cid)
    finally:
        runtime.close()


@pytest_twisted.ensureDeferred
async def test_start_to_exit_time(runtime, bundles, tmp_path):
    """Not a benchmark: a bound that catches a regression (and prints the figure)."""
    times = []
    for _ in range(5):
        cid, bundle = bundles.make(["true"])
        started = time.perf_counter()
        await runtime.start(cid, bundle, tmp_path / f"{cid}.log", tty=False, open_stdin=False)
        await runtime.wait(cid)
        times.append(time.perf_counter() - started)
    median = sorted(times)[2]
    print(f"start -> exit of true: median {median * 1000:.0f} ms")
    assert median < 1.0
