"""The blob store on a real filesystem: verified while written, published atomically."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from sdcd.images.blobstore import BlobError, DigestMismatch, FileBlobStore, IBlobStore


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    return FileBlobStore(tmp_path / "blobs", reactor)


class Producer:
    """Records what the writer asks of its producer."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def test_interface(store):
    assert verifyObject(IBlobStore, store)


@pytest_twisted.ensureDeferred
async def test_large_blob_in_chunks_with_back_pressure(store):
    data = os.urandom(5 * 1024 * 1024 + 123)
    writer = store.writer(digest(data), len(data))
    producer = Producer()
    writer.attach(producer)
    for i in range(0, len(data), 65536):
        writer.write(data[i : i + 65536])
    assert "pause" in producer.events
    assert await writer.commit() == digest(data)
    assert store.has(digest(data))
    assert store.path(digest(data)).read_bytes() == data
    assert producer.events.count("pause") == producer.events.count("resume")
    assert list(store.tmp_dir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_digest_mismatch_stores_nothing(store):
    expected = digest(b"the real thing")
    writer = store.writer(expected)
    writer.write(b"something else")
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        await writer.commit()
    assert not store.has(expected)
    assert list(store.tmp_dir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_size_mismatch_stores_nothing(store):
    data = b"abc"
    writer = store.writer(digest(data), 4)
    writer.write(data)
    with pytest.raises(DigestMismatch, match="size mismatch"):
        await writer.commit()
    assert not store.has(digest(data))


@pytest_twisted.ensureDeferred
async def test_abort(store):
    data = os.urandom(3 * 1024 * 1024)
    writer = store.writer(digest(data))
    writer.write(data)
    await writer.abort()
    assert not store.has(digest(data))
    assert list(store.tmp_dir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_two_writers_of_one_blob(store):
    data = os.urandom(100_000)
    first, second = store.writer(digest(data)), store.writer(digest(data))
    first.write(data)
    second.write(data)
    await first.commit()
    await second.commit()
    assert store.path(digest(data)).read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_put_read_delete(store):
    await store.put(digest(b"{}"), b"{}")
    assert store.read(digest(b"{}")) == b"{}"
    assert store.size(digest(b"{}")) == 2
    await store.delete(digest(b"{}"))
    await store.delete(digest(b"{}"))
    assert not store.has(digest(b"{}"))


def test_bad_digests_refused(store):
    for bad in ["md5:abc", "sha256:xyz", "sha256:" + "a" * 63, "../../etc/passwd"]:
        with pytest.raises(BlobError):
            store.path(bad)


def test_leftovers_removed_on_start(tmp_path):
    FileBlobStore(tmp_path / "blobs", reactor)
    (tmp_path / "blobs" / "tmp" / "partial").write_bytes(b"x")
    FileBlobStore(tmp_path / "blobs", reactor)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
