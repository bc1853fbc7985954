"""``docker exec`` through sdcd with the real CLI (current and Debian's 20.10 at API 1.24)
and docker-py: exit codes kept in Redis (also across an sdcd restart), stdin EOF, tty
sizes, detached execs, refusals, tenancy; and the GitLab-runner attach-then-start
sequence (OpenStdin + StdinOnce, no tty) through docker-py."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
import uuid

import pytest

from tests.conftest import needs_root, running_daemon, wait_for
from tests.dockercli import User

pytestmark = needs_root

OLD_CLI = "/usr/bin/docker"


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("exec"))


@pytest.fixture(scope="module")
def box(alice):
    """A running container the tests exec into."""
    n = "box" + uuid.uuid4().hex[:6]
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "3600")
    return n


def _exec_create(u: User, ref: str, body: dict, version: str = "v1.41"):
    return u.api_post_json(f"/{version}/containers/{ref}/exec", body)


def _exec_inspect(u: User, exec_id: str) -> dict:
    r = u.api("GET", f"/v1.41/exec/{exec_id}/json")
    assert r.status == 200, r.body
    return json.loads(r.body)


def _old(u: User, *args: str, version: str = "1.24", stdin: str | None = None):
    return u.docker(*args, env_extra={"DOCKER_API_VERSION": version}, binary=OLD_CLI, input=stdin)


# -- exit codes and inspect --------------------------------------------------------------


def test_exit_code_and_inspect(alice, box):
    r = alice.docker("exec", box, "sh", "-c", "echo hi; echo err >&2; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, "hi\n", "err\n")
    created = _exec_create(alice, box, {"Cmd": ["sh", "-c", "exit 5"], "AttachStdout": True})
    assert created.status == 201
    exec_id = json.loads(created.body)["Id"]
    before = _exec_inspect(alice, exec_id)
    assert before["Running"] is False and before["ExitCode"] is None and before["Pid"] == 0
    started = alice.api_post_json(f"/v1.41/exec/{exec_id}/start", {"Detach": True})
    assert started.status == 200
    wait_for(lambda: _exec_inspect(alice, exec_id)["ExitCode"] == 5, 10)
    after = _exec_inspect(alice, exec_id)
    container_id = json.loads(alice.ok("inspect", box))[0]["Id"]
    assert after["ContainerID"] == container_id and after["Pid"] > 0
    assert after["ProcessConfig"] == {
        "tty": False,
        "entrypoint": "sh",
        "arguments": ["-c", "exit 5"],
        "privileged": False,
        "user": "",
    }
    again = alice.api_post_json(f"/v1.41/exec/{exec_id}/start", {"Detach": True})
    assert again.status == 409 and "has already run" in json.loads(again.body)["message"]


def test_exit_codes_survive_an_sdcd_restart(sdcd, alice, box):
    done = json.loads(_exec_create(alice, box, {"Cmd": ["sh", "-c", "exit 5"]}).body)["Id"]
    assert alice.api_post_json(f"/v1.41/exec/{done}/start", {"Detach": True}).status == 200
    wait_for(lambda: _exec_inspect(alice, done)["ExitCode"] == 5, 10)
    long = json.loads(_exec_create(alice, box, {"Cmd": ["sh", "-c", "sleep 3; exit 9"]}).body)
    assert alice.api_post_json(f"/v1.41/exec/{long['Id']}/start", {"Detach": True}).status == 200
    assert _exec_inspect(alice, long["Id"])["Running"]
    sdcd.proc.kill()  # SIGKILL: the exec's watcher dies with it; the exec goes on
    sdcd.proc.wait(10)
    sdcd.start()
    assert _exec_inspect(alice, done)["ExitCode"] == 5
    wait_for(lambda: _exec_inspect(alice, long["Id"])["ExitCode"] == 9, 15)
    assert _exec_inspect(alice, long["Id"])["Running"] is False


def test_exec_ids_in_container_inspect_and_events(alice, box):
    since = str(int(time.time()) - 1)
    alice.ok("exec", "-d", box, "sleep", "2")
    ids = json.loads(alice.ok("inspect", box))[0]["ExecIDs"]
    assert ids and len(ids) == 1
    wait_for(lambda: json.loads(alice.ok("inspect", box))[0]["ExecIDs"] is None, 10)
    events = alice.ok(
        "events", "--since", since, "--until", str(int(time.time()) + 1), "--format", "{{.Action}}"
    )
    actions = events.split("\n")
    assert "exec_create: sleep 2" in actions and "exec_start: sleep 2" in actions
    assert "exec_die" in actions


# -- streams -------------------------------------------------------------------------------


def test_stdin_eof_ends_the_exec(alice, box):
    r = subprocess.run(
        ["docker", "exec", "-i", box, "sh", "-c", "cat; echo done"],
        input="hello\n",
        capture_output=True,
        text=True,
        env=alice.env(),
        timeout=30,
    )
    assert (r.returncode, r.stdout) == (0, "hello\ndone\n")


def test_old_cli_at_api_1_24(alice, box):
    r = _old(alice, "exec", box, "sh", "-c", "echo old; exit 6")
    assert (r.returncode, r.stdout) == (6, "old\n")
    r = _old(alice, "exec", "-i", box, "cat", stdin="piped\n")
    assert (r.returncode, r.stdout) == (0, "piped\n")


def test_a_gigabyte_through_exec_arrives_complete(alice, box):
    size = 1_000_000_000
    cmd = f"docker exec {box} head -c {size} /dev/zero | wc -c"
    r = subprocess.run(
        cmd, shell=True, capture_output=True, text=True, env=alice.env(), timeout=300
    )
    assert r.returncode == 0 and int(r.stdout) == size


def test_a_gigabyte_through_attach_arrives_complete_and_in_order(alice):
    """1 GB through ``docker run`` (attach), and an ordered stream (numbered lines) whose
    checksum must match the same stream made here."""
    size = 1_000_000_000
    cmd = f"docker run --rm --log-driver none busybox head -c {size} /dev/zero | wc -c"
    r = subprocess.run(
        cmd, shell=True, capture_output=True, text=True, env=alice.env(), timeout=300
    )
    assert r.returncode == 0 and int(r.stdout) == size
    cmd = "docker run --rm --log-driver none busybox seq 1 3000000 | md5sum"
    r = subprocess.run(
        cmd, shell=True, capture_output=True, text=True, env=alice.env(), timeout=300
    )
    expected = hashlib.md5(b"".join(b"%d\n" % i for i in range(1, 3000001))).hexdigest()
    assert r.returncode == 0 and r.stdout.split()[0] == expected


def test_ordered_output_through_exec(alice, box):
    r = alice.docker("exec", box, "seq", "1", "200000")
    assert r.returncode == 0
    assert r.stdout.split() == [str(i) for i in range(1, 200001)]


def test_tty_exec_is_raw_and_takes_the_size_sent_before_start(alice, box):
    body = {"Cmd": ["sh", "-c", "stty size > /tmp/size"], "Tty": True, "AttachStdout": True}
    exec_id = json.loads(_exec_create(alice, box, body).body)["Id"]
    resized = alice.api_post_json(f"/v1.41/exec/{exec_id}/resize?h=33&w=99", {})
    assert resized.status == 200
    assert alice.api_post_json(f"/v1.41/exec/{exec_id}/start", {"Detach": True}).status == 200
    wait_for(lambda: _exec_inspect(alice, exec_id)["ExitCode"] == 0, 10)
    assert alice.ok("exec", box, "cat", "/tmp/size") == "33 99\n"
    bad = alice.api_post_json(f"/v1.41/exec/{exec_id}/resize?h=x&w=1", {})
    assert bad.status == 400


# -- refusals and tenancy ----------------------------------------------------------------


def test_refusals(alice, box):
    stopped = "s" + uuid.uuid4().hex[:6]
    alice.ok("create", "--name", stopped, "busybox", "true")
    r = alice.docker("exec", stopped, "true")
    assert r.returncode != 0 and "is not running" in r.stderr
    assert _exec_create(alice, stopped, {"Cmd": ["true"]}).status == 409
    r = alice.docker("exec", "--privileged", box, "true")
    assert r.returncode != 0 and "privileged" in r.stderr
    assert _exec_create(alice, box, {"Cmd": []}).status == 400
    assert _exec_create(alice, box, {"Cmd": ["true"], "WorkingDir": "tmp"}).status == 400
    assert _exec_create(alice, box, {"Cmd": ["true"], "DetachKeys": "ctrl-1"}).status == 400
    assert _exec_create(alice, "nosuch", {"Cmd": ["true"]}).status == 404
    assert alice.api("GET", "/v1.41/exec/" + "0" * 64 + "/json").status == 404
    r = alice.docker("exec", box, "nosuchcmd")
    assert r.returncode == 127 and "executable file not found" in r.stdout + r.stderr
    r = alice.docker("exec", "-u", "nosuchuser", box, "true")
    assert r.returncode == 126 and "nosuchuser" in r.stdout + r.stderr
    alice.ok("rm", stopped)


def test_paused_container_refuses_exec(alice):
    n = "p" + uuid.uuid4().hex[:6]
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100")
    alice.ok("pause", n)
    r = alice.docker("exec", n, "true")
    assert r.returncode != 0 and "paused" in r.stderr
    alice.ok("rm", "-f", n)


def test_another_account_cannot_see_or_use_an_exec(alice, bob, box):
    exec_id = json.loads(_exec_create(alice, box, {"Cmd": ["sleep", "1"]}).body)["Id"]
    assert bob.api("GET", f"/v1.41/exec/{exec_id}/json").status == 404
    assert bob.api_post_json(f"/v1.41/exec/{exec_id}/start", {"Detach": True}).status == 404
    assert bob.api_post_json(f"/v1.41/exec/{exec_id}/resize?h=1&w=1", {}).status == 404
    assert _exec_create(bob, box, {"Cmd": ["true"]}).status == 404
    assert _exec_inspect(alice, exec_id)["Pid"] == 0  # nothing started it


def test_execs_go_with_their_container(alice):
    n = "g" + uuid.uuid4().hex[:6]
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100")
    exec_id = json.loads(_exec_create(alice, n, {"Cmd": ["true"]}).body)["Id"]
    alice.ok("rm", "-f", n)
    assert alice.api("GET", f"/v1.41/exec/{exec_id}/json").status == 404


# -- docker-py ------------------------------------------------------------------------------


def test_docker_py_exec_run(docker_py, box):
    client = docker_py
    c = client.containers.get(box)
    code, out = c.exec_run(["sh", "-c", "echo py; exit 3"])
    assert (code, out) == (3, b"py\n")
    code, (out, err) = c.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True)
    assert (code, out, err) == (0, b"o\n", b"e\n")


def test_gitlab_runner_attach_then_start(docker_py):
    client = docker_py
    """As GitLab runner drives a build container: create with OpenStdin + StdinOnce and
    no tty, attach stdin/stdout/stderr, start, write the script, close stdin; the
    container must see EOF, finish, and the attach must end (SDC hung here)."""
    api = client.api
    created = api.create_container(
        "busybox", ["sh"], stdin_open=True, tty=False, detach=False
    )  # docker-py sets StdinOnce when attaching stdin without detach
    cid = created["Id"]
    inspect = api.inspect_container(cid)
    assert inspect["Config"]["OpenStdin"] and inspect["Config"]["StdinOnce"]
    sock = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    raw = sock  # docker-py hands out the TLS socket itself
    api.start(cid)
    raw.sendall(b"echo step1; echo oops >&2; exit 4\n")
    # As Go's CloseWrite on TLS: a bare FIN (SSLSocket.shutdown would drop the TLS
    # layer for the reads that follow, so call the plain socket's).
    socket.socket.shutdown(raw, socket.SHUT_WR)
    data = b""
    deadline = time.time() + 20
    raw.settimeout(20)
    while time.time() < deadline:
        chunk = raw.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert b"step1\n" in data and b"oops\n" in data
    assert api.wait(cid, timeout=20)["StatusCode"] == 4
    api.remove_container(cid)


def test_container_resize_before_start_is_applied_at_start(alice):
    n = "t" + uuid.uuid4().hex[:6]
    alice.ok("create", "-t", "--name", n, "busybox", "sh", "-c", "stty size")
    assert alice.api_post_json(f"/v1.41/containers/{n}/resize?h=41&w=101", {}).status == 200
    alice.ok("start", n)
    assert alice.ok("wait", n).strip() == "0"
    assert alice.ok("logs", n) == "41 101\n"  # (text mode turns the pty's \r\n into \n)
    alice.ok("rm", n)
    assert alice.api_post_json(f"/v1.41/containers/{n}/resize?h=1&w=1", {}).status == 404


def test_exec_records_per_container_are_bounded(alice):
    n = "b" + uuid.uuid4().hex[:6]
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100")
    running = json.loads(_exec_create(alice, n, {"Cmd": ["sleep", "30"]}).body)["Id"]
    assert alice.api_post_json(f"/v1.41/exec/{running}/start", {"Detach": True}).status == 200
    ids = [json.loads(_exec_create(alice, n, {"Cmd": ["true"]}).body)["Id"] for _ in range(260)]
    assert alice.api("GET", f"/v1.41/exec/{ids[0]}/json").status == 404  # the oldest idle
    assert alice.api("GET", f"/v1.41/exec/{ids[-1]}/json").status == 200
    assert _exec_inspect(alice, running)["Running"]  # a running exec is never forgotten
    alice.ok("rm", "-f", n)
