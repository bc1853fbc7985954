"""Configuration: validated before anything starts; every user error is one clear line
and a non-zero exit from the real `twistd sdcd`."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from sdcd import config
from tests.conftest import BIN, REPO, env_for_tools, free_port


def parse(text: str) -> config.Config:
    return config.parse(text, Path("/etc/sdcd/sdcd.toml"))


def test_shipped_config_is_the_defaults():
    shipped = config.load(REPO / "etc" / "sdcd.toml")
    defaults = parse("")
    assert attrs_without_path(shipped) == attrs_without_path(defaults)


def attrs_without_path(c: config.Config) -> dict:
    import attrs

    values = attrs.asdict(c, recurse=False)
    values.pop("path")
    return values


def test_defaults():
    c = parse("")
    assert (c.docker.port, c.cloudapi.port, c.public_host) == (2376, 8443, "localhost")
    assert c.redis.url is None and c.redis.prefix == "sdcd:"
    assert c.docker_url == "tcp://localhost:2376"


def test_relative_paths_follow_the_file():
    c = parse('data_dir = "data"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    assert c.data_dir == Path("/etc/sdcd/data")
    assert c.tls.cert == Path("/etc/sdcd/c.pem")


def test_ipv6_public_host_url():
    assert parse('public_host = "::1"').docker_url == "tcp://[::1]:2376"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1", "unknown setting 'bogus'"),
        ("[docker]\nprot = 1", "unknown setting [docker] 'prot'"),
        ("[docker]\nport = 70000", "docker.port must be a port number"),
        ('[docker]\nport = "2376"', "docker.port must be a port number"),
        ("[cloudapi]\nenabled = 1", "cloudapi.enabled must be true or false"),
        ('[log]\nformat = "xml"', "log.format must be one of text, json"),
        ('[log]\nformat = "json"', "log.file is required"),
        ('[redis]\nurl = "http://x"', "redis.url must start with redis://"),
        ('[tls]\ncert = "a.pem"', "tls.cert and tls.key must be given together"),
        ("[docker]\nport = 9000\n[cloudapi]\nport = 9000", "cloudapi.port must differ"),
        ('public_host = "a b"', "public_host must be an IP address or host name"),
        ("datacenter = ", "not valid TOML"),
        ("docker = 3", "[docker] must be a table"),
        ('[compute]\nbridge = "much-too-long-name"', "compute.bridge must be an interface name"),
        ('[compute]\nsubnet = "10.0.0.1/16"', "compute.subnet must be an IPv4 subnet"),
        ('[compute]\nsubnet = "10.0.0.0/30"', "compute.subnet is too small"),
        ('[compute]\ndns = ["nope"]', "compute.dns: 'nope' is not an IP address"),
        ("packages = 3", "packages must be a non-empty array"),
        ('[[packages]]\nname = "x"', "packages: "),
    ],
)
def test_bad_values(text, message):
    with pytest.raises(config.ConfigError) as e:
        parse(text)
    assert message in str(e.value)


def twistd(tmp_path: Path, text: str | None, *, path: Path | None = None):
    """Run the real `twistd -n sdcd` on a configuration; it must exit by itself."""
    path = path or tmp_path / "sdcd.toml"
    if text is not None:
        path.write_text(text)
    return subprocess.run(
        [str(BIN / "twistd"), "--pidfile=", "-n", "sdcd", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env_for_tools(),
        cwd=tmp_path,
        timeout=60,
    )


def base(tmp_path: Path) -> str:
    return (
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[docker]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[cloudapi]\nhost = "127.0.0.1"\nport = {free_port()}\n'
    )


def assert_one_line(result, expected: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("sdcd: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_twistd_missing_file(tmp_path):
    result = twistd(tmp_path, None, path=tmp_path / "nope.toml")
    assert_one_line(result, f"configuration file {tmp_path / 'nope.toml'} does not exist")


def test_twistd_unknown_key(tmp_path):
    assert_one_line(twistd(tmp_path, base(tmp_path) + "colour = 1\n"), "unknown setting")


def test_twistd_bad_value(tmp_path):
    text = base(tmp_path).replace('host = "127.0.0.1"', 'host = "not a host"', 1)
    assert_one_line(twistd(tmp_path, text), "docker.host must be an IP address or host name")


def test_twistd_unreadable_certificate(tmp_path):
    text = base(tmp_path) + '[tls]\ncert = "missing.pem"\nkey = "missing-key.pem"\n'
    assert_one_line(twistd(tmp_path, text), f"cannot read TLS certificate {tmp_path}/missing.pem")


def test_twistd_garbage_certificate(tmp_path):
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    text = base(tmp_path) + '[tls]\ncert = "c.pem"\nkey = "k.pem"\n'
    assert_one_line(twistd(tmp_path, text), "unusable TLS certificate or key")


def test_twistd_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = (
            f'data_dir = "{tmp_path / "data"}"\n'
            f'[docker]\nhost = "127.0.0.1"\nport = {port}\n[cloudapi]\nenabled = false\n'
        )
        result = twistd(tmp_path, text)
    assert_one_line(result, f"cannot listen for docker on 127.0.0.1:{port}")


def test_twistd_missing_redis_server(tmp_path):
    text = base(tmp_path) + '[redis]\nserver = "no-such-redis-server"\n'
    assert_one_line(twistd(tmp_path, text), "redis-server not found")


def test_packages_from_config():
    c = parse(
        '[[packages]]\nname = "tiny"\nmemory = 64\n[[packages]]\nname = "big"\nmemory = 4096\n'
    )
    assert [p.name for p in c.packages] == ["tiny", "big"]
    assert c.packages[0].memory == 64
