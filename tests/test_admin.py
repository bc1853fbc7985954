"""`sdcd-admin`, the real console script: accounts and keys in Redis; bad input is one
line, exit status 1, and changes nothing. Works with and without sdcd running."""

from __future__ import annotations

import json

import pytest

from tests.clients import make_key, openssh_line
from tests.conftest import Daemon, running_daemon


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("admin"))


def accounts(sdcd) -> list[dict]:
    return json.loads(sdcd.admin("--json", "account", "list").stdout)


def snapshot(sdcd, login: str) -> str:
    return sdcd.admin("--json", "account", "show", login).stdout


def assert_fails(result, message: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("sdcd-admin: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_account_lifecycle(sdcd):
    created = json.loads(sdcd.admin("--json", "account", "create", "lifecycle").stdout)[0]
    assert (created["disabled"], created["approved"]) == (False, False)
    assert "lifecycle" in [a["login"] for a in accounts(sdcd)]
    for verb, field, value in [
        ("disable", "disabled", True),
        ("approve", "approved", True),
        ("enable", "disabled", False),
        ("revoke", "approved", False),
    ]:
        sdcd.admin("account", verb, "lifecycle")
        assert json.loads(snapshot(sdcd, "lifecycle"))[field] is value
    assert "lifecycle" in sdcd.admin("account", "list").stdout


def test_keys(sdcd, tmp_path):
    sdcd.admin("account", "create", "keyed", "--approved")
    one, two = make_key("rsa"), make_key("ecdsa-521")
    sdcd.admin("key", "add", "keyed", openssh_line(one, "one@laptop"))
    pub = tmp_path / "two.pub"
    pub.write_text(openssh_line(two, "two@desk") + "\n")
    sdcd.admin("key", "add", "keyed", "-f", str(pub))
    listed = json.loads(sdcd.admin("--json", "key", "list", "keyed").stdout)
    assert [k["name"] for k in listed] == ["one@laptop", "two@desk"]
    sdcd.admin("key", "remove", "keyed", listed[1]["fingerprint"])
    sdcd.admin("key", "remove", "keyed", "one@laptop")
    assert json.loads(sdcd.admin("--json", "key", "list", "keyed").stdout) == []


def test_authorized_keys_file(sdcd, tmp_path):
    sdcd.admin("account", "create", "multikey")
    keys = [make_key("ed25519") for _ in range(3)]
    text = "# my keys\n\n" + "".join(
        f"no-pty {openssh_line(k, f'k{i}')}\n" for i, k in enumerate(keys)
    )
    sdcd.admin("key", "add", "multikey", "-f", "-", input=text)
    assert len(json.loads(sdcd.admin("--json", "key", "list", "multikey").stdout)) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["account", "create", "x"], "invalid login"),
        (["account", "create", "bad login"], "invalid login"),
        (["account", "show", "ghost"], "no such account: ghost"),
        (["account", "disable", "ghost"], "no such account: ghost"),
        (["key", "list", "ghost"], "no such account: ghost"),
        (["key", "remove", "ghost", "k"], "no such account: ghost"),
    ],
)
def test_bad_input(sdcd, args, message):
    before = accounts(sdcd)
    assert_fails(sdcd.admin(*args, check=False), message)
    assert accounts(sdcd) == before


def test_duplicate_account_changes_nothing(sdcd):
    sdcd.admin("account", "create", "dupe")
    before = snapshot(sdcd, "dupe")
    assert_fails(
        sdcd.admin("account", "create", "dupe", "--approved", check=False),
        "account dupe already exists",
    )
    assert snapshot(sdcd, "dupe") == before


@pytest.mark.parametrize(
    ("login", "line", "message"),
    [
        ("malbase64", "ssh-rsa !!!notbase64", "malformed"),
        ("malgarbage", "garbage", "malformed"),
        ("maldsa", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-dss"),
    ],
)
def test_malformed_keys_change_nothing(sdcd, login, line, message):
    sdcd.admin("account", "create", login)
    before = snapshot(sdcd, login)
    assert_fails(sdcd.admin("key", "add", login, line, check=False), message)
    assert snapshot(sdcd, login) == before


def test_batch_with_one_bad_key_adds_none(sdcd):
    sdcd.admin("account", "create", "batch")
    good = openssh_line(make_key("ed25519"), "good")
    assert_fails(
        sdcd.admin("key", "add", "batch", "-f", "-", input=f"{good}\nssh-rsa AAAA\n", check=False),
        "line 2",
    )
    assert json.loads(sdcd.admin("--json", "key", "list", "batch").stdout) == []


def test_duplicate_key_changes_nothing(sdcd):
    sdcd.admin("account", "create", "dupkey")
    line = openssh_line(make_key("ed25519"), "first")
    sdcd.admin("key", "add", "dupkey", line)
    before = snapshot(sdcd, "dupkey")
    assert_fails(
        sdcd.admin("key", "add", "dupkey", line.replace("first", "second"), check=False),
        "already registered",
    )
    assert snapshot(sdcd, "dupkey") == before


def test_key_for_unknown_account(sdcd):
    assert_fails(
        sdcd.admin("key", "add", "ghost", openssh_line(make_key("rsa")), check=False),
        "no such account: ghost",
    )


def test_bad_config(tmp_path):
    d = Daemon(tmp_path)
    d.config_path.write_text("nonsense = true\n")
    assert_fails(d.admin("account", "list", check=False), "unknown setting 'nonsense'")


def test_works_without_sdcd_and_state_persists(tmp_path):
    """Accounts made while sdcd is stopped (a temporary embedded Redis) are there when it
    starts, and survive a restart of sdcd."""
    d = Daemon(tmp_path)
    d.admin("account", "create", "early", "--approved")
    d.admin("key", "add", "early", openssh_line(make_key("ed25519"), "k"))
    assert not (d.data_dir / "redis" / "redis.sock").exists()
    d.start()
    try:
        assert json.loads(d.admin("--json", "account", "show", "early").stdout)["approved"]
        d.admin("account", "create", "later")
    finally:
        d.stop()
    d.start()
    try:
        assert [a["login"] for a in accounts(d)] == ["early", "later"]
        assert len(json.loads(d.admin("--json", "key", "list", "early").stdout)) == 1
    finally:
        d.stop()


def test_key_without_comment_is_named_by_fingerprint(sdcd):
    sdcd.admin("account", "create", "nocomment")
    line = " ".join(openssh_line(make_key("ed25519")).split()[:2])
    added = json.loads(sdcd.admin("--json", "key", "add", "nocomment", line).stdout)[0]
    assert added["name"] == added["fingerprint"]


def test_node_enrolment_and_api_certificate(sdcd, tmp_path):
    from cryptography import x509

    from sdcd.auth import internal

    out = tmp_path / "cn1"
    result = sdcd.admin("node", "enrol", "cn1", "--name", "10.99.0.11", "--out", str(out))
    assert "node cn1" in result.stdout
    node = internal.Material.read(out, "node")
    cert = x509.load_pem_x509_certificate(node.cert_pem)
    assert internal.identity(cert) == internal.Identity("node", "cn1")
    result = sdcd.admin("api-cert", "sdcd-a", "--out", str(tmp_path / "api"))
    api = internal.Material.read(tmp_path / "api", "api")
    assert api.ca_pem == node.ca_pem  # one internal CA, kept under data_dir
    assert api.ca_pem != (sdcd.data_dir / "tls" / "ca.pem").read_bytes()  # not the clients'
    assert_fails(sdcd.admin("node", "enrol", "a:b", "--name", "x", "--out", str(tmp_path / "x"),
                            check=False), "invalid node name")  # fmt: skip
