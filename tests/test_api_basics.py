"""API basics over real TLS: the version prefix, /_ping, /version, /info, unknown routes,
and the request log."""

from __future__ import annotations

import os
import time

import pytest

from tests.clients import make_cert, make_key, openssh_line, request, write_identity
from tests.conftest import running_daemon


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def identity(sdcd, tmp_path_factory):
    key = make_key("ed25519")
    sdcd.admin("account", "create", "basics")
    sdcd.admin("key", "add", "basics", openssh_line(key))
    return write_identity(tmp_path_factory.mktemp("id"), key, make_cert(key, "basics"))


def call(sdcd, identity, method, path):
    return request(sdcd.docker_port, method, path, ca=sdcd.ca_path, identity=identity)


@pytest.mark.parametrize("version", ["1.20", "1.24", "1.25", "1.41"])
def test_supported_versions(sdcd, identity, version):
    resp = call(sdcd, identity, "GET", f"/v{version}/_ping")
    assert (resp.status, resp.body) == (200, b"OK")


def test_head_ping(sdcd, identity):
    resp = call(sdcd, identity, "HEAD", "/_ping")
    assert resp.status == 200
    assert resp.headers["api-version"] == "1.41"


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            "1.19",
            "client version 1.19 is too old. Minimum supported API version is 1.20, "
            "please upgrade your client to a newer version",
        ),
        ("1.42", "client version 1.42 is too new. Maximum supported API version is 1.41"),
        ("2.0", "client version 2.0 is too new. Maximum supported API version is 1.41"),
    ],
)
def test_unsupported_versions(sdcd, identity, version, message):
    resp = call(sdcd, identity, "GET", f"/v{version}/info")
    assert resp.status == 400
    assert resp.json() == {"message": message}


def test_version_shapes(sdcd, identity):
    new = call(sdcd, identity, "GET", "/version").json()
    assert (new["ApiVersion"], new["MinAPIVersion"], new["Os"]) == ("1.41", "1.20", "linux")
    assert new["Components"][0]["Name"] == "Engine"
    old = call(sdcd, identity, "GET", "/v1.24/version").json()
    assert "MinAPIVersion" not in old and "Components" not in old
    assert old["ApiVersion"] == "1.41"


def test_info_sdc_fields(sdcd, identity):
    info = call(sdcd, identity, "GET", "/v1.41/info").json()
    assert info["Driver"] == "sdc"
    assert ["SDCAccount", "basics"] in info["DriverStatus"]
    assert info["OperatingSystem"] == "SmartDataCenter"
    assert info["Name"] == "testdc"
    assert (info["Containers"], info["Images"]) == (0, 0)
    assert info["NCPU"] >= 1 and info["MemTotal"] > 0
    # the in-process node registered itself (the datacenter's capacity is the nodes')
    assert ["Compute nodes", "1"] in info["DriverStatus"]
    assert info["NCPU"] == os.cpu_count()
    assert info["Swarm"]["LocalNodeState"] == "inactive"
    assert "ExecutionDriver" not in info
    old = call(sdcd, identity, "GET", "/v1.24/info").json()
    assert old["ExecutionDriver"].startswith("sdc-")
    assert "Swarm" not in old


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/v1.24/nope"), ("POST", "/_ping"), ("DELETE", "/info")],
)
def test_unknown_routes(sdcd, identity, method, path):
    resp = call(sdcd, identity, method, path)
    assert resp.status == 404
    assert resp.json() == {"message": "page not found"}


def test_unknown_route_needs_auth_first(sdcd):
    resp = request(sdcd.docker_port, "GET", "/nope", ca=sdcd.ca_path)
    assert resp.status == 401


def test_one_log_line_per_request(sdcd, identity):
    marker = f"/v1.24/info?marker={time.monotonic_ns()}"
    call(sdcd, identity, "GET", marker)
    deadline = time.monotonic() + 5
    while marker not in sdcd.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in sdcd.log().splitlines() if marker in line]
    assert len(lines) == 1
    assert "basics GET" in lines[0] and " 200 " in lines[0] and "ms" in lines[0]
