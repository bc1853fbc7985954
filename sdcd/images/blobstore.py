"""The datacenter's blob store: content-addressed files, each stored once for everyone.

A blob is written to a temporary file while its sha256 is computed, and becomes visible
under ``sha256/<hex>`` only by an atomic rename once the digest (and size, when known)
match. A mismatch discards it, so a reader never sees a partial or corrupt blob. Disk
writes happen in a thread, a megabyte at a time, and the writer tells its producer to
pause while a write is pending: a fast registry cannot fill sdcd's memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from pathlib import Path

from twisted.internet import defer, threads
from twisted.internet.interfaces import IPushProducer
from zope.interface import Interface, implementer

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
FLUSH_AT = 1 << 20


class BlobError(Exception):
    """A blob could not be stored; the message is user-facing."""


class DigestMismatch(BlobError):
    """The bytes received are not the blob that was asked for."""


class IBlobStore(Interface):
    """Content-addressed blobs shared by every account."""

    def has(digest):
        """Whether the blob is stored (synchronous: a stat)."""

    def size(digest):
        """The blob's size in bytes (synchronous)."""

    def path(digest):
        """Where the blob's bytes are, for readers (synchronous)."""

    def writer(digest, size=None):
        """A ``BlobWriter`` that stores bytes expected to have this digest."""

    def delete(digest):
        """Remove a blob; fire when done (no error if it is already gone)."""


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise BlobError(f"unsupported digest {digest!r}")
    return digest


class BlobWriter:
    """Receives a blob's bytes in order; ``commit`` verifies and publishes them."""

    def __init__(self, store: FileBlobStore, digest: str, size: int | None) -> None:
        self._store = store
        self.digest = check_digest(digest)
        self._expected_size = size
        self._hash = hashlib.sha256()
        self._tmp = store.tmp_dir / f"{digest[7:]}.{uuid.uuid4().hex}"
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed by commit/abort)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending: defer.Deferred | None = None
        self._error = None
        self._producer: IPushProducer | None = None
        self._paused = False
        self.received = 0
        self._closed = False

    def attach(self, producer: IPushProducer) -> None:
        """The producer to pause while a disk write is pending (back-pressure)."""
        self._producer = producer

    def write(self, data: bytes) -> None:
        if self._closed:
            raise BlobError("write after commit or abort")
        self._hash.update(data)
        self.received += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= FLUSH_AT and self._pending is None:
            self._start_write()

    def _start_write(self) -> None:
        """Write the buffer in a thread, pausing the producer until it is done: one
        write in flight, so memory holds at most about two buffers."""
        data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
        self._pending = threads.deferToThreadPool(
            self._store.reactor, self._store.threadpool, self._file.write, data
        )
        if self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        self._pending.addCallbacks(self._written, self._write_failed)

    def _written(self, _) -> None:
        self._pending = None
        if self._buffered >= FLUSH_AT:
            self._start_write()
        elif self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()

    def _write_failed(self, failure) -> None:
        self._pending = None
        self._error = failure

    async def _drain(self) -> None:
        while self._pending is not None:
            d = defer.Deferred()
            self._pending.addBoth(lambda r, d=d: d.callback(None) or r)
            await d
        if self._error is not None:
            self._error.raiseException()
        if self._buffer:
            data, self._buffer, self._buffered = b"".join(self._buffer), [], 0
            await threads.deferToThreadPool(
                self._store.reactor, self._store.threadpool, self._file.write, data
            )

    async def commit(self) -> str:
        """Verify and publish; ``DigestMismatch`` (and nothing stored) if it is not the
        blob asked for."""
        try:
            await self._drain()
            await threads.deferToThreadPool(
                self._store.reactor, self._store.threadpool, self._close_and_sync
            )
        except Exception:
            self._discard()
            raise
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            self._discard()
            raise DigestMismatch(f"digest mismatch: expected {self.digest}, got {actual}")
        if self._expected_size is not None and self.received != self._expected_size:
            self._discard()
            raise DigestMismatch(
                f"size mismatch for {self.digest}: expected {self._expected_size} bytes, "
                f"got {self.received}"
            )
        os.replace(self._tmp, self._store.path(self.digest))
        return self.digest

    def _close_and_sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._closed = True

    def _discard(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    async def abort(self) -> None:
        """Drop whatever was received."""
        with contextlib.suppress(Exception):
            await self._drain()
        self._discard()


@implementer(IBlobStore)
class FileBlobStore:
    """Blobs as files under ``root/sha256``; temporary files under ``root/tmp``."""

    def __init__(self, root: Path, reactor, threadpool=None) -> None:
        self.root = root
        self.reactor = reactor
        self.threadpool = threadpool or reactor.getThreadPool()
        self.blob_dir = root / "sha256"
        self.tmp_dir = root / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # from a crash mid-download
            with contextlib.suppress(OSError):
                leftover.unlink()

    def path(self, digest: str) -> Path:
        return self.blob_dir / check_digest(digest)[7:]

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def writer(self, digest: str, size: int | None = None) -> BlobWriter:
        return BlobWriter(self, digest, size)

    async def put(self, digest: str, data: bytes) -> str:
        """Store a small blob held in memory (configs, manifests)."""
        writer = self.writer(digest, len(data))
        writer.write(data)
        return await writer.commit()

    def read(self, digest: str) -> bytes:
        """A small blob's bytes (configs, manifests; never layers)."""
        return self.path(digest).read_bytes()

    async def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()
