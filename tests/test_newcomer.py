"""The newcomer's flow end to end: accounts with fresh SSH keys (OpenSSH format) made with
`sdcd-admin`, the setup helper run against the running daemon, then the real `docker`
CLI through the helper's env.sh."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon, env_for_tools

HELPER = REPO / "tools" / "sdc-docker-setup.sh"


def user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in env_for_tools().items() if not k.startswith(("DOCKER_", "SDC_"))}
    env["HOME"] = str(home)
    return env


def ssh_key(home: Path, kind: str) -> Path:
    path = home / ".ssh" / f"id_{kind}"
    path.parent.mkdir(parents=True, exist_ok=True)
    bits = ["-b", "3072"] if kind == "rsa" else []
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            kind,
            *bits,
            "-N",
            "",
            "-C",
            f"{kind}@newcomer",
            "-f",
            str(path),
        ],
        check=True,
    )
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    return path


def setup_helper(d: Daemon, home: Path, login: str, key: Path, *flags: str):
    return subprocess.run(
        ["bash", str(HELPER), *flags, "-k", d.cloudapi_url, login, str(key)],
        capture_output=True,
        text=True,
        env=user_env(home),
        timeout=120,
    )


def docker(home: Path, profile: Path, *commands: str) -> subprocess.CompletedProcess:
    """Run commands in a shell that sourced env.sh (aliases on, as in a user's shell)."""
    script = f"shopt -s expand_aliases\nsource {profile / 'env.sh'}\n" + "\n".join(commands)
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=user_env(home), timeout=120
    )


@pytest.fixture
def sdcd(tmp_path):
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is not installed")
    d = Daemon(tmp_path / "sdcd")
    d.start()
    yield d
    d.stop()


@pytest.mark.parametrize(("kind", "login"), [("ed25519", "edna"), ("rsa", "rosa")])
def test_newcomer(sdcd, tmp_path, kind, login):
    home = tmp_path / "home"
    key = ssh_key(home, kind)
    sdcd.admin("account", "create", login, "--approved")
    sdcd.admin("key", "add", login, "-f", f"{key}.pub")

    result = setup_helper(sdcd, home, login, key)
    assert result.returncode == 0, result.stderr
    profile = home / ".sdc" / "docker" / login
    assert f"source {profile}/env.sh" in result.stdout
    assert stat.S_IMODE(os.stat(profile).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(profile / "key.pem").st_mode) == 0o600
    assert (profile / "ca.pem").read_bytes() == sdcd.ca_path.read_bytes()
    env_sh = (profile / "env.sh").read_text()
    assert "DOCKER_TLS_VERIFY=1" in env_sh
    assert f"DOCKER_HOST=tcp://localhost:{sdcd.docker_port}" in env_sh

    info = docker(home, profile, "docker info")
    assert info.returncode == 0, info.stderr
    assert "Storage Driver: sdc" in info.stdout
    assert f"SDCAccount: {login}" in info.stdout
    assert "Operating System: SmartDataCenter" in info.stdout

    version = docker(home, profile, "docker version")
    assert version.returncode == 0, version.stderr
    server = version.stdout.split("Server:")[1]
    assert "1.41" in server and "minimum version 1.20" in server
    client = version.stdout.split("Server:")[0]
    assert "API version:" in client and "1.41" in client


def test_ip_endpoint_uses_docker_tls(tmp_path):
    """For an IP endpoint the helper, like SDC's, sets no TLS_VERIFY and aliases
    `docker --tls`; the CLI still works through it."""
    d = Daemon(tmp_path / "sdcd", public_host="127.0.0.1")
    d.start()
    try:
        home = tmp_path / "home"
        key = ssh_key(home, "ecdsa")
        d.admin("account", "create", "ipuser")
        d.admin("key", "add", "ipuser", "-f", f"{key}.pub")
        result = setup_helper(d, home, "ipuser", key, "-p", "ipprofile")
        assert result.returncode == 0, result.stderr
        profile = home / ".sdc" / "docker" / "ipprofile"
        env_sh = (profile / "env.sh").read_text()
        assert "DOCKER_TLS_VERIFY=1" not in env_sh and "--tls" in env_sh
        info = docker(home, profile, "docker info")
        assert "SDCAccount: ipuser" in info.stdout, info.stderr
    finally:
        d.stop()


