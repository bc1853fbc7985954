"""``docker build`` through the real CLI (classic builder), real runc and the loopback
registry: multi-stage builds, the cache, failing steps, COPY/ADD, ONBUILD, push and pull
by another account, tenancy and provisioning."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import running_daemon, wait_for
from tests.dockercli import User, busybox_user


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("build"))


def context(root: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def build(u: User, ctx: Path, *args: str):
    return u.docker("build", *args, str(ctx), timeout=300)


def tag() -> str:
    return "b" + uuid.uuid4().hex[:8]


def build_containers(u: User) -> list[str]:
    return u.ok("ps", "-aq", "--filter", "label=com.joyent.sdcd.build").split()


MULTI_STAGE = """\
ARG BASE=busybox
FROM $BASE AS builder
ARG GREETING=hello
WORKDIR /src
COPY greet.sh .
RUN sh greet.sh "$GREETING" > /src/out.txt && mkdir -p /out && cp out.txt /out/
FROM busybox
ARG GREETING
ENV WHO=world
COPY --from=builder /out/out.txt /app/
COPY --chown=1000:1000 data/ /app/data/
USER 1000
WORKDIR /app
LABEL org.example.stage=final
CMD ["sh", "-c", "cat /app/out.txt; echo $WHO; id -u; pwd; ls data; stat -c %u data/x"]
"""


def test_multi_stage_build_runs_and_second_build_is_all_cache(alice, tmp_path):
    ctx = context(tmp_path / "ctx", MULTI_STAGE,
                  {"greet.sh": 'echo "$1 from stage one"\n', "data/x": "x\n"})  # fmt: skip
    name = tag()
    r = build(alice, ctx, "-t", name, "--build-arg", "GREETING=hi")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Step 1/15 : ARG BASE=busybox" in r.stdout
    assert "Step 2/15 : FROM $BASE AS builder" in r.stdout
    assert f"Successfully tagged {name}:latest" in r.stdout
    assert alice.ok("run", "--rm", name).split("\n") == [
        "hi from stage one", "world", "1000", "/app", "x", "1000", ""]  # fmt: skip
    info = json.loads(alice.ok("image", "inspect", name))[0]
    assert info["Config"]["Labels"] == {"org.example.stage": "final"}
    assert info["Config"]["User"] == "1000" and info["Config"]["WorkingDir"] == "/app"
    assert build_containers(alice) == []  # the build containers are gone
    # history names each step's image (busybox's own first layer is not an image here)
    ids = alice.ok("history", "-q", name).split()
    assert len(ids) == 10 and ids.count("<missing>") == 1 and ids[0] == info["Id"][7:19]

    again = build(alice, ctx, "-t", name, "--build-arg", "GREETING=hi")
    assert again.returncode == 0, again.stderr
    steps = again.stdout.count("Step ")
    assert steps == 15
    # every step after each FROM (and the global ARG) is taken from the cache
    assert again.stdout.count("Using cache") == 15 - 3, again.stdout
    assert "Running in" not in again.stdout
    ids = [line for line in again.stdout.splitlines() if line.startswith("Successfully built")]
    assert ids and ids[0].split()[-1] == info["Id"][7:19]

    # --target stops at a stage: all of it from the cache, tagged
    first = build(alice, ctx, "-t", f"{name}-builder", "--target", "builder",
                  "--build-arg", "GREETING=hi")  # fmt: skip
    assert first.returncode == 0 and "Step 6/6 :" in first.stdout  # stages after it: not counted
    assert alice.ok("run", "--rm", f"{name}-builder", "cat", "/out/out.txt") == (
        "hi from stage one\n")  # fmt: skip
    alice.ok("rmi", f"{name}-builder")

    # a changed build-arg misses the cache from the RUN that sees it
    third = build(alice, ctx, "-t", name, "--build-arg", "GREETING=bye")
    assert third.returncode == 0 and "Running in" in third.stdout
    assert alice.ok("run", "--rm", name).startswith("bye from stage one\n")
    # a changed file misses from its COPY on
    (ctx / "data" / "x").write_text("changed\n")
    fourth = build(alice, ctx, "-t", name, "--build-arg", "GREETING=bye")
    assert fourth.returncode == 0 and fourth.stdout.count("Using cache") < 12
    assert alice.ok("run", "--rm", name, "cat", "/app/data/x") == "changed\n"
    alice.ok("rmi", name)


def test_failing_run_gives_its_exit_code_and_cleans_up(alice, tmp_path):
    ctx = context(tmp_path / "ctx", "FROM busybox\nRUN echo before\nRUN echo output; exit 3\n")
    r = build(alice, ctx, "-t", tag())
    assert r.returncode == 3, r.stdout + r.stderr
    assert "The command '/bin/sh -c echo output; exit 3' returned a non-zero code: 3" in r.stderr
    assert "output" in r.stdout
    assert build_containers(alice) == []


def test_bad_dockerfile_is_a_400_before_anything(alice, tmp_path):
    ctx = context(tmp_path / "ctx", "FROM busybox\nFROBNICATE x\n")
    r = build(alice, ctx)
    assert r.returncode != 0 and "unknown instruction" in r.stderr.lower()
    r = build(alice, context(tmp_path / "c2", "FROM busybox\nRUN true\n"), "--target", "nope")
    assert r.returncode != 0 and "nope" in r.stderr
    r = build(alice, context(tmp_path / "c3", "FROM busybox\n"), "-t", "Bad:Name")
    assert r.returncode != 0 and "invalid" in r.stderr.lower()


def test_dockerignore_add_archives_and_urls(alice, tmp_path):
    dockerfile = (
        "FROM busybox\nCOPY . /ctx/\nADD bundle.tar.gz /unpacked/\nADD plain.txt /plain/\n"
        'CMD ["sh", "-c", "ls -a /ctx | sort | tr \\"\\\\n\\" \\" \\"; echo; cat /unpacked/in/t;'
        ' cat /plain/plain.txt"]\n'
    )
    ctx = context(tmp_path / "ctx", dockerfile,
                  {"keep.txt": "k\n", "secret.key": "s\n", "plain.txt": "plain\n",
                   ".dockerignore": "*.key\n"})  # fmt: skip
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as t:
        data = b"inside the tarball\n"
        info = tarfile.TarInfo("in/t")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    name = tag()
    r = build(alice, ctx, "-t", name)
    assert r.returncode == 0, r.stdout + r.stderr
    listing, unpacked, plain, _ = alice.ok("run", "--rm", name).split("\n")
    assert "secret.key" not in listing and "keep.txt" in listing and ".dockerignore" in listing
    assert unpacked == "inside the tarball" and plain == "plain"
    alice.ok("rmi", name)
    url = context(tmp_path / "url", "FROM busybox\nADD http://example.com/x /x\n")
    r = build(alice, url)
    assert r.returncode != 0 and "no internet access" in r.stderr


def test_scratch_onbuild_and_metadata(alice, tmp_path):
    base = tag()
    ctx = context(tmp_path / "base", "FROM busybox\nONBUILD RUN echo triggered > /t\n"
                  "EXPOSE 8080 53/udp\nSTOPSIGNAL SIGINT\nVOLUME /data\n"
                  'HEALTHCHECK --interval=5s CMD true\nSHELL ["/bin/sh", "-ec"]\n')  # fmt: skip
    assert build(alice, ctx, "-t", base).returncode == 0
    info = json.loads(alice.ok("image", "inspect", base))[0]["Config"]
    assert info["OnBuild"] == ["RUN echo triggered > /t"]
    assert info["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert info["StopSignal"] == "SIGINT" and info["Volumes"] == {"/data": {}}
    assert info["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
    assert info["Healthcheck"]["Interval"] == 5_000_000_000
    assert info["Shell"] == ["/bin/sh", "-ec"]
    child = tag()
    r = build(alice, context(tmp_path / "child", f"FROM {base}\nCMD cat /t\n"), "-t", child)
    assert r.returncode == 0 and "Executing 1 build trigger" in r.stdout, r.stdout + r.stderr
    assert alice.ok("run", "--rm", child) == "triggered\n"
    assert json.loads(alice.ok("image", "inspect", child))[0]["Config"]["OnBuild"] in (None, [])
    # FROM scratch with a static busybox copied in
    scratch = context(tmp_path / "scratch", 'FROM scratch\nCOPY busybox /bin/busybox\n'
                      'CMD ["/bin/busybox", "echo", "from scratch"]\n')  # fmt: skip
    (scratch / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (scratch / "busybox").chmod(0o755)
    small = tag()
    r = build(alice, scratch, "-t", small)
    assert r.returncode == 0, r.stdout + r.stderr
    assert alice.ok("run", "--rm", small) == "from scratch\n"
    layers = json.loads(alice.ok("image", "inspect", small))[0]["RootFS"]["Layers"]
    assert len(layers) == 1
    for image in (child, base, small):
        alice.ok("rmi", image)


def test_build_push_pull_as_another_account(alice, bob, registry, tmp_path):
    repo = f"{registry.host}/built{uuid.uuid4().hex[:6]}"
    ctx = context(tmp_path / "ctx", "FROM busybox\nRUN echo built > /built\nCMD cat /built\n")
    r = build(alice, ctx, "-t", f"{repo}:v1", "-t", f"{repo}:v2", "-q")
    assert r.returncode == 0, r.stderr
    image_id = r.stdout.strip()
    assert image_id.startswith("sha256:") and "Step" not in r.stdout
    parent = json.loads(alice.ok("image", "inspect", image_id))[0]["Parent"]
    assert parent.startswith("sha256:")
    alice.ok("push", f"{repo}:v1")
    # bob builds on it without pulling first: the build pulls it, with progress
    on_top = context(tmp_path / "bob", f"FROM {repo}:v1\nRUN cat /built > /again\n")
    r = build(bob, on_top, "-t", "ontop")
    assert r.returncode == 0 and "Pulling from" in r.stdout, r.stdout + r.stderr
    assert bob.ok("run", "--rm", "ontop", "cat", "/again") == "built\n"
    assert bob.ok("run", "--rm", f"{repo}:v1") == "built\n"
    # bob's own build of the same Dockerfile does not hit alice's cache
    r = build(bob, ctx, "-t", "mine")
    assert r.returncode == 0 and "Using cache" not in r.stdout, r.stdout
    # alice's images are not bob's to name
    assert bob.docker("image", "inspect", f"{repo}:v2").returncode != 0
    bob.ok("rmi", "ontop")
    for u, names in ((alice, (f"{repo}:v1", f"{repo}:v2")), (bob, (f"{repo}:v1", "mine"))):
        for n in names:
            u.ok("rmi", n)
    # the intermediate images went with the last tag
    assert alice.docker("image", "inspect", image_id).returncode != 0
    assert alice.docker("image", "inspect", parent).returncode != 0


def test_build_runs_under_the_package(alice, tmp_path):
    ctx = context(tmp_path / "ctx", "FROM busybox\n"
                  "RUN cat /sys/fs/cgroup/memory/memory.limit_in_bytes\n")  # fmt: skip
    r = build(alice, ctx, "--memory", "256m", "--no-cache")
    assert r.returncode == 0, r.stderr
    assert str(256 * 1024 * 1024) in r.stdout


def test_unapproved_account_may_not_build(sdcd, registry, tmp_path):
    u = busybox_user(sdcd, tmp_path / "carol", registry, "carol", approved=False)
    r = build(u, context(tmp_path / "ctx", "FROM busybox\nRUN true\n"))
    assert r.returncode != 0 and "provision" in r.stderr.lower()


@contextlib.contextmanager
def running_build(u: User, root: Path):
    """A ``docker build`` whose RUN is running (its build container's id), killed at
    the end of the block."""
    ctx = context(root, "FROM busybox\nRUN echo started; sleep 60\n")
    proc = subprocess.Popen(
        ["docker", "build", "--no-cache", str(ctx)], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=u.env(), text=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if line == "started\n":
                break
        (cid,) = build_containers(u)
        assert processes_in(cid)  # the RUN is running
        yield cid
    finally:
        proc.kill()
        proc.wait()


def test_client_leaving_mid_build_removes_its_container(alice, tmp_path):
    with running_build(alice, tmp_path / "ctx") as cid:
        pass
    wait_for(lambda: build_containers(alice) == [], 20)
    assert processes_in(cid) == []


def test_other_clients_build(alice, docker_py, tmp_path):
    ctx = context(tmp_path / "ctx", "FROM busybox\nARG X=1\nRUN echo x=$X > /x\nCMD cat /x\n")
    old = tag()
    r = alice.docker("build", "-t", old, str(ctx), binary="/usr/bin/docker",
                     env_extra={"DOCKER_BUILDKIT": "0"}, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert alice.ok("run", "--rm", old) == "x=1\n"
    _image, logs = docker_py.images.build(path=str(ctx), tag="frompy", buildargs={"X": "2"})
    assert any("Step 3/4" in (entry.get("stream") or "") for entry in logs)
    assert alice.ok("run", "--rm", "frompy") == "x=2\n"
    alice.ok("rmi", old, "frompy")


def test_another_accounts_images_are_not_sources(alice, bob, tmp_path):
    private = tag()
    ctx = context(tmp_path / "a", "FROM busybox\nRUN echo secret > /secret\n")
    assert build(alice, ctx, "-t", private).returncode == 0
    for dockerfile in (f"FROM {private}\nRUN true\n",
                       f"FROM busybox\nCOPY --from={private} /secret /s\n"):  # fmt: skip
        r = build(bob, context(tmp_path / uuid.uuid4().hex, dockerfile))
        assert r.returncode != 0 and "Successfully built" not in r.stdout
        # not alice's: bob's build looked for it in a registry (Docker Hub, unreachable)
        assert private in r.stderr and "registry-1.docker.io" in r.stderr, r.stderr
    alice.ok("rmi", private)


def test_dockerfile_from_stdin_and_from_outside_the_context(alice, tmp_path):
    r = alice.docker("build", "-t", "fromstdin", "-", input="FROM busybox\nCMD echo stdin\n",
                     timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert alice.ok("run", "--rm", "fromstdin") == "stdin\n"
    # -f outside the context: the CLI adds it under a random name (its tar then lacks
    # the end-of-archive blocks, which dockerd accepts)
    ctx = context(tmp_path / "ctx", "FROM busybox\n", {"sub/h": "outside\n"})
    (ctx / "Dockerfile").unlink()
    outside = tmp_path / "elsewhere.Dockerfile"
    outside.write_text("FROM busybox\nCOPY sub/h /h\nCMD cat /h\n")
    r = build(alice, ctx, "-f", str(outside), "-t", "fromoutside")
    assert r.returncode == 0, r.stderr
    assert alice.ok("run", "--rm", "fromoutside") == "outside\n"
    alice.ok("rmi", "fromstdin", "fromoutside")


def test_copy_from_a_symlink_stays_on_the_api_host_side(alice, tmp_path):
    """An image whose ``/escape`` points at a directory that exists on the API host too:
    fetching ``/escape`` and then ``/escape/x`` for COPY --from writes nothing there."""
    host_dir = Path(tempfile.mkdtemp(prefix="sdcd-host-"))
    try:
        ctx = context(tmp_path / "ctx", f"FROM busybox AS img\nRUN mkdir -p {host_dir} && "
                      f"echo evil > {host_dir}/x && ln -s {host_dir} /escape\n"
                      "FROM busybox\nCOPY --from=img /escape /escape/x /dst/\n")  # fmt: skip
        r = build(alice, ctx)
        assert list(host_dir.iterdir()) == [], r.stdout + r.stderr
        assert build_containers(alice) == []
    finally:
        shutil.rmtree(host_dir)


def test_build_containers_do_not_outlive_an_sdcd_restart(sdcd, alice, tmp_path):
    """A build runs in the sdcd that serves it: after a SIGKILL, the next start removes
    its build containers (and their addresses)."""
    with running_build(alice, tmp_path / "ctx") as cid:
        sdcd.proc.kill()
        sdcd.proc.wait(10)
    sdcd.start()
    assert build_containers(alice) == []
    assert processes_in(cid) == []  # the RUN's process went with its container


def processes_in(short_id: str) -> list[str]:
    """PIDs whose cgroup is the container's (``/sdcd/<id>``)."""
    found = []
    for cgroup in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            if f"/sdcd/{short_id}" in cgroup.read_text():
                found.append(cgroup.parent.name)
        except OSError:
            pass
    return found


def test_run_output_waits_for_a_slow_reader(sdcd, alice, tmp_path):
    """A RUN's output reaches the client as the client reads it: while it reads slowly
    sdcd's memory stays put (the node stops reading the container), then all of it
    arrives and the build ends."""
    import socket

    from tests.hijackclient import tls_context

    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as t:
        dockerfile = b"FROM busybox\nRUN yes 0123456789abcdef | head -c 100000000\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        t.addfile(info, io.BytesIO(dockerfile))
    data = body.getvalue()

    def rss() -> int:
        status = Path(f"/proc/{sdcd.proc.pid}/status").read_text()
        return int(next(x.split()[1] for x in status.splitlines() if x.startswith("VmRSS:")))

    before = rss()
    raw = socket.create_connection(("localhost", sdcd.docker_port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with tls_context(sdcd.ca_path, alice.identity).wrap_socket(
        raw, server_hostname="localhost"
    ) as s:
        s.sendall(b"POST /v1.41/build?nocache=1 HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/x-tar\r\n"
                  + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)  # fmt: skip
        got = bytearray()
        for _ in range(40):
            got += s.recv(16384)
            time.sleep(0.05)
        grown = rss() - before
        assert grown < 64 * 1024, f"sdcd grew {grown} KiB for a slow reader"
        while b'"aux"' not in got[-4096:]:
            chunk = s.recv(1 << 20)
            assert chunk, "the stream ended before the build did"
            got += chunk
    text = got.decode(errors="replace")
    # (HTTP chunks and JSON messages cut some lines: nearly all of them are whole)
    assert text.count("0123456789abcdef") >= 0.99 * 100_000_000 // 17
    assert build_containers(alice) == []


def test_an_ignored_dockerfile_does_not_bust_the_cache(alice, tmp_path):
    files = {"app.py": "print(1)\n", ".dockerignore": "Dockerfile\n.dockerignore\n"}
    ctx = context(tmp_path / "ctx", "FROM busybox\nCOPY . /app/\nCMD ls -A /app\n", files)
    name = tag()
    assert build(alice, ctx, "-t", name).returncode == 0
    assert alice.ok("run", "--rm", name) == "app.py\n"
    (ctx / "Dockerfile").write_text(
        "# a comment changes nothing\n" + (ctx / "Dockerfile").read_text()
    )
    r = build(alice, ctx, "-t", name)
    assert r.returncode == 0 and r.stdout.count("Using cache") == 2, r.stdout
    alice.ok("rmi", name)


def test_builds_per_account_are_limited(registry, tmp_path):
    """An operator's ``max_builds_per_account``: one more build gets 429 and leaves
    nothing behind; other accounts build meanwhile."""
    daemons = running_daemon(tmp_path / "d", extra="[images]\nmax_builds_per_account = 1\n")
    daemon = next(daemons)
    try:
        dave = busybox_user(daemon, tmp_path / "dave", registry, "dave")
        erin = busybox_user(daemon, tmp_path / "erin", registry, "erin")
        with running_build(dave, tmp_path / "first"):
            r = build(dave, context(tmp_path / "second", "FROM busybox\nRUN true\n"))
            assert r.returncode != 0 and "already runs 1 builds" in r.stderr, r.stderr
            assert len(build_containers(dave)) == 1
            r = build(erin, context(tmp_path / "third", "FROM busybox\nRUN true\n"))
            assert r.returncode == 0, r.stderr
        wait_for(lambda: build_containers(dave) == [], 20)
        r = build(dave, context(tmp_path / "fourth", "FROM busybox\nRUN true\n"))
        assert r.returncode == 0, r.stderr
    finally:
        daemons.close()


def test_from_a_private_registry_uses_the_clients_logins(alice, tmp_path):
    """The CLI sends its logins in X-Registry-Config; FROM pulls with the one for the
    image's registry."""
    from tests.imagebuilder import busybox_image, push
    from tests.registry import Registry

    with Registry("htpasswd", {"ann": "s3cret"}, anonymous_pull=False) as private:
        push(private.url, "secret/base", "latest", busybox_image(), auth=private.credentials)
        ctx = context(tmp_path / "ctx", f"FROM {private.host}/secret/base\nRUN true\n")
        r = build(alice, ctx)
        assert r.returncode != 0, r.stdout
        login = alice.docker("login", "-u", "ann", "--password-stdin", private.host,
                             input="s3cret\n")  # fmt: skip
        assert login.returncode == 0, login.stderr
        try:
            r = build(alice, ctx, "-t", "fromprivate")
            assert r.returncode == 0, r.stdout + r.stderr
            alice.ok("rmi", "fromprivate")
        finally:
            alice.docker("logout", private.host)


def test_label_options_are_taken_literally(alice, tmp_path):
    ctx = context(tmp_path / "ctx", "FROM busybox\nLABEL a=1\n")
    r = build(alice, ctx, "-t", "labelled", "--label", "price=$5 'each' é", "--label", "a=2")
    assert r.returncode == 0, r.stderr
    labels = json.loads(alice.ok("image", "inspect", "labelled"))[0]["Config"]["Labels"]
    assert labels == {"a": "2", "price": "$5 'each' é"}
    alice.ok("rmi", "labelled")
