"""Images through sdcd with the real docker CLI against Debian's docker-registry on
loopback: pull, list, inspect, history, tag, rmi, push, search, login; tenancy and
failures (unknown names, wrong password, unreachable registry, corrupted blob)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from tests.clients import request
from tests.conftest import Daemon, free_port, running_daemon, wait_for
from tests.dockercli import User


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


class Registry:
    """Debian's docker-registry on loopback, anonymous or behind htpasswd Basic auth."""

    def __init__(
        self, root: Path, users: dict[str, str] | None = None, token=None, tls=None
    ) -> None:
        self.root = root
        self.bearer = None
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.auth = None
        config = (
            f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        if users:
            lines = [
                f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}"
                for u, p in users.items()
            ]
            (root / "htpasswd").write_text("\n".join(lines) + "\n")
            config += f"auth:\n  htpasswd:\n    realm: sdcd-test\n    path: {root / 'htpasswd'}\n"
            self.auth = next(iter(users.items()))
        if token is not None:
            config += (
                f"auth:\n  token:\n    realm: {token.url}\n    service: sdcd-registry\n"
                f"    issuer: sdcd-test\n    rootcertbundle: {token.bundle}\n"
            )
        if tls is not None:
            config += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
            self.url = f"https://{self.host}"
        (root / "config.yml").write_text(config)
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, 20)

    def _up(self) -> bool:
        try:
            self._open("GET", f"{self.url}/v2/")
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def _open(self, method: str, url: str, data: bytes | None = None, headers=None):
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if self.url.startswith("https"):
            import ssl

            context = ssl.create_default_context(cafile=str(self.root / "ca.pem"))
            return urllib.request.urlopen(req, timeout=30, context=context)
        if self.auth:
            import base64

            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        if self.bearer:
            req.add_header("Authorization", f"Bearer {self.bearer}")
        return urllib.request.urlopen(req, timeout=30)

    def put_blob(self, repo: str, data: bytes) -> None:
        location = self._open("POST", f"{self.url}/v2/{repo}/blobs/uploads/").headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        self._open(
            "PUT",
            f"{location}{sep}digest={digest(data)}",
            data,
            {"Content-Type": "application/octet-stream"},
        )

    def push(self, repo: str, tag: str, layers: list[bytes], config: dict) -> tuple[str, str]:
        """Push gzip layers (given uncompressed) and a config; (manifest digest, image id)."""
        gz = [gzip.compress(raw, compresslevel=1, mtime=0) for raw in layers]
        config = {**config, "rootfs": {"type": "layers", "diff_ids": [digest(r) for r in layers]}}
        config_raw = json.dumps(config).encode()
        for blob in [*gz, config_raw]:
            self.put_blob(repo, blob)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": len(config_raw),
                    "digest": digest(config_raw),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(b),
                        "digest": digest(b),
                    }
                    for b in gz
                ],
            }
        ).encode()
        self._open(
            "PUT",
            f"{self.url}/v2/{repo}/manifests/{tag}",
            manifest,
            {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        return digest(manifest), digest(config_raw)

    def push_list(self, repo: str, tag: str, platforms: dict[str, tuple[list[bytes], dict]]):
        """A manifest list over one image per architecture; {arch: image id}."""
        entries, ids = [], {}
        for arch, (layers, config) in platforms.items():
            manifest_digest, ids[arch] = self.push(repo, f"only-{arch}", layers, config)
            body = self._open(
                "GET",
                f"{self.url}/v2/{repo}/manifests/{manifest_digest}",
                headers={"Accept": MANIFEST},
            ).read()
            entries.append(
                {
                    "mediaType": MANIFEST,
                    "size": len(body),
                    "digest": manifest_digest,
                    "platform": {"architecture": arch, "os": "linux"},
                }
            )
        lst = json.dumps({"schemaVersion": 2, "mediaType": LIST, "manifests": entries}).encode()
        self._open("PUT", f"{self.url}/v2/{repo}/manifests/{tag}", lst, {"Content-Type": LIST})
        return digest(lst), ids

    def blob_file(self, blob_digest: str) -> Path:
        hexd = blob_digest[7:]
        return self.root / "data/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def tar_layer(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
        for name, target in sorted((links or {}).items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 0
            tar.addfile(info)
    return buf.getvalue()


def busybox_layers() -> list[bytes]:
    base = tar_layer(
        {"bin/busybox": Path("/bin/busybox").read_bytes()},
        {"bin/sh": "busybox", "bin/echo": "busybox"},
    )
    extra = tar_layer({"data/a": b"a\n", "data/dir/x": b"x\n"})
    return [base, extra]


CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "created": "2026-01-02T03:04:05Z",
    "config": {
        "Cmd": ["sh"],
        "Env": ["PATH=/bin"],
        "WorkingDir": "/data",
        "Labels": {"com.example.kind": "test"},
        "ExposedPorts": {"80/tcp": {}},
    },
    "history": [
        {"created": "2026-01-02T03:04:05Z", "created_by": "ADD busybox /bin/"},
        {"created": "2026-01-02T03:04:05Z", "created_by": "ENV PATH=/bin", "empty_layer": True},
        {"created": "2026-01-02T03:04:05Z", "created_by": "COPY data /data"},
    ],
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.manifest_digest, reg.image_id = reg.push("busybox", "latest", busybox_layers(), CONFIG)
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def sdcd(tmp_path_factory):
    yield from running_daemon(tmp_path_factory.mktemp("images"))


_counter = iter(range(1000))


@pytest.fixture
def user(sdcd, tmp_path):
    return User(sdcd, tmp_path, f"img{next(_counter)}")


def blob_files(sdcd: Daemon) -> set[str]:
    return {p.name for p in (sdcd.data_dir / "blobs" / "sha256").iterdir()}


def test_pull_list_inspect_history(user, registry):
    name = f"{registry.host}/busybox"
    out = user.ok("pull", name)
    assert "Pull complete" in out and f"Digest: {registry.manifest_digest}" in out
    assert f"Status: Downloaded newer image for {name}:latest" in out
    assert "Status: Image is up to date" in user.ok("pull", name)
    listed = user.ok("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert f"{name}:latest {registry.image_id[7:19]}" in listed
    inspect = json.loads(user.ok("image", "inspect", name))[0]
    assert inspect["Id"] == registry.image_id
    assert inspect["RepoDigests"] == [f"{name}@{registry.manifest_digest}"]
    assert inspect["Config"]["WorkingDir"] == "/data"
    assert len(inspect["RootFS"]["Layers"]) == 2
    for ref in (registry.image_id, registry.image_id[7:19], f"{name}@{registry.manifest_digest}"):
        assert json.loads(user.ok("image", "inspect", ref))[0]["Id"] == registry.image_id
    history = user.ok("history", "--no-trunc", "--format", "{{.CreatedBy}}", name).split("\n")
    assert history[:3] == ["COPY data /data", "ENV PATH=/bin", "ADD busybox /bin/"]
    labelled = user.ok("images", "-q", "--filter", "label=com.example.kind=test")
    assert registry.image_id[7:19] in labelled
    assert user.ok("images", "-q", "--filter", "label=nope") == ""


def test_manifest_list_picks_linux_amd64(user, registry):
    arm = {**CONFIG, "architecture": "arm64", "variant": "v8"}
    list_digest, ids = registry.push_list(
        "multi",
        "latest",
        {
            "arm64": (busybox_layers()[:1], {**arm, "history": []}),
            "amd64": (busybox_layers()[1:], {**CONFIG, "history": []}),
        },
    )
    out = user.ok("pull", f"{registry.host}/multi")
    assert f"Digest: {list_digest}" in out
    inspect = json.loads(user.ok("image", "inspect", f"{registry.host}/multi"))[0]
    assert (inspect["Id"], inspect["Architecture"]) == (ids["amd64"], "amd64")
    assert inspect["RepoDigests"] == [f"{registry.host}/multi@{list_digest}"]


def test_tag_rmi_and_garbage(user, registry, sdcd):
    name = f"{registry.host}/busybox"
    user.ok("pull", name)
    user.ok("tag", name, "mine/thing:v1")
    assert "mine/thing:v1" in user.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert "Untagged: mine/thing:v1" in user.ok("rmi", "mine/thing:v1")
    assert user.ok("images", "-q")  # still there under its other tag
    out = user.ok("rmi", name)
    assert f"Deleted: {registry.image_id}" in out
    assert user.ok("images", "-q") == ""
    no_such = user.docker("image", "inspect", name)
    assert no_such.returncode != 0 and "No such image" in no_such.stderr


def test_rmi_by_id_with_two_repositories_needs_force(user, registry):
    name = f"{registry.host}/busybox"
    user.ok("pull", name)
    user.ok("tag", name, "other:1")
    refused = user.docker("rmi", registry.image_id[7:19])
    assert refused.returncode != 0 and "must be forced" in refused.stderr
    assert "Deleted" in user.ok("rmi", "-f", registry.image_id[7:19])


def test_tenancy(sdcd, tmp_path, registry):
    alice, bob = User(sdcd, tmp_path, "alicei"), User(sdcd, tmp_path, "bobi")
    name = f"{registry.host}/busybox"
    alice.ok("pull", name)
    alice.ok("tag", name, "secret:1")
    before = blob_files(sdcd)
    assert bob.ok("images", "-q") == ""
    for args in (
        ("image", "inspect", "secret:1"),
        ("image", "inspect", registry.image_id),
        ("rmi", "secret:1"),
        ("tag", "secret:1", "stolen:1"),
        ("push", "secret:1"),
    ):
        result = bob.docker(*args)
        assert result.returncode != 0, args
        assert "No such image" in result.stderr or "does not exist" in result.stderr, result.stderr
    out = bob.ok("pull", name)
    assert "Already exists" in out and "Downloading" not in out
    assert blob_files(sdcd) == before
    bob.ok("rmi", name)
    assert "secret:1" in alice.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert blob_files(sdcd) == before  # alice still references every blob


def test_unapproved_account_may_not_pull(sdcd, tmp_path, registry):
    viewer = User(sdcd, tmp_path, "viewer", approved=False)
    result = viewer.docker("pull", f"{registry.host}/busybox")
    assert result.returncode != 0
    assert "viewer does not have permission to pull or provision" in result.stderr
    assert viewer.ok("images", "-q") == ""


def test_unknown_image_and_tag(user, registry):
    for name in (f"{registry.host}/nothere", f"{registry.host}/busybox:nosuchtag"):
        result = user.docker("pull", name)
        assert result.returncode != 0
        assert "manifest unknown" in result.stderr or "not found" in result.stderr, result.stderr
    assert user.ok("images", "-q") == ""


def test_unreachable_registry_fails_fast(user):
    started = time.monotonic()
    result = user.docker("pull", f"127.0.0.1:{free_port()}/busybox")
    assert result.returncode != 0 and "cannot reach" in result.stderr
    assert time.monotonic() - started < 15


def test_corrupted_blob_stores_nothing(user, registry, sdcd, tmp_path):
    corrupt = Registry(tmp_path / "corrupt")
    try:
        layer = tar_layer({"data/big": os.urandom(300_000)})
        corrupt.push("broken", "latest", [layer], {**CONFIG, "history": []})
        blob = corrupt.blob_file(digest(gzip.compress(layer, compresslevel=1, mtime=0)))
        data = bytearray(blob.read_bytes())
        data[1000] ^= 0xFF
        blob.write_bytes(bytes(data))
        before = blob_files(sdcd)
        result = user.docker("pull", f"{corrupt.host}/broken")
        assert result.returncode != 0 and "digest mismatch" in result.stderr, result.stderr
        assert user.ok("images", "-q") == ""
        assert blob_files(sdcd) == before
        assert list((sdcd.data_dir / "blobs" / "tmp").iterdir()) == []
    finally:
        corrupt.stop()


class CuttingProxy:
    """A loopback TCP proxy that drops a connection once it has relayed ``limit`` bytes
    towards the client: a registry dying in the middle of a layer."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._upstream, self._limit, self._socket = upstream_port, limit, socket
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = self._socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self._limit), daemon=True
            ).start()

    relayed = 0

    def _pump(self, source, sink, limit) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                sent += len(data)
                if limit is not None:
                    with self._lock:
                        self.relayed += len(data)
                if limit is not None and sent > limit:
                    break
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(self._socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()


def test_registry_dying_mid_pull_stores_nothing(user, sdcd, tmp_path):
    reg = Registry(tmp_path / "dying")
    proxy = CuttingProxy(reg.port, limit=2_000_000)
    try:
        layer = tar_layer({"data/big": os.urandom(8_000_000)})
        reg.push("big", "latest", [layer], {**CONFIG, "history": []})
        before = blob_files(sdcd)
        result = user.docker("pull", f"127.0.0.1:{proxy.port}/big")
        assert result.returncode != 0 and "interrupted" in result.stderr, result.stderr
        assert user.ok("images", "-q") == ""
        assert blob_files(sdcd) == before
        assert list((sdcd.data_dir / "blobs" / "tmp").iterdir()) == []
    finally:
        proxy.close()
        reg.stop()


def test_concurrent_pulls_download_a_layer_once(sdcd, tmp_path):
    """Two accounts pulling one new image at once: the layer crosses the wire once."""
    import threading

    reg = Registry(tmp_path / "shared")
    proxy = CuttingProxy(reg.port, limit=10**12)
    try:
        layer = tar_layer({"data/big": os.urandom(30_000_000)})
        reg.push("big", "latest", [layer], {**CONFIG, "history": []})
        users = [User(sdcd, tmp_path, f"conc{i}") for i in range(2)]
        results = [None, None]

        def pull(i: int) -> None:
            results[i] = users[i].docker("pull", f"127.0.0.1:{proxy.port}/big")

        threads = [threading.Thread(target=pull, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        assert proxy.relayed < 1.5 * 30_000_000, proxy.relayed
        assert all(u.ok("images", "-q").strip() for u in users)
    finally:
        proxy.close()
        reg.stop()


def test_push_round_trip_and_mount(user, registry):
    name = f"{registry.host}/busybox"
    user.ok("pull", name)
    user.ok("tag", name, f"{registry.host}/pushed:v1")
    out = user.ok("push", f"{registry.host}/pushed:v1")
    assert "Mounted from busybox" in out and "v1: digest: sha256:" in out
    again = user.ok("push", f"{registry.host}/pushed:v1")
    assert "Layer already exists" in again
    user.ok("rmi", f"{registry.host}/pushed:v1")
    assert "Already exists" in user.ok("pull", f"{registry.host}/pushed:v1")
    found = user.ok("search", f"{registry.host}/push")
    assert f"{registry.host}/pushed" in found and f"{registry.host}/busybox" not in found


def test_login_and_basic_auth_registry(user, tmp_path):
    private = Registry(tmp_path / "private", users={"ann": "s3cret"})
    try:
        private.push("app", "1", busybox_layers()[:1], {**CONFIG, "history": []})
        wrong = user.docker("login", "-u", "ann", "--password-stdin", private.host)
        assert wrong.returncode != 0
        denied = user.docker("pull", f"{private.host}/app:1")
        assert denied.returncode != 0
        login = subprocess.run(
            ["bash", "-c", f"echo s3cret | docker login -u ann --password-stdin {private.host}"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
                "DOCKER_HOST": user.sdcd.docker_host,
                "DOCKER_TLS_VERIFY": "1",
                "DOCKER_CERT_PATH": str(user.certs),
                "HOME": str(user.home),
            },
        )
        assert login.returncode == 0 and "Login Succeeded" in login.stdout, login.stderr
        assert "Downloaded newer image" in user.ok("pull", f"{private.host}/app:1")
        bad = user.api("POST", "/v1.41/auth")
        assert bad.status == 400
    finally:
        private.stop()


def test_bad_requests_change_nothing(user):
    for path in (
        "/v1.41/images/create",
        "/v1.41/images/create?fromImage=lower/UPPER",
        "/v1.41/images/create?fromImage=a&fromSrc=-",
    ):
        resp = user.api("POST", path)
        assert resp.status in (400, 501), (path, resp)
        assert "message" in resp.json()
    resp = user.api("GET", "/v1.41/images/json?filters=%7B%22colour%22%3A%5B%22x%22%5D%7D")
    assert resp.status == 400
    assert user.ok("images", "-q") == ""


def classic_archive(
    path: Path,
    layers: list[bytes],
    config: dict,
    tags: list[str],
    extra: dict[str, bytes] | None = None,
) -> str:
    """A `docker save` archive in the pre-OCI layout (uncompressed layer.tar files)."""
    config = {**config, "rootfs": {"type": "layers", "diff_ids": [digest(r) for r in layers]}}
    config_raw = json.dumps(config).encode()
    files = {f"{digest(config_raw)[7:]}.json": config_raw}
    names = []
    for raw in layers:
        names.append(f"{digest(raw)[7:]}/layer.tar")
        files[names[-1]] = raw
    files["manifest.json"] = json.dumps(
        [{"Config": f"{digest(config_raw)[7:]}.json", "RepoTags": tags, "Layers": names}]
    ).encode()
    files.update(extra or {})
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return digest(config_raw)


def test_save_and_load_between_accounts(sdcd, tmp_path, registry):
    alice, bob = User(sdcd, tmp_path, "saver"), User(sdcd, tmp_path, "loader")
    name = f"{registry.host}/busybox"
    alice.ok("pull", name)
    alice.ok("tag", name, "exported:1")
    archive = tmp_path / "images.tar"
    alice.ok("save", "-o", str(archive), "exported:1", name)
    with tarfile.open(archive) as tar:
        members = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))
    assert {"manifest.json", "index.json", "oci-layout"} <= members
    assert sorted(manifest[0]["RepoTags"]) == sorted(["exported:1", f"{name}:latest"])
    out = bob.ok("load", "-i", str(archive))
    assert "Loaded image: exported:1" in out
    assert json.loads(bob.ok("image", "inspect", "exported:1"))[0]["Id"] == registry.image_id


def test_load_classic_archive_with_uncompressed_layers(user, tmp_path):
    layers = [tar_layer({"etc/hello": b"hello\n"})]
    archive = tmp_path / "classic.tar"
    image_id = classic_archive(archive, layers, {**CONFIG, "history": []}, ["classic:1"])
    assert "Loaded image: classic:1" in user.ok("load", "-i", str(archive))
    inspect = json.loads(user.ok("image", "inspect", "classic:1"))[0]
    assert inspect["Id"] == image_id
    assert inspect["RootFS"]["Layers"] == [digest(layers[0])]


@pytest.mark.parametrize("problem", ["escape", "absolute", "symlink", "diff_id", "garbage"])
def test_bad_archives_store_nothing(user, sdcd, tmp_path, problem):
    archive = tmp_path / "bad.tar"
    layers = [tar_layer({"etc/x": b"x\n"})]
    if problem == "garbage":
        archive.write_bytes(os.urandom(5000))
    elif problem == "diff_id":
        config = {**CONFIG, "history": []}
        classic_archive(archive, layers, config, ["bad:1"])
        with tarfile.open(archive) as tar:  # rewrite with one layer swapped
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in files:
            if name.endswith("layer.tar"):
                files[name] = tar_layer({"etc/x": b"tampered\n"})
        with tarfile.open(archive, "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        classic_archive(archive, layers, {**CONFIG, "history": []}, ["bad:1"])
        with tarfile.open(archive, "a") as tar:
            if problem == "symlink":
                info = tarfile.TarInfo("evil")
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info = tarfile.TarInfo("../evil" if problem == "escape" else "/evil")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    before = blob_files(sdcd)
    result = user.docker("load", "-i", str(archive))
    assert result.returncode != 0, result.stdout
    assert user.ok("images", "-q") == ""
    assert blob_files(sdcd) == before
    assert list((sdcd.data_dir / "blobs" / "tmp").iterdir()) == []


def test_docker_py_shapes(user, registry, monkeypatch):
    """docker-py 7 (the API shapes it parses) over TLS with the account's identity."""
    import docker

    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    tls = docker.tls.TLSConfig(
        client_cert=(str(user.certs / "cert.pem"), str(user.certs / "key.pem")),
        ca_cert=str(user.certs / "ca.pem"),
        verify=True,
    )
    client = docker.DockerClient(
        base_url=f"https://localhost:{user.sdcd.docker_port}", tls=tls, version="auto"
    )
    try:
        assert client.info()["Driver"] == "sdc"
        image = client.images.pull(f"{registry.host}/busybox", tag="latest")
        assert image.id == registry.image_id
        assert image.tags == [f"{registry.host}/busybox:latest"]
        assert image.labels == {"com.example.kind": "test"}
        assert [i.id for i in client.images.list()] == [registry.image_id]
        assert image.tag("pyrepo", "v2")
        assert "pyrepo:v2" in client.images.get("pyrepo:v2").tags
        assert client.images.get(registry.image_id[7:19]).history()[0]["Id"] == registry.image_id
        client.images.remove("pyrepo:v2")
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("pyrepo:v2")
        with pytest.raises(docker.errors.NotFound):
            client.images.pull(f"{registry.host}/absent", tag="latest")
    finally:
        client.close()


class TokenServer:
    """A small Bearer token server (the registry itself is real): checks Basic
    credentials, grants the scopes asked for, signs ES256 JWTs with a key whose
    certificate the registry trusts."""

    def __init__(self, root: Path, users: dict[str, str]) -> None:
        import datetime
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sdcd-test-token")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = root / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.users, self.issued = users, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, request) -> None:
        import base64
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(request.path).query)
        auth = request.headers.get("Authorization", "")
        user = None
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(name) != password:
                request.send_response(401)
                request.end_headers()
                request.wfile.write(b'{"details": "incorrect username or password"}')
                return
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append(
                {"type": kind, "name": repo, "actions": actions.split(",") if user else []}
            )
        token = self.jwt(user or "", query.get("service", [""])[0], access)
        self.issued.append((user, query.get("scope", [])))
        body = json.dumps({"token": token, "expires_in": 300}).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.end_headers()
        request.wfile.write(body)

    def jwt(self, subject: str, service: str, access: list) -> str:
        import base64
        import uuid

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": "sdcd-test",
            "sub": subject,
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(
            self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_token_auth_registry(user, tmp_path):
    tokens = TokenServer(tmp_path, {"tess": "t0ken"})
    reg = Registry(tmp_path / "token", token=tokens)
    try:
        reg.auth = None
        reg.bearer = tokens.jwt(
            "tess",
            "sdcd-registry",
            [{"type": "repository", "name": "app", "actions": ["pull", "push"]}],
        )
        reg.push("app", "1", busybox_layers()[:1], {**CONFIG, "history": []})
        anonymous = user.docker("pull", f"{reg.host}/app:1")
        assert anonymous.returncode != 0
        creds = base64_auth({"username": "tess", "password": "t0ken", "serveraddress": reg.host})
        resp = request(
            user.sdcd.docker_port,
            "POST",
            f"/v1.41/images/create?fromImage={reg.host}/app&tag=1",
            ca=user.sdcd.ca_path,
            identity=user.identity,
            headers={"X-Registry-Auth": creds},
        )
        assert resp.status == 200 and b"Downloaded newer image" in resp.body, resp
        assert any(user == "tess" for user, _ in tokens.issued)
        # Another account naming the same registry user with a wrong password must not
        # ride on the token sdcd holds for the right one.
        other = User(user.sdcd, tmp_path, "tokenthief")
        wrong_pull = request(
            user.sdcd.docker_port,
            "POST",
            f"/v1.41/images/create?fromImage={reg.host}/app&tag=1",
            ca=user.sdcd.ca_path,
            identity=other.identity,
            headers={"X-Registry-Auth": base64_auth({"username": "tess", "password": "x"})},
        )
        assert wrong_pull.status != 200 or b"errorDetail" in wrong_pull.body, wrong_pull
        assert other.ok("images", "-q") == ""
        wrong = base64_auth({"username": "tess", "password": "nope", "serveraddress": reg.host})
        login = user.api_post_json(
            "/v1.41/auth", {"username": "tess", "password": "nope", "serveraddress": reg.host}
        )
        assert login.status == 401 and "incorrect username or password" in login.json()["message"]
        ok = user.api_post_json(
            "/v1.41/auth", {"username": "tess", "password": "t0ken", "serveraddress": reg.host}
        )
        assert ok.status == 200 and ok.json()["Status"] == "Login Succeeded"
        assert wrong
    finally:
        reg.stop()
        tokens.stop()


def base64_auth(data: dict) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def test_registry_with_the_operators_ca(tmp_path, sdcd):
    """A registry whose certificate the system does not trust: refused, unless the
    operator lists its CA in [images] ca_files. (Reached by this machine's host name, so
    that it is not a loopback registry, which would skip verification as dockerd does.)"""
    import socket

    from sdcd.auth.tls import make_ca, make_server_cert

    host = socket.gethostname()
    try:
        if not socket.gethostbyname(host).startswith("127."):
            pytest.skip(f"host name {host} does not resolve to loopback here")
    except OSError:
        pytest.skip("the host name does not resolve")
    root = tmp_path / "tlsreg"
    root.mkdir()
    ca_pem, ca_key = make_ca("test")
    cert_pem, key_pem = make_server_cert(ca_pem, ca_key, [host, "127.0.0.1"])
    (root / "ca.pem").write_bytes(ca_pem)
    (root / "cert.pem").write_bytes(cert_pem)
    (root / "key.pem").write_bytes(key_pem)
    reg = Registry(root, tls=(root / "cert.pem", root / "key.pem"))
    trusting = Daemon(tmp_path / "trusting", extra=f'[images]\nca_files = ["{root / "ca.pem"}"]\n')
    trusting.start()
    try:
        reg.push("busybox", "latest", busybox_layers()[:1], {**CONFIG, "history": []})
        name = f"{host}:{reg.port}/busybox"
        refused = User(sdcd, tmp_path, "tlsplain").docker("pull", name)
        assert refused.returncode != 0 and "certificate" in refused.stderr.lower(), refused.stderr
        assert "Pull complete" in User(trusting, tmp_path, "tlstrust").ok("pull", name)
    finally:
        trusting.stop()
        reg.stop()


def test_list_filters(user, registry, tmp_path):
    name = f"{registry.host}/busybox"
    user.ok("pull", name)
    archive = tmp_path / "later.tar"
    later_id = classic_archive(
        archive, [tar_layer({"x": b"1"})], {**CONFIG, "history": []}, ["later:1"]
    )
    user.ok("load", "-i", str(archive))
    user.ok("tag", "later:1", "later:2")
    user.ok("rmi", "later:1")

    def ids(*filters: str) -> set[str]:
        args = [a for f in filters for a in ("--filter", f)]
        return set(user.ok("images", "-q", "--no-trunc", *args).split())

    assert ids("since=" + name) == {later_id}
    assert ids("before=later:2") == {registry.image_id}
    assert ids("reference=later") == {later_id}
    assert ids("reference=*/busybox") == {registry.image_id}
    assert ids("dangling=true") == set()
    user.ok("tag", name, "later:2")  # later's image loses its last tag
    assert ids("dangling=true") == {later_id}
    assert registry.image_id in ids("dangling=false")
    assert later_id not in ids()  # dangling images are hidden unless -a
    assert later_id in set(user.ok("images", "-a", "-q", "--no-trunc").split())
