"""Old clients: Debian's docker 20.10 CLI (/usr/bin/docker) pinned to API 1.20-1.24
with DOCKER_API_VERSION — stdin EOF through attach, exit codes, ``logs -f``, ``attach``,
exec — beside the current CLI doing the same."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import needs_root, running_daemon, wait_for
from tests.dockercli import User

pytestmark = needs_root

OLD_CLI = "/usr/bin/docker"
VERSIONS = ["1.20", "1.21", "1.22", "1.23", "1.24", None]  # None: current CLI, newest API


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("old"))


def cli(u: User, version: str | None, *args: str, stdin: str | None = None):
    if version is None:
        return u.docker(*args, input=stdin, timeout=60)
    return u.docker(
        *args,
        input=stdin,
        timeout=60,
        binary=OLD_CLI,
        env_extra={"DOCKER_API_VERSION": version},
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_run_with_stdin_eof_and_exit_code(alice, version):
    r = cli(alice, version, "run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo e >&2; exit 3",
            stdin="through stdin\n")  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (3, "through stdin\n", "e\n")


@pytest.mark.parametrize("version", VERSIONS)
def test_logs_follow_until_exit(alice, version):
    n = "l" + uuid.uuid4().hex[:8]
    script = "for i in 1 2 3; do echo line$i; sleep 0.3; done; echo bye >&2"
    assert (
        cli(alice, version, "run", "-d", "--name", n, "busybox", "sh", "-c", script).returncode == 0
    )
    r = cli(alice, version, "logs", "-f", n)
    assert (r.returncode, r.stdout, r.stderr) == (0, "line1\nline2\nline3\n", "bye\n")
    alice.ok("rm", n)


@pytest.mark.parametrize("version", VERSIONS)
def test_attach_to_a_running_container(alice, version):
    n = "a" + uuid.uuid4().hex[:8]
    alice.ok("run", "-d", "-i", "--name", n, "busybox", "sh", "-c", "sleep 1; echo late; exit 4")
    r = cli(alice, version, "attach", "--no-stdin", n)
    assert (r.returncode, r.stdout) == (4, "late\n")
    alice.ok("rm", n)


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_exit_code_and_stdin(alice, version):
    n = "x" + uuid.uuid4().hex[:8]
    alice.ok("run", "-d", "--name", n, "busybox", "sleep", "100")
    r = cli(alice, version, "exec", n, "sh", "-c", "echo in-exec; exit 5")
    assert (r.returncode, r.stdout) == (5, "in-exec\n")
    r = cli(alice, version, "exec", "-i", n, "cat", stdin="piped\n")
    assert (r.returncode, r.stdout) == (0, "piped\n")
    alice.ok("rm", "-f", n)


def test_start_attach_of_old_cli(alice):
    n = "s" + uuid.uuid4().hex[:8]
    alice.ok("create", "-i", "--name", n, "busybox", "sh", "-c", "cat; exit 2")
    r = cli(alice, "1.24", "start", "-ai", n, stdin="again\n")
    assert (r.returncode, r.stdout) == (2, "again\n")
    wait_for(lambda: "Exited" in alice.ok("ps", "-a", "--filter", f"name={n}"), 10)
    alice.ok("rm", n)
