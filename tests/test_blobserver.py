"""Image blobs from the datacenter store to compute nodes: real mutual TLS on loopback
with certificates from a temporary internal CA, a real FileBlobStore on both sides."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent
from twisted.web.test.requesthelper import DummyRequest

from sdcd.auth import internal
from sdcd.compute.blobcache import BlobCache, BlobFetchError, InternalTLSPolicy
from sdcd.images.blobserver import BlobResource, listen
from sdcd.images.blobstore import FileBlobStore
from tests.conftest import free_port

MiB = 1 << 20


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Env:
    """Servers and caches made by one test, all closed at teardown."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.ca = internal.internal_ca(tmp_path / "data", "testdc")
        self.api = internal.issue(*self.ca, "api", "sdc1", ["127.0.0.1"])
        self.node = internal.issue(*self.ca, "node", "cn1", ["127.0.0.1"])
        self.ports = []
        self.caches = []
        self.n = 0

    def server(self, material=None, **kwargs) -> tuple[BlobResource, str]:
        self.n += 1
        store = FileBlobStore(self.tmp / f"server{self.n}", reactor)
        resource = BlobResource(store, **kwargs)
        port = listen(reactor, 0, "127.0.0.1", material or self.api, resource)
        self.ports.append(port)
        return resource, f"https://127.0.0.1:{port.getHost().port}"

    def cache(self, sources: list[str], material=None, **kwargs) -> BlobCache:
        self.n += 1
        cache = BlobCache(
            self.tmp / f"node{self.n}", lambda: sources, material or self.node, reactor, **kwargs
        )
        self.caches.append(cache)
        return cache

    async def close(self) -> None:
        for cache in self.caches:
            await cache.close()
        for port in self.ports:
            await port.stopListening()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    pytest_twisted.blockon(defer.ensureDeferred(e.close()))


def put(resource: BlobResource, data: bytes) -> str:
    """Store a blob on the server side directly (test setup, off any reactor path)."""
    d = digest(data)
    resource._store.path(d).write_bytes(data)
    return d


def blobs_left(cache: BlobCache) -> list:
    return list(cache.store.blob_dir.iterdir()) + list(cache.store.tmp_dir.iterdir())


@pytest_twisted.ensureDeferred
async def test_large_blob_arrives_intact(env):
    resource, url = env.server()
    data = os.urandom(20 * MiB)
    d = put(resource, data)
    cache = env.cache([url])
    start = time.monotonic()
    path = await cache.ensure(d, len(data))
    elapsed = time.monotonic() - start
    print(f"20 MiB fetched in {elapsed:.2f}s: {20 / elapsed:.0f} MiB/s")
    assert path == cache.path(d) and cache.has(d)
    assert path.read_bytes() == data
    assert list(cache.store.tmp_dir.iterdir()) == []
    assert (resource.served, resource.active, resource.waiting) == (1, 0, 0)
    # Cached now: no second request.
    assert await cache.ensure(d) == path
    assert resource.requests == 1


@pytest_twisted.ensureDeferred
async def test_head_and_headers(env):
    resource, url = env.server()
    data = os.urandom(1000)
    d = put(resource, data)
    http = treq.client.HTTPClient(Agent(reactor, contextFactory=InternalTLSPolicy(env.node)))
    response = await http.head(f"{url}/blobs/{d}")
    assert response.code == 200
    assert response.headers.getRawHeaders("docker-content-digest") == [d]
    assert response.headers.getRawHeaders("content-length") == ["1000"]
    response = await http.get(f"{url}/blobs/{d}")
    assert await response.content() == data


@pytest_twisted.ensureDeferred
async def test_concurrent_ensures_share_one_download(env):
    resource, url = env.server()
    data = os.urandom(4 * MiB)
    d = put(resource, data)
    cache = env.cache([url])
    paths = await defer.gatherResults(
        [defer.ensureDeferred(cache.ensure(d)) for _ in range(10)], consumeErrors=True
    )
    assert set(paths) == {cache.path(d)}
    assert resource.requests == 1 and cache.downloads == 1
    assert cache.path(d).read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_server_sends_at_most_max_concurrent_bodies(env):
    resource, url = env.server(max_concurrent=2)
    blobs = {put(resource, os.urandom(4 * MiB)): None for _ in range(6)}
    cache = env.cache([url], max_parallel=6)
    await defer.gatherResults(
        [defer.ensureDeferred(cache.ensure(d)) for d in blobs], consumeErrors=True
    )
    assert all(cache.has(d) for d in blobs)
    assert resource.served == 6 and resource.requests == 6
    assert 1 <= resource.max_active <= 2
    print(f"max_active={resource.max_active}")
    assert (resource.active, resource.waiting) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_corrupt_blob_is_refused_and_next_store_used(env):
    bad, bad_url = env.server()
    good, good_url = env.server()
    data = os.urandom(2 * MiB)
    d = put(bad, data)
    put(good, data)
    bad._store.path(d).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    sources = [bad_url]
    cache = env.cache(sources)
    with pytest.raises(BlobFetchError, match="digest mismatch"):
        await cache.ensure(d)
    assert not cache.has(d) and blobs_left(cache) == []
    sources.append(good_url)
    assert (await cache.ensure(d)).read_bytes() == data
    assert bad.requests == 2 and good.requests == 1


