"""The test registry and the image builder: images built without docker, pushed to a real
docker-registry on loopback (anonymous, htpasswd and token auth) and read back raw."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from tests import imagebuilder as ib
from tests.registry import MODES, Registry, TokenServer, htpasswd_line, parse_scope

USERS = {"alice": "wonderland", "bob": "builder"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def members(layer: ib.Layer) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer.uncompressed())) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(layer: ib.Layer, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(layer.uncompressed())) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


# --- the builder, without a registry -----------------------------------------------------


def test_images_are_deterministic_and_self_consistent():
    ib.busybox_layer.cache_clear()
    for build in (ib.busybox_image, ib.multilayer_image, ib.configured_image):
        for oci in (False, True):
            first = build.__wrapped__(oci)
            ib.busybox_layer.cache_clear()
            again = build.__wrapped__(oci)
            assert (first.digest, first.manifest, first.config) == (
                again.digest,
                again.manifest,
                again.config,
            )
            manifest = first.manifest_json
            assert manifest["mediaType"] == first.media_type
            assert first.media_type == (ib.OCI_MANIFEST if oci else ib.DOCKER_MANIFEST)
            assert manifest["config"]["digest"] == first.config_digest == sha(first.config)
            assert manifest["config"]["size"] == len(first.config)
            config = first.config_json
            assert config["rootfs"] == {"type": "layers", "diff_ids": first.diff_ids}
            assert (config["architecture"], config["os"]) == ("amd64", "linux")
            real = [h for h in config["history"] if not h.get("empty_layer")]
            assert len(real) == len(first.layers)
            assert any(h.get("empty_layer") for h in config["history"])
            for layer, desc in zip(first.layers, manifest["layers"], strict=True):
                assert desc == {
                    "mediaType": layer.media_type,
                    "size": layer.size,
                    "digest": layer.digest,
                }
                assert layer.digest == sha(layer.data) and layer.size == len(layer.data)
                assert layer.diff_id == sha(gzip.decompress(layer.data))
                assert layer.media_type == (ib.OCI_LAYER if oci else ib.DOCKER_LAYER)


def test_busybox_layer_contents():
    (layer,) = ib.busybox_image().layers
    entries = members(layer)
    names = list(entries)
    assert names == sorted(names)
    busybox = entries["bin/busybox"]
    assert busybox.isreg() and busybox.mode == 0o755
    assert read_member(layer, "bin/busybox") == ib.HOST_BUSYBOX.read_bytes()
    for applet in ("sh", "echo", "ls", "cat", "sleep", "true", "false", "id", "env"):
        link = entries[f"bin/{applet}"]
        assert link.issym() and link.linkname == "busybox"
    assert entries["tmp"].isdir() and entries["tmp"].mode == 0o1777
    assert entries["root"].isdir()
    assert {m.mtime for m in entries.values()} == {ib.EPOCH}
    passwd = read_member(layer, "etc/passwd").decode()
    assert passwd.startswith("root:x:0:0:") and "\nnobody:x:65534:65534:" in passwd
    assert b"nobody:x:65534:" in read_member(layer, "etc/group")
    assert ib.busybox_image().config_json["config"]["Cmd"] == ["sh"]


def test_multilayer_whiteouts():
    image = ib.multilayer_image()
    base, add, remove = image.layers
    assert base == ib.busybox_layer()
    assert {"data/a", "data/b", "data/dir/x"} <= set(members(add))
    removed = members(remove)
    assert set(removed) == {"data", "data/.wh.a", "data/dir", "data/dir/.wh..wh..opq", "data/dir/y"}
    assert list(removed).index("data/dir/.wh..wh..opq") < list(removed).index("data/dir/y")


def test_configured_image_config():
    config = ib.configured_image().config_json["config"]
    for key in (
        "Entrypoint",
        "Cmd",
        "Env",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
    ):
        assert config[key] == ib.CONFIGURED_CONFIG[key]
    assert "srv/app/hello.txt" in members(ib.configured_image().layers[1])


def test_manifest_list_and_index():
    for oci in (False, True):
        image = ib.manifest_list_image(oci)
        doc = image.manifest_json
        assert image.media_type == (ib.OCI_INDEX if oci else ib.DOCKER_MANIFEST_LIST)
        platforms = [(m["platform"]["architecture"], m["digest"]) for m in doc["manifests"]]
        assert platforms == [
            ("amd64", ib.busybox_image(oci).digest),
            ("arm64", ib.arm64_image(oci).digest),
        ]
        assert doc["manifests"][1]["platform"]["variant"] == "v8"
        assert image.child("arm64").config_json["architecture"] == "arm64"
        assert image.digest == sha(image.manifest)


def test_big_image_streams_to_files():
    with ib.big_image(3, layers=3, seed=7) as image:
        workdir = image.workdir
        assert workdir is not None and workdir.is_dir()
        assert len(image.layers) == 4  # busybox base + 3
        sizes = []
        for layer in image.layers[1:]:
            assert layer.path is not None and layer.path.parent == workdir
            raw = layer.uncompressed()
            assert layer.diff_id == sha(raw) and layer.digest == sha(layer.data)
            sizes.append(len(raw))
            assert layer.size > 1024 * 1024  # incompressible
        assert all(s > 1024 * 1024 for s in sizes)
        again = ib.big_image(3, layers=3, seed=7)
        assert again.digest == image.digest
        again.cleanup()
        assert ib.big_image(1, seed=8, base=False).layers[0].diff_id != image.layers[1].diff_id
    assert not workdir.exists()


def test_schema1_signature_and_digest():
    body = ib.schema1_manifest(ib.busybox_image(), "library/busybox", "latest")
    doc = json.loads(body)
    assert doc["schemaVersion"] == 1 and len(doc["signatures"]) == 1
    assert len(doc["fsLayers"]) == len(doc["history"]) == 2
    assert doc["fsLayers"][0]["blobSum"] == ib.SCHEMA1_EMPTY_LAYER_DIGEST
    assert sha(ib.SCHEMA1_EMPTY_LAYER) == ib.SCHEMA1_EMPTY_LAYER_DIGEST
    unsigned = ib.schema1_manifest(ib.busybox_image(), "library/busybox", "latest", signed=False)
    assert ib.schema1_digest(body) == sha(unsigned)


def test_helpers():
    assert parse_scope("repository:127.0.0.1:5000/a/b:pull,push") == (
        "repository",
        "127.0.0.1:5000/a/b",
        ["pull", "push"],
    )
    assert parse_scope("registry:catalog:*") == ("registry", "catalog", ["*"])
    assert ib.parse_challenge('Bearer realm="http://x/token",service="s",scope="a:b:c"') == (
        "bearer",
        {"realm": "http://x/token", "service": "s", "scope": "a:b:c"},
    )
    import bcrypt

    user, _, hashed = htpasswd_line("alice", "pw").partition(":")
    assert user == "alice" and hashed.startswith("$2y$")
    assert bcrypt.checkpw(b"pw", ("$2b$" + hashed[4:]).encode())


# --- against a real registry, in each mode -----------------------------------------------


@pytest.fixture(scope="module", params=MODES)
def registry(request):
    reg = Registry(request.param, USERS).start()
    yield reg
    reg.stop()
    assert reg.dir is None and reg.proc is None


READY_MADE = {
    "busybox": ib.busybox_image,
    "multilayer": ib.multilayer_image,
    "configured": ib.configured_image,
    "manifest-list": ib.manifest_list_image,
}


def check_readback(client: ib.RegistryClient, repo: str, ref: str, image: ib.Image) -> None:
    """The manifest (by tag and by digest) and every blob come back byte for byte."""
    for r in (ref, image.digest):
        resp = client.get_manifest(repo, r, accept=image.media_type)
        assert resp.body == image.manifest
        assert resp.headers["Content-Type"] == image.media_type
        assert resp.digest == image.digest
    head = client.head_manifest(repo, ref, accept=image.media_type)
    assert head.status == 200 and head.digest == image.digest
    for child in image.children:
        check_readback(client, repo, child.digest, child)
    if image.config_digest:
        assert sha(client.get_blob(repo, image.config_digest)) == image.config_digest
    for layer in image.layers:
        blob = client.get_blob(repo, layer.digest)
        assert sha(blob) == layer.digest and len(blob) == layer.size


@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
def test_push_and_read_back(registry, oci):
    for name, build in READY_MADE.items():
        image = build(oci)
        tag = "oci" if oci else "docker"
        digest = ib.push(registry.url, f"test/{name}", tag, image, auth=registry.credentials)
        assert digest == image.digest
        client = ib.RegistryClient(registry.url, registry.credentials)
        check_readback(client, f"test/{name}", tag, image)
        assert tag in client.tags(f"test/{name}")
    # the same push again uploads no blob (HEAD first) and gives the same digest
    again = ib.push(
        registry.url, "test/busybox", "again", ib.busybox_image(oci), auth=registry.credentials
    )
    assert again == ib.busybox_image(oci).digest


def test_push_big_image(registry):
    with ib.big_image(2, layers=2, seed=registry.port) as image:
        auth = registry.credentials
        assert ib.push(registry.url, "test/big", "latest", image, auth=auth) == image.digest
        check_readback(ib.RegistryClient(registry.url, auth), "test/big", "latest", image)


def test_wrong_password(registry):
    bad = (registry.username, "not-the-password")
    if registry.mode == "anonymous":  # credentials are ignored
        assert ib.RegistryClient(registry.url, bad).ping().status == 200
        return
    assert registry.ping() == 401
    assert ib.RegistryClient(registry.url, bad).ping().status == 401
    assert ib.RegistryClient(registry.url, registry.credentials).ping().status == 200
    with pytest.raises(ib.RegistryError) as err:
        ib.push(registry.url, "test/denied", "latest", ib.busybox_image(), auth=bad)
    assert err.value.status == 401
    with pytest.raises(ib.RegistryError) as err:
        ib.push(registry.url, "test/denied", "latest", ib.busybox_image(), auth=("nobody", "x"))
    assert err.value.status == 401


def test_anonymous_access(registry):
    ib.push(registry.url, "test/anon", "latest", ib.busybox_image(), auth=registry.credentials)
    anonymous = ib.RegistryClient(registry.url)
    resp = anonymous.request(
        "GET",
        "/v2/test/anon/manifests/latest",
        headers={"Accept": ib.DOCKER_MANIFEST},
        expect=None,
    )
    # token mode grants anonymous pull (TokenServer anonymous_pull=True); htpasswd does not
    assert resp.status == (401 if registry.mode == "htpasswd" else 200)
    if registry.mode == "anonymous":
        return
    with pytest.raises(ib.RegistryError) as err:
        ib.push(registry.url, "test/anon", "pushed", ib.busybox_image())
    assert err.value.status == 401


def test_accept_headers_and_schema1_conversion(registry):
    """What distribution 2.8 answers for each Accept header (see the report in registry.py)."""
    auth = registry.credentials
    client = ib.RegistryClient(registry.url, auth)
    ib.push(registry.url, "test/accept", "docker", ib.busybox_image(), auth=auth)
    ib.push(registry.url, "test/accept", "list", ib.manifest_list_image(), auth=auth)
    ib.push(registry.url, "test/accept", "oci", ib.busybox_image(oci=True), auth=auth)

    def get(ref, accept):
        headers = {"Accept": accept} if accept else {}
        return client.request(
            "GET", f"/v2/test/accept/manifests/{ref}", headers=headers, expect=None
        )

    # a schema 2 manifest asked for without schema 2 in Accept: converted to signed schema 1
    for accept in (None, ib.DOCKER_SCHEMA1_SIGNED, ib.OCI_MANIFEST):
        resp = get("docker", accept)
        assert resp.status == 200 and resp.headers["Content-Type"] == ib.DOCKER_SCHEMA1_SIGNED
        assert resp.digest == ib.schema1_digest(resp.body) != ib.busybox_image().digest
        assert json.loads(resp.body)["schemaVersion"] == 1
    # a manifest list asked for with only schema 2 in Accept: the linux/amd64 manifest
    resp = get("list", ib.DOCKER_MANIFEST)
    assert resp.body == ib.busybox_image().manifest and resp.digest == ib.busybox_image().digest
    # OCI content without the OCI type in Accept: 404 MANIFEST_UNKNOWN
    resp = get("oci", ib.DOCKER_MANIFEST)
    assert resp.status == 404 and resp.json["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_schema1_push_refused_by_default(registry):
    client = ib.RegistryClient(registry.url, registry.credentials)
    ib.push(registry.url, "test/s1", "base", ib.busybox_image(), auth=registry.credentials)
    client.push_blob("test/s1", ib.SCHEMA1_EMPTY_LAYER_DIGEST, ib.SCHEMA1_EMPTY_LAYER)
    signed = ib.schema1_manifest(ib.busybox_image(), "test/s1", "s1")
    with pytest.raises(ib.RegistryError) as err:
        client.put_manifest("test/s1", "s1", signed, ib.DOCKER_SCHEMA1_SIGNED)
    assert err.value.status == 500  # "manifest schema v1 unsupported" in the log
    unsigned = ib.schema1_manifest(ib.busybox_image(), "test/s1", "s1", signed=False)
    with pytest.raises(ib.RegistryError) as err:
        client.put_manifest("test/s1", "s1", unsigned, ib.DOCKER_SCHEMA1)
    assert err.value.status == 400  # MANIFEST_INVALID: "missing signature key"


def test_kill_makes_registry_unreachable(registry):
    with Registry(registry.mode, USERS) as reg:
        ib.push(reg.url, "test/kill", "latest", ib.busybox_image(), auth=reg.credentials)
        reg.kill()
        assert not reg.running and reg.ping() is None
        with pytest.raises(OSError):
            ib.RegistryClient(reg.url, reg.credentials).ping()
        reg.restart()  # same port, same storage
        client = ib.RegistryClient(reg.url, reg.credentials)
        assert client.get_manifest("test/kill", "latest").digest == ib.busybox_image().digest
        where = reg.dir
    assert not reg.running and where is not None and not where.exists()


# --- one registry each for what only one mode shows --------------------------------------


def test_schema1_push_when_enabled():
    with Registry(schema1=True) as reg:
        client = ib.RegistryClient(reg.url)
        ib.push(reg.url, "test/s1", "base", ib.busybox_image())
        client.push_blob("test/s1", ib.SCHEMA1_EMPTY_LAYER_DIGEST, ib.SCHEMA1_EMPTY_LAYER)
        body = ib.schema1_manifest(ib.busybox_image(), "test/s1", "s1")
        digest = client.put_manifest("test/s1", "s1", body, ib.DOCKER_SCHEMA1_SIGNED)
        assert digest == ib.schema1_digest(body)
        resp = client.get_manifest("test/s1", "s1")  # schema 1, whatever Accept says
        assert resp.headers["Content-Type"] == ib.DOCKER_SCHEMA1_SIGNED
        # the same payload (and digest), but signed again with the registry's own key
        assert resp.digest == digest == ib.schema1_digest(resp.body)
        assert resp.body != body
        assert json.loads(resp.body)["fsLayers"] == json.loads(body)["fsLayers"]


@pytest.mark.parametrize("header", ["kid", "x5c"])
def test_token_auth_details(header):
    with Registry("token", USERS, token_header=header, anonymous_pull=False) as reg:
        server = reg.token_server
        assert isinstance(server, TokenServer)
        ib.push(reg.url, "test/tok", "latest", ib.busybox_image(), auth=reg.credentials)
        # (the registry's challenge names the actions in either order)
        asked = {(who, scope.rpartition(":")[0], frozenset(scope.rpartition(":")[2].split(",")))
                 for who, scopes in server.requests for scope in scopes}  # fmt: skip
        assert ("alice", "repository:test/tok", frozenset({"pull", "push"})) in asked
        path = "/v2/test/tok/manifests/latest"
        accept = {"Accept": ib.DOCKER_MANIFEST}

        def status(token):
            raw = ib.RegistryClient(reg.url, auth=lambda scheme, params: None)
            headers = {**accept, "Authorization": f"Bearer {token}"}
            return raw.request("GET", path, headers=headers, expect=None).status

        pull = [{"type": "repository", "name": "test/tok", "actions": ["pull"]}]
        assert status(server.issue("alice", pull)) == 200
        assert status(server.issue("alice", [])) == 401  # nothing granted
        assert status(server.issue("alice", pull, expires_in=-120)) == 401  # expired
        assert status(server.issue("alice", pull, audience="other")) == 401
        assert status(server.issue("alice", pull, issuer="other")) == 401
        other = TokenServer(USERS)
        assert status(server.issue("alice", pull, key=other.key)) == 401
        # anonymous_pull=False: an anonymous client gets a token that grants nothing
        anonymous = ib.RegistryClient(reg.url)
        assert anonymous.request("GET", path, headers=accept, expect=None).status == 401
        # the catalog needs registry:catalog:*, granted to a known user
        assert ib.RegistryClient(reg.url, reg.credentials).catalog() == ["test/tok"]
