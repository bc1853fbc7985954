"""The CloudAPI subset with HTTP Signature authentication, over real TLS."""

from __future__ import annotations

import email.utils
import json
import time

import pytest

from sdcd.auth import httpsig
from tests.clients import KEY_KINDS, make_key, openssh_line, request
from tests.conftest import running_daemon


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(
        tmp_path_factory.mktemp("cloudapi"), public_host="docker.example.test"
    )


_accounts = {}


def account(sdcd, kind: str = "rsa"):
    """(login, private key, md5 fingerprint) of an account made once per key kind."""
    if kind not in _accounts:
        login = f"cloud{kind.replace('-', '')}"
        key = make_key(kind)
        sdcd.admin("account", "create", login)
        sdcd.admin("key", "add", login, openssh_line(key), "--name", "main")
        fingerprint = json.loads(sdcd.admin("--json", "key", "list", login).stdout)[0][
            "fingerprint"
        ]
        _accounts[kind] = (login, key, fingerprint)
    return _accounts[kind]


def signed_get(sdcd, path, key, key_id, *, date=None, headers=("date",)):
    date = date or email.utils.formatdate(usegmt=True)
    values = {"date": date}
    auth = httpsig.sign(key, key_id, "GET", path, values, header_names=headers)
    return request(
        sdcd.cloudapi_port,
        "GET",
        path,
        ca=sdcd.ca_path,
        host="127.0.0.1",
        headers={"Date": date, "Authorization": auth},
    )


def test_ping_needs_no_signature(sdcd):
    resp = request(sdcd.cloudapi_port, "GET", "/--ping", ca=sdcd.ca_path, host="127.0.0.1")
    assert resp.status == 200
    assert resp.json()["ping"] == "pong"


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_signed_requests(sdcd, kind):
    login, key, fingerprint = account(sdcd, kind)
    key_id = f"/{login}/keys/{fingerprint}"
    me = signed_get(sdcd, f"/{login}", key, key_id)
    assert me.status == 200, me
    assert me.json()["login"] == login
    keys = signed_get(sdcd, f"/{login}/keys", key, key_id).json()
    assert [(k["name"], k["fingerprint"]) for k in keys] == [("main", fingerprint)]
    assert keys[0]["key"].split()[:2] == openssh_line(key).split()[:2]
    services = signed_get(sdcd, f"/{login}/services", key, key_id).json()
    assert services == {"docker": f"tcp://docker.example.test:{sdcd.docker_port}"}


def test_request_target_in_signature(sdcd):
    login, key, fingerprint = account(sdcd)
    resp = signed_get(
        sdcd, f"/{login}", key, f"/{login}/keys/{fingerprint}", headers=("(request-target)", "date")
    )
    assert resp.status == 200


def assert_invalid(resp) -> None:
    assert resp.status == 401, resp
    assert resp.json()["code"] == "InvalidCredentials"


def test_unsigned(sdcd):
    login, _, _ = account(sdcd)
    assert_invalid(
        request(sdcd.cloudapi_port, "GET", f"/{login}", ca=sdcd.ca_path, host="127.0.0.1")
    )


def test_bad_signature(sdcd):
    login, _, fingerprint = account(sdcd)
    assert_invalid(signed_get(sdcd, f"/{login}", make_key("rsa"), f"/{login}/keys/{fingerprint}"))


def test_wrong_key_id(sdcd):
    login, key, _ = account(sdcd)
    assert_invalid(signed_get(sdcd, f"/{login}", key, f"/{login}/keys/" + "00:" * 15 + "00"))
    assert_invalid(signed_get(sdcd, f"/{login}", key, "/nobody/keys/00:11"))


def test_stale_date(sdcd):
    login, key, fingerprint = account(sdcd)
    stale = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert_invalid(signed_get(sdcd, f"/{login}", key, f"/{login}/keys/{fingerprint}", date=stale))


def test_date_not_signed(sdcd):
    login, key, fingerprint = account(sdcd)
    resp = signed_get(
        sdcd, f"/{login}", key, f"/{login}/keys/{fingerprint}", headers=("(request-target)",)
    )
    assert_invalid(resp)


def test_other_account_is_forbidden(sdcd):
    login, key, fingerprint = account(sdcd)
    other, _, _ = account(sdcd, "ed25519")
    resp = signed_get(sdcd, f"/{other}/keys", key, f"/{login}/keys/{fingerprint}")
    assert resp.status == 403
    assert "main" not in resp.body.decode()


def test_disabled_account(sdcd):
    login, key, fingerprint = account(sdcd, "ecdsa-384")
    sdcd.admin("account", "disable", login)
    try:
        assert signed_get(sdcd, f"/{login}", key, f"/{login}/keys/{fingerprint}").status == 403
    finally:
        sdcd.admin("account", "enable", login)
