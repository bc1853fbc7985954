"""The ``ICompute`` suite, run against ``LocalCompute`` on real runc, conmon, overlayfs
and network namespaces — and, later, against issue 7's remote agent client.

``IComputeTests`` is a mixin: a ``Test*`` subclass supplies a ``harness`` fixture (see
``ComputeHarness``) and inherits every test. ``LocalCompute``'s own behaviour (recovery
after sdcd stops, crash consistency of its on-disk state) is tested below the suite.
"""

from __future__ import annotations

import calendar
import contextlib
import io
import ipaddress
import json
import os
import random
import secrets
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sdcd.agent import server as agent_server
from sdcd.agent.server import AgentFactory
from sdcd.auth import internal
from sdcd.compute import network, rootfs
from sdcd.compute.interface import ComputeError, ICompute, ILogConsumer
from sdcd.compute.local import LocalCompute
from sdcd.compute.network import BridgeConfig, mac_for_ip
from sdcd.compute.remote import RemoteCompute
from sdcd.core.packages import DEFAULT_PACKAGES
from sdcd.images.blobstore import FileBlobStore
from tests.imagebuilder import DEFAULT_PATH, LayerBuilder, busybox_image
from tests.nodecleanup import purge_node
from tests.test_stdio import Sink

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for runc and netns")

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: How long any one wait in these tests may take before the test fails (not hangs).
PATIENCE = 15.0

# -- helpers shared by every implementation ------------------------------------------------


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds)


def within(awaitable: Any, seconds: float = PATIENCE) -> defer.Deferred:
    """``awaitable`` as a Deferred that fails with TimeoutError after ``seconds``."""
    return defer.ensureDeferred(_identity(awaitable)).addTimeout(seconds, reactor)


async def _identity(awaitable: Any) -> Any:
    return await awaitable


async def eventually(predicate: Callable[[], Any], seconds: float = PATIENCE) -> Any:
    """Poll ``predicate`` (sync, or returning an awaitable) until it is truthy."""
    deadline = reactor.seconds() + seconds
    while True:
        value = predicate()
        if hasattr(value, "__await__") or isinstance(value, defer.Deferred):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await sleep(0.03)


def epoch(rfc3339: str) -> float:
    """Unix seconds of an RFC 3339 UTC time with up to nine fractional digits."""
    main, _, frac = rfc3339.rstrip("Z").partition(".")
    base = calendar.timegm(tuple(map(int, main.replace("T", "-").replace(":", "-").split("-"))))
    return base + (float("0." + frac) if frac else 0.0)


class Events:
    """A ``subscribe`` listener that keeps every node event."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.seen.append(event)

    def of(self, cid: str, action: str | None = None) -> list[dict]:
        return [e for e in self.seen if e["id"] == cid and action in (None, e["action"])]

    def actions(self, cid: str) -> list[str]:
        return [e["action"] for e in self.of(cid)]

    async def wait(self, cid: str, action: str, count: int = 1) -> dict:
        """The ``count``-th event ``action`` of ``cid`` (waiting for it)."""
        await eventually(lambda: len(self.of(cid, action)) >= count)
        return self.of(cid, action)[count - 1]


@implementer(ILogConsumer)
class LogConsumer:
    """Keeps the entries and the producer calls it gets."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, bytes, str]] = []
        self.calls: list[str] = []
        self.producer: Any = None

    def entry(self, stream: str, data: bytes, time: str) -> None:
        self.entries.append((stream, data, time))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.calls.append(f"register streaming={streaming}")

    def unregisterProducer(self) -> None:
        self.calls.append("unregister")

    @property
    def lines(self) -> list[tuple[str, bytes]]:
        return [(stream, data) for stream, data, _ in self.entries]


class ComputeHarness(Protocol):
    """What the suite needs besides the ``ICompute`` itself. The node runs on this host
    (the remote agent too, in tests), so the harness can look at what it leaves behind."""

    compute: Any

    def spec(self, args: list[str], layers: tuple[str, ...] = ("busybox",), **kw: Any) -> dict:
        """A node spec (the keys ``sdcd.core.containers`` makes) with a fresh id and IP."""

    def diff_id(self, layer: str) -> str:
        """The diff_id of a named test layer ("busybox", "extra")."""

    def leftovers(self, cid: str) -> list[str]:
        """What the node still holds on this host for ``cid``: mounts, netns, veth,
        cgroups, directories (an empty list when nothing)."""

    def put_file(self, cid: str, path: str, data: bytes, mode: int) -> None:
        """Write a file into the (prepared, mounted) root filesystem of ``cid``."""

    def blob_path(self, digest: str) -> Path:
        """Where the datacenter's blob store keeps ``digest`` (layers a commit made)."""


def base_spec(cid: str, args: list[str], net: dict, layers: list[dict], **kw: Any) -> dict:
    """A node spec as ``ContainerService._node_spec`` makes it, for the smallest package."""
    spec = {
        "id": cid,
        "owner": "tester",
        "name": "/compute-test-" + cid[:8],
        "hostname": cid[:12],
        "domainname": "",
        "args": list(args),
        "env": [f"PATH={DEFAULT_PATH}"],
        "cwd": "/",
        "user": "",
        "tty": False,
        "open_stdin": False,
        "stdin_once": False,
        "labels": {},
        "stop_signal": "SIGTERM",
        "stop_timeout": 10,
        "resources": DEFAULT_PACKAGES[0].limits(),
        "network": net,
        "dns": [],
        "dns_search": [],
        "dns_options": [],
        "extra_hosts": [],
        "read_only": False,
        "cap_drop": [],
        "no_new_privileges": False,
        "shm_size": 64 * 1024 * 1024,
        "restart_policy": {"Name": "no", "MaximumRetryCount": 0},
        "log_driver": "json-file",
        "image_layers": layers,
    }
    spec.update(kw)
    return spec


SLEEP = ["sleep", "30"]
TRAP_TERM = ["sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.05; done"]


# -- the shared suite ----------------------------------------------------------------------


