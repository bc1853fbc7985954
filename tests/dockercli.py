"""A test account that drives sdcd with the real ``docker`` CLI and raw API requests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.clients import make_cert, make_key, openssh_line, request, write_identity
from tests.conftest import Daemon


class User:
    """An account with a client identity, using the real docker CLI."""

    def __init__(self, sdcd: Daemon, root: Path, login: str, approved: bool = True) -> None:
        key = make_key("ecdsa-256")
        sdcd.admin("account", "create", login, *(["--approved"] if approved else []))
        sdcd.admin("key", "add", login, openssh_line(key))
        self.certs = root / login
        self.identity = write_identity(self.certs, key, make_cert(key, login))
        shutil.copy(sdcd.ca_path, self.certs / "ca.pem")
        self.sdcd = sdcd
        self.home = root / f"{login}-home"
        self.home.mkdir()

    def env(self, extra: dict | None = None) -> dict[str, str]:
        """The environment that points a docker CLI (or any client) at sdcd as this user."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(extra or {})
        env.update(
            DOCKER_HOST=self.sdcd.docker_host,
            DOCKER_TLS_VERIFY="1",
            DOCKER_CERT_PATH=str(self.certs),
            HOME=str(self.home),
        )
        return env

    def docker(
        self,
        *args: str,
        timeout: float = 120,
        env_extra: dict | None = None,
        binary: str = "docker",
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [binary, *args],
            capture_output=True,
            text=True,
            env=self.env(env_extra),
            timeout=timeout,
            input=input,
        )

    def ok(self, *args: str) -> str:
        result = self.docker(*args)
        assert result.returncode == 0, f"docker {args}: {result.stderr}"
        return result.stdout

    def api_post_json(self, path: str, body: dict):
        return request(
            self.sdcd.docker_port,
            "POST",
            path,
            ca=self.sdcd.ca_path,
            identity=self.identity,
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
        )

    def api(self, method: str, path: str):
        return request(
            self.sdcd.docker_port, method, path, ca=self.sdcd.ca_path, identity=self.identity
        )


def busybox_user(sdcd: Daemon, root: Path, registry, login: str, approved: bool = True) -> User:
    """An account that has pulled the registry's busybox and tagged it ``busybox``."""
    u = User(sdcd, root, login, approved=approved)
    if approved:
        u.ok("pull", f"{registry.host}/busybox")
        u.ok("tag", f"{registry.host}/busybox", "busybox")
    return u


def remove_all(u: User) -> None:
    """Remove every container of the account (module teardown)."""
    ids = u.ok("ps", "-aq").split()
    if ids:
        u.docker("rm", "-f", *ids)
