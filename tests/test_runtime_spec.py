"""The OCI runtime config, the container's user and /etc files: unit tests of each piece,
then one real container under runc with the config we generate."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from sdcd.compute import etcfiles, seccomp
from sdcd.compute.spec import (
    DEFAULT_CAPS,
    MASKED_PATHS,
    READONLY_PATHS,
    container_env,
    memory_limits,
    runtime_spec,
    write_files,
)
from sdcd.compute.users import UserError, read_in_root, resolve_in_root, resolve_user

RUNC = "/usr/sbin/runc"
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www:x:33:33:www-data:/var/www:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """\
root:x:0:
daemon:x:1:
www:x:33:app
app:x:1000:
audio:x:29:app,www
staff:x:50:
nogroup:x:65534:
"""


def node_spec(**overrides) -> dict:
    cid = secrets.token_hex(32)
    spec = {
        "id": cid,
        "name": "/test",
        "hostname": cid[:12],
        "domainname": "",
        "args": ["sh", "-c", "true"],
        "env": ["PATH=/usr/bin:/bin", "K=V"],
        "cwd": "/",
        "user": "",
        "tty": False,
        "open_stdin": False,
        "labels": {"a": "b"},
        "stop_signal": "SIGTERM",
        "resources": {
            "memory": 64 * 1024 * 1024,
            "memory_swap": 0,
            "cpu_shares": 0,
            "cpu_quota": 0,
            "cpu_period": 100000,
            "pids_limit": 0,
        },
        "network": {"ip": "172.30.0.5", "prefix": 16, "gateway": "172.30.0.1", "mac": "02:42:0"},
        "dns": [],
        "dns_search": [],
        "dns_options": [],
        "extra_hosts": [],
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def rootfs(tmp_path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


# --- users -------------------------------------------------------------------------------


def test_user_by_name_with_supplementary_groups(rootfs):
    assert resolve_user(rootfs, "app") == (1000, 1000, [33, 29], "/home/app")


def test_user_default_is_root(rootfs):
    assert resolve_user(rootfs, "") == (0, 0, [], "/root")


def test_user_by_uid_in_passwd(rootfs):
    assert resolve_user(rootfs, "33") == (33, 33, [29], "/var/www")


def test_user_by_uid_not_in_passwd(rootfs):
    assert resolve_user(rootfs, "4242") == (4242, 0, [], "/")


def test_user_uid_gid(rootfs):
    assert resolve_user(rootfs, "4242:4343") == (4242, 4343, [], "/")
    # An explicit group replaces the primary gid and drops the supplementary groups.
    assert resolve_user(rootfs, "1000:50") == (1000, 50, [], "/home/app")


def test_user_name_group(rootfs):
    assert resolve_user(rootfs, "app:staff") == (1000, 50, [], "/home/app")
    assert resolve_user(rootfs, "nobody:nogroup") == (65534, 65534, [], "/nonexistent")


def test_user_unknown_name(rootfs):
    with pytest.raises(UserError) as e:
        resolve_user(rootfs, "ghost")
    assert str(e.value) == "unable to find user ghost: no matching entries in passwd file"


def test_group_unknown_name(rootfs):
    with pytest.raises(UserError) as e:
        resolve_user(rootfs, "app:ghosts")
    assert str(e.value) == "unable to find group ghosts: no matching entries in group file"


def test_uid_out_of_range(rootfs):
    with pytest.raises(UserError):
        resolve_user(rootfs, "4294967296")


def test_no_passwd_file(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    assert resolve_user(root, "") == (0, 0, [], "/")
    assert resolve_user(root, "123") == (123, 0, [], "/")
    assert resolve_user(root, "123:456") == (123, 456, [], "/")
    with pytest.raises(UserError, match="unable to find user app: no matching entries"):
        resolve_user(root, "app")


def test_passwd_symlinked_to_absolute_path_stays_inside_root(tmp_path, rootfs):
    # A host file at the same absolute path as the link target must never be read.
    host_file = tmp_path / "host-passwd"
    host_file.write_text("hostonly:x:7:7::/host:/bin/sh\n")
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to(host_file)
    with pytest.raises(UserError):
        resolve_user(rootfs, "hostonly")
    # ... but the same path inside the rootfs is what the container would read.
    inside = rootfs / str(host_file).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text("inside:x:8:8::/in:/bin/sh\n")
    assert resolve_user(rootfs, "inside") == (8, 8, [], "/in")


def test_passwd_symlinked_to_etc_shadow_reads_the_containers_shadow(rootfs):
    (rootfs / "etc" / "shadow").write_text("shadowed:x:9:9::/s:/bin/sh\n")
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("/etc/shadow")
    assert resolve_user(rootfs, "shadowed") == (9, 9, [], "/s")


def test_dotdot_symlinks_cannot_climb_out(tmp_path, rootfs):
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("../../../../../../../../../../etc/passwd")
    # The link resolves to <rootfs>/etc/passwd itself: a loop, not the host's passwd.
    assert read_in_root(rootfs, "/etc/passwd") is None
    with pytest.raises(UserError):
        resolve_user(rootfs, "root")
    # A directory link climbing out lands on the rootfs.
    (rootfs / "up").symlink_to("../../../..")
    (rootfs / "etc" / "real").write_text(PASSWD)
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("/up/up/../etc/./real")
    assert resolve_user(rootfs, "app")[0] == 1000


def test_resolve_in_root_paths(rootfs):
    root = Path(os.path.abspath(rootfs))
    (rootfs / "data").mkdir()
    (rootfs / "link").symlink_to("/data")
    (rootfs / "rel").symlink_to("data/../etc")
    assert resolve_in_root(rootfs, "/link/x") == root / "data" / "x"
    assert resolve_in_root(rootfs, "/rel/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(rootfs, "/../../etc/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(rootfs, "/missing/../etc") == root / "etc"
    assert resolve_in_root(rootfs, "/") == root
    (rootfs / "loop").symlink_to("/loop")
    with pytest.raises(OSError) as e:
        resolve_in_root(rootfs, "/loop")
    assert e.value.errno == errno.ELOOP


def test_passwd_fifo_or_device_is_not_read(rootfs):
    (rootfs / "etc" / "passwd").unlink()
    os.mkfifo(rootfs / "etc" / "passwd")
    assert read_in_root(rootfs, "/etc/passwd") is None  # and does not hang
    assert resolve_user(rootfs, "1000") == (1000, 0, [], "/")


# --- /etc files --------------------------------------------------------------------------

DEFAULT_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


def test_hosts_file():
    text = etcfiles.hosts_file("abc", "", "172.30.0.5", ["db:10.0.0.9", "v6:::1", "new=1.2.3.4"])
    assert text == DEFAULT_HOSTS + ("10.0.0.9\tdb\n::1\tv6\n1.2.3.4\tnew\n172.30.0.5\tabc\n")


def test_hosts_file_domain_and_fqdn():
    assert etcfiles.hosts_file("web", "example.com", "10.1.1.1", []).endswith(
        "10.1.1.1\tweb.example.com web\n"
    )
    assert etcfiles.hosts_file("web.example.org", "", "10.1.1.1", []).endswith(
        "10.1.1.1\tweb.example.org web\n"
    )
    assert etcfiles.hosts_file("web", "", "", []) == DEFAULT_HOSTS


def test_resolv_conf():
    assert etcfiles.resolv_conf(["1.1.1.1"], ["a.com", "b.com"], ["ndots:2"], ["9.9.9.9"]) == (
        "nameserver 1.1.1.1\nsearch a.com b.com\noptions ndots:2\n"
    )
    assert etcfiles.resolv_conf([], [], [], ["10.0.0.2", "10.0.0.3"]) == (
        "nameserver 10.0.0.2\nnameserver 10.0.0.3\n"
    )
    assert etcfiles.resolv_conf([], ["."], [], []) == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def test_host_resolvers(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch corp\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n"
        "nameserver ::1\nnameserver 2001:db8::1\nnameserver 127.0.1.1\nnameserver 10.0.0.3\n"
    )
    assert etcfiles.host_resolvers(str(conf)) == ["10.0.0.2", "10.0.0.3"]
    conf.write_text("nameserver 127.0.0.1\n")
    assert etcfiles.host_resolvers(str(conf)) == ["8.8.8.8", "8.8.4.4"]
    assert etcfiles.host_resolvers(str(tmp_path / "missing")) == ["8.8.8.8", "8.8.4.4"]


def test_write_files(tmp_path):
    spec = node_spec(hostname="myhost", dns=["1.1.1.1"], extra_hosts=["db:10.0.0.9"])
    write_files(spec, tmp_path / "files", ["10.0.0.2"])
    files = tmp_path / "files"
    assert sorted(p.name for p in files.iterdir()) == ["hostname", "hosts", "resolv.conf"]
    assert (files / "hostname").read_text() == "myhost\n"
    assert (files / "hosts").read_text().endswith("10.0.0.9\tdb\n172.30.0.5\tmyhost\n")
    assert (files / "resolv.conf").read_text() == "nameserver 1.1.1.1\n"
    assert (files / "hosts").stat().st_mode & 0o777 == 0o644


# --- seccomp -----------------------------------------------------------------------------


def test_seccomp_profile_shape():
    profile = seccomp.default_profile("x86_64", "6.1.0")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = set(profile["syscalls"][0]["names"])
    assert not allowed & seccomp.DENIED
    for needed in ("read", "write", "openat", "execve", "mmap", "futex", "wait4", "ptrace"):
        assert needed in allowed
    for denied in ("mount", "umount2", "reboot", "kexec_load", "init_module", "bpf", "keyctl",
                   "setns", "unshare", "clone", "perf_event_open", "open_by_handle_at",
                   "clock_settime", "swapon", "io_uring_setup"):  # fmt: skip
        assert denied not in allowed
    by_name = {r["names"][0]: r for r in profile["syscalls"][1:]}
    assert by_name["clone"]["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    assert by_name["unshare"]["args"][0]["value"] & 0x10000000  # CLONE_NEWUSER masked
    assert by_name["clone3"] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_seccomp_old_kernel_has_no_ptrace():
    assert "ptrace" not in seccomp.allowed_syscalls("x86_64", "4.4.0-generic")
    assert "ptrace" in seccomp.allowed_syscalls("x86_64", "4.8.0")


# --- the runtime config ------------------------------------------------------------------


def make_config(tmp_path, **overrides) -> dict:
    return runtime_spec(
        node_spec(**overrides),
        tmp_path / "rootfs",
        "/run/netns/x",
        "/sdcd/abc",
        tmp_path / "files",
        1000,
        1000,
        [33],
    )


def test_config_process(tmp_path):
    cfg = make_config(tmp_path, args=["echo", "hi"], cwd="", user="app")
    proc = cfg["process"]
    assert cfg["ociVersion"] == "1.0.2"
    assert proc["args"] == ["echo", "hi"]
    assert proc["cwd"] == "/"
    assert proc["terminal"] is False
    assert proc["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [33]}
    assert proc["noNewPrivileges"] is False
    assert proc["oomScoreAdj"] == 0
    caps = proc["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    assert all(caps[k] == DEFAULT_CAPS for k in caps)
    assert len(DEFAULT_CAPS) == 14 and "CAP_SYS_ADMIN" not in DEFAULT_CAPS
    assert "apparmorProfile" not in proc


def test_env():
    spec = node_spec(hostname="h", env=["K=V"])
    assert container_env(spec) == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME=h",
        "K=V",
    ]
    spec = node_spec(hostname="h", tty=True, env=["PATH=/bin", "TERM=vt100", "A=1", "HOSTNAME"])
    assert container_env(spec) == ["PATH=/bin", "TERM=vt100", "A=1"]
    assert container_env(node_spec(hostname="h", tty=True, env=[]))[-1] == "TERM=xterm"


def test_memory_swap_semantics():
    mib = 1024 * 1024
    assert memory_limits({"memory": 64 * mib, "memory_swap": 0}) == {
        "limit": 64 * mib,
        "swap": 128 * mib,
    }
    assert memory_limits({"memory": 64 * mib, "memory_swap": -1})["swap"] == -1
    assert memory_limits({"memory": 64 * mib, "memory_swap": 96 * mib})["swap"] == 96 * mib
    assert memory_limits({"memory": 64 * mib, "memory_swap": 64 * mib})["swap"] == 64 * mib
    assert memory_limits({"memory": 0, "memory_swap": -1}) == {}
    with pytest.raises(ValueError):
        memory_limits({"memory": 64 * mib, "memory_swap": 32 * mib})


def test_resources(tmp_path):
    resources = {
        "memory": 0,
        "memory_swap": 0,
        "cpu_shares": 0,
        "cpu_quota": 0,
        "cpu_period": 100000,
        "pids_limit": 0,
    }
    res = make_config(tmp_path, resources=resources)["linux"]["resources"]
    assert set(res) == {"devices"}
    resources.update(memory=1 << 30, cpu_shares=512, cpu_quota=50000, pids_limit=100)
    res = make_config(tmp_path, resources=resources)["linux"]["resources"]
    assert res["memory"] == {"limit": 1 << 30, "swap": 2 << 30}
    assert res["cpu"] == {"shares": 512, "quota": 50000, "period": 100000}
    assert res["pids"] == {"limit": 100}


def test_devices(tmp_path):
    linux = make_config(tmp_path)["linux"]
    rules = linux["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    allowed = {(r["type"], r.get("major"), r.get("minor"), r["access"]) for r in rules[1:]}
    assert ("c", None, None, "m") in allowed and ("b", None, None, "m") in allowed
    assert ("c", 136, None, "rwm") in allowed  # pts
    for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)):
        assert ("c", major, minor, "rwm") in allowed
    assert all(r["allow"] for r in rules[1:])
    nodes = {d["path"]: (d["major"], d["minor"], d["fileMode"]) for d in linux["devices"]}
    assert nodes["/dev/null"] == (1, 3, 0o666)
    assert set(nodes) == {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")}


def test_linux_section(tmp_path):
    cfg = make_config(tmp_path, domainname="example.com")
    linux = cfg["linux"]
    assert cfg["root"] == {"path": str(tmp_path / "rootfs"), "readonly": False}
    assert cfg["hostname"] == cfg["process"]["env"][1].removeprefix("HOSTNAME=")
    assert linux["cgroupsPath"] == "/sdcd/abc"
    ns = {n["type"]: n.get("path") for n in linux["namespaces"]}
    assert ns["network"] == "/run/netns/x"
    assert {"pid", "ipc", "uts", "mount"} <= set(ns)
    assert linux["sysctl"]["kernel.domainname"] == "example.com"
    assert "/proc/kcore" in linux["maskedPaths"] and linux["maskedPaths"] == MASKED_PATHS
    assert linux["readonlyPaths"] == READONLY_PATHS
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "kernel.domainname" not in make_config(tmp_path)["linux"]["sysctl"]
    with pytest.raises(ValueError):
        runtime_spec(node_spec(), tmp_path, "/run/netns/x", "sdcd/rel", tmp_path, 0, 0, [])


def test_mounts(tmp_path):
    mounts = {m["destination"]: m for m in make_config(tmp_path, shm_size=1 << 20)["mounts"]}
    assert {
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    } <= set(mounts)
    assert "size=1048576" in mounts["/dev/shm"]["options"]
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts["/sys/fs/cgroup"]["options"]
    assert "newinstance" in mounts["/dev/pts"]["options"]
    for name in ("hosts", "resolv.conf", "hostname"):
        m = mounts[f"/etc/{name}"]
        assert m["source"] == str(tmp_path / "files" / name)
        assert m["options"] == ["rbind", "rprivate"]
    mounts = {m["destination"]: m for m in make_config(tmp_path, read_only=True)["mounts"]}
    assert "size=67108864" in mounts["/dev/shm"]["options"]
    assert "ro" in mounts["/etc/hosts"]["options"]
    assert make_config(tmp_path, read_only=True)["root"]["readonly"] is True


# --- one real container under runc ------------------------------------------------------


class Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out, self.err = [], []
        self.done: defer.Deferred = defer.Deferred()

    def childDataReceived(self, fd, data):
        (self.out if fd == 1 else self.err).append(data)

    def processEnded(self, reason):
        self.done.callback((b"".join(self.out), b"".join(self.err), reason.value.exitCode))


async def run_quiet(args: list[str]) -> tuple[bytes, bytes, int]:
    """Run a command with stdin from /dev/null (no tty), off the reactor thread."""
    with open(os.devnull, "rb") as devnull:
        proto = Collect()
        reactor.spawnProcess(
            proto,
            args[0],
            args,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            childFDs={0: devnull.fileno(), 1: "r", 2: "r"},
        )
    return await proto.done


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="sdcd-spec-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def netns():
    name = f"sdcdt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield f"/run/netns/{name}"
    subprocess.run(["ip", "netns", "delete", name], check=False)


def busybox_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "mnt").mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")


async def run_container(workdir: Path, netns: str, script: str, **overrides) -> str:
    """Run ``sh -c script`` to completion under runc; its stdout. Cleans up after itself."""
    spec = node_spec(args=["sh", "-c", script], **overrides)
    short = spec["id"][:12]
    bundle = workdir / short
    rootfs = bundle / "rootfs"
    busybox_rootfs(rootfs)
    uid, gid, extra, _home = resolve_user(rootfs, spec["user"])
    write_files(spec, bundle / "files", ["10.0.0.2"])
    config = runtime_spec(
        spec, rootfs, netns, f"/sdcd-test/{short}", bundle / "files", uid, gid, extra
    )
    (bundle / "config.json").write_text(json.dumps(config))
    state = str(workdir / "state")
    try:
        out, err, code = await run_quiet([RUNC, "--root", state, "run", "-b", str(bundle), short])
    finally:
        await run_quiet([RUNC, "--root", state, "delete", "--force", short])
        remove_cgroups(short)
    assert code == 0, err.decode()
    return out.decode()


def remove_cgroups(short: str) -> None:
    """runc removes its cgroups; remove whatever it left, and the shared parent if empty."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for path in (hierarchy / "sdcd-test" / short, hierarchy / "sdcd-test"):
            with contextlib.suppress(OSError):
                path.rmdir()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(RUNC), reason="needs root and runc")
