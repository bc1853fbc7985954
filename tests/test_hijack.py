"""Attach through the real sdcd over loopback TLS (1.2 and 1.3, client certificates),
driven by a raw-socket client (tests/hijackclient.py) that controls every byte: the
upgrade head, stdin sent with the request, half-close by close_notify or bare FIN, the
server's close_notify before its FIN, framing, logs replay, large output, a slow reader
against sdcd's memory, clients that vanish, several clients, detach keys, old API
versions and tenancy."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from tests.conftest import Daemon, needs_root, running_daemon, wait_for
from tests.dockercli import User, busybox_user
from tests.hijackclient import (
    STDERR,
    STDOUT,
    Demuxer,
    Head,
    HijackClient,
    demux,
    split_streams,
)

pytestmark = needs_root

V = "/v1.41"
TLS = ["1.2", "1.3"]
MiB = 1 << 20


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("hijack"))


@pytest.fixture(scope="module")
def alice(sdcd, registry, tmp_path_factory):
    return busybox_user(sdcd, tmp_path_factory.mktemp("alice"), registry, "alice")


@pytest.fixture(scope="module")
def bob(sdcd, tmp_path_factory):
    return User(sdcd, tmp_path_factory.mktemp("bob"), "bob")


def api(u: User, method: str, path: str, body: dict | None = None) -> Head:
    """One ordinary API request with the raw client (no upgrade)."""
    with HijackClient.for_user(u) as c:
        return c.request(method, V + path, body=body, upgrade=False)


class Containers:
    """Creates containers through the API and removes every one of them afterwards."""

    def __init__(self, u: User) -> None:
        self.u = u
        self.made: list[str] = []

    def create(
        self,
        *cmd: str,
        tty: bool = False,
        stdin: bool = False,
        once: bool = False,
        log: str | None = None,
    ) -> str:
        body = {
            "Image": "busybox",
            "Cmd": list(cmd),
            "Tty": tty,
            "OpenStdin": stdin,
            "StdinOnce": once,
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
        }
        if log is not None:
            body["HostConfig"] = {"LogConfig": {"Type": log}}
        head = api(self.u, "POST", "/containers/create", body)
        assert head.status == 201, head.body
        cid = head.json()["Id"]
        self.made.append(cid)
        return cid

    def start(self, cid: str) -> None:
        head = api(self.u, "POST", f"/containers/{cid}/start")
        assert head.status == 204, head.body

    def run(self, *cmd: str, **kw) -> str:
        cid = self.create(*cmd, **kw)
        self.start(cid)
        return cid

    def state(self, cid: str) -> dict:
        head = api(self.u, "GET", f"/containers/{cid}/json")
        assert head.status == 200, head.body
        return head.json()["State"]

    def wait(self, cid: str) -> int:
        head = api(self.u, "POST", f"/containers/{cid}/wait")
        return head.json()["StatusCode"]

    def logs(self, cid: str) -> bytes:
        return api(self.u, "GET", f"/containers/{cid}/logs?stdout=1&stderr=1").body

    def remove_all(self) -> None:
        for cid in self.made:
            api(self.u, "DELETE", f"/containers/{cid}?force=1")


@pytest.fixture
def ctrs(alice):
    c = Containers(alice)
    yield c
    c.remove_all()


def attach(
    u: User,
    cid: str,
    query: str = "stream=1&stdout=1&stderr=1",
    tls: str | None = None,
    prefix: str = V,
    **kw,
) -> tuple[HijackClient, Head]:
    """A raw client attached to ``cid`` (``kw``: ``early``, ``upgrade``, client options)."""
    request_kw = {k: kw.pop(k) for k in ("early", "upgrade") if k in kw}
    c = HijackClient.for_user(u, tls, **kw)
    head = c.request("POST", f"{prefix}/containers/{cid}/attach?{query}", **request_kw)
    return c, head


def assert_upgraded(head: Head) -> None:
    assert (head.status, head.reason) == (101, "UPGRADED")
    assert head.headers["connection"] == "Upgrade"
    assert head.headers["upgrade"] == "tcp"
    assert head.headers["content-type"] == "application/vnd.docker.raw-stream"


# -- the client's own framing decoder ---------------------------------------------------


def test_demuxer_across_chunk_boundaries():
    wire = b"\x01\0\0\0\0\0\0\x03out" + b"\x02\0\0\0\0\0\0\x02er" + b"\x01\0\0\0\0\0\0\0"
    d = Demuxer()
    for i in range(len(wire)):
        d.feed(wire[i : i + 1])
    assert d.complete and d.frames == [(1, b"out"), (2, b"er"), (1, b"")]
    assert split_streams(wire) == (b"out", b"er")
    with pytest.raises(ValueError):
        demux(wire[:-3] + b"\x01\0\0\0\0\0")


def test_client_over_plain_tcp():
    """The client without TLS (a fake server): early bytes arrive with the request, FIN is
    a half-close, the server's answer after it is read to EOF."""
    server = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"EOF" not in data:
                more = conn.recv(65536)
                if not more:
                    break
                data += more
            conn.sendall(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nhi")
            while more := conn.recv(65536):
                data += more
            got.append(data)
            conn.sendall(b" bye")

    t = threading.Thread(target=serve)
    t.start()
    with server, HijackClient("127.0.0.1", server.getsockname()[1]) as c:
        head = c.request("POST", "/x", early=b"early EOF")
        assert head.status == 101 and c.tls_version is None
        c.send(b" more")
        c.half_close("fin")
        assert c.read_all(5) == b"hi bye" and c.fin_received and c.clean_close
    t.join(5)
    assert got[0].endswith(b"\r\n\r\nearly EOF more")


# -- the upgrade head ------------------------------------------------------------------


@pytest.mark.parametrize("tls", TLS)
@pytest.mark.parametrize("upgrade", [True, False], ids=["upgrade", "old-client"])
def test_attach_head_and_output(alice, ctrs, tls, upgrade):
    cid = ctrs.create("sh", "-c", "echo out; echo err >&2")
    c, head = attach(alice, cid, tls=tls, upgrade=upgrade)
    with c:
        assert c.tls_version == f"TLSv{tls}"
        if upgrade:
            assert_upgraded(head)
        else:
            assert (head.status, head.reason) == (200, "OK")
            assert head.headers["content-type"] == "application/vnd.docker.raw-stream"
            assert "upgrade" not in head.headers
        ctrs.start(cid)
        assert split_streams(c.read_all(10)) == (b"out\n", b"err\n")
        assert c.close_notify_received and not c.ragged_eof


# -- how a finished stream is closed ----------------------------------------------------


def sdcd_side(sdcd: Daemon, c: HijackClient) -> list[str]:
    """TCP states of sdcd's end of ``c``'s connection (TIME-WAIT is the kernel's, not
    sdcd's: left out)."""
    client_port = c.sock.getsockname()[1]
    out = subprocess.run(
        ["ss", "-Htan", f"( sport = :{sdcd.docker_port} and dport = :{client_port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line.split()[0] for line in out.splitlines() if not line.startswith("TIME-WAIT")]


def finished_stream(u: User, ctrs: Containers, tls: str) -> HijackClient:
    """A client that has read a whole stream, up to sdcd's close_notify, and nothing else."""
    cid = ctrs.create("echo", "hi")
    c, head = attach(u, cid, tls=tls)
    assert_upgraded(head)
    ctrs.start(cid)
    assert split_streams(c.read_all(10)) == (b"hi\n", b"")
    assert c.close_notify_received and not c.ragged_eof
    return c


@pytest.mark.parametrize("tls", TLS)
def test_sdcd_sends_fin_after_close_notify_at_once(alice, ctrs, tls):
    """dockerd closes a finished hijacked connection at once (close_notify, then FIN). A
    client that never answers (crashed, or lazy) must not keep the connection — hijacked,
    so without an idle timeout — open on sdcd forever."""
    with finished_stream(alice, ctrs, tls) as c:
        assert c.wait_fin(2), "no FIN after close_notify"


@pytest.mark.parametrize("tls", TLS)
def test_sdcd_closes_when_the_client_answers_close_notify(alice, ctrs, tls):
    with finished_stream(alice, ctrs, tls) as c:
        c.half_close("close_notify")
        assert c.wait_fin(2), "no FIN after the client's close_notify"


@pytest.mark.parametrize("tls", TLS)
def test_no_half_open_connection_left_on_sdcd(sdcd, alice, ctrs, tls):
    """The docker CLI's end (Go's tls.Conn.Close: close_notify, then FIN) must close
    sdcd's socket too."""
    with finished_stream(alice, ctrs, tls) as c:
        c.half_close("close_notify")
        c.half_close("fin")
        time.sleep(0.5)
        assert sdcd_side(sdcd, c) == []


# -- stdin: early bytes, half-close both ways ---------------------------------------------


@pytest.mark.parametrize("tls", TLS)
@pytest.mark.parametrize("mode", ["close_notify", "fin"])
def test_early_stdin_then_half_close(alice, ctrs, tls, mode):
    """GitLab runner's sequence: create -i (StdinOnce), attach with stdin (the bytes in
    the request's own packet), start on another connection, end stdin."""
    data = b"".join(b"line %d\n" % i for i in range(2000))
    cid = ctrs.create("cat", stdin=True, once=True)
    c, head = attach(alice, cid, "stream=1&stdin=1&stdout=1&stderr=1", tls, early=data)
    with c:
        assert_upgraded(head)
        ctrs.start(cid)
        c.half_close(mode)
        out, err = split_streams(c.read_all(15))
        assert (len(out), err) == (len(data), b"")
        assert out == data
        assert c.close_notify_received and c.wait_fin(5)
    assert ctrs.wait(cid) == 0


@pytest.mark.parametrize("tls", TLS)
@pytest.mark.parametrize("mode", ["close_notify", "fin"])
def test_interactive_then_half_close(alice, ctrs, tls, mode):
    """stdin after the output has started; EOF ends `cat` while its output still arrives."""
    cid = ctrs.run("sh", "-c", "cat; echo after-eof", stdin=True, once=True)
    c, head = attach(alice, cid, "stream=1&stdin=1&stdout=1", tls)
    with c:
        assert_upgraded(head)
        c.send(b"ping\n")
        assert b"ping\n" in c.read_until(b"ping\n", 10)
        c.send(b"pong\n")
        c.half_close(mode)
        assert split_streams(c.read_all(10)) == (b"pong\nafter-eof\n", b"")
        assert c.close_notify_received and c.wait_fin(5)
    assert ctrs.wait(cid) == 0


# -- framing and stream options ---------------------------------------------------------


SCRIPT = "echo out; echo err >&2"


@pytest.mark.parametrize(
    ("query", "frames"),
    [
        ("stdout=1&stderr=1", [(STDOUT, b"out\n"), (STDERR, b"err\n")]),
        ("stdout=1&stderr=0", [(STDOUT, b"out\n")]),
        ("stdout=0&stderr=1", [(STDERR, b"err\n")]),
    ],
)
def test_multiplexed_frames_and_stream_filter(alice, ctrs, query, frames):
    cid = ctrs.create("sh", "-c", SCRIPT)
    c, _ = attach(alice, cid, "stream=1&" + query)
    with c:
        ctrs.start(cid)
        assert demux(c.read_all(10)) == frames


def test_tty_is_raw(alice, ctrs):
    cid = ctrs.create("sh", "-c", SCRIPT, tty=True)
    c, head = attach(alice, cid)
    with c:
        assert_upgraded(head)
        ctrs.start(cid)
        assert c.read_all(10) == b"out\r\nerr\r\n"  # no headers; the pty's line endings


def test_no_stream_chosen_is_refused(alice, ctrs):
    cid = ctrs.create("true")
    c, head = attach(alice, cid, "stream=1&stdout=0&stderr=0&stdin=0")
    with c:
        assert head.status == 400 and "at least one stream" in head.json()["message"]


def test_logs_replay_without_stream_closes(alice, ctrs):
    cid = ctrs.run("sh", "-c", SCRIPT)
    assert ctrs.wait(cid) == 0
    c, head = attach(alice, cid, "logs=1&stream=0&stdout=1&stderr=1")
    with c:
        assert_upgraded(head)
        assert sorted(demux(c.read_all(10))) == [(STDOUT, b"out\n"), (STDERR, b"err\n")]
        assert c.close_notify_received and not c.ragged_eof


@pytest.mark.parametrize(
    ("query", "frames"),
    [("stdout=1&stderr=0", [(STDOUT, b"out\n")]), ("stdout=0&stderr=1", [(STDERR, b"err\n")])],
)
def test_logs_replay_honours_the_stream_filter(alice, ctrs, query, frames):
    cid = ctrs.run("sh", "-c", SCRIPT)
    assert ctrs.wait(cid) == 0
    c, _ = attach(alice, cid, "logs=1&stream=0&" + query)
    with c:
        assert demux(c.read_all(10)) == frames


def test_logs_replay_then_follow(alice, ctrs):
    cid = ctrs.run("sh", "-c", "echo one; read x; echo two $x", stdin=True)
    wait_for(lambda: b"one" in ctrs.logs(cid), 10)
    c, head = attach(alice, cid, "logs=1&stream=1&stdin=1&stdout=1&stderr=1")
    with c:
        assert_upgraded(head)
        c.read_until(b"one\n", 10)
        c.send(b"go\n")
        rest = c.read_all(10)
    d = Demuxer()
    d.feed(b"\x01\0\0\0\0\0\0\x04one\n" + rest)  # the replayed frame read above
    assert d.complete and d.stream(STDOUT) == b"one\ntwo go\n"


# -- large output and back-pressure -----------------------------------------------------


@pytest.mark.parametrize("tls", TLS)
def test_large_output_arrives_complete(alice, ctrs, tls):
    size = 200_000_000
    cid = ctrs.create("head", "-c", str(size), "/dev/zero", log="none")
    c, head = attach(alice, cid, "stream=1&stdout=1&stderr=1", tls)
    with c:
        assert_upgraded(head)
        ctrs.start(cid)
        d = Demuxer(keep=False)
        started = time.monotonic()
        total = c.read_into(d.feed, 60)
        secs = time.monotonic() - started
        assert d.complete and d.counts[STDOUT] == size and d.counts[STDERR] == 0
        assert total == size + 8 * d.frame_count
        assert c.close_notify_received and not c.ragged_eof
    print(f"attach TLS {tls}: {size / secs / 1e6:.0f} MB/s, {d.frame_count} frames")


def rss(pid: int) -> int:
    """Resident set size in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise LookupError(pid)


def conmon_pid(cid: str) -> int | None:
    """The conmon process of container ``cid`` (its command line names the id)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"conmon") and cid.encode() in b" ".join(argv):
            return int(entry)
    return None


SLOW_BOUND = 64 * MiB


def test_slow_reader_bounds_sdcd_memory(sdcd, alice, ctrs):
    """A container writing 500 MB as fast as it can, a client reading 16 KiB every 0.1 s
    for 8 s: sdcd's RSS must not grow by more than SLOW_BOUND (it would hold hundreds of
    MB if it buffered), the container must be held back (still running), and everything
    arrives once the client reads fast."""
    size = 500_000_000
    cid = ctrs.create("head", "-c", str(size), "/dev/zero", log="none")
    pid = sdcd.proc.pid
    c, head = attach(alice, cid, "stream=1&stdout=1", rcvbuf=64 * 1024)
    with c:
        assert_upgraded(head)
        before = rss(pid)
        ctrs.start(cid)
        conmon = wait_for(lambda: conmon_pid(cid), 10)
        conmon_before = rss(conmon)
        peak = [before, conmon_before]

        def sample() -> None:
            peak[0] = max(peak[0], rss(pid))
            peak[1] = max(peak[1], rss(conmon))

        d = Demuxer(keep=False)
        slow = c.read_slowly(16 * 1024, 0.1, 8.0, sink=d.feed, tick=sample)
        assert ctrs.state(cid)["Running"], "the container was not held back"
        c.read_into(d.feed, 60)
        assert d.complete and d.counts[STDOUT] == size
        assert c.close_notify_received and not c.ragged_eof
    print(
        f"slow reader read {slow} bytes; sdcd RSS {before / MiB:.1f} -> peak "
        f"{peak[0] / MiB:.1f} MiB; conmon RSS {conmon_before / MiB:.1f} -> peak "
        f"{peak[1] / MiB:.1f} MiB"
    )
    assert peak[0] - before < SLOW_BOUND
    assert peak[1] - conmon_before < 8 * MiB


# -- several clients, vanishing clients ---------------------------------------------------

COUNT = "i=0; while [ $i -lt {n} ]; do echo $i; i=$((i+1)); sleep {pause}; done"


def numbers(data: bytes) -> list[int]:
    return [int(x) for x in split_streams(data)[0].split()]


def test_several_clients_each_get_everything_from_their_attach_on(alice, ctrs):
    n = 40
    cid = ctrs.create("sh", "-c", COUNT.format(n=n, pause=0.05))
    a, head_a = attach(alice, cid, "stream=1&stdout=1")
    b, head_b = attach(alice, cid, "stream=1&stdout=1", tls="1.2")
    with a, b:
        assert head_a.status == head_b.status == 101
        ctrs.start(cid)
        seen = a.read_until(b"10\n", 10)
        c, head_c = attach(alice, cid, "stream=1&stdout=1")
        with c:
            assert head_c.status == 101
            results: dict[str, bytes] = {}
            readers = [
                threading.Thread(target=lambda k=k, x=x: results.__setitem__(k, x.read_all(20)))
                for k, x in (("a", a), ("b", b), ("c", c))
            ]
            for t in readers:
                t.start()
            for t in readers:
                t.join()
    assert numbers(seen + results["a"]) == list(range(n))
    assert numbers(results["b"]) == list(range(n))
    late = numbers(results["c"])
    assert late and late == list(range(late[0], n)) and late[0] >= 10


def test_abrupt_disconnect_ends_only_that_session(alice, ctrs):
    cid = ctrs.run("sh", "-c", COUNT.format(n=100000, pause=0.02))
    a, _ = attach(alice, cid, "stream=1&stdout=1")
    b, _ = attach(alice, cid, "stream=1&stdout=1")
    with b:
        a.read_until(b"\n", 10)
        a.abort()  # RST, no close_notify
        d = Demuxer()
        d.feed(b.read_until(b"\n", 10))
        mark = len(d.stream(STDOUT))
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            d.feed(b.recv(timeout=5))
        later = [int(x) for x in d.stream(STDOUT)[mark:].split()]
        assert len(later) > 20, "the second client stopped receiving"
        assert later == list(range(later[0], later[0] + len(later)))
        assert ctrs.state(cid)["Running"]
    c, head = attach(alice, cid, "stream=1&stdout=1")
    with c:
        assert head.status == 101 and c.read_until(b"\n", 10)


# -- detach keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("tls", TLS)
def test_detach_keys_leave_the_container_running(alice, ctrs, tls):
    cid = ctrs.run("cat", stdin=True)
    c, head = attach(alice, cid, "stream=1&stdin=1&stdout=1&stderr=1", tls)
    with c:
        assert_upgraded(head)
        c.send(b"abc\n")
        c.read_until(b"abc\n", 10)
        c.send(b"\x10x\n")  # ctrl-p, then not ctrl-q: both passed on
        c.read_until(b"\x10x\n", 10)
        c.send(b"\x10\x11")
        c.read_all(10)
        assert c.close_notify_received and not c.ragged_eof
    assert ctrs.state(cid)["Running"]
    # stdin stays open (no StdinOnce): a second attach still talks to cat
    c, head = attach(alice, cid, "stream=1&stdin=1&stdout=1&detachKeys=ctrl-x", tls)
    with c:
        c.send(b"\x10\x11 again\n")  # not the keys now: passed through
        c.read_until(b"\x10\x11 again\n", 10)
        c.send(b"\x18")
        c.read_all(10)
        assert c.close_notify_received and not c.ragged_eof
    assert ctrs.state(cid)["Running"]


def test_detach_from_a_stdin_once_container_ends_its_stdin(alice, ctrs):
    """OpenStdin + StdinOnce: the first attached client's detach closes stdin (cat ends)."""
    cid = ctrs.run("sh", "-c", "cat; echo stdin-closed", stdin=True, once=True)
    c, _ = attach(alice, cid, "stream=1&stdin=1&stdout=1")
    with c:
        c.send(b"x\n")
        c.read_until(b"x\n", 10)
        c.send(b"\x10\x11")
        c.read_all(10)
    assert ctrs.wait(cid) == 0
    assert ctrs.logs(cid).endswith(b"stdin-closed\n")


def test_split_detach_sequence_across_sends(alice, ctrs):
    cid = ctrs.run("cat", stdin=True)
    c, _ = attach(alice, cid, "stream=1&stdin=1&stdout=1&detachKeys=ctrl-a,b,ctrl-c")
    with c:
        c.send(b"\x01b")
        c.send(b"z\n")  # the prefix turned out not to be the sequence
        c.read_until(b"\x01bz\n", 10)
        c.send(b"\x01")
        time.sleep(0.2)
        c.send(b"b")
        time.sleep(0.2)
        c.send(b"\x03")
        c.read_all(10)
        assert c.close_notify_received and not c.ragged_eof
    assert ctrs.state(cid)["Running"]


def test_bad_detach_keys_are_refused(alice, ctrs):
    cid = ctrs.create("cat", stdin=True)
    c, head = attach(alice, cid, "stream=1&stdin=1&stdout=1&detachKeys=ctrl-1")
    with c:
        assert head.status == 400 and "Invalid detach keys" in head.json()["message"]


# -- API versions and tenancy ------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.20", "1.24", "1.41"])
@pytest.mark.parametrize("upgrade", [True, False], ids=["upgrade", "old-client"])
def test_version_prefixes(alice, ctrs, version, upgrade):
    cid = ctrs.create("sh", "-c", SCRIPT)
    c, head = attach(alice, cid, prefix=f"/v{version}", upgrade=upgrade)
    with c:
        assert head.status == (101 if upgrade else 200)
        assert head.headers["content-type"] == "application/vnd.docker.raw-stream"
        ctrs.start(cid)
        assert split_streams(c.read_all(10)) == (b"out\n", b"err\n")


def test_other_account_gets_no_such_container(alice, bob, ctrs):
    cid = ctrs.create("cat", stdin=True)
    for ref in (cid, cid[:12]):
        c, head = attach(bob, ref, "stream=1&stdin=1&stdout=1", early=b"sneaky\n")
        with c:
            assert head.status == 404
            assert head.json()["message"] == f"No such container: {ref}"
    assert ctrs.state(cid)["Status"] == "created"
