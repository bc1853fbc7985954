"""``etc/sdcd-agent.toml``: the shipped file parses once the two required settings are
given; mistakes stop ``twistd sdcd-agent`` with one line naming them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sdcd.agent.config import parse
from sdcd.config import ConfigError
from tests.conftest import BIN, env_for_tools

SHIPPED = Path(__file__).parent.parent / "etc" / "sdcd-agent.toml"
REQUIRED = {'address = ""': 'address = "10.0.0.2"', 'url = ""': 'url = "redis://10.0.0.1:6379"'}


def shipped(**changes: str) -> str:
    text = SHIPPED.read_text()
    for old, new in {**REQUIRED, **changes}.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


def test_shipped_file_with_address_and_redis():
    config = parse(shipped(), Path("/etc/sdcd/sdcd-agent.toml"))
    assert (config.port, config.address, config.subnet) == (2377, "10.0.0.2", "172.30.1.0/24")
    assert config.tls_dir == Path("/etc/sdcd-agent/tls") and config.route_peers


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({'address = "10.0.0.2"': 'address = "node1"'}, "agent.address must be the IP"),
        ({'url = "redis://10.0.0.1:6379"': 'url = ""'}, "redis.url is required"),
        ({"memory = 0": "memory = -1"}, "compute.memory must be a whole number"),
        ({'subnet = "172.30.1.0/24"': 'subnet = "nope"'}, "compute.subnet"),
        ({"route_peers = true": "route_peers = true\nfoo = 1"}, "unknown setting [compute] 'foo'"),
    ],
)
def test_mistakes_are_named(change, message):
    text = shipped()
    for old, new in change.items():
        text = text.replace(old, new, 1)
    with pytest.raises(ConfigError) as e:
        parse(text, Path("/x.toml"))
    assert message in str(e.value)


def test_twistd_without_node_certificate(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(shipped().replace("/etc/sdcd-agent/tls", str(tmp_path / "none")))
    result = subprocess.run(
        [str(BIN / "twistd"), "--pidfile=", "-n", "sdcd-agent", "-c", str(config)],
        capture_output=True, text=True, env=env_for_tools(), timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "sdcd-agent: cannot read the node certificate" in result.stderr
    assert "sdcd-admin node enrol" in result.stderr