def test_helper_rejects_unregistered_key(sdcd, tmp_path):
    home = tmp_path / "home"
    key = ssh_key(home, "ed25519")
    sdcd.admin("account", "create", "stranger")
    result = setup_helper(sdcd, home, "stranger", key)
    assert result.returncode != 0
    assert "invalid credentials" in (result.stdout + result.stderr).lower()
    assert not (home / ".sdc" / "docker" / "stranger" / "env.sh").exists()


def pem_key(home: Path, kind: str) -> Path:
    """A private key in PEM (PKCS#1/SEC1 via ssh-keygen, PKCS#8 via openssl)."""
    path = home / ".ssh" / f"pem_{kind}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "ed25519":
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True
        )
        pub = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True)
        if pub.returncode != 0:  # older OpenSSH cannot read PKCS#8 Ed25519: derive it here
            from cryptography.hazmat.primitives import serialization

            key = serialization.load_pem_private_key(path.read_bytes(), None)
            pub_line = (
                key.public_key()
                .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                .decode()
            )
        else:
            pub_line = pub.stdout.strip()
        Path(f"{path}.pub").write_text(pub_line + "\n")
        return path
    kind_args = {"rsa": ["-t", "rsa"], "ecdsa-384": ["-t", "ecdsa", "-b", "384"]}[kind]
    subprocess.run(["ssh-keygen", "-q", *kind_args, "-m", "PEM", "-N", "", "-f", str(path)],
                   check=True)  # fmt: skip
    assert path.read_text().startswith("-----BEGIN ")
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda home: ssh_key(home, "ecdsa"),
        lambda home: ssh_key_bits(home, "ecdsa", "384"),
        lambda home: ssh_key_bits(home, "ecdsa", "521"),
        lambda home: pem_key(home, "rsa"),
        lambda home: pem_key(home, "ecdsa-384"),
        lambda home: pem_key(home, "ed25519"),
    ],
    ids=["ecdsa256", "ecdsa384", "ecdsa521", "pem-rsa", "pem-ecdsa384", "pkcs8-ed25519"],
)
def test_helper_key_types_and_formats(sdcd, tmp_path, make):
    home = tmp_path / "home"
    key = make(home)
    login = "k" + key.name.replace("_", "")
    sdcd.admin("account", "create", login)
    sdcd.admin("key", "add", login, "-f", f"{key}.pub")
    result = setup_helper(sdcd, home, login, key, "-s")
    assert result.returncode == 0, result.stderr
    profile = home / ".sdc" / "docker" / login
    assert f"export SDC_ACCOUNT={login}" in (profile / "env.sh").read_text()
    from tests.clients import request

    identity = (profile / "key.pem", profile / "cert.pem")
    resp = request(sdcd.docker_port, "GET", "/info", ca=profile / "ca.pem", identity=identity)
    assert ["SDCAccount", login] in resp.json()["DriverStatus"]


def ssh_key_bits(home: Path, kind: str, bits: str) -> Path:
    path = home / ".ssh" / f"id_{kind}{bits}"
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-b", bits, "-N", "", "-f", str(path)],
                   check=True)  # fmt: skip
    return path


def test_helper_usage_errors(tmp_path):
    env = user_env(tmp_path)
    usage = subprocess.run(["bash", str(HELPER), "-h"], capture_output=True, text=True, env=env)
    assert usage.returncode == 0 and "CLOUDAPI_URL ACCOUNT" in usage.stdout
    for args in (["only-one"], ["-z", "a", "b", "c"], ["https://x", "acct", "/no/such/key"]):
        result = subprocess.run(["bash", str(HELPER), *args], capture_output=True, text=True,
                                env=env)  # fmt: skip
        assert result.returncode != 0
        assert "Traceback" not in result.stderr


def test_helper_quiet_and_unreachable(tmp_path):
    home = tmp_path / "home"
    key = ssh_key(home, "ed25519")
    result = subprocess.run(
        ["bash", str(HELPER), "-q", "-k", "https://127.0.0.1:9", "acct", str(key)],
        capture_output=True, text=True, env=user_env(home), timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "could not reach CloudAPI" in result.stderr
    assert result.stdout == ""
