"""Interactive stdio through conmon's attach sockets with real conmon + runc: attach, stdin
and its EOF, several clients, tty and resize, exec (exit codes kept on disk), 1 GB
through attach and exec with back-pressure.

The 1 GB cases run with SDCD_SLOW=1; by default the same paths run with 64 MiB."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from sdcd.compute import stdio
from sdcd.compute.conmon import Runtime, RuntimeFailure
from tests.test_conmon import busybox_rootfs, cleanup_state, remove_cgroups, runc_spec

RUNC = "/usr/sbin/runc"
CGROUP_PARENT = f"sdcd-test/stdio-{uuid.uuid4().hex[:8]}"
APPLETS = ["sh", "echo", "sleep", "cat", "true", "head", "stty", "wc", "dd", "tr"]
SLOW = os.environ.get("SDCD_SLOW") == "1"
BIG = (1 << 30) if SLOW else (64 << 20)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds)


async def until(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await sleep(interval)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    busybox_rootfs(root, APPLETS)
    yield root
    remove_cgroups(CGROUP_PARENT)
    remove_cgroups("sdcd-test", only_if_empty=True)


@pytest.fixture(scope="module")
def base_config(tmp_path_factory):
    config = runc_spec(tmp_path_factory.mktemp("spec"))
    linux = config["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
    return config


class Node:
    """A Runtime and the bundles of this test's containers."""

    def __init__(self, runtime: Runtime, where: Path, rootfs: Path, base: dict) -> None:
        self.runtime, self.where, self.rootfs, self.base = runtime, where, rootfs, base

    def process(self, args: list[str], tty: bool = False) -> dict:
        """An OCI process like the containers' (for exec)."""
        process = json.loads(json.dumps(self.base["process"]))
        process.update(args=args, terminal=tty, cwd="/")
        return process

    async def run(self, args: list[str], tty=False, open_stdin=False, stdin_once=False, **kw):
        cid = self.create(args, tty)
        await self.runtime.start(
            cid,
            self.where / cid,
            self.where / f"{cid}.log",
            tty=tty,
            open_stdin=open_stdin,
            stdin_once=stdin_once,
            **kw,
        )
        return cid

    def create(self, args: list[str], tty: bool = False) -> str:
        cid = "s" + uuid.uuid4().hex[:12]
        bundle = self.where / cid
        bundle.mkdir(parents=True)
        config = json.loads(json.dumps(self.base))
        config["process"].update(args=args, terminal=tty)
        config["root"] = {"path": str(self.rootfs), "readonly": False}
        config["hostname"] = cid
        config["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{cid}"
        (bundle / "config.json").write_text(json.dumps(config))
        return cid

    async def start(self, cid: str, tty=False, open_stdin=False, stdin_once=False) -> int:
        return await self.runtime.start(
            cid, self.where / cid, None, tty=tty, open_stdin=open_stdin, stdin_once=stdin_once
        )


def cleanup_execs(state: Path) -> None:
    for pidfile in (state / "exec").glob("*/conmon.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            if b"conmon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def node(tmp_path, rootfs, base_config):
    # A long state dir, as the real ones under pytest's tmp dirs are.
    state = tmp_path / ("long-" * 12) / "data" / "node" / "runtime"
    runtime = Runtime(state, reactor)
    yield Node(runtime, tmp_path / "bundles", rootfs, base_config)
    runtime.close()
    cleanup_execs(state)
    cleanup_state(state)
    shutil.rmtree(runtime.sock_dir, ignore_errors=True)


class Sink:
    """An IStreamSink that keeps what it gets (or only counts it)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.chunks: list[tuple[str, bytes]] = []
        self.counts = {"stdout": 0, "stderr": 0}
        self.producer = None
        self.ended = False
        self.unregistered = False

    def write(self, stream, data):
        self.counts[stream] += len(data)
        if self.keep:
            self.chunks.append((stream, data))

    def end(self):
        self.ended = True

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.unregistered = True

    def text(self, stream: str | None = None) -> bytes:
        return b"".join(d for s, d in self.chunks if stream is None or s == stream)


class SlowSink(Sink):
    """A sink behind a slow client: pauses the session after every ``burst`` bytes for
    ``pause`` seconds, and remembers the largest RSS it saw."""

    def __init__(self, burst: int, pause: float) -> None:
        super().__init__(keep=False)
        self.burst, self.pause, self.since = burst, pause, 0
        self.max_rss = rss()
        self.pauses = 0

    def write(self, stream, data):
        super().write(stream, data)
        self.since += len(data)
        if self.since >= self.burst:
            self.since = 0
            self.pauses += 1
            self.max_rss = max(self.max_rss, rss())
            self.producer.pauseProducing()
            reactor.callLater(self.pause, self.producer.resumeProducing)


class StdinSource:
    """A push producer of stdin (as a client connection is): writes 64 KiB chunks while
    not paused."""

    def __init__(self, session, data: bytes) -> None:
        self.session, self.data, self.sent = session, data, 0
        self.paused, self.pauses, self.finished = True, 0, False

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.sent < len(self.data):
            chunk = self.data[self.sent : self.sent + 65536]
            self.sent += len(chunk)
            self.session.write(chunk)
        self.finished = self.sent == len(self.data)

    def stopProducing(self):
        self.paused = True


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest_twisted.ensureDeferred
async def test_socket_dir_is_short_and_private(node):
    runtime = node.runtime
    assert len(str(runtime.state_dir)) > 108
    assert runtime.sock_dir.parent == Path("/run/sdcd")
    assert (runtime.sock_dir.stat().st_mode & 0o777) == 0o700
    cid = await node.run(["sleep", "100"])
    path = runtime.attach_socket_path(cid)
    assert path.is_socket() and len(str(path)) < 108
    assert path.parent.resolve() == node.where / cid
    await runtime.delete(cid)
    assert not path.parent.exists()


@pytest_twisted.ensureDeferred
async def test_attach_before_start_gets_stdout_and_stderr_apart(node):
    cid = node.create(["sh", "-c", "echo out1; echo err1 >&2; echo out2; exit 4"])
    both, out_only = Sink(), Sink()
    s1 = await stdio.attach(node.runtime, cid, both, wait_start=True)
    s2 = await stdio.attach(node.runtime, cid, out_only, stderr=False, wait_start=True)
    await node.start(cid)
    assert await s1.done == "exited" and await s2.done == "exited"
    assert both.text("stdout") == b"out1\nout2\n" and both.text("stderr") == b"err1\n"
    assert out_only.text() == b"out1\nout2\n"
    assert both.ended and both.unregistered and s1.bytes_out == 15
    assert (await node.runtime.wait(cid)).exit_code == 4
    # Not running and not waiting for a start: a conflict.
    with pytest.raises(RuntimeFailure) as caught:
        await stdio.attach(node.runtime, cid, Sink())
    assert caught.value.kind == "conflict"


@pytest_twisted.ensureDeferred
async def test_attach_waiting_for_a_start_that_fails(node):
    cid = node.create(["nope"])
    sink = Sink()
    session = await stdio.attach(node.runtime, cid, sink, wait_start=True)
    with pytest.raises(RuntimeFailure):
        await node.start(cid)
    assert await session.done == "exited" and sink.ended
    # A waiting session that is closed is forgotten.
    later = await stdio.attach(node.runtime, cid, Sink(), wait_start=True)
    later.close()
    assert await later.done == "detached"
    assert not node.runtime._start_hooks


@pytest_twisted.ensureDeferred
async def test_stdin_to_cat_and_eof_ends_it(node):
    cid = await node.run(["cat"], open_stdin=True, stdin_once=True)
    sink = Sink()
    session = await stdio.attach(node.runtime, cid, sink, stdin=True)
    source = StdinSource(session, os.urandom(3 << 20))  # more than any buffer on the way
    session.registerProducer(source, True)
    source.resumeProducing()
    await until(lambda: source.finished)
    session.unregisterProducer()
    session.close_stdin()
    assert await session.done == "exited"
    assert sink.text("stdout") == source.data and session.bytes_in == len(source.data)
    assert source.pauses > 0  # conmon did not take it all at once: the source waited
    assert (await node.runtime.wait(cid)).exit_code == 0


@pytest_twisted.ensureDeferred
async def test_two_attachers_and_stdin_left_open(node):
    # OpenStdin without StdinOnce: a client going away leaves stdin open for the next.
    cid = await node.run(["cat"], open_stdin=True)
    a, b = Sink(), Sink()
    sa = await stdio.attach(node.runtime, cid, a, stdin=True)
    sb = await stdio.attach(node.runtime, cid, b, stdin=True)
    sa.write_stdin(b"one\n")
    await until(lambda: b.text() == b"one\n" and a.text() == b"one\n")
    sb.write_stdin(b"two\n")
    await until(lambda: a.text() == b"one\ntwo\n" == b.text())
    sa.close_stdin()  # EOF from a: conmon was told --leave-stdin-open
    sa.close()
    assert await sa.done == "detached" and not a.ended
    sb.write_stdin(b"three\n")
    await until(lambda: b.text() == b"one\ntwo\nthree\n")
    late = Sink()  # a third, attached now, sees only what comes from now on
    sc = await stdio.attach(node.runtime, cid, late)
    sb.write_stdin(b"four\n")
    await until(lambda: late.text() == b"four\n")
    await node.runtime.kill(cid, "KILL")
    assert await sb.done == "exited" and await sc.done == "exited"
    assert a.text() == b"one\ntwo\n"


@pytest_twisted.ensureDeferred
async def test_stdin_once_survives_an_output_only_client(node):
    # StdinOnce: conmon closes stdin at the first EOF; a client without stdin leaving
    # must not count (it is parked), the client with stdin ending it does.
    cid = await node.run(["sh", "-c", "cat; echo bye"], open_stdin=True, stdin_once=True)
    watcher = await stdio.attach(node.runtime, cid, Sink())
    watcher.close()
    assert await watcher.done == "detached"
    sink = Sink()
    session = await stdio.attach(node.runtime, cid, sink, stdin=True)
    session.write_stdin(b"still open\n")
    await until(lambda: sink.text() == b"still open\n")
    session.close_stdin()
    assert await session.done == "exited"
    assert sink.text() == b"still open\nbye\n"
    assert (await node.runtime.wait(cid)).exit_code == 0


@pytest_twisted.ensureDeferred
async def test_tty_attach_resize_and_reattach(node):
    cid = node.create(["sh", "-c", "sleep 1; stty size"], tty=True)
    sink = Sink()
    session = await stdio.attach(node.runtime, cid, sink, stderr=False, wait_start=True)
    await node.start(cid, tty=True)
    await node.runtime.resize(cid, 40, 123)
    assert await session.done == "exited"
    assert sink.text() == b"40 123\r\n"
    # An interactive shell: stdin goes to the pty (conmon without -i), and survives a
    # client detaching.
    cid = await node.run(["sh"], tty=True, open_stdin=True, size=(30, 90))
    first = Sink()
    s1 = await stdio.attach(node.runtime, cid, first, stdin=True)
    s1.write_stdin(b"stty size; echo $((6*7))\n")
    await until(lambda: b"42\r\n" in first.text())
    assert b"30 90\r\n" in first.text()
    assert {s for s, _ in first.chunks} == {"stdout"}
    s1.close()
    second = Sink()
    s2 = await stdio.attach(node.runtime, cid, second, stdin=True)
    s2.write_stdin(b"exit 3\n")
    assert await s2.done == "exited"
    assert (await node.runtime.wait(cid)).exit_code == 3


@pytest_twisted.ensureDeferred
async def test_exec_output_and_exit_code(node):
    cid = await node.run(["sleep", "100"])
    sink = Sink()
    exec_id = uuid.uuid4().hex
    process = node.process(["sh", "-c", "echo hi; echo oops >&2"])
    session = await stdio.exec_start(node.runtime, cid, exec_id, process, sink)
    assert session.pid > 0
    assert await session.done == "exited"
    assert sink.text("stdout") == b"hi\n" and sink.text("stderr") == b"oops\n"
    assert await stdio.exec_wait(node.runtime, exec_id) == 0
    status = stdio.exec_status(node.runtime, exec_id)
    assert status == {"cid": cid, "running": False, "exit_code": 0, "pid": session.pid}
    assert not (node.runtime.sock_dir / exec_id).exists()
    # An exec id runs once.
    with pytest.raises(RuntimeFailure) as caught:
        await stdio.exec_start(node.runtime, cid, exec_id, process, None)
    assert caught.value.kind == "conflict"
    await node.runtime.delete(cid)


@pytest_twisted.ensureDeferred
async def test_exec_exit_code_kept_for_a_new_runtime(node):
    cid = await node.run(["sleep", "100"])
    exec_id = uuid.uuid4().hex
    process = node.process(["sh", "-c", "sleep 0.3; exit 3"])
    session = await stdio.exec_start(node.runtime, cid, exec_id, process, None)
    status = stdio.exec_status(node.runtime, exec_id)
    assert status["running"] and status["exit_code"] is None and status["pid"] == session.pid
    assert await session.done == "exited"
    assert stdio.exec_status(node.runtime, exec_id)["exit_code"] == 3
    other = Runtime(node.runtime.state_dir, reactor)  # as after an sdcd restart
    try:
        assert other.exec_status(exec_id) == {
            "cid": cid,
            "running": False,
            "exit_code": 3,
            "pid": session.pid,
        }
        assert await other.exec_wait(exec_id) == 3
        # And one still running when the new process looks: waited for by polling.
        running_id = uuid.uuid4().hex
        await stdio.exec_start(
            node.runtime, cid, running_id, node.process(["sh", "-c", "sleep 0.3; exit 5"]), None
        )
        assert other.exec_status(running_id)["running"]
        assert await other.exec_wait(running_id) == 5
    finally:
        other.close()
    assert node.runtime.exec_ids(cid) == sorted([exec_id, running_id])
    node.runtime.exec_remove(exec_id)
    with pytest.raises(RuntimeFailure) as caught:
        stdio.exec_status(node.runtime, exec_id)
    assert caught.value.kind == "not_found"
    await node.runtime.delete(cid)


@pytest_twisted.ensureDeferred
async def test_exec_refusals(node):
    cid = await node.run(["true"])
    await node.runtime.wait(cid)
    with pytest.raises(RuntimeFailure) as caught:
        await stdio.exec_start(node.runtime, cid, uuid.uuid4().hex, node.process(["true"]), None)
    assert caught.value.kind == "conflict"
    assert "is not running" in caught.value.message
    cid = await node.run(["sleep", "100"])
    exec_id = uuid.uuid4().hex
    with pytest.raises(RuntimeFailure) as caught:
        await stdio.exec_start(node.runtime, cid, exec_id, node.process(["nope"]), Sink())
    assert caught.value.kind == "invalid"
    assert "executable file not found" in caught.value.message
    assert stdio.exec_status(node.runtime, exec_id)["exit_code"] == 127
    assert not (node.runtime.sock_dir / exec_id).exists()
    await node.runtime.delete(cid)


@pytest_twisted.ensureDeferred
async def test_exec_stdin_and_eof(node):
    cid = await node.run(["sleep", "100"])
    sink = Sink()
    exec_id = uuid.uuid4().hex
    process = node.process(["sh", "-c", "cat; echo done"])
    session = await stdio.exec_start(node.runtime, cid, exec_id, process, sink, stdin=True)
    session.write_stdin(b"to cat\n")
    await until(lambda: sink.text() == b"to cat\n")
    session.close_stdin()
    assert await session.done == "exited"
    assert sink.text() == b"to cat\ndone\n"
    assert await stdio.exec_wait(node.runtime, exec_id) == 0
    await node.runtime.delete(cid)


@pytest_twisted.ensureDeferred
async def test_exec_tty_size_and_resize(node):
    cid = await node.run(["sleep", "100"])
    sink = Sink()
    exec_id = uuid.uuid4().hex
    process = node.process(["sh", "-c", "stty size; sleep 1; stty size; exit 6"], tty=True)
    session = await stdio.exec_start(node.runtime, cid, exec_id, process, sink, size=(24, 80))
    await until(lambda: b"24 80\r\n" in sink.text())
    await stdio.exec_resize(node.runtime, cid, exec_id, 50, 132)
    assert await session.done == "exited"
    assert sink.text() == b"24 80\r\n50 132\r\n"
    assert await stdio.exec_wait(node.runtime, exec_id) == 6
    with pytest.raises(RuntimeFailure) as caught:
        await stdio.exec_resize(node.runtime, cid, exec_id, 10, 10)
    assert caught.value.kind == "conflict"
    # An interactive exec shell: input through the pty.
    exec_id = uuid.uuid4().hex
    process = node.process(["sh"], tty=True)
    sink = Sink()
    session = await stdio.exec_start(node.runtime, cid, exec_id, process, sink, stdin=True)
    session.write_stdin(b"echo $((6*7)); exit 2\n")
    assert await session.done == "exited"
    assert b"42\r\n" in sink.text()
    assert await stdio.exec_wait(node.runtime, exec_id) == 2
    await node.runtime.delete(cid)


@pytest_twisted.ensureDeferred
async def test_detach_while_conmon_is_blocked_on_us(node):
    # A paused session blocks conmon (back-pressure); closing it must free conmon for the
    # others, and stdin buffered in the closed session must not wedge anything.
    cid = await node.run(["sh", "-c", f"head -c {64 << 20} /dev/zero; sleep 100"])
    stuck, flowing = Sink(keep=False), Sink(keep=False)
    s1 = await stdio.attach(node.runtime, cid, stuck)
    s1.pauseProducing()
    s2 = await stdio.attach(node.runtime, cid, flowing)
    await sleep(0.3)
    assert flowing.counts["stdout"] < (8 << 20)  # held back by the paused one
    s1.close()
    await until(lambda: flowing.counts["stdout"] > (16 << 20))
    s2.close()
    await node.runtime.delete(cid)


def big_command() -> list[str]:
    # busybox head writes 4 KiB at a time (170 MB/s on its own); dd writes 1 MiB blocks.
    return ["sh", "-c", f"dd if=/dev/zero bs=1048576 count={BIG >> 20} 2>/dev/null"]


@pytest_twisted.ensureDeferred
async def test_big_output_through_attach(node):
    cid = node.create(big_command())
    sink = Sink(keep=False)
    session = await stdio.attach(node.runtime, cid, sink, wait_start=True)
    started = time.perf_counter()
    await node.start(cid)
    await session.done
    elapsed = time.perf_counter() - started
    assert sink.counts == {"stdout": BIG, "stderr": 0}
    print(f"attach: {BIG >> 20} MiB in {elapsed:.2f} s = {BIG / elapsed / 1e6:.0f} MB/s")
    assert (await node.runtime.wait(cid)).exit_code == 0


@pytest_twisted.ensureDeferred
async def test_big_output_through_exec(node):
    cid = await node.run(["sleep", "100"])
    sink = Sink(keep=False)
    started = time.perf_counter()
    session = await stdio.exec_start(
        node.runtime, cid, uuid.uuid4().hex, node.process(big_command()), sink
    )
    await session.done
    elapsed = time.perf_counter() - started
    assert sink.counts == {"stdout": BIG, "stderr": 0}
    print(f"exec: {BIG >> 20} MiB in {elapsed:.2f} s = {BIG / elapsed / 1e6:.0f} MB/s")
    await node.runtime.delete(cid)


@pytest_twisted.ensureDeferred
async def test_slow_sink_bounds_memory(node):
    # 64 MiB (1 GiB with SDCD_SLOW=1) to a client that stalls every 4 MiB (64 MiB) for
    # 50 ms: output arrives complete and sdcd's RSS stays put — conmon (and the container)
    # wait for us instead.
    burst = (64 << 20) if SLOW else (4 << 20)
    cid = await node.run(["sleep", "100"])
    sink = SlowSink(burst, 0.05)
    before = rss()
    session = await stdio.exec_start(
        node.runtime, cid, uuid.uuid4().hex, node.process(big_command()), sink
    )
    await session.done
    assert sink.counts["stdout"] == BIG and sink.pauses >= BIG // burst - 1
    growth = sink.max_rss - before
    print(f"slow sink: RSS growth {growth / 1e6:.1f} MB, max RSS {sink.max_rss / 1e6:.0f} MB")
    assert growth < 50e6
    await node.runtime.delete(cid)


@pytest_twisted.ensureDeferred
async def test_exec_true_latency(node):
    """Not a benchmark: a bound that catches a regression (and prints the figure)."""
    cid = await node.run(["sleep", "100"])
    times = []
    for _ in range(10):
        exec_id = uuid.uuid4().hex
        started = time.perf_counter()
        session = await stdio.exec_start(node.runtime, cid, exec_id, node.process(["true"]), Sink())
        await session.done
        assert await stdio.exec_wait(node.runtime, exec_id) == 0
        times.append(time.perf_counter() - started)
    median = sorted(times)[len(times) // 2]
    print(f"exec true, attached: median {median * 1000:.0f} ms")
    assert median < 1.0
    await node.runtime.delete(cid)


@pytest_twisted.ensureDeferred
async def test_attach_by_a_long_path(node):
    # A container started by an sdcd whose socket dir was elsewhere: its socket is found
    # in the bundle, a path longer than sun_path allows, and reached through /proc.
    where = node.where / ("deep-" * 20)
    node.where = where
    cid = await node.run(["cat"], open_stdin=True)
    (node.runtime.sock_dir / cid).unlink()
    path = node.runtime.attach_socket_path(cid)
    assert path == where / cid / "attach" and len(str(path)) > 108
    sink = Sink()
    session = await stdio.attach(node.runtime, cid, sink, stdin=True)
    session.write_stdin(b"far\n")
    await until(lambda: sink.text() == b"far\n")
    session.close()
    await node.runtime.delete(cid)
