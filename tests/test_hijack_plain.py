"""The hijack module over plain TCP, without TLS: sdcd's own container and exec routes,
resources and services, over a real LocalCompute node (runc, conmon) and real Redis, on
a plain loopback listener in this process (sdcd itself listens only with TLS, since
that is how it knows the tenant). The blocking raw client runs in a thread so that the
reactor keeps serving. The TLS cases are in test_hijack.py."""

from __future__ import annotations

import json
import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.web.resource import Resource
from twisted.web.server import Site

from sdcd.api.containers import ContainerRoutes
from sdcd.api.execs import ExecRoutes
from sdcd.compute.fleet import Fleet
from sdcd.core.containers import ContainerService
from sdcd.core.execs import ExecService
from sdcd.store import redis as redis_store
from sdcd.store.records import Account, ContainerRecord, ContainerState
from tests.hijackclient import HijackClient, split_streams
from tests.test_compute import LocalHarness, eventually, within

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for runc and netns")

ACCOUNT = Account(login="plain", uuid="uuid-plain", created="2026-11-28T00:00:00Z")


class _Root(Resource):
    """What DockerRoot does once TLS has named the account: mark the request, route on."""

    def __init__(self, children: dict[bytes, Resource]) -> None:
        super().__init__()
        self._children = children

    def getChildWithDefault(self, path: bytes, request):
        request.sdcd_account = ACCOUNT
        request.sdcd_version = (1, 41)
        return self._children[path]


class Plain:
    """The server, its node and store; ``container()`` makes a container it knows."""

    def __init__(self, harness: LocalHarness, store) -> None:
        self.harness = harness
        self.store = store
        fleet = Fleet(reactor, None, local=harness.compute)
        self.containers = ContainerService(store, None, fleet, None, (), {"name": "bridge"})
        exec_routes = ExecRoutes(ExecService(store, self.containers))
        routes = ContainerRoutes(self.containers, time.time, exec_routes)
        root = _Root({b"containers": routes.resource(), b"exec": exec_routes.resource()})
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")

    async def container(self, args: list[str], **kw) -> str:
        spec = self.harness.spec(args, owner=ACCOUNT.login, **kw)
        config = {"Tty": kw.get("tty", False), "OpenStdin": kw.get("open_stdin", False)}
        record = ContainerRecord(
            id=spec["id"], login=ACCOUNT.login, name="p" + spec["id"][:8],
            created="2026-11-28T00:00:00Z", seq=1, image="busybox", image_id="sha256:0",
            config=config, host_config={}, package={}, node=self.harness.compute.node_id,
            network={}, ports={},
        )  # fmt: skip
        await self.store.create_container(record, ContainerState())
        await within(self.harness.compute.prepare(spec))
        return spec["id"]

    async def status(self, cid: str) -> str:
        return (await self.store.get_container(ACCOUNT.login, cid))[1].status

    def client(self) -> HijackClient:
        return HijackClient("127.0.0.1", self.port.getHost().port, None, timeout=20)


@pytest.fixture
def plain(tmp_path, redis_url, key_prefix):
    harness = LocalHarness(tmp_path)
    pool = pytest_twisted.blockon(redis_store.connect(redis_url))
    server = None
    try:
        pytest_twisted.blockon(defer.ensureDeferred(harness.open()))
        server = Plain(harness, redis_store.RedisStateStore(pool, key_prefix))
        yield server
    finally:
        if server is not None:
            pytest_twisted.blockon(server.port.stopListening())
        pytest_twisted.blockon(defer.ensureDeferred(harness.teardown()))
        pytest_twisted.blockon(pool.disconnect())


def _in_thread(fn, *args):
    return threads.deferToThread(fn, *args)


def _attach_early_stdin_then_fin(port: int, cid: str, data: bytes):
    with HijackClient("127.0.0.1", port, None, timeout=20) as c:
        head = c.request(
            "POST", f"/containers/{cid}/attach?stdin=1&stdout=1&stderr=1&stream=1", early=data
        )
        c.half_close("fin")
        return head, c.read_all(20), c.fin_received