@pytest_twisted.ensureDeferred
async def test_runc_runs_the_generated_config(workdir, netns):
    script = (
        "id; hostname; cat /proc/sys/kernel/domainname; cat /etc/hosts /etc/resolv.conf;"
        "grep -E '^(Cap|Seccomp:)' /proc/self/status;"
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max;"
        "echo env:$K:$HOME;"
        "mount -t tmpfs x /mnt 2>&1; echo mount=$?;"
        "unshare -U true 2>&1; echo unshare=$?;"
        "echo kcore=$(cat /proc/kcore 2>/dev/null | wc -c) timer_list=$(wc -c </proc/timer_list);"
        "echo acpi=$(ls /proc/acpi | wc -l)"
    )
    pids = dict(node_spec()["resources"], pids_limit=50)
    out = await run_container(
        workdir, netns, script, domainname="example.com", extra_hosts=["db:10.0.0.9"],
        resources=pids,
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "uid=0(root) gid=0(root)"
    hostname = lines[1]
    assert len(hostname) == 12
    assert lines[2] == "example.com"
    assert "10.0.0.9\tdb\n" in out
    assert f"172.30.0.5\t{hostname}.example.com {hostname}\n" in out
    assert "nameserver 10.0.0.2\n" in out
    assert "CapBnd:\t00000000a80425fb" in lines  # exactly docker's 14
    assert "CapEff:\t00000000a80425fb" in lines
    assert "CapInh:\t0000000000000000" in lines and "CapAmb:\t0000000000000000" in lines
    assert "Seccomp:\t2" in lines
    assert str(64 * 1024 * 1024) in lines and "50" in lines
    assert "env:V:/root" in lines
    assert "mount=1" in lines  # EPERM
    assert "unshare: unshare(0x10000000): Operation not permitted" in lines  # seccomp
    assert "kcore=0 timer_list=0" in lines  # masked (or absent: kcore is not on every kernel)
    assert "acpi=0" in lines

    out = await run_container(workdir, netns, "id; grep -E '^Cap(Eff|Bnd)' /proc/self/status",
                              user="nobody")  # fmt: skip
    assert out.splitlines() == [
        "uid=65534(nobody) gid=65534(nogroup)",
        "CapEff:\t0000000000000000",
        "CapBnd:\t00000000a80425fb",
    ]
