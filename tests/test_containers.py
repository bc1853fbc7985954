"""Containers through sdcd with the real docker CLI: runc under conmon, overlayfs, an IP
per container on the node's bridge, packages enforced with cgroups, restart policies,
refused options, tenancy, and sdcd restarts (clean and SIGKILL) while containers run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.clients import request
from tests.conftest import Daemon, needs_root, running_daemon, wait_for
from tests.dockercli import User, busybox_user

pytestmark = needs_root


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("containers"))


def name() -> str:
    return "c" + uuid.uuid4().hex[:8]


def inspect(u: User, ref: str) -> dict:
    return json.loads(u.ok("inspect", ref))[0]


def state(u: User, ref: str) -> dict:
    return inspect(u, ref)["State"]


# -- run, exit codes, logs ------------------------------------------------------------


def test_run_echo_prints_hi(alice):
    assert alice.ok("run", "--rm", "busybox", "echo", "hi") == "hi\n"


def test_exit_code_passes_through(alice):
    result = alice.docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert result.returncode == 7
    assert result.stdout == "out\n"
    assert "err" in result.stderr


def test_run_d_ps_logs_stop_rm(alice):
    n = name()
    cid = alice.ok(
        "run",
        "-d",
        "--name",
        n,
        "busybox",
        "sh",
        "-c",
        "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
    ).strip()
    assert len(cid) == 64
    assert n in alice.ok("ps")
    wait_for(lambda: "started" in alice.ok("logs", n), 10)
    started = time.monotonic()
    alice.ok("stop", n)
    assert time.monotonic() - started < 8
    st = state(alice, n)
    assert st["Status"] == "exited" and st["ExitCode"] == 0
    assert alice.ok("logs", n) == "started\nbye\n"
    assert n not in alice.ok("ps")
    assert n in alice.ok("ps", "-a")
    alice.ok("rm", n)
    assert n not in alice.ok("ps", "-a")


def test_logs_options(alice):
    n = name()
    alice.ok(
        "run",
        "--name",
        n,
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2",
    )
    assert alice.ok("logs", "--tail", "2", n) == "line5\n"  # stderr goes to stderr
    result = alice.docker("logs", n)
    assert result.stdout.splitlines() == [f"line{i}" for i in range(1, 6)]
    assert result.stderr == "oops\n"
    stamped = alice.ok("logs", "-t", n).splitlines()[0]
    assert stamped.endswith(" line1") and stamped[:4].isdigit() and "T" in stamped
    alice.ok("rm", n)


def test_logs_follow_streams_until_exit(alice):
    n = name()
    alice.ok(
        "run",
        "-d",
        "--name",
        n,
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3; do echo n$i; sleep 0.5; done",
    )
    out = alice.ok("logs", "-f", n)
    assert out == "n1\nn2\nn3\n"
    alice.ok("rm", n)


def test_wait_and_kill_signal(alice):
    n = name()
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100")
    alice.ok("kill", "-s", "KILL", n)
    assert alice.ok("wait", n).strip() == "137"
    n2 = name()
    alice.ok(
        "run",
        "-d",
        "--name",
        n2,
        "busybox",
        "sh",
        "-c",
        "trap 'exit 143' USR1; while true; do sleep 0.1; done",
    )
    alice.ok("kill", "-s", "USR1", n2)
    assert alice.ok("wait", n2).strip() == "143"
    alice.ok("rm", n, n2)


def test_stop_timeout_then_sigkill(alice):
    n = name()
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100")
    started = time.monotonic()
    alice.ok("stop", "-t", "1", n)
    assert 0.9 < time.monotonic() - started < 6
    assert state(alice, n)["ExitCode"] == 137
    alice.ok("rm", n)


def test_restart_rename_pause_top(alice):
    n, n2 = name(), name()
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100")
    first = state(alice, n)["StartedAt"]
    alice.ok("restart", "-t", "0", n)
    st = state(alice, n)
    assert st["Running"] and st["StartedAt"] != first
    alice.ok("rename", n, n2)
    assert inspect(alice, n2)["Name"] == "/" + n2
    assert alice.docker("inspect", n).returncode != 0
    alice.ok("pause", n2)
    assert state(alice, n2)["Status"] == "paused"
    assert "Paused" in alice.ok("ps", "--filter", f"name={n2}")
    alice.ok("unpause", n2)
    assert state(alice, n2)["Status"] == "running"
    top = alice.ok("top", n2)
    assert "sleep 100" in top and "PID" in top
    alice.ok("rm", "-f", n2)


# -- inspect, ps --------------------------------------------------------------------------


def test_inspect_fields(alice):
    n = name()
    cid = alice.ok(
        "create",
        "--name",
        n,
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-l",
        "team=a",
        "--hostname",
        "box",
        "-p",
        "80",
        "--expose",
        "81",
        "busybox",
        "sleep",
        "5",
    ).strip()
    c = inspect(alice, n)
    assert c["Id"] == cid
    assert c["Name"] == "/" + n
    # the compute node it is on, as Swarm showed it
    assert c["Node"]["Name"] == socket.gethostname() and c["Node"]["IP"] == "localhost"
    assert c["Node"]["Cpus"] == os.cpu_count() and c["Node"]["Memory"] > 0
    assert c["Path"] == "sleep" and c["Args"] == ["5"]
    assert c["State"]["Status"] == "created"
    assert "FOO=bar" in c["Config"]["Env"]
    assert any(e.startswith("PATH=") for e in c["Config"]["Env"])
    assert c["Config"]["WorkingDir"] == "/tmp"
    assert c["Config"]["Hostname"] == "box"
    assert c["Config"]["Labels"]["team"] == "a"
    assert c["Config"]["Labels"]["com.joyent.package"]
    assert c["Image"].startswith("sha256:")
    net = c["NetworkSettings"]
    assert net["IPAddress"] and net["Networks"]["bridge"]["IPAddress"] == net["IPAddress"]
    assert net["Ports"]["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": "80"}]
    assert net["Ports"]["81/tcp"] is None
    assert alice.ok("port", n).strip() == "80/tcp -> 0.0.0.0:80"
    assert "0.0.0.0:80->80/tcp" in alice.ok("ps", "-a", "--filter", f"name={n}")
    alice.ok("rm", n)


def test_hostname_defaults_to_short_id(alice):
    cid = alice.ok("create", "busybox", "hostname").strip()
    alice.ok("start", cid)
    alice.ok("wait", cid)
    assert alice.ok("logs", cid).strip() == cid[:12]
    alice.ok("rm", cid)


def test_ps_filters(alice):
    a, b = name(), name()
    alice.ok("run", "-d", "--name", a, "-l", "role=web", "busybox", "sleep", "100")
    assert (
        alice.docker(
            "run", "--name", b, "-l", "role=db", "busybox", "sh", "-c", "exit 3"
        ).returncode
        == 3
    )

    def names(*args):
        return set(alice.ok("ps", "-a", "--format", "{{.Names}}", *args).split())

    assert a in names("--filter", "label=role=web") and b not in names("--filter", "label=role=web")
    assert names("--filter", "status=exited") >= {b} and a not in names("--filter", "status=exited")
    assert b in names("--filter", "exited=3") and b not in names("--filter", "exited=0")
    assert a in names("--filter", f"name={a}")
    assert names("--filter", "ancestor=busybox") >= {a, b}
    assert b in names("--filter", f"since={a}") and a not in names("--filter", f"since={a}")
    assert alice.ok("ps", "-a", "-n", "1", "--format", "{{.Names}}").strip() == b
    bad = alice.docker("ps", "--filter", "status=sleepy")
    assert bad.returncode != 0 and "status" in bad.stderr
    alice.ok("rm", "-f", a, b)


# -- networking ---------------------------------------------------------------------------


def test_container_ip_reachable_from_host_and_other_container(alice):
    web, _client = name(), name()
    alice.ok(
        "run",
        "-d",
        "--name",
        web,
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -f -p 80 -h /www",
    )
    ip = inspect(alice, web)["NetworkSettings"]["IPAddress"]

    def answers() -> bool:
        try:
            return urllib.request.urlopen(f"http://{ip}/", timeout=1).read() == b"hello-from-web\n"
        except OSError:
            return False

    wait_for(answers, 10)
    out = alice.ok("run", "--rm", "busybox", "wget", "-q", "-O", "-", f"http://{ip}/")
    assert out == "hello-from-web\n"
    other = alice.ok("run", "--rm", "busybox", "sh", "-c", "ip -4 addr show eth0")
    assert "inet " in other and ip not in other
    alice.ok("rm", "-f", web)


def test_ips_are_unique_and_released(alice):
    ids = [alice.ok("create", "busybox", "true").strip() for _ in range(3)]
    ips = [inspect(alice, i)["NetworkSettings"]["IPAddress"] for i in ids]
    assert len(set(ips)) == 3
    alice.ok("rm", *ids)
    assert not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(
        ids[0][:12]
    )


# -- packages -----------------------------------------------------------------------------


def test_memory_picks_package_and_label_overrides(alice):
    small = alice.ok("create", "-m", "200m", "busybox", "true").strip()
    assert inspect(alice, small)["Config"]["Labels"]["com.joyent.package"] == "g4-highcpu-256M"
    assert inspect(alice, small)["HostConfig"]["Memory"] == 256 * 1024 * 1024
    default = alice.ok("create", "busybox", "true").strip()
    assert inspect(alice, default)["HostConfig"]["Memory"] == 1024 * 1024 * 1024
    labelled = alice.ok(
        "create", "-m", "200m", "-l", "com.joyent.package=g4-highcpu-512M", "busybox", "true"
    ).strip()
    assert inspect(alice, labelled)["HostConfig"]["Memory"] == 512 * 1024 * 1024
    too_big = alice.docker("create", "-m", "900g", "busybox", "true")
    assert too_big.returncode != 0 and "no package supports" in too_big.stderr
    assert "g4-highcpu-512M" in alice.ok(
        "ps",
        "-a",
        "--filter",
        "label=com.joyent.package=g4-highcpu-512M",
        "--format",
        "{{.Labels}}",
    )
    alice.ok("rm", small, default, labelled)


def test_memory_limit_oom_kills(alice):
    n = name()
    result = alice.docker("run", "--name", n, "-m", "128m", "busybox", "tail", "/dev/zero")
    assert result.returncode == 137
    st = state(alice, n)
    assert st["OOMKilled"] is True and st["ExitCode"] == 137
    alice.ok("rm", n)


def test_limits_visible_in_cgroup(alice):
    out = alice.ok(
        "run", "--rm", "-m", "256m", "busybox", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    assert int(out) == 256 * 1024 * 1024


# -- restart policies ---------------------------------------------------------------------


def test_on_failure_restarts_exactly_n_times(alice):
    n = name()
    alice.ok(
        "run",
        "-d",
        "--name",
        n,
        "--restart",
        "on-failure:3",
        "busybox",
        "sh",
        "-c",
        "echo try; exit 1",
    )

    def settled() -> bool:
        st = state(alice, n)
        return st["Status"] == "exited" and inspect(alice, n)["RestartCount"] == 3

    wait_for(settled, 20)
    time.sleep(1.5)
    assert inspect(alice, n)["RestartCount"] == 3
    assert alice.ok("logs", n).count("try") == 4
    alice.ok("rm", n)


def test_always_restarts_after_crash(alice):
    n = name()
    alice.ok(
        "run", "-d", "--name", n, "--restart", "always", "busybox", "sh", "-c", "sleep 0.3; exit 2"
    )
    wait_for(lambda: inspect(alice, n)["RestartCount"] >= 2, 20)
    alice.ok("stop", "-t", "0", n)
    count = inspect(alice, n)["RestartCount"]
    time.sleep(1)
    assert state(alice, n)["Status"] == "exited"
    assert inspect(alice, n)["RestartCount"] == count
    alice.ok("rm", n)


def test_sdcd_kill9_and_restart_keeps_containers(sdcd, alice):
    keeper, restarter, exiter = name(), name(), name()
    alice.ok(
        "run",
        "-d",
        "--name",
        keeper,
        "busybox",
        "sh",
        "-c",
        "echo before; while true; do sleep 0.2; done",
    )
    alice.ok(
        "run",
        "-d",
        "--name",
        restarter,
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "sleep 2; exit 1",
    )
    alice.ok("run", "-d", "--name", exiter, "busybox", "sh", "-c", "sleep 1; exit 5")
    pid = state(alice, keeper)["Pid"]
    wait_for(lambda: "before" in alice.ok("logs", keeper), 10)
    sdcd.proc.kill()
    sdcd.proc.wait(10)
    time.sleep(3)  # exiter exits and restarter dies while sdcd is down
    sdcd.start()
    st = state(alice, keeper)
    assert st["Running"] and st["Pid"] == pid
    assert "before" in alice.ok("logs", keeper)
    assert state(alice, exiter)["ExitCode"] == 5 and state(alice, exiter)["Status"] == "exited"
    wait_for(lambda: inspect(alice, restarter)["RestartCount"] >= 1, 15)
    alice.ok("rm", "-f", keeper, restarter, exiter)


# -- refusals, errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--privileged"], "privileged"),
        (["--cap-add", "NET_ADMIN"], "cap-add"),
        (["--device", "/dev/null"], "device"),
        (["-v", "/etc:/x"], "host volumes"),
        (["--pid", "host"], "pid"),
        (["--ipc", "host"], "ipc"),
        (["--userns", "host"], "userns"),
        (["--security-opt", "seccomp=unconfined"], "security-opt"),
        (["--sysctl", "net.ipv4.ip_forward=1"], "sysctl"),
        (["--net", "host"], "host"),
        (["--net", "none"], "none"),
        (["-p", "8080:80"], "remapping"),
    ],
)
def test_refused_options(alice, args, words):
    before = alice.ok("ps", "-aq")
    result = alice.docker("create", *args, "busybox", "true")
    assert result.returncode != 0
    assert words in result.stderr.lower(), result.stderr
    assert alice.ok("ps", "-aq") == before


def test_bad_names_and_duplicates(alice):
    n = name()
    alice.ok("create", "--name", n, "busybox", "true")
    dup = alice.docker("create", "--name", n, "busybox", "true")
    assert dup.returncode != 0 and "already in use" in dup.stderr
    bad = alice.docker("create", "--name", "bad name!", "busybox", "true")
    assert bad.returncode != 0 and "Invalid container name" in bad.stderr
    alice.ok("rm", n)


def test_missing_executable(alice):
    result = alice.docker("run", "--rm", "busybox", "no-such-program")
    assert result.returncode == 127
    assert "no-such-program" in result.stderr


def test_unknown_user(alice):
    result = alice.docker("run", "--rm", "-u", "nosuchuser", "busybox", "true")
    assert result.returncode != 0 and "nosuchuser" in result.stderr
    assert alice.ok("run", "--rm", "-u", "nobody", "busybox", "id", "-un").strip() == "nobody"
    assert alice.ok("run", "--rm", "-u", "1234:5678", "busybox", "id").startswith(
        "uid=1234 gid=5678"
    )


def test_unapproved_account_may_not_run(sdcd, registry, tmp_path):
    u = busybox_user(sdcd, tmp_path, registry, "carol", approved=False)
    result = u.docker("create", "busybox", "true")
    assert result.returncode != 0
    assert "does not have permission" in result.stderr
    assert u.ok("ps", "-aq") == ""


# -- tenancy ------------------------------------------------------------------------------


def test_other_account_cannot_see_or_touch(alice, bob):
    n = name()
    cid = alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100").strip()
    assert cid not in bob.ok("ps", "-aq", "--no-trunc")
    for ref in (cid, cid[:12], n):
        for args in (
            ["inspect", ref],
            ["stop", ref],
            ["rm", "-f", ref],
            ["kill", ref],
            ["logs", ref],
        ):
            result = bob.docker(*args)
            # (``rm -f`` exits 0 on a missing container: the CLI ignores "not found" then)
            assert result.returncode != 0 or args[:2] == ["rm", "-f"], args
            assert "No such container" in result.stderr or "No such object" in result.stderr, (
                args,
                result.stderr,
            )
    bob.ok("run", "-d", "--name", n, "busybox", "sleep", "100")  # names are per account
    assert state(alice, n)["Running"]
    alice.ok("rm", "-f", n)
    bob.ok("rm", "-f", n)


# -- API versions, clients ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.24", "1.30"])
def test_old_api_versions(alice, version):
    old = {"DOCKER_API_VERSION": version}
    result = alice.docker("run", "--rm", "busybox", "echo", "old", env_extra=old)
    assert result.returncode == 0 and result.stdout == "old\n", result.stderr
    n = name()
    result = alice.docker("run", "--name", n, "busybox", "sh", "-c", "exit 4", env_extra=old)
    assert result.returncode == 4
    body = json.loads(alice.docker("inspect", n, env_extra=old).stdout)[0]
    assert body["State"]["ExitCode"] == 4
    assert ("Platform" in body) is (version != "1.24")
    alice.ok("rm", n)


def test_docker_py(docker_py):
    client = docker_py
    out = client.containers.run("busybox", ["echo", "from-py"], remove=True)
    assert out == b"from-py\n"
    c = client.containers.run("busybox", ["sleep", "100"], detach=True, labels={"x": "y"})
    assert c.status in ("created", "running")
    c.reload()
    assert c.status == "running" and c.labels["x"] == "y"
    assert c in client.containers.list(filters={"label": "x=y"})
    c.kill()
    assert c.wait()["StatusCode"] == 137
    c.remove()


# -- reconciling Redis with the node ------------------------------------------------------


def _redis_cli(sdcd: Daemon, *args: str) -> str:
    sock = sdcd.data_dir / "redis" / "redis.sock"
    return subprocess.run(
        ["redis-cli", "-s", str(sock), *args], capture_output=True, text=True, check=True
    ).stdout


def test_restart_reconciles_orphans_and_lost_containers(sdcd, alice):
    orphan, lost = name(), name()
    orphan_id = alice.ok("run", "-d", "--name", orphan, "busybox", "sleep", "100").strip()
    lost_id = alice.ok("run", "-d", "--name", lost, "busybox", "sleep", "100").strip()
    # Redis forgets one container; the node loses the other (its directory and runc
    # state gone as after a disk failure).
    _redis_cli(sdcd, "HDEL", "sdcd:containers:alice", orphan_id)
    # ... and an address taken by a create that crashed before recording its container.
    leaked_ip = sdcd.subnet.rsplit(".", 1)[0] + ".250"
    _redis_cli(sdcd, "HSET", "sdcd:ipam:bridge:ips", leaked_ip, "f" * 64)
    _redis_cli(sdcd, "HSET", "sdcd:ipam:bridge:owners", "f" * 64, leaked_ip)
    sdcd.stop()
    node_dir = sdcd.data_dir / "node" / "containers" / lost_id
    subprocess.run(["umount", "-l", str(node_dir / "bundle" / "rootfs")], check=False)
    runc_root = sdcd.data_dir / "node" / "runtime" / "runc"
    subprocess.run(["runc", "--root", str(runc_root), "kill", lost_id, "KILL"], check=False)
    time.sleep(0.5)
    subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", lost_id], check=False)
    subprocess.run(["rm", "-rf", str(node_dir)], check=True)
    sdcd.start()
    st = state(alice, lost)
    assert st["Status"] == "exited" and st["ExitCode"] == 255
    assert "no longer holds" in st["Error"]
    assert not (sdcd.data_dir / "node" / "containers" / orphan_id).exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert orphan_id[:12] not in netns
    assert "unknown container" in sdcd.log()
    assert leaked_ip not in _redis_cli(sdcd, "HKEYS", "sdcd:ipam:bridge:ips")
    assert lost_id[:12] in _redis_cli(sdcd, "HVALS", "sdcd:ipam:bridge:ips")
    alice.ok("rm", lost)


def test_events_stream(alice):
    since = time.time() - 1
    n = name()
    assert alice.docker("run", "--name", n, "busybox", "sh", "-c", "exit 2").returncode == 2
    alice.ok("rename", n, n + "x")
    alice.ok("rm", n + "x")
    until = time.time() + 0.5
    out = alice.ok(
        "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
        "--filter", "type=container", "--format", "{{json .}}",
    )  # fmt: skip
    events = [json.loads(line) for line in out.splitlines()]
    actions = [e["Action"] for e in events if e["Actor"]["Attributes"].get("name") in (n, n + "x")]
    assert actions == ["create", "start", "die", "rename", "destroy"], actions
    die = next(e for e in events if e["Action"] == "die")
    assert die["Actor"]["Attributes"]["exitCode"] == "2"


# -- more of the Docker config ------------------------------------------------------------


def test_tty_output_is_raw(alice):
    n = name()
    # (text mode turns the pty's \r\n into \n; the raw bytes are checked in test_compute)
    assert alice.ok("run", "--name", n, "-t", "busybox", "sh", "-c", "tty; echo tty") == (
        "/dev/pts/0\ntty\n"
    )
    assert inspect(alice, n)["Config"]["Tty"] is True
    alice.ok("rm", n)


def test_detached_autoremove(alice):
    n = name()
    alice.ok("run", "-d", "--rm", "--name", n, "busybox", "sleep", "0.3")
    wait_for(lambda: n not in alice.ok("ps", "-a", "--format", "{{.Names}}"), 10)


def test_stop_signal_read_only_env_and_dns(alice):
    n = name()
    alice.ok("run", "-d", "--name", n, "--stop-signal", "USR1", "busybox", "sh", "-c",
             "trap 'exit 9' USR1; echo ready; while true; do sleep 0.1; done")  # fmt: skip
    wait_for(lambda: "ready" in alice.ok("logs", n), 10)
    alice.ok("stop", n)
    assert state(alice, n)["ExitCode"] == 9
    alice.ok("rm", n)
    ro = alice.docker("run", "--rm", "--read-only", "busybox", "touch", "/x")
    assert ro.returncode != 0 and "Read-only" in ro.stderr
    out = alice.ok("run", "--rm", "--dns", "192.0.2.53", "--dns-search", "example.test",
                   "--add-host", "db:192.0.2.7", "-e", "A=1", "busybox", "sh", "-c",
                   "cat /etc/resolv.conf /etc/hosts; echo A=$A")  # fmt: skip
    assert "nameserver 192.0.2.53" in out and "search example.test" in out
    assert "192.0.2.7\tdb" in out and "A=1" in out


def test_logs_since_until_and_size(alice):
    n = name()
    script = "echo early; sleep 1.2; echo late; dd if=/dev/zero of=/big bs=1k count=300"
    alice.ok("run", "-d", "--name", n, "busybox", "sh", "-c", script)
    alice.ok("wait", n)
    entries = alice.ok("logs", "-t", n).splitlines()
    late_time = next(line.split()[0] for line in entries if line.endswith(" late"))
    assert alice.ok("logs", "--since", late_time, n).startswith("late")
    assert "late" not in alice.ok("logs", "--until", late_time[:19] + "Z", n)
    size = json.loads(alice.ok("ps", "-a", "-s", "--filter", f"name={n}", "--format", "{{json .}}"))
    assert "300kB" in size["Size"] or "307kB" in size["Size"], size["Size"]
    alice.ok("rm", n)


# -- attach (the interactive cases are issue 5's; these are what `docker run` needs) ------


def _docker_stdin(u: User, data: bytes, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(
        DOCKER_HOST=u.sdcd.docker_host, DOCKER_TLS_VERIFY="1",
        DOCKER_CERT_PATH=str(u.certs), HOME=str(u.home),
    )  # fmt: skip
    return subprocess.run(["docker", *args], input=data, capture_output=True, env=env, timeout=60)


def test_stdin_reaches_the_container_and_eof_ends_it(alice):
    result = _docker_stdin(alice, b"line one\nline two\n", "run", "--rm", "-i", "busybox", "cat")
    assert result.returncode == 0 and result.stdout == b"line one\nline two\n"
    script = "read x; echo got $x; cat; echo done"
    result = _docker_stdin(alice, b"a\nb\n", "run", "--rm", "-i", "busybox", "sh", "-c", script)
    assert result.stdout == b"got a\nb\ndone\n"


def test_start_attach_interactive(alice):
    cid = alice.ok("create", "-i", "busybox", "cat").strip()
    result = _docker_stdin(alice, b"via start\n", "start", "-ai", cid)
    assert result.returncode == 0 and result.stdout == b"via start\n"
    alice.ok("rm", cid)


def test_large_output_through_attach_arrives_complete(alice):
    result = subprocess.run(
        "docker run --rm busybox sh -c 'dd if=/dev/zero bs=1M count=100 2>/dev/null' | wc -c",
        shell=True, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DOCKER_HOST": alice.sdcd.docker_host, "DOCKER_TLS_VERIFY": "1",
             "DOCKER_CERT_PATH": str(alice.certs), "HOME": str(alice.home)},
    )  # fmt: skip
    assert result.stdout.strip() == str(100 * 1024 * 1024)


def test_tmpfs_and_volumes(alice):
    out = alice.ok("run", "--rm", "--tmpfs", "/scratch:size=1m", "busybox", "sh", "-c",
                   "grep /scratch /proc/mounts; echo x > /scratch/f && cat /scratch/f")  # fmt: skip
    assert "tmpfs /scratch tmpfs" in out and "x\n" in out
    assert alice.ok("run", "--rm", "-v", "/data", "busybox", "sh", "-c",
                    "echo kept > /data/f; cat /data/f") == "kept\n"  # fmt: skip
    cid = alice.ok("create", "-v", "/etc", "busybox", "cat", "/etc/passwd").strip()
    assert [m["Destination"] for m in inspect(alice, cid)["Mounts"]] == ["/etc"]
    alice.ok("start", cid)
    alice.ok("wait", cid)
    assert "root:" in alice.ok("logs", cid)  # the image's files fill a new volume
    alice.ok("rm", cid)
    before = alice.ok("ps", "-aq")
    named = alice.docker("create", "-v", "mine:/data", "busybox", "true")
    assert named.returncode != 0 and "named volumes are not implemented" in named.stderr
    bad = alice.docker("create", "--tmpfs", "/x:suid=maybe", "busybox", "true")
    assert bad.returncode != 0 and "invalid tmpfs option" in bad.stderr
    assert alice.ok("ps", "-aq") == before


# -- docker stats -----------------------------------------------------------------------


def test_stats_no_stream_for_a_busy_container(alice, bob):
    burn, idle = name(), name()
    alice.ok("run", "-d", "--name", burn, "-m", "256m", "busybox", "sh", "-c",
             "dd if=/dev/zero of=/dev/shm/x bs=1M count=60; while :; do :; done")  # fmt: skip
    alice.ok("create", "--name", idle, "busybox", "true")
    wait_for(lambda: "60" in alice.ok("exec", burn, "du", "-m", "/dev/shm/x"), 20)
    out = alice.ok("stats", "--no-stream", "--format", "{{json .}}", burn, idle)
    rows = {r["Name"]: r for r in map(json.loads, out.splitlines())}
    cpu = float(rows[burn]["CPUPerc"].rstrip("%"))
    assert 5 < cpu <= 110, rows[burn]  # a package caps it; it burns what it gets
    used, _, limit = rows[burn]["MemUsage"].partition(" / ")
    assert used.endswith("MiB") and 55 < float(used[:-3]) < 256, rows[burn]
    assert limit == "256MiB", rows[burn]
    assert int(rows[burn]["PIDs"]) >= 1
    assert rows[idle]["CPUPerc"] == "0.00%" and rows[idle]["PIDs"] == "0"
    one = json.loads(alice.api("GET", f"/v1.41/containers/{burn}/stats?stream=0&one-shot=1").body)
    assert one["name"] == "/" + burn and one["memory_stats"]["limit"] == 256 * 1024 * 1024
    assert one["precpu_stats"]["cpu_usage"]["total_usage"] == 0  # one-shot: no previous
    bad = alice.api("GET", f"/v1.41/containers/{burn}/stats?stream=1&one-shot=1")
    assert bad.status == 400
    assert bob.api("GET", f"/v1.41/containers/{burn}/stats?stream=0").status == 404
    alice.ok("rm", "-f", burn, idle)


def test_stats_stream_sends_a_sample_a_second(alice):
    n = name()
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100")
    proc = subprocess.Popen(
        ["docker", "stats", "--format", "{{.Name}} {{.PIDs}}", n],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=alice.env(),
    )  # fmt: skip
    try:
        time.sleep(3.5)
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    assert out.decode().count(f"{n} 1") >= 2  # refreshed at least twice
    alice.ok("rm", "-f", n)


# -- docker diff, docker export -------------------------------------------------------------


def test_diff_lists_what_the_container_changed(alice, bob):
    n = name()
    script = "mkdir -p /new/dir && echo x > /new/dir/f && echo y >> /etc/passwd && rm /bin/ls"
    alice.ok("run", "--name", n, "busybox", "sh", "-c", script)
    lines = alice.ok("diff", n).splitlines()
    assert lines == ["C /bin", "D /bin/ls", "C /etc", "C /etc/passwd",
                     "A /new", "A /new/dir", "A /new/dir/f"]  # fmt: skip
    assert not any(p in " ".join(lines) for p in ("/proc", "/sys", "/etc/hosts"))
    assert bob.api("GET", f"/v1.41/containers/{n}/changes").status == 404
    fresh = name()
    alice.ok("create", "--name", fresh, "busybox", "true")
    assert alice.api("GET", f"/v1.41/containers/{fresh}/changes").body.strip() == b"null"
    alice.ok("rm", n, fresh)


def test_export_streams_the_containers_filesystem(alice, tmp_path):
    n = name()
    alice.ok("run", "--name", n, "busybox", "sh", "-c",
             "head -c 30000000 /dev/urandom > /big && ln -s /big /link && rm /bin/ls")  # fmt: skip
    out = tmp_path / "c.tar"
    r = subprocess.run(["docker", "export", "-o", str(out), n], env=alice.env(), timeout=120)
    assert r.returncode == 0
    import tarfile

    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["big"].size == 30000000
        assert members["link"].issym() and members["link"].linkname == "/big"
        assert "bin/sh" in members and "bin/ls" not in members
        assert "etc/" in members or "etc" in members
    assert alice.docker("export", "nosuch").returncode != 0
    alice.ok("rm", n)


def test_export_to_a_slow_reader_that_leaves(sdcd, alice):
    """The tar is made as the client reads it: a client that reads slowly holds the
    node's thread (sdcd's memory stays put), one that leaves stops it."""
    import socket

    from tests.hijackclient import tls_context

    n = name()
    alice.ok("run", "--name", n, "busybox", "sh", "-c", "head -c 200000000 /dev/zero > /big")

    def rss() -> int:
        status = Path(f"/proc/{sdcd.proc.pid}/status").read_text()
        return int(next(x.split()[1] for x in status.splitlines() if x.startswith("VmRSS:")))

    before = rss()
    context = tls_context(sdcd.ca_path, alice.identity)
    raw = socket.create_connection(("localhost", sdcd.docker_port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with context.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(f"GET /v1.41/containers/{n}/export HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        for _ in range(20):
            got += len(s.recv(16384))
            time.sleep(0.05)
        grown = rss() - before
    assert got > 0 and grown < 64 * 1024, f"sdcd grew {grown} KiB for a slow reader"
    wait_for(lambda: "ended: stopped, the client went away" in sdcd.log(), 10)  # the thread ended
    # the client left: a new export still works, completely
    r = subprocess.run(f"docker export {n} | wc -c", shell=True, capture_output=True,
                       text=True, env=alice.env(), timeout=120)  # fmt: skip
    assert int(r.stdout) > 200_000_000
    alice.ok("rm", n)


# -- docker commit ----------------------------------------------------------------------------


def test_commit_with_changes_runs_and_pushes(sdcd, alice, bob, registry):
    n = name()
    alice.ok("run", "--name", n, "busybox", "sh", "-c",
             "echo committed > /hello && mkdir /data && rm /bin/ls")  # fmt: skip
    repo = f"{registry.host}/committed{uuid.uuid4().hex[:6]}"
    image_id = alice.ok(
        "commit", "--change", 'CMD ["cat", "/hello"]', "--change", 'ENV GREETING="hi there"',
        "--change", "EXPOSE 8080", "--change", "LABEL team=ops", "--change", "WORKDIR /data",
        "-m", "a message", "-a", "me", n, f"{repo}:v1",
    ).strip()  # fmt: skip
    assert image_id.startswith("sha256:")
    assert alice.ok("run", "--rm", f"{repo}:v1") == "committed\n"
    r = alice.docker("run", "--rm", f"{repo}:v1", "sh", "-c", 'echo "$GREETING $(pwd)"; ls /bin/ls')
    assert r.stdout == "hi there /data\n" and r.returncode != 0  # ls is gone: whiteout kept
    info = json.loads(alice.ok("image", "inspect", f"{repo}:v1"))[0]
    assert info["Config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert info["Config"]["Labels"] == {"team": "ops"}  # the package label is not kept
    assert info["Comment"] == "a message" and info["Author"] == "me"
    base_layers = json.loads(alice.ok("image", "inspect", "busybox"))[0]["RootFS"]["Layers"]
    assert info["RootFS"]["Layers"][:-1] == base_layers
    history = alice.ok("history", "--no-trunc", "--format", "{{.Comment}}", f"{repo}:v1")
    assert history.splitlines()[0] == "a message"
    # bad change, bad name: 400, nothing made
    r = alice.docker("commit", "--change", "RUN true", n, "x:y")
    assert r.returncode != 0 and "valid change command" in r.stderr
    assert alice.docker("commit", n, "Bad Name").returncode != 0
    assert bob.docker("commit", n, "stolen").returncode != 0  # not bob's container
    # pushed and pulled by another account, it runs there
    alice.ok("push", f"{repo}:v1")
    bob.ok("pull", f"{repo}:v1")
    assert bob.ok("run", "--rm", f"{repo}:v1") == "committed\n"
    alice.ok("rm", n)
    alice.ok("rmi", f"{repo}:v1")
    bob.ok("rmi", f"{repo}:v1")


# -- docker cp ------------------------------------------------------------------------------


def test_cp_both_ways_running_and_stopped(alice, bob, tmp_path):
    n = name()
    script = "mkdir -p /srv/d && echo in-container > /srv/d/f && ln -s / /escape && sleep 100"
    alice.ok("run", "-d", "--name", n, "busybox", "sh", "-c", script)
    wait_for(lambda: alice.docker("exec", n, "test", "-L", "/escape").returncode == 0, 10)
    alice.ok("cp", f"{n}:/srv/d", str(tmp_path / "out"))
    assert (tmp_path / "out" / "f").read_text() == "in-container\n"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "g").write_text("from-host\n")
    (src / "sub" / "g").chmod(0o640)
    alice.ok("cp", str(src / "sub"), f"{n}:/srv/")
    assert alice.ok("exec", n, "cat", "/srv/sub/g") == "from-host\n"
    assert alice.ok("exec", n, "stat", "-c", "%a", "/srv/sub/g").strip() == "640"
    # a symlink to / stays inside the container's root
    alice.ok("cp", f"{n}:/escape/srv/d/f", str(tmp_path / "via-link"))
    assert (tmp_path / "via-link").read_text() == "in-container\n"
    assert alice.docker("cp", f"{n}:/nosuch", str(tmp_path / "x")).returncode != 0
    assert bob.docker("cp", f"{n}:/srv/d", str(tmp_path / "bob")).returncode != 0
    alice.ok("stop", "-t", "0", n)  # stopped: both ways still work
    (tmp_path / "h").write_text("later\n")
    alice.ok("cp", str(tmp_path / "h"), f"{n}:/srv/h")
    alice.ok("cp", f"{n}:/srv/h", str(tmp_path / "h2"))
    assert (tmp_path / "h2").read_text() == "later\n"
    alice.ok("rm", n)


def test_cp_refuses_a_tar_that_escapes(alice):
    import io
    import tarfile

    n = name()
    alice.ok("create", "--name", n, "busybox", "true")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for entry in ("ok", "../evil"):
            info = tarfile.TarInfo(entry)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"x\n"))
    r = request(alice.sdcd.docker_port, "PUT", f"/v1.41/containers/{n}/archive?path=/tmp",
                ca=alice.sdcd.ca_path, identity=alice.identity, body=data.getvalue())  # fmt: skip
    assert r.status == 400, r.body
    assert alice.docker("cp", f"{n}:/tmp/ok", "-").returncode != 0  # nothing was written
    alice.ok("rm", n)