@pytest_twisted.ensureDeferred
async def test_attach_early_stdin_and_fin_over_plain_tcp(plain):
    """The GitLab-runner order: attach (stdin in the same packet as the request), start,
    FIN; the container reads it all, sees EOF, and the output comes back in frames."""
    cid = await plain.container(["sh", "-c", "cat; echo bye >&2"], open_stdin=True, stdin_once=True)
    port = plain.port.getHost().port
    data = b"".join(b"line %d\n" % i for i in range(2000))
    attached = _in_thread(_attach_early_stdin_then_fin, port, cid, data)
    await eventually(lambda: plain.harness.compute._runtime._start_hooks.get(cid))
    await within(plain.harness.compute.start(cid))
    head, output, fin = await within(attached, 30)
    assert head.status == 101 and head.headers["upgrade"] == "tcp"
    assert split_streams(output) == (data, b"bye\n")
    assert fin  # our end closed when the output ended
    await eventually(lambda: _exited(plain, cid))


async def _exited(plain: Plain, cid: str) -> bool:
    return (await plain.store.get_container(ACCOUNT.login, cid))[1].status == "exited"


def _exec_over_plain(port: int, cid: str, data: bytes):
    with HijackClient("127.0.0.1", port, None, timeout=20) as c:
        body = {"Cmd": ["sh", "-c", "cat; exit 4"], "AttachStdin": True, "AttachStdout": True,
                "AttachStderr": True}  # fmt: skip
        created = c.request("POST", f"/containers/{cid}/exec", body=body, upgrade=False)
    exec_id = json.loads(created.body)["Id"]
    with HijackClient("127.0.0.1", port, None, timeout=20) as c:
        head = c.request("POST", f"/exec/{exec_id}/start", body={"Tty": False}, early=data)
        c.half_close("fin")
        output = c.read_all(20)
    with HijackClient("127.0.0.1", port, None, timeout=20) as c:
        inspect = c.request("GET", f"/exec/{exec_id}/json", upgrade=False)
    return created.status, head, output, json.loads(inspect.body)


@pytest_twisted.ensureDeferred
async def test_exec_early_stdin_fin_and_exit_code_over_plain_tcp(plain):
    cid = await plain.container(["sleep", "30"])
    await within(plain.harness.compute.start(cid))
    await eventually(lambda: _running(plain, cid))
    data = os.urandom(3 * 1024 * 1024).replace(b"\x10", b"")  # no ctrl-p: no detach
    port = plain.port.getHost().port
    created, head, output, inspect = await within(_in_thread(_exec_over_plain, port, cid, data), 30)
    assert created == 201 and head.status == 101

    assert split_streams(output) == (data, b"")
    assert inspect["ExitCode"] == 4 and inspect["Running"] is False


async def _running(plain: Plain, cid: str) -> bool:
    return await plain.status(cid) == "running"


def _exec_detach_at_once(port: int, cid: str):
    with HijackClient("127.0.0.1", port, None, timeout=20) as c:
        body = {"Cmd": ["sh", "-c", "sleep 1; exit 4"], "AttachStdin": True, "AttachStdout": True}
        created = c.request("POST", f"/containers/{cid}/exec", body=body, upgrade=False)
    exec_id = json.loads(created.body)["Id"]
    with HijackClient("127.0.0.1", port, None, timeout=20) as c:
        head = c.request("POST", f"/exec/{exec_id}/start", body={"Tty": False}, early=b"\x10\x11")
        output = c.read_all(20)
    return exec_id, head, output


@pytest_twisted.ensureDeferred
async def test_exec_detached_by_keys_before_it_runs_still_runs(plain):
    """ctrl-p ctrl-q in the first packet: the client is gone at once, the exec runs on
    (as a detach does later) and its exit code is recorded."""
    cid = await plain.container(["sleep", "30"])
    await within(plain.harness.compute.start(cid))
    await eventually(lambda: _running(plain, cid))
    port = plain.port.getHost().port
    exec_id, head, output = await within(_in_thread(_exec_detach_at_once, port, cid), 30)
    assert head.status == 101 and output == b""
    await eventually(lambda: _exit_code(plain, exec_id, 4))


async def _exit_code(plain: Plain, exec_id: str, code: int) -> bool:
    record = await plain.store.get_exec(ACCOUNT.login, exec_id)
    return record.exit_code == code
