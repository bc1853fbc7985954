"""The Docker endpoint's TLS client-certificate authentication, over real TLS against a
real `twistd sdcd`, with accounts made by the real `sdcd-admin`."""

from __future__ import annotations

import datetime
import ssl
import uuid

import pytest

from tests.clients import KEY_KINDS, make_cert, make_key, openssh_line, request, write_identity
from tests.conftest import Daemon, running_daemon

UNAUTHORIZED = {"message": "Unauthorized"}


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("auth"))


def new_login() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


def account_with_key(sdcd: Daemon, kind: str = "ed25519", login: str | None = None):
    """A new account with one registered key; returns (login, private key)."""
    login = login or new_login()
    key = make_key(kind)
    sdcd.admin("account", "create", login)
    sdcd.admin("key", "add", login, openssh_line(key))
    return login, key


def get(sdcd: Daemon, path: str, identity=None, **kw):
    return request(sdcd.docker_port, "GET", path, ca=sdcd.ca_path, identity=identity, **kw)


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_every_key_type_authenticates(sdcd, tmp_path, kind):
    login, key = account_with_key(sdcd, kind)
    identity = write_identity(tmp_path, key, make_cert(key, login))
    resp = get(sdcd, "/_ping", identity)
    assert (resp.status, resp.body) == (200, b"OK")
    assert resp.headers["api-version"] == "1.41"
    assert resp.headers["ostype"] == "linux"
    assert resp.headers["server"].startswith("sdcd/")
    info = get(sdcd, "/info", identity).json()
    assert ["SDCAccount", login] in info["DriverStatus"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_versions(sdcd, tmp_path, version):
    login, key = account_with_key(sdcd, "ecdsa-256")
    identity = write_identity(tmp_path, key, make_cert(key, login))
    assert get(sdcd, "/_ping", identity, tls_version=version).status == 200


def test_ca_pem_needs_no_certificate(sdcd):
    resp = get(sdcd, "/ca.pem")
    assert resp.status == 200
    assert resp.body == sdcd.ca_path.read_bytes()
    assert b"BEGIN CERTIFICATE" in resp.body


def assert_refused(resp, login: str | None = None) -> None:
    assert resp.status == 401
    assert resp.json() == UNAUTHORIZED
    if login:
        assert login.encode() not in resp.body


def test_no_certificate(sdcd):
    assert_refused(get(sdcd, "/_ping"))
    assert_refused(get(sdcd, "/info"))


def test_unknown_account(sdcd, tmp_path):
    key = make_key("ed25519")
    assert_refused(get(sdcd, "/info", write_identity(tmp_path, key, make_cert(key, "nobody"))))


def test_key_not_registered(sdcd, tmp_path):
    login, _ = account_with_key(sdcd)
    other = make_key("ed25519")
    assert_refused(
        get(sdcd, "/info", write_identity(tmp_path, other, make_cert(other, login))), login
    )


def test_key_of_another_account(sdcd, tmp_path):
    _, alice_key = account_with_key(sdcd)
    bob, _ = account_with_key(sdcd)
    identity = write_identity(tmp_path, alice_key, make_cert(alice_key, bob))
    assert_refused(get(sdcd, "/info", identity), bob)


def test_signed_by_a_different_key(sdcd, tmp_path):
    login, key = account_with_key(sdcd, "rsa")
    forger = make_key("rsa")
    cert = make_cert(key, login, signer=forger)
    assert_refused(get(sdcd, "/info", write_identity(tmp_path, key, cert)), login)


def test_expired_certificate(sdcd, tmp_path):
    login, key = account_with_key(sdcd)
    cert = make_cert(key, login, starts=datetime.timedelta(days=-30), days=1)
    assert_refused(get(sdcd, "/info", write_identity(tmp_path, key, cert)), login)


def test_not_yet_valid_certificate(sdcd, tmp_path):
    login, key = account_with_key(sdcd)
    cert = make_cert(key, login, starts=datetime.timedelta(days=2))
    assert_refused(get(sdcd, "/info", write_identity(tmp_path, key, cert)), login)


def test_disabled_account(sdcd, tmp_path):
    login, key = account_with_key(sdcd)
    identity = write_identity(tmp_path, key, make_cert(key, login))
    sdcd.admin("account", "disable", login)
    resp = get(sdcd, "/info", identity)
    assert resp.status == 403
    assert "disabled" in resp.json()["message"]
    sdcd.admin("account", "enable", login)
    assert get(sdcd, "/info", identity).status == 200


def test_removed_key(sdcd, tmp_path):
    login, key = account_with_key(sdcd)
    identity = write_identity(tmp_path, key, make_cert(key, login))
    assert get(sdcd, "/info", identity).status == 200
    fingerprint = sdcd.admin("--json", "key", "list", login).stdout
    sdcd.admin("key", "remove", login, "test@sdcd")
    assert fingerprint and get(sdcd, "/info", identity).status == 401


def test_certificate_issued_by_a_registered_key(sdcd, tmp_path):
    """A cert for an unregistered key, issued (issuer CN = fingerprint) and signed by a
    registered key, is accepted; the same with a wrong fingerprint is not."""
    login, registered = account_with_key(sdcd, "rsa")
    import json

    fingerprint = json.loads(sdcd.admin("--json", "key", "list", login).stdout)[0]["fingerprint"]
    session_key = make_key("ecdsa-256")
    cert = make_cert(session_key, login, signer=registered, issuer_cn=fingerprint)
    assert get(sdcd, "/info", write_identity(tmp_path / "ok", session_key, cert)).status == 200
    bad = make_cert(session_key, login, signer=registered, issuer_cn="00:" * 15 + "00")
    assert_refused(get(sdcd, "/info", write_identity(tmp_path / "bad", session_key, bad)), login)


def test_refusals_look_alike(sdcd, tmp_path):
    """Unknown account and unregistered key give byte-identical answers."""
    login, _ = account_with_key(sdcd)
    key = make_key("ed25519")
    unknown = get(sdcd, "/info", write_identity(tmp_path / "a", key, make_cert(key, "nobody")))
    unregistered = get(sdcd, "/info", write_identity(tmp_path / "b", key, make_cert(key, login)))
    assert unknown.body == unregistered.body
    assert unknown.status == unregistered.status == 401