@pytest_twisted.ensureDeferred
async def test_refused_connection_then_good_store(env):
    resource, url = env.server()
    data = os.urandom(1000)
    d = put(resource, data)
    cache = env.cache([f"https://127.0.0.1:{free_port()}", url])
    assert (await cache.ensure(d, 1000)).read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_size_mismatch(env):
    resource, url = env.server()
    d = put(resource, b"abc")
    cache = env.cache([url])
    with pytest.raises(BlobFetchError, match="size mismatch"):
        await cache.ensure(d, 4)
    assert blobs_left(cache) == []


@pytest_twisted.ensureDeferred
async def test_missing_everywhere(env):
    _, url1 = env.server()
    _, url2 = env.server()
    cache = env.cache([url1, url2])
    d = digest(b"nowhere")
    with pytest.raises(BlobFetchError, match="is not in the image store"):
        await cache.ensure(d)
    with pytest.raises(BlobFetchError, match="no image store"):
        await env.cache([]).ensure(d)


@pytest_twisted.ensureDeferred
async def test_bad_digest_is_400(env):
    _resource, url = env.server()
    http = treq.client.HTTPClient(Agent(reactor, contextFactory=InternalTLSPolicy(env.node)))
    response = await http.get(f"{url}/blobs/sha256:abc")
    assert response.code == 400
    assert "unsupported digest" in (await response.json())["message"]
    with pytest.raises(BlobFetchError, match="unsupported digest"):
        await env.cache([url]).ensure("md5:abc")


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_fails_the_handshake(env, tmp_path):
    resource, url = env.server()
    d = put(resource, b"secret")
    other_ca = internal.internal_ca(tmp_path / "other", "otherdc")
    intruder = internal.issue(*other_ca, "node", "cn1", ["127.0.0.1"])
    with pytest.raises(BlobFetchError, match="cannot fetch"):
        await env.cache([url], material=intruder).ensure(d)
    assert resource.requests == 0


@pytest_twisted.ensureDeferred
async def test_role_not_allowed_is_403(env):
    resource, url = env.server(allowed_roles=("node",))
    d = put(resource, b"secret")
    with pytest.raises(BlobFetchError, match="HTTP 403"):
        await env.cache([url], material=env.api).ensure(d)
    assert resource.requests == 0
    assert (await env.cache([url]).ensure(d)).read_bytes() == b"secret"


@pytest_twisted.ensureDeferred
async def test_server_without_api_role_is_refused(env):
    resource, url = env.server(material=env.node)
    d = put(resource, b"secret")
    with pytest.raises(BlobFetchError, match="not api"):
        await env.cache([url]).ensure(d)
    assert resource.requests == 0


def test_request_without_peer_certificate_is_403(tmp_path):
    resource = BlobResource(FileBlobStore(tmp_path, reactor))
    request = DummyRequest([digest(b"x").encode()])
    body = resource.render_GET(request)
    assert request.responseCode == 403 and b"certificate" in body


class _Quitter(Protocol):
    """Reads the first bytes of a body, then drops the connection."""

    def __init__(self, got: defer.Deferred) -> None:
        self.got = got

    def dataReceived(self, data: bytes) -> None:
        if not self.got.called:
            self.transport.stopProducing()  # aborts the connection
            self.got.callback(None)

    def connectionLost(self, reason) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_disconnected_client_gives_its_slot_back(env):
    resource, url = env.server(max_concurrent=1)
    data = os.urandom(32 * MiB)
    d = put(resource, data)
    http = treq.client.HTTPClient(Agent(reactor, contextFactory=InternalTLSPolicy(env.node)))
    response = await http.get(f"{url}/blobs/{d}", unbuffered=True)
    got: defer.Deferred = defer.Deferred()
    response.deliverBody(_Quitter(got))
    await got
    for _ in range(100):
        if resource.active == 0:
            break
        await deferLater(0.02)
    assert resource.active == 0 and resource.served == 0
    small = put(resource, b"small")
    assert (await env.cache([url]).ensure(small)).read_bytes() == b"small"


def deferLater(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)