class IComputeTests:
    """Every ``ICompute`` must pass these. Subclasses provide a ``harness`` fixture whose
    teardown removes every container the test made and everything the node made."""

    async def created(self, harness: ComputeHarness, args: list[str], **kw: Any) -> str:
        spec = harness.spec(args, **kw)
        await within(harness.compute.prepare(spec))
        return spec["id"]

    async def running(self, harness: ComputeHarness, args: list[str], **kw: Any) -> str:
        cid = await self.created(harness, args, **kw)
        await within(harness.compute.start(cid))
        return cid

    async def logs(self, harness: ComputeHarness, cid: str, **options: Any) -> LogConsumer:
        consumer = LogConsumer()
        await within(harness.compute.logs(cid, options, consumer))
        return consumer

    def test_provides_interface(self, harness):
        assert verifyObject(ICompute, harness.compute)
        assert verifyObject(ILogConsumer, LogConsumer())

    @pytest_twisted.ensureDeferred
    async def test_info(self, harness):
        info = await within(harness.compute.info())
        assert info["id"] == harness.compute.node_id
        for key in ("hostname", "address", "subnet", "gateway", "ncpu", "memory", "disk"):
            assert key in info
        assert ipaddress.ip_address(info["gateway"]) in ipaddress.ip_network(info["subnet"])

    @pytest_twisted.ensureDeferred
    async def test_prepare_twice_then_start_and_die_in_order(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        spec = harness.spec(["sh", "-c", "echo hi; exit 7"])
        await within(harness.compute.prepare(spec))
        await within(harness.compute.prepare(spec))
        cid = spec["id"]
        started = await within(harness.compute.start(cid))
        assert started["status"] == "running" and started["pid"] > 0
        die = await events.wait(cid, "die")
        assert events.actions(cid) == ["start", "die"]
        assert die["state"]["exit_code"] == 7
        assert die["state"]["status"] == "exited"
        assert events.of(cid, "start")[0]["state"]["pid"] == started["pid"]
        assert (await self.logs(harness, cid)).lines == [("stdout", b"hi\n")]

    @pytest_twisted.ensureDeferred
    async def test_state_and_list(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        cid = await self.created(harness, ["sh", "-c", "sleep 0.3; exit 3"])
        state = await within(harness.compute.state(cid))
        assert set(state) == {
            "id", "status", "pid", "exit_code", "oom_killed", "started_at", "finished_at",
            "restart_count", "error",
        }  # fmt: skip
        assert (state["id"], state["status"], state["pid"]) == (cid, "created", 0)
        assert (state["restart_count"], state["oom_killed"]) == (0, False)
        listed = await within(harness.compute.list())
        assert listed[cid] == state
        json.dumps(listed)  # plain JSON, for the remote agent
        await within(harness.compute.start(cid))
        state = await within(harness.compute.state(cid))
        assert state["status"] == "running" and state["pid"] > 0 and state["started_at"]
        await events.wait(cid, "die")
        state = await within(harness.compute.state(cid))
        assert (state["status"], state["exit_code"], state["pid"]) == ("exited", 3, 0)
        assert epoch(state["finished_at"]) >= epoch(state["started_at"])
        assert await within(harness.compute.state("0" * 64)) is None
        assert "0" * 64 not in await within(harness.compute.list())

    @pytest_twisted.ensureDeferred
    async def test_unknown_container(self, harness):
        unknown = "f" * 64
        for call in (
            lambda: harness.compute.start(unknown),
            lambda: harness.compute.stop(unknown, 1),
            lambda: harness.compute.kill(unknown, "SIGKILL"),
            lambda: harness.compute.pause(unknown),
            lambda: harness.compute.top(unknown, "-ef"),
        ):
            with pytest.raises(ComputeError) as caught:
                await within(call())
            assert caught.value.kind == "not_found"

    @pytest_twisted.ensureDeferred
    async def test_stop_sigkill_after_timeout(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        cid = await self.running(harness, SLEEP)  # pid 1 ignores SIGTERM without a handler
        before = reactor.seconds()
        state = await within(harness.compute.stop(cid, 1))
        assert reactor.seconds() - before >= 0.9
        assert (state["status"], state["exit_code"]) == ("exited", 137)
        die = await events.wait(cid, "die")
        assert die["state"]["exit_code"] == 137
        assert events.actions(cid) == ["start", "die"]

    @pytest_twisted.ensureDeferred
    async def test_stop_term_trapped(self, harness):
        cid = await self.running(harness, TRAP_TERM)
        await sleep(0.2)  # the trap is set
        before = reactor.seconds()
        state = await within(harness.compute.stop(cid, 10))
        assert reactor.seconds() - before < 5
        assert (state["status"], state["exit_code"]) == ("exited", 143)

    @pytest_twisted.ensureDeferred
    async def test_stop_uses_stop_signal(self, harness):
        trap = "trap 'exit 10' USR1; while :; do sleep 0.05; done"
        cid = await self.running(harness, ["sh", "-c", trap], stop_signal="SIGUSR1")
        await sleep(0.2)
        state = await within(harness.compute.stop(cid, 10))
        assert state["exit_code"] == 10

    @pytest_twisted.ensureDeferred
    async def test_stop_then_start_at_once(self, harness):
        """``docker restart``: a start right after stop returns runs the container."""
        events = Events()
        harness.compute.subscribe(events)
        cid = await self.running(harness, TRAP_TERM)
        await sleep(0.2)
        await within(harness.compute.stop(cid, 10))
        started = await within(harness.compute.start(cid))
        assert started["status"] == "running"
        await sleep(0.5)
        state = await within(harness.compute.state(cid))
        assert state["status"] == "running" and state["pid"] == started["pid"]
        assert events.actions(cid) == ["start", "die", "start"]
        state = await within(harness.compute.stop(cid, 10))
        assert state["exit_code"] == 143
        assert events.actions(cid) == ["start", "die", "start", "die"]

    @pytest_twisted.ensureDeferred
    async def test_stop_when_not_running(self, harness):
        cid = await self.created(harness, SLEEP)
        state = await within(harness.compute.stop(cid, 1))
        assert state["status"] == "created"

    @pytest_twisted.ensureDeferred
    async def test_kill(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        trap = "trap 'echo got USR1; exit 7' USR1; while :; do sleep 0.05; done"
        cid = await self.running(harness, ["sh", "-c", trap])
        await sleep(0.2)
        assert await within(harness.compute.kill(cid, "USR1")) is None
        die = await events.wait(cid, "die")
        assert die["state"]["exit_code"] == 7
        assert (await self.logs(harness, cid)).lines == [("stdout", b"got USR1\n")]
        with pytest.raises(ComputeError) as caught:
            await within(harness.compute.kill(cid, "SIGKILL"))
        assert caught.value.kind == "conflict"

        cid = await self.running(harness, SLEEP)
        await within(harness.compute.kill(cid, "9"))
        die = await events.wait(cid, "die")
        assert die["state"]["exit_code"] == 137
        assert (await within(harness.compute.state(cid)))["status"] == "exited"

    @pytest_twisted.ensureDeferred
    async def test_kill_bad_signal(self, harness):
        cid = await self.running(harness, SLEEP)
        with pytest.raises(ComputeError) as caught:
            await within(harness.compute.kill(cid, "SIGNOPE"))
        assert caught.value.kind == "invalid"
        assert (await within(harness.compute.state(cid)))["status"] == "running"

    @pytest_twisted.ensureDeferred
    async def test_pause_unpause(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        cid = await self.running(harness, ["sh", "-c", "while :; do echo x; sleep 0.02; done"])
        await sleep(0.2)
        await within(harness.compute.pause(cid))
        assert (await within(harness.compute.state(cid)))["status"] == "paused"
        frozen = len((await self.logs(harness, cid)).entries)
        await sleep(0.4)
        assert len((await self.logs(harness, cid)).entries) == frozen
        await within(harness.compute.unpause(cid))
        assert (await within(harness.compute.state(cid)))["status"] == "running"
        await eventually(self._grown(harness, cid, frozen))
        assert events.actions(cid) == ["start", "pause", "unpause"]

    def _grown(self, harness: ComputeHarness, cid: str, count: int) -> Callable[[], Any]:
        async def check() -> bool:
            return len((await self.logs(harness, cid)).entries) > count

        return check

    @pytest_twisted.ensureDeferred
    async def test_stop_paused(self, harness):
        cid = await self.running(harness, TRAP_TERM)
        await sleep(0.2)
        await within(harness.compute.pause(cid))
        state = await within(harness.compute.stop(cid, 5))
        assert (state["status"], state["exit_code"]) == ("exited", 143)

    @pytest_twisted.ensureDeferred
    async def test_top(self, harness):
        cid = await self.running(harness, ["sleep", "31"])

        async def commands() -> list[str]:
            top = await within(harness.compute.top(cid, "-ef"))
            assert "PID" in top["Titles"] and top["Titles"][-1] == "CMD"
            return [row[-1] for row in top["Processes"]]

        # runc start returns before the process has exec'd (ps may see "runc init")
        await eventually(lambda: self._is(commands(), ["sleep 31"]))
        top = await within(harness.compute.top(cid, "-o pid,comm"))
        assert top["Titles"] == ["PID", "COMMAND"]
        assert [row[-1] for row in top["Processes"]] == ["sleep"]
        json.dumps(top)

    @staticmethod
    async def _is(awaitable: Any, expected: Any) -> bool:
        return await awaitable == expected

    @pytest_twisted.ensureDeferred
    async def test_logs_tail_since(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        script = "echo one; echo two >&2; sleep 0.1; echo three; printf four"
        cid = await self.running(harness, ["sh", "-c", script])
        await events.wait(cid, "die")
        everything = await self.logs(harness, cid)
        assert everything.lines == [
            ("stdout", b"one\n"),
            ("stderr", b"two\n"),
            ("stdout", b"three\n"),
            ("stdout", b"four"),
        ]
        assert everything.calls == ["register streaming=True", "unregister"]
        times = [epoch(t) for _, _, t in everything.entries]
        assert times == sorted(times)
        assert (await self.logs(harness, cid, tail=2)).lines == everything.lines[2:]
        assert (await self.logs(harness, cid, tail=0)).lines == []
        # (a float of unix seconds is only good to ~0.2 µs: keep clear of the boundary)
        since = await self.logs(harness, cid, since=times[2] - 1e-6)
        assert since.lines == everything.lines[2:]
        until = await self.logs(harness, cid, until=times[1] + 1e-6)
        assert until.lines == everything.lines[:2]
        # following an exited container ends at the end of its log
        assert (await self.logs(harness, cid, follow=True)).lines == everything.lines

    @pytest_twisted.ensureDeferred
    async def test_logs_follow_until_exit(self, harness):
        script = "echo a; sleep 0.6; echo b; exit 4"
        cid = await self.running(harness, ["sh", "-c", script])
        await eventually(lambda: self._has_output(harness, cid))
        consumer = LogConsumer()
        done = within(harness.compute.logs(cid, {"follow": True}, consumer))
        await eventually(lambda: consumer.lines == [("stdout", b"a\n")])
        assert not done.called
        await done
        assert consumer.lines == [("stdout", b"a\n"), ("stdout", b"b\n")]
        assert consumer.calls == ["register streaming=True", "unregister"]
        assert (await within(harness.compute.state(cid)))["exit_code"] == 4

    async def _has_output(self, harness: ComputeHarness, cid: str) -> bool:
        return bool((await self.logs(harness, cid)).entries)

    @pytest_twisted.ensureDeferred
    async def test_logs_follow_tail(self, harness):
        script = "echo 1; echo 2; echo 3; sleep 0.5; echo 4"
        cid = await self.running(harness, ["sh", "-c", script])
        await eventually(lambda: self._count(harness, cid, 3))
        consumer = await self.logs(harness, cid, follow=True, tail=1)
        assert consumer.lines == [("stdout", b"3\n"), ("stdout", b"4\n")]

    async def _count(self, harness: ComputeHarness, cid: str, n: int) -> bool:
        return len((await self.logs(harness, cid)).entries) >= n

    @pytest_twisted.ensureDeferred
    async def test_logs_producer_pause(self, harness):
        """A paused producer delivers nothing until resumed."""
        events = Events()
        harness.compute.subscribe(events)
        cid = await self.running(harness, ["sh", "-c", "seq 1 200"])
        await events.wait(cid, "die")

        class Pausing(LogConsumer):
            def entry(self, stream, data, time):
                super().entry(stream, data, time)
                if len(self.entries) == 5:
                    self.producer.pauseProducing()

        consumer = Pausing()
        done = within(harness.compute.logs(cid, {}, consumer))
        await eventually(lambda: len(consumer.entries) == 5)
        await sleep(0.3)
        assert len(consumer.entries) == 5 and not done.called
        consumer.producer.resumeProducing()
        await done
        assert [d for _, d in consumer.lines] == [b"%d\n" % i for i in range(1, 201)]

    @pytest_twisted.ensureDeferred
    async def test_logs_stop_producing(self, harness):
        cid = await self.running(harness, SLEEP)
        consumer = LogConsumer()
        done = within(harness.compute.logs(cid, {"follow": True}, consumer))
        await eventually(lambda: consumer.producer is not None)
        consumer.producer.stopProducing()
        await done
        assert consumer.calls[-1] == "unregister"

    @pytest_twisted.ensureDeferred
    async def test_attach_before_start(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        cid = await self.created(harness, ["sh", "-c", "echo first; echo oops >&2"])
        sink = Sink()
        joining = within(harness.compute.attach(cid, {"stdout": True, "stderr": True}, sink))
        await sleep(0.1)
        await within(harness.compute.start(cid))
        session = await joining
        assert await within(session.done) == "exited"
        assert sink.ended and sink.text() == b"first\noops\n"
        assert sink.text("stderr") == b"oops\n"
        await events.wait(cid, "die")
        # attaching again sees only what the next run writes
        sink = Sink()
        joining = within(harness.compute.attach(cid, {"stdout": True, "stderr": False}, sink))
        await within(harness.compute.start(cid))
        session = await joining
        await within(session.done)
        assert sink.text() == b"first\n"
        assert len((await self.logs(harness, cid)).entries) == 4

    @pytest_twisted.ensureDeferred
    async def test_attach_stdin_once(self, harness):
        cid = await self.created(harness, ["cat"], open_stdin=True, stdin_once=True)
        await within(harness.compute.start(cid))
        sink = Sink()
        session = await within(harness.compute.attach(cid, {"stdin": True, "stdout": True}, sink))
        session.write_stdin(b"ping\n")
        session.close_stdin()  # StdinOnce: the container sees EOF and exits
        assert await within(session.done) == "exited"
        assert sink.text() == b"ping\n"
        assert (await within(harness.compute.state(cid)))["exit_code"] == 0

    @pytest_twisted.ensureDeferred
    async def test_exec_attached_and_kept(self, harness):
        cid = await self.running(harness, SLEEP)
        sink = Sink()
        exec_id = secrets.token_hex(32)
        config = {"args": ["sh", "-c", "echo out; echo err >&2; exit 5"], "env": ["A=b"],
                  "stdout": True, "stderr": True}  # fmt: skip
        session = await within(harness.compute.exec_start(cid, exec_id, config, sink))
        assert session.pid > 0
        await within(session.done)
        assert sink.text("stdout") == b"out\n" and sink.text("stderr") == b"err\n"
        assert await within(harness.compute.exec_wait(exec_id)) == 5
        status = await within(harness.compute.exec_inspect(exec_id))
        assert status == {"cid": cid, "running": False, "exit_code": 5, "pid": session.pid}
        with pytest.raises(ComputeError) as e:
            await within(harness.compute.exec_start(cid, exec_id, config, None))
        assert e.value.kind == "conflict"

    @pytest_twisted.ensureDeferred
    async def test_exec_detached_env_user_cwd_stdin(self, harness):
        cid = await self.running(harness, SLEEP)
        exec_id = secrets.token_hex(32)
        script = 'test "$A" = b && test "$(pwd)" = /tmp && test "$(id -u)" = 65534'
        config = {"args": ["sh", "-c", script], "env": ["A=b"], "cwd": "/tmp", "user": "65534"}
        await within(harness.compute.exec_start(cid, exec_id, config, None))
        assert await within(harness.compute.exec_wait(exec_id)) == 0
        sink = Sink()
        cat = secrets.token_hex(32)
        session = await within(
            harness.compute.exec_start(cid, cat, {"args": ["cat"], "stdin": True}, sink)
        )
        session.write_stdin(b"to cat\n")
        session.close_stdin()
        await within(session.done)
        assert sink.text() == b"to cat\n"
        assert await within(harness.compute.exec_wait(cat)) == 0

    @pytest_twisted.ensureDeferred
    async def test_exec_tty_size_and_resize(self, harness):
        cid = await self.running(harness, SLEEP)
        sink = Sink()
        exec_id = secrets.token_hex(32)
        config = {"args": ["sh", "-c", "stty size; read x; stty size"], "tty": True,
                  "stdin": True, "stdout": True, "size": [33, 99]}  # fmt: skip
        session = await within(harness.compute.exec_start(cid, exec_id, config, sink))
        await eventually(lambda: b"33 99" in sink.text())
        await within(harness.compute.exec_resize(cid, exec_id, 44, 111))
        session.write_stdin(b"\n")
        await within(session.done)
        assert b"44 111" in sink.text()
        assert await within(harness.compute.exec_wait(exec_id)) == 0
        with pytest.raises(ComputeError) as e:
            await within(harness.compute.exec_resize(cid, exec_id, 1, 1))
        assert e.value.kind == "conflict"

    @pytest_twisted.ensureDeferred
    async def test_exec_refused(self, harness):
        cid = await self.created(harness, SLEEP)
        with pytest.raises(ComputeError) as e:
            await within(
                harness.compute.exec_start(cid, secrets.token_hex(32), {"args": ["true"]}, None)
            )
        assert e.value.kind == "conflict"
        await within(harness.compute.start(cid))
        exec_id = secrets.token_hex(32)
        with pytest.raises(ComputeError) as e:
            await within(harness.compute.exec_start(cid, exec_id, {"args": ["nosuch"]}, None))
        assert e.value.kind == "invalid"
        assert (await within(harness.compute.exec_inspect(exec_id)))["exit_code"] == 127
        with pytest.raises(ComputeError) as e:
            await within(harness.compute.exec_inspect(secrets.token_hex(32)))
        assert e.value.kind == "not_found"

    @pytest_twisted.ensureDeferred
    async def test_resize_without_tty(self, harness):
        cid = await self.running(harness, SLEEP)
        assert await within(harness.compute.resize(cid, 40, 100)) is None
        assert (await within(harness.compute.state(cid)))["status"] == "running"

    @pytest_twisted.ensureDeferred
    async def test_remove(self, harness):
        running = await self.running(harness, SLEEP)
        created = await self.created(harness, SLEEP)
        assert harness.leftovers(running)  # the check sees what a container holds
        for cid in (running, created):
            await within(harness.compute.remove(cid))
            await within(harness.compute.remove(cid))
            assert await within(harness.compute.state(cid)) is None
            assert cid not in await within(harness.compute.list())
            assert harness.leftovers(cid) == []

    @pytest_twisted.ensureDeferred
    async def test_remove_paused_and_never_seen(self, harness):
        cid = await self.running(harness, SLEEP)
        await within(harness.compute.pause(cid))
        await within(harness.compute.remove(cid))
        assert harness.leftovers(cid) == []
        await within(harness.compute.remove("e" * 64))

    @pytest_twisted.ensureDeferred
    async def test_restart_on_failure_counts(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        policy = {"Name": "on-failure", "MaximumRetryCount": 3}
        cid = await self.running(harness, ["sh", "-c", "echo run; exit 3"], restart_policy=policy)
        die = await events.wait(cid, "die", 4)
        assert die["state"]["restart_count"] == 3
        await sleep(1.0)  # the back-off after a 4th run would be 0.8 s
        assert events.actions(cid) == ["start", "die"] * 4
        state = await within(harness.compute.state(cid))
        assert (state["status"], state["exit_code"], state["restart_count"]) == ("exited", 3, 3)
        assert len((await self.logs(harness, cid)).entries) == 4
        # a manual start resets the count
        await within(harness.compute.start(cid))
        assert (await within(harness.compute.state(cid)))["restart_count"] == 0

    @pytest_twisted.ensureDeferred
    async def test_restart_on_failure_not_after_success(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        policy = {"Name": "on-failure", "MaximumRetryCount": 3}
        cid = await self.running(harness, ["true"], restart_policy=policy)
        await events.wait(cid, "die")
        await sleep(0.4)
        assert events.actions(cid) == ["start", "die"]

    @pytest_twisted.ensureDeferred
    async def test_restart_always_until_stop(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        policy = {"Name": "always", "MaximumRetryCount": 0}
        cid = await self.running(harness, ["sh", "-c", "exit 0"], restart_policy=policy)
        await events.wait(cid, "start", 3)
        state = await within(harness.compute.stop(cid, 1))
        assert state["status"] == "exited"
        count = len(events.of(cid, "start"))
        await sleep(1.0)
        assert len(events.of(cid, "start")) == count
        state = await within(harness.compute.state(cid))
        assert state["status"] == "exited" and state["restart_count"] >= 2

    @pytest_twisted.ensureDeferred
    async def test_restart_always_stop_while_running(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        policy = {"Name": "always", "MaximumRetryCount": 0}
        cid = await self.running(harness, TRAP_TERM, restart_policy=policy)
        await sleep(0.2)
        await within(harness.compute.kill(cid, "TERM"))  # exits 143: restarted
        await events.wait(cid, "start", 2)
        await sleep(0.2)
        state = await within(harness.compute.stop(cid, 5))
        assert (state["status"], state["exit_code"], state["restart_count"]) == ("exited", 143, 1)
        await sleep(0.5)
        assert events.actions(cid) == ["start", "die", "start", "die"]

    @pytest_twisted.ensureDeferred
    async def test_start_failure(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        cid = await self.created(harness, ["/bin/fixme", "arg"])
        for _ in range(2):  # failing leaves it as it was: it fails the same way again
            with pytest.raises(ComputeError) as caught:
                await within(harness.compute.start(cid))
            assert caught.value.kind == "invalid"
            state = await within(harness.compute.state(cid))
            assert (state["status"], state["exit_code"], state["pid"]) == ("created", 127, 0)
            assert "fixme" in state["error"]
        assert "start" not in events.actions(cid)
        harness.put_file(cid, "/bin/fixme", b'#!/bin/sh\necho fixed "$@"\n', 0o755)
        started = await within(harness.compute.start(cid))
        assert started["status"] == "running" and started["error"] == ""
        die = await events.wait(cid, "die")
        assert die["state"]["exit_code"] == 0
        assert (await self.logs(harness, cid)).lines == [("stdout", b"fixed arg\n")]

    @pytest_twisted.ensureDeferred
    async def test_start_running_is_conflict(self, harness):
        cid = await self.running(harness, SLEEP)
        with pytest.raises(ComputeError) as caught:
            await within(harness.compute.start(cid))
        assert caught.value.kind == "conflict"

    @pytest_twisted.ensureDeferred
    async def test_prune_layers(self, harness):
        keep = await self.created(harness, ["true"])
        extra = await self.created(harness, ["cat", "/extra/hello"], layers=("busybox", "extra"))
        pruned = await within(harness.compute.prune_layers())
        assert harness.diff_id("busybox") not in pruned
        assert harness.diff_id("extra") not in pruned
        await within(harness.compute.remove(extra))
        assert await within(harness.compute.prune_layers()) == [harness.diff_id("extra")]
        assert await within(harness.compute.prune_layers()) == []
        events = Events()
        harness.compute.subscribe(events)
        await within(harness.compute.start(keep))
        assert (await events.wait(keep, "die"))["state"]["exit_code"] == 0

    @pytest_twisted.ensureDeferred
    async def test_disk_usage_grows(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        write = "dd if=/dev/zero of=/tmp/blob bs=1024 count=512 2>/dev/null"
        cid = await self.created(harness, ["sh", "-c", write])
        before = await within(harness.compute.disk_usage(cid))
        assert before["rootfs"] >= before["rw"] >= 0
        await within(harness.compute.start(cid))
        await events.wait(cid, "die")
        after = await within(harness.compute.disk_usage(cid))
        assert after["rw"] - before["rw"] >= 512 * 1024
        assert after["rootfs"] - after["rw"] == before["rootfs"] - before["rw"]

    @pytest_twisted.ensureDeferred
    async def test_changes_commit_layer_and_export(self, harness):
        events = Events()
        harness.compute.subscribe(events)
        cid = await self.created(harness, ["sh", "-c", "echo made > /made; rm /bin/ls"])
        await within(harness.compute.start(cid))
        await events.wait(cid, "die")
        found = await within(harness.compute.changes(cid))
        assert {"Path": "/made", "Kind": 1} in found and {"Path": "/bin/ls", "Kind": 2} in found
        assert not any(c["Path"] in ("/proc", "/etc/hosts") for c in found)
        layer = await within(harness.compute.commit_layer(cid))
        with tarfile.open(harness.blob_path(layer["digest"]), "r:gz") as tar:
            names = set(tar.getnames())
        assert {"made", "bin/.wh.ls"} <= names and layer["diff_id"].startswith("sha256:")

        class Collect:
            def __init__(self) -> None:
                self.data = bytearray()

            def registerProducer(self, producer, streaming):
                pass

            def unregisterProducer(self):
                pass

            def write(self, data):
                self.data += data

        collected = Collect()
        await within(harness.compute.export(cid, collected))
        with tarfile.open(fileobj=io.BytesIO(bytes(collected.data))) as tar:
            names = set(tar.getnames())
        assert "made" in names and "bin/sh" in names and "bin/ls" not in names

    @pytest_twisted.ensureDeferred
    async def test_archive_stat_get_put_inside_the_root(self, harness):
        cid = await self.created(harness, SLEEP)
        harness.put_file(cid, "/etc/f", b"in the root\n", 0o640)
        found = await within(harness.compute.archive_stat(cid, "/etc/f"))
        assert found["name"] == "f" and found["size"] == 12 and found["mode"] & 0o777 == 0o640
        folder = await within(harness.compute.archive_stat(cid, "/etc"))
        assert folder["mode"] & (1 << 31)  # Go's ModeDir
        assert await self.cp_out(harness, cid, "/etc/f") == {"f": b"in the root\n"}
        # a tar in (with a symlink that points far above the root), then out again
        tar = _tar([("sub/g", b"put\n", ""), ("up", b"", "../../../../..")])
        await within(harness.compute.archive_put(cid, "/etc", io.BytesIO(tar).read, False))
        assert await self.cp_out(harness, cid, "/etc/sub/g") == {"g": b"put\n"}
        # the symlink resolves inside the root: /etc/up/etc/f is the container's /etc/f
        assert await self.cp_out(harness, cid, "/etc/up/etc/f") == {"f": b"in the root\n"}
        # an escaping tar writes nothing at all
        tar = _tar([("ok", b"x", ""), ("../../escaped", b"x", "")])
        with pytest.raises(ComputeError) as e:
            await within(harness.compute.archive_put(cid, "/etc", io.BytesIO(tar).read, False))
        assert e.value.kind == "invalid"
        with pytest.raises(ComputeError) as e:
            await within(harness.compute.archive_stat(cid, "/etc/ok"))
        assert e.value.kind == "not_found"

    async def cp_out(self, harness: ComputeHarness, cid: str, path: str) -> dict[str, bytes]:
        collected = _Collect()
        await within(harness.compute.archive_get(cid, path, collected))
        with tarfile.open(fileobj=io.BytesIO(bytes(collected.data))) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}

    @pytest_twisted.ensureDeferred
    async def test_stats(self, harness):
        cid = await self.created(harness, SLEEP)
        idle = await within(harness.compute.stats(cid))
        assert idle["cpu_stats"]["cpu_usage"]["total_usage"] == 0
        await within(harness.compute.start(cid))
        sample = await within(harness.compute.stats(cid))
        assert sample["pids_stats"]["current"] >= 1 and sample["memory_stats"]["usage"] > 0
        with pytest.raises(ComputeError) as e:
            await within(harness.compute.stats(secrets.token_hex(32)))
        assert e.value.kind == "not_found"


class _Collect:
    """A consumer that keeps what it is given."""

    def __init__(self) -> None:
        self.data = bytearray()

    def registerProducer(self, producer, streaming) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.data += data


def _tar(entries: list[tuple[str, bytes, str]]) -> bytes:
    """(name, data, symlink target or "") -> a tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- LocalCompute ------------------------------------------------------------------------


def free_subnet() -> str:
    """A random 10.x.y.0/24 that no interface on this host uses."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        x, y = random.randrange(1, 255), random.randrange(256)
        if f" 10.{x}.{y}." not in used:
            return f"10.{x}.{y}.0/24"
    raise RuntimeError("no free 10.x.y.0/24")


def _layers() -> dict[str, Any]:
    extra = LayerBuilder().file("extra/hello", "hello\n").build()
    return {"busybox": busybox_image().layers[0], "extra": extra}


class LocalHarness:
    """LocalCompute nodes over one root in a temporary directory, with their own bridge.
    ``data_dir`` and ``bridge`` are what ``tests.nodecleanup.purge_node`` expects."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path
        self.root = tmp_path / "node"
        self.blobs = tmp_path / "blobs"
        self.blobs.mkdir()
        self.bridge_config = BridgeConfig("sdt" + secrets.token_hex(4), free_subnet())
        self.bridge = self.bridge_config.name
        self.layers = _layers()
        for layer in self.layers.values():
            self.blob_path(layer.digest).write_bytes(layer.data)
        self.computes: list[LocalCompute] = []
        self._hosts = ipaddress.ip_network(self.bridge_config.subnet).hosts()
        next(self._hosts)  # the gateway
        self.made: list[str] = []
        self.compute: LocalCompute | None = None

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "_")

    async def open(self) -> LocalCompute:
        """A new LocalCompute over the root (as a restarted sdcd makes one), opened."""
        compute = LocalCompute(reactor, self.root, self.blob_path, self.bridge_config)
        self.computes.append(compute)
        await within(compute.open())
        self.compute = compute
        return compute

    async def close(self, compute: LocalCompute) -> None:
        """What sdcd's shutdown does: the containers keep running under conmon."""
        await compute.close()

    def spec(self, args: list[str], layers: tuple[str, ...] = ("busybox",), **kw: Any) -> dict:
        cid = secrets.token_hex(32)
        self.made.append(cid)
        ip = str(next(self._hosts))
        net = {
            "ip": ip,
            "prefix": self.bridge_config.prefixlen,
            "gateway": self.bridge_config.gateway,
            "mac": mac_for_ip(ip),
        }
        image_layers = [
            {
                "digest": self.layers[name].digest,
                "diff_id": self.layers[name].diff_id,
                "media_type": self.layers[name].media_type,
                "size": self.layers[name].size,
            }
            for name in layers
        ]
        return base_spec(cid, args, net, image_layers, **kw)

    def diff_id(self, layer: str) -> str:
        return self.layers[layer].diff_id

    def container_dir(self, cid: str) -> Path:
        return self.root / "containers" / cid

    def leftovers(self, cid: str) -> list[str]:
        found = []
        directory = self.container_dir(cid)
        found += [f"mount {m}" for m in rootfs.mount_points() if m.startswith(str(directory))]
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        if network.netns_name(cid) in netns.split():
            found.append(f"netns {network.netns_name(cid)}")
        if os.path.lexists(network.netns_path(cid)):
            found.append(f"netns file {network.netns_path(cid)}")
        if os.path.lexists(f"/sys/class/net/{network.host_veth_name(cid)}"):
            found.append(f"veth {network.host_veth_name(cid)}")
        if directory.exists():
            found.append(f"dir {directory}")
        found += [f"cgroup {cg}" for cg in CGROUP_ROOT.glob(f"*/sdcd/{cid}")]
        runtime = self.root / "runtime"
        found += [f"runtime {p}" for p in runtime.glob(f"*/{cid}")]
        return found

    def put_file(self, cid: str, path: str, data: bytes, mode: int) -> None:
        target = self.container_dir(cid) / "bundle" / "rootfs" / path.lstrip("/")
        target.write_bytes(data)
        target.chmod(mode)

    async def teardown(self) -> None:
        """Remove every container (through the last node), close every node, drop the
        bridge; then purge whatever that missed and fail if anything was left."""
        missed: list[str] = []
        clean = False
        try:
            if self.compute is not None:
                for cid in set(self.made) | set(await within(self.compute.list())):
                    with contextlib.suppress(Exception):
                        await within(self.compute.remove(cid))
                    missed += self.leftovers(cid)
            for compute in self.computes:
                await self.close(compute)
            await within(network.remove_bridge(self.bridge))
            clean = not missed
        finally:
            if not clean:  # the safety net (it blocks, and sleeps: only when needed)
                purge_node(self)
        assert missed == [], missed


class TestLocalCompute(IComputeTests):
    """The suite against LocalCompute."""

    @pytest.fixture
    def harness(self, tmp_path):
        harness = LocalHarness(tmp_path)
        try:
            pytest_twisted.blockon(defer.ensureDeferred(harness.open()))
            yield harness
        finally:
            pytest_twisted.blockon(defer.ensureDeferred(harness.teardown()))


# -- LocalCompute only: recovery and crash consistency -----------------------------------


@pytest.fixture
def local(tmp_path):
    harness = LocalHarness(tmp_path)
    try:
        pytest_twisted.blockon(defer.ensureDeferred(harness.open()))
        yield harness
    finally:
        pytest_twisted.blockon(defer.ensureDeferred(harness.teardown()))


async def _prepared(local: LocalHarness, args: list[str], **kw: Any) -> str:
    spec = local.spec(args, **kw)
    await within(local.compute.prepare(spec))
    return spec["id"]


@pytest_twisted.ensureDeferred
async def test_reopen_sees_running_container_and_its_exit(local):
    first = local.compute
    old_events = Events()
    first.subscribe(old_events)
    cid = await _prepared(local, ["sh", "-c", "sleep 1; echo done; exit 5"])
    started = await within(first.start(cid))
    await local.close(first)

    second = await local.open()
    events = Events()
    second.subscribe(events)
    state = await within(second.state(cid))
    assert state["status"] == "running" and state["pid"] == started["pid"]
    assert (await within(second.list()))[cid]["pid"] == started["pid"]
    die = await events.wait(cid, "die")
    assert die["state"]["exit_code"] == 5
    assert die["state"]["status"] == "exited"
    assert old_events.actions(cid) == ["start"]  # the closed node no longer acts
    consumer = LogConsumer()
    await within(second.logs(cid, {}, consumer))
    assert consumer.lines == [("stdout", b"done\n")]


@pytest_twisted.ensureDeferred
async def test_reopen_follows_logs_of_recovered_container(local):
    cid = await _prepared(local, ["sh", "-c", "echo a; sleep 1; echo b"])
    await within(local.compute.start(cid))
    await local.close(local.compute)
    second = await local.open()
    consumer = LogConsumer()
    await within(second.logs(cid, {"follow": True}, consumer))
    assert consumer.lines == [("stdout", b"a\n"), ("stdout", b"b\n")]


@pytest_twisted.ensureDeferred
async def test_reopen_restarts_always_container_that_exited_meanwhile(local):
    first = local.compute
    policy = {"Name": "always", "MaximumRetryCount": 0}
    cid = await _prepared(local, ["sh", "-c", "sleep 0.3; exit 3"], restart_policy=policy)
    started = await within(first.start(cid))
    await local.close(first)
    exit_file = local.root / "runtime" / "exits" / cid
    await eventually(exit_file.exists)

    second = LocalCompute(reactor, local.root, local.blob_path, local.bridge_config)
    local.computes.append(second)
    local.compute = second
    events = Events()
    second.subscribe(events)
    await within(second.open())
    die = await events.wait(cid, "die")
    assert die["state"]["exit_code"] == 3
    start = await events.wait(cid, "start")
    assert start["state"]["restart_count"] == 1
    assert start["state"]["pid"] not in (0, started["pid"])
    assert events.actions(cid)[:2] == ["die", "start"]


@pytest_twisted.ensureDeferred
async def test_reopen_adopts_start_it_did_not_record(local):
    """The node went down after conmon started the process, before state.json said so."""
    cid = await _prepared(local, TRAP_TERM)
    state_file = local.container_dir(cid) / "state.json"
    unrecorded = state_file.read_text()
    started = await within(local.compute.start(cid))
    await local.close(local.compute)
    state_file.write_text(unrecorded)
    second = await local.open()
    state = await within(second.state(cid))
    assert (state["status"], state["pid"]) == ("running", started["pid"])
    assert state["started_at"]
    await sleep(0.2)
    assert (await within(second.stop(cid, 5)))["exit_code"] == 143


@pytest_twisted.ensureDeferred
async def test_reopen_keeps_exited_and_created(local):
    events = Events()
    local.compute.subscribe(events)
    exited = await _prepared(local, ["sh", "-c", "exit 9"])
    await within(local.compute.start(exited))
    await events.wait(exited, "die")
    created = await _prepared(local, ["true"])
    await local.close(local.compute)
    second = await local.open()
    listed = await within(second.list())
    assert (listed[exited]["status"], listed[exited]["exit_code"]) == ("exited", 9)
    assert listed[created]["status"] == "created"
    events = Events()
    second.subscribe(events)
    await within(second.start(created))
    assert (await events.wait(created, "die"))["state"]["exit_code"] == 0


@pytest_twisted.ensureDeferred
async def test_half_prepared_container_is_removed(local):
    """A crash after the dir, spec.json and netns were made, before anything else."""
    spec = local.spec(["true"])
    cid = spec["id"]
    directory = local.container_dir(cid)
    directory.mkdir(parents=True)
    (directory / "spec.json").write_text(json.dumps(spec))
    subprocess.run(["ip", "netns", "add", network.netns_name(cid)], check=True)
    assert local.leftovers(cid)
    await local.close(local.compute)
    second = await local.open()
    assert (await within(second.state(cid)))["status"] == "created"
    await within(second.remove(cid))
    assert local.leftovers(cid) == []


@pytest_twisted.ensureDeferred
async def test_half_prepared_container_unknown_to_node_is_removed(local):
    """``remove`` of an id the node never loaded still finds its leftovers by name."""
    spec = local.spec(["true"])
    cid = spec["id"]
    directory = local.container_dir(cid)
    (directory / "upper").mkdir(parents=True)
    subprocess.run(["ip", "netns", "add", network.netns_name(cid)], check=True)
    await within(local.compute.remove(cid))
    assert local.leftovers(cid) == []


@pytest_twisted.ensureDeferred
async def test_prepare_failing_half_way_is_undone_or_finished(local, monkeypatch):
    """The endpoint fails once after the overlay is mounted: remove undoes it all, and
    a retried prepare finishes the job."""
    real = network.create_endpoint
    calls = []

    async def failing(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise network.NetworkError(["ip"], "injected failure")
        await real(*args)

    monkeypatch.setattr(network, "create_endpoint", failing)
    spec = local.spec(["true"])
    cid = spec["id"]
    with pytest.raises(Exception, match="injected failure"):
        await within(local.compute.prepare(spec))
    assert any(item.startswith("mount") for item in local.leftovers(cid))
    await within(local.compute.prepare(spec))
    events = Events()
    local.compute.subscribe(events)
    await within(local.compute.start(cid))
    assert (await events.wait(cid, "die"))["state"]["exit_code"] == 0

    other = local.spec(["true"])
    with pytest.raises(Exception, match="injected failure"):
        calls.clear()
        await within(local.compute.prepare(other))
    await within(local.compute.remove(other["id"]))
    assert local.leftovers(other["id"]) == []


@pytest_twisted.ensureDeferred
async def test_prepare_mount_failing_once(local, monkeypatch):
    real = rootfs.mount_overlay
    calls = []

    async def failing(*args: Any, **kw: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise rootfs.RootfsError("injected mount failure")
        await real(*args, **kw)

    monkeypatch.setattr(rootfs, "mount_overlay", failing)
    spec = local.spec(["true"])
    with pytest.raises(ComputeError, match="injected mount failure"):
        await within(local.compute.prepare(spec))
    await within(local.compute.remove(spec["id"]))
    assert local.leftovers(spec["id"]) == []
    await within(local.compute.prepare(spec))  # the same id again, from scratch
    assert (await within(local.compute.state(spec["id"])))["status"] == "created"


@pytest_twisted.ensureDeferred
async def test_open_removes_unreadable_container_dir(local):
    cid = secrets.token_hex(32)
    broken = local.container_dir(cid)
    broken.mkdir(parents=True)
    (broken / "spec.json").write_text("{not json")
    no_spec = local.container_dir(secrets.token_hex(32))
    (no_spec / "upper").mkdir(parents=True)
    await local.close(local.compute)
    second = await local.open()
    assert not broken.exists() and not no_spec.exists()
    assert await within(second.list()) == {}


@pytest_twisted.ensureDeferred
async def test_open_removes_unreadable_container_with_mount_and_netns(local):
    """An unreadable spec.json beside a mounted rootfs: the mount and netns go too, and
    nothing under the mount point is deleted through it."""
    cid = await _prepared(local, ["true"])
    directory = local.container_dir(cid)
    (directory / "spec.json").write_text("")
    await local.close(local.compute)
    await local.open()
    assert local.leftovers(cid) == []
    assert (local.root / "layers" / "layers").is_dir()
    hello = local.root / "layers" / "layers"
    assert any((p / "bin" / "busybox").exists() for p in hello.iterdir())


# -- the suite against the agent's internal API ---------------------------------------------


class _NodeBlobs:
    """The agent's view of its blob cache, for ``blob_get`` (committed layers)."""

    def __init__(self, path_of: Callable[[str], Path]) -> None:
        self._path_of = path_of

    def has(self, digest: str) -> bool:
        return self._path_of(digest).exists()

    def path(self, digest: str) -> Path:
        return self._path_of(digest)


class RemoteHarness(LocalHarness):
    """A LocalCompute served by the agent's internal API on loopback mutual TLS, reached
    through ``RemoteCompute``: the suite's calls all cross the wire. ``blob_path`` is the
    image store's (sdcd's side), so a commit must have been published through the agent."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        ca_cert, ca_key = internal.internal_ca(tmp_path / "pki", "test")
        self.node_id = secrets.token_hex(8)
        self.node_material = internal.issue(ca_cert, ca_key, "node", self.node_id, ["127.0.0.1"])
        self.api_material = internal.issue(ca_cert, ca_key, "api", "tester", [])
        self.store = FileBlobStore(tmp_path / "store", reactor)
        self.factory: AgentFactory | None = None
        self.port: Any = None
        self.local: LocalCompute | None = None

    def node_blob(self, digest: str) -> Path:
        return super().blob_path(digest)

    def blob_path(self, digest: str) -> Path:
        if not hasattr(self, "store"):  # the base class writing the node's layers
            return super().blob_path(digest)
        return self.store.path(digest)

    async def open(self) -> RemoteCompute:
        local = LocalCompute(
            reactor, self.root, self.node_blob, self.bridge_config, node_id=self.node_id
        )
        self.computes.append(local)
        await within(local.open())
        self.local = local
        if self.factory is None:
            self.factory = AgentFactory(local, _NodeBlobs(self.node_blob))
            self.port = agent_server.listen(
                reactor, 0, "127.0.0.1", self.node_material, self.factory
            )
        self.factory.compute = local
        remote = RemoteCompute(
            reactor,
            self.node_id,
            "127.0.0.1",
            self.port.getHost().port,
            self.api_material,
            self.store,
        )
        self.computes.append(remote)
        self.compute = remote
        return remote

    async def close(self, compute: Any) -> None:
        await compute.close()

    async def teardown(self) -> None:
        try:
            await super().teardown()
        finally:
            if self.port is not None:
                await self.port.stopListening()


class TestRemoteCompute(IComputeTests):
    """The suite against RemoteCompute → agent → LocalCompute."""

    @pytest.fixture
    def harness(self, tmp_path):
        harness = RemoteHarness(tmp_path)
        try:
            pytest_twisted.blockon(defer.ensureDeferred(harness.open()))
            yield harness
        finally:
            pytest_twisted.blockon(defer.ensureDeferred(harness.teardown()))
