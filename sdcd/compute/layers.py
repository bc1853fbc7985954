"""The compute node's layer cache: every image layer unpacked once, ready for overlayfs.

Layout under ``root`` (mode 0700: images may carry setuid binaries, and no host user
should reach them outside a container)::

    layers/<64 hex of diff_id>/   the unpacked layer, an overlayfs lower directory
    l/<16 hex>                    symlink -> ../layers/<64 hex>: the short name
    tmp/                          unpacks in progress and layers being pruned

**Short names.** The kernel takes the whole overlay option string in one page (4096
bytes). Absolute lower paths (~100 bytes each) would limit an image to ~35 layers, so a
mount runs ``mount`` with its working directory in ``l/`` and names each lower directory
by its 16-hex short name: 17 bytes per layer, so ~220 layers fit next to ~100-byte upper
and work paths (dockerd stops an image at 125); ``lower_dirs`` gives them. The kernel
follows the symlink when it resolves each lowerdir. Short names are the first 64 bits of
the diff_id; a collision (two stored diff_ids sharing them, which needs a second preimage
to force) is refused, never silently mapped to the wrong layer.

**Unpacking** happens in a thread, in one streaming pass over the blob: decompress, hash
the uncompressed tar (the diff_id) and unpack into ``tmp/``, member by member, with every
file created relative to a directory descriptor and ``O_NOFOLLOW``, so no entry can land
outside the layer whatever the tar says. Only when the whole stream matches the diff_id
is the directory renamed into ``layers/``; any failure removes it. Docker whiteouts become
overlayfs ones: ``.wh.<name>`` a 0/0 character device, ``.wh..wh..opq`` the
``trusted.overlay.opaque`` xattr.
"""

from __future__ import annotations

import contextlib
import ctypes
import decimal
import errno
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.internet import defer, threads
from twisted.python.failure import Failure

CHUNK = 1 << 20
#: tarfile copies its whole read-ahead buffer on every read: keep it small.
TAR_BUFSIZE = 64 << 10
SHORT_LEN = 16
DIFF_ID_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
META_PREFIX = ".wh..wh."  # aufs metadata (.wh..wh.plnk etc.): never part of a rootfs
OPAQUE_XATTR = "trusted.overlay.opaque"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Extended attributes a layer may set; others (security.selinux, trusted.*) are dropped,
#: and trusted.overlay.* - overlayfs's own control data - refuses the layer.
ALLOWED_XATTRS = ("user.", "security.capability", "system.posix_acl_")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LayerError(Exception):
    """A layer could not be unpacked; the message is for the user."""


class UnsafeLayer(LayerError):
    """The layer tries to write outside itself, or holds something a container must not get."""


class LayerMismatch(LayerError):
    """The uncompressed layer does not hash to the diff_id the image config names."""


class UnsupportedLayer(LayerError, ValueError):
    """A compression (zstd) this node cannot unpack."""


def layer_hex(diff_id: str) -> str:
    """The 64 hex digits of a ``sha256:`` diff_id (ValueError for anything else)."""
    match = DIFF_ID_RE.match(diff_id)
    if match is None:
        raise ValueError(f"unsupported diff_id {diff_id!r}")
    return match.group(1)


class LayerCache:
    """Unpacked layers shared by every container on this node."""

    def __init__(self, root: Path, reactor: Any, threadpool: Any = None) -> None:
        self.root = Path(root)
        self.reactor = reactor
        self.threadpool = threadpool or reactor.getThreadPool()
        self.layers_dir = self.root / "layers"
        self.link_dir = self.root / "l"
        self.tmp_dir = self.root / "tmp"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for where in (self.layers_dir, self.link_dir, self.tmp_dir):
            where.mkdir(mode=0o700, exist_ok=True)
        self._jobs: dict[str, list[defer.Deferred]] = {}  # diff_id -> waiters
        self._active_tmp: set[str] = set()

    # -- names

    def path(self, diff_id: str) -> Path:
        """The unpacked directory of a layer (it may not exist yet)."""
        return self.layers_dir / layer_hex(diff_id)

    def short_name(self, diff_id: str) -> str:
        """The layer's name in ``link_dir``, short enough for ~230 layers in one mount."""
        return layer_hex(diff_id)[:SHORT_LEN]

    def has(self, diff_id: str) -> bool:
        return self.path(diff_id).is_dir()

    def lower_dirs(self, diff_ids: list[str]) -> tuple[Path, list[Path]]:
        """For an image's diff_ids (base layer first, as in its config): the directory to
        mount from and the relative lowerdirs, top-most first. A layer repeated in an image
        (e.g. the empty layer) is named once, at its top-most place: overlayfs refuses a
        directory twice, and the lower copy could only show what the upper one does."""
        seen: set[str] = set()
        names: list[Path] = []
        for diff_id in reversed(diff_ids):
            if diff_id not in seen:
                seen.add(diff_id)
                names.append(Path(self.short_name(diff_id)))
        return self.link_dir, names

    # -- unpacking

    async def ensure(self, diff_id: str, blob_path: Path, media_type: str) -> Path:
        """The layer's directory, unpacking ``blob_path`` first unless it is cached.
        Concurrent calls for one diff_id share a single unpack."""
        if self.has(diff_id):
            self._link(diff_id)
            return self.path(diff_id)
        waiter: defer.Deferred = defer.Deferred()
        if diff_id not in self._jobs:
            self._jobs[diff_id] = [waiter]
            self._start(diff_id, Path(blob_path), media_type)
        else:
            self._jobs[diff_id].append(waiter)
        return await waiter

    def _start(self, diff_id: str, blob_path: Path, media_type: str) -> None:
        tmp = self.tmp_dir / f"unpack.{layer_hex(diff_id)}.{uuid.uuid4().hex}"
        self._active_tmp.add(tmp.name)
        d = threads.deferToThreadPool(
            self.reactor, self.threadpool, self._unpack, diff_id, blob_path, media_type, tmp
        )
        d.addBoth(self._finished, diff_id, tmp.name)

    def _finished(self, result: Any, diff_id: str, tmp_name: str) -> None:
        """Hand the result to every waiter (one unpack, many callers; a cancelled waiter
        is skipped, the unpack itself is never cancelled)."""
        self._active_tmp.discard(tmp_name)
        for waiter in self._jobs.pop(diff_id):
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

    def _unpack(self, diff_id: str, blob_path: Path, media_type: str, tmp: Path) -> Path:
        """In a thread: unpack, verify, publish. Nothing is left in ``tmp`` on failure."""
        tmp.mkdir(mode=0o755)
        try:
            with open(blob_path, "rb") as blob:
                actual = unpack_stream(blob, media_type, tmp)
            if actual != diff_id:
                raise LayerMismatch(
                    f"layer does not match its diff_id: expected {diff_id}, got {actual}"
                )
            _syncfs(tmp)
            try:
                os.rename(tmp, self.path(diff_id))
            except OSError as e:  # another process published it first
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._link(diff_id)
        return self.path(diff_id)

    def _link(self, diff_id: str) -> None:
        """Make ``l/<short>`` point at the layer (idempotent; a collision is an error)."""
        link = self.link_dir / self.short_name(diff_id)
        target = f"../layers/{layer_hex(diff_id)}"
        try:
            os.symlink(target, link)
        except FileExistsError:
            current = os.readlink(link) if link.is_symlink() else None
            if current != target:
                raise LayerError(
                    f"short name {link.name} of {diff_id} is taken by {current}"
                ) from None

    # -- pruning

    async def prune(self, in_use: set[str]) -> list[str]:
        """Remove cached layers not in ``in_use`` (never one being unpacked) and leftovers
        of interrupted unpacks; the removed diff_ids. Layers leave ``layers/`` at once (a
        rename, so a concurrent ``ensure`` unpacks afresh); deleting them runs in a thread."""
        busy = set(in_use) | set(self._jobs)
        removed: list[str] = []
        trash: list[Path] = []
        for name in os.listdir(self.layers_dir):
            diff_id = f"sha256:{name}"
            if not DIFF_ID_RE.match(diff_id) or diff_id in busy:
                continue
            moved = self.tmp_dir / f"prune.{name}.{uuid.uuid4().hex}"
            os.rename(self.layers_dir / name, moved)
            self._unlink_short(diff_id)
            removed.append(diff_id)
            trash.append(moved)
        self._active_tmp.update(p.name for p in trash)
        stale = [self.tmp_dir / n for n in os.listdir(self.tmp_dir) if n not in self._active_tmp]
        try:
            await threads.deferToThreadPool(
                self.reactor, self.threadpool, _remove_all, trash + stale
            )
        finally:
            self._active_tmp.difference_update(p.name for p in trash)
        return removed

    def _unlink_short(self, diff_id: str) -> None:
        link = self.link_dir / self.short_name(diff_id)
        with contextlib.suppress(OSError):
            if os.readlink(link) == f"../layers/{layer_hex(diff_id)}":
                link.unlink()


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _syncfs(path: Path) -> None:
    """Flush the layer's data before it is published: after a crash a cached layer must
    be whole (one syncfs(2) is far cheaper than an fsync per file)."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


# -- the uncompressed stream ------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """The uncompressed tar, hashed as it is read (by tarfile, then by the final drain)."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self.hash.update(chunk)
            self.count += len(chunk)
            self._pending = memoryview(chunk)
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def drain(self) -> None:
        while self.readinto(bytearray(CHUNK)):
            pass


def _raw_chunks(blob: IO[bytes], head: bytes) -> Any:
    yield head
    while chunk := blob.read(CHUNK):
        yield chunk


def _gunzip_chunks(blob: IO[bytes], head: bytes) -> Any:
    """Decompressed chunks of a (possibly multi-member, zero-padded) gzip stream, at most
    CHUNK bytes each so that a small bomb cannot fill memory."""
    inflate = zlib.decompressobj(wbits=31)
    data = head
    while True:
        if not data:
            data = blob.read(CHUNK)
            if not data:
                if not inflate.eof:
                    raise LayerError("truncated gzip stream")
                return
        if inflate.eof:  # between members: padding, or the next member
            data = data.lstrip(b"\0")
            if not data:
                continue
            inflate = zlib.decompressobj(wbits=31)
        try:
            out = inflate.decompress(data, CHUNK)
        except zlib.error as e:
            raise LayerError(f"corrupt gzip stream: {e}") from None
        data = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
        if out:
            yield out


def plain_tar(blob: IO[bytes], media_type: str) -> _HashingReader:
    """The uncompressed tar of a layer blob, hashed while read. Compression is taken from
    the magic bytes (as dockerd does), whatever the media type says; zstd is refused."""
    head = blob.read(4)
    if media_type.lower().endswith(("+zstd", ".zstd")) or head.startswith(ZSTD_MAGIC):
        raise UnsupportedLayer("zstd-compressed layers are not supported on this node")
    if head.startswith(GZIP_MAGIC):
        return _HashingReader(_gunzip_chunks(blob, head))
    return _HashingReader(_raw_chunks(blob, head))


def unpack_stream(blob: IO[bytes], media_type: str, dest: Path) -> str:
    """Unpack a layer blob into the existing empty directory ``dest`` in one pass; the
    sha256 of the whole uncompressed stream (``sha256:...``)."""
    source = plain_tar(blob, media_type)
    try:
        tar = tarfile.open(  # noqa: SIM115 (closed below; stream mode has no context use)
            fileobj=source,
            mode="r|",
            bufsize=TAR_BUFSIZE,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except tarfile.ReadError as e:
        if source.count == 0:  # a zero-byte layer: nothing to unpack
            return "sha256:" + source.hash.hexdigest()
        raise LayerError(f"not a valid layer tar: {e}") from None
    unpacker = _Unpacker(dest)
    try:
        while (member := tar.next()) is not None:
            unpacker.add(member, tar)
            tar.members.clear()  # stream mode keeps every header otherwise
        unpacker.finish()
    except (tarfile.TarError, EOFError) as e:
        raise LayerError(f"not a valid layer tar: {e}") from None
    finally:
        unpacker.close()
        tar.close()
    source.drain()
    return "sha256:" + source.hash.hexdigest()


# -- unpacking members --------------------------------------------------------------------


def _clean_name(name: str) -> str:
    """The member's path relative to the layer root; UnsafeLayer if it would escape."""
    if "\0" in name:
        raise UnsafeLayer(f"{name!r}: NUL in path")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeLayer(f"{name!r}: path escapes the layer")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _mtime_ns(member: tarfile.TarInfo, key: str = "mtime") -> int:
    """Nanoseconds, exact for PAX fractional times."""
    text = member.pax_headers.get(key)
    if text is not None:
        with contextlib.suppress(decimal.InvalidOperation, ValueError):
            return int(decimal.Decimal(text) * 1_000_000_000)
    if key != "mtime":
        return _mtime_ns(member)
    return int(member.mtime) * 1_000_000_000


def _xattrs(member: tarfile.TarInfo, where: str) -> dict[str, bytes]:
    """The member's extended attributes from SCHILY.xattr.* PAX records (as GNU tar and
    Docker write them), filtered: see ALLOWED_XATTRS."""
    result: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr.") :]
        if name.startswith("trusted.overlay."):
            raise UnsafeLayer(f"{where!r}: sets overlayfs's own attribute {name}")
        if name.startswith(ALLOWED_XATTRS):
            result[name] = value.encode("utf-8", "surrogateescape")
    return result


class _Unpacker:
    """Creates a layer's members under one directory descriptor, never following a link."""

    def __init__(self, dest: Path) -> None:
        self.root_fd = os.open(dest, _DIR_FLAGS)
        self.dirs: dict[str, tarfile.TarInfo] = {}  # metadata applied by finish()
        self.whiteouts: set[str] = set()  # the 0/0 devices this unpack made
        self._cached: tuple[str, int] | None = None  # the last parent directory opened

    def close(self) -> None:
        self._forget_parent()
        os.close(self.root_fd)

    # -- walking

    def _forget_parent(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _open_dir(self, path: str, where: str, create: bool) -> int:
        """A new descriptor of directory ``path`` (relative), walked one component at a
        time with O_NOFOLLOW. Missing directories are made when ``create`` (0755, as tar)."""
        fd = os.dup(self.root_fd)
        done: list[str] = []
        try:
            for part in path.split("/") if path else ():
                done.append(part)
                nfd = self._step(fd, part, "/".join(done), where, create)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _step(self, fd: int, part: str, sofar: str, where: str, create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise UnsafeLayer(f"{where!r}: {sofar!r} does not exist in this layer") from None
            opaque = False
        except OSError:
            self._refuse_non_dir(fd, part, sofar, where, create)
            os.unlink(part, dir_fd=fd)  # a whiteout of ours: the directory is made anew
            self.whiteouts.discard(sofar)
            opaque = True
        _mkdir(fd, part, 0o755, opaque)
        return os.open(part, _DIR_FLAGS, dir_fd=fd)

    def _refuse_non_dir(self, fd: int, part: str, sofar: str, where: str, create: bool) -> None:
        """UnsafeLayer for a path through a symlink or a file (not a whiteout of ours)."""
        if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
            raise UnsafeLayer(f"{where!r}: writes through the symlink {sofar!r}")
        if not create or sofar not in self.whiteouts:
            raise UnsafeLayer(f"{where!r}: {sofar!r} is not a directory")

    def _parent(self, path: str, where: str) -> tuple[int, str]:
        """(descriptor of the parent directory, last component). The descriptor belongs
        to this object: it is kept for the next member in the same directory."""
        head, _, name = path.rpartition("/")
        if self._cached is not None and self._cached[0] == head:
            return self._cached[1], name
        fd = self._open_dir(head, where, create=True)
        self._forget_parent()
        self._cached = (head, fd)
        return fd, name

    # -- members

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        path = _clean_name(member.name)
        if not path:
            return  # the layer root itself: the merged root's attributes are the upper's
        parts = path.split("/")
        base = parts[-1]
        if any(part.startswith(META_PREFIX) for part in parts[:-1]):
            return  # inside aufs metadata directories
        if base == OPAQUE:
            self._opaque(path)
        elif base.startswith(META_PREFIX):
            return
        elif base.startswith(WHITEOUT):
            self._whiteout(path, base[len(WHITEOUT) :])
        else:
            self._entry(path, member, tar)

    def _opaque(self, path: str) -> None:
        """``<dir>/.wh..wh..opq``: the directory hides everything lower layers put in it."""
        fd = self._open_dir(path.rpartition("/")[0], path, create=True)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)

    def _whiteout(self, path: str, name: str) -> None:
        """``.wh.<name>``: a 0/0 character device hides ``name`` of the lower layers.
        What this layer itself puts at ``name`` stays (a whiteout applies below only)."""
        head = path.rpartition("/")[0]
        target = f"{head}/{name}" if head else name
        if not name or _clean_name(target) != target:
            raise UnsafeLayer(f"{path!r}: bad whiteout")
        fd, _ = self._parent(target, path)
        try:
            os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)
        except FileExistsError:
            return
        self.whiteouts.add(target)

    def _entry(self, path: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        if member.ischr() or member.isblk():
            raise UnsafeLayer(f"{member.name!r}: device nodes are not allowed in layers")
        if not any(is_kind() for is_kind in _kinds(member)):
            raise UnsafeLayer(f"{member.name!r}: unsupported tar entry type {member.type!r}")
        xattrs = _xattrs(member, member.name)
        fd, name = self._parent(path, member.name)
        if member.isdir():
            self._dir(fd, name, path, member)
            return
        self._clear(fd, name, path)
        if member.isreg():
            self._file(fd, name, member, tar, xattrs)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=fd)
            _own(fd, name, member, symlink=True)
        elif member.islnk():
            self._hardlink(fd, name, member)
        else:
            os.mkfifo(name, 0o600, dir_fd=fd)
            _own(fd, name, member, symlink=False)

    def _clear(self, fd: int, name: str, path: str) -> None:
        """Make room for a member: a later entry for a path replaces an earlier one."""
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=fd)
            self.dirs = {k: v for k, v in self.dirs.items() if not _under(k, path)}
            self.whiteouts = {k for k in self.whiteouts if not _under(k, path)}
        else:
            os.unlink(name, dir_fd=fd)
        self.whiteouts.discard(path)

    def _dir(self, fd: int, name: str, path: str, member: tarfile.TarInfo) -> None:
        try:
            st: os.stat_result | None = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            opaque = path in self.whiteouts  # lower content deleted, the directory made anew
            self._clear(fd, name, path)
            _mkdir(fd, name, 0o700, opaque)
        self.dirs[path] = member

    def _file(
        self,
        fd: int,
        name: str,
        member: tarfile.TarInfo,
        tar: tarfile.TarFile,
        xattrs: dict[str, bytes],
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, 0o600, dir_fd=fd)
        try:
            src = tar.extractfile(member)
            assert src is not None
            with src:
                while chunk := src.read(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
            _apply(out, member, xattrs)
        finally:
            os.close(out)

    def _hardlink(self, fd: int, name: str, member: tarfile.TarInfo) -> None:
        """A hard link to an earlier non-directory member of this same layer."""
        target, where = _clean_name(member.linkname), member.name
        if not target or target in self.whiteouts:
            raise UnsafeLayer(f"{where!r}: hard link to {member.linkname!r} outside the layer")
        head, _, tname = target.rpartition("/")
        tfd = self._open_dir(head, where, create=False)
        try:
            try:
                st = os.lstat(tname, dir_fd=tfd)
            except FileNotFoundError:
                raise UnsafeLayer(
                    f"{where!r}: hard link target {member.linkname!r} is not in this layer"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(f"{where!r}: hard link to a directory")
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(tfd)

    # -- directories last

    def finish(self) -> None:
        """Apply directory metadata, deepest first, once nothing more is made in them."""
        self._forget_parent()
        for path in sorted(self.dirs, key=lambda p: p.count("/"), reverse=True):
            member = self.dirs[path]
            fd = self._open_dir(path, path, create=False)
            try:
                _apply(fd, member, _xattrs(member, member.name))
            finally:
                os.close(fd)


def _kinds(member: tarfile.TarInfo) -> tuple[Callable[[], bool], ...]:
    """The entry types a layer may hold."""
    return (member.isdir, member.isreg, member.issym, member.islnk, member.isfifo)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def _mkdir(fd: int, name: str, mode: int, opaque: bool) -> None:
    os.mkdir(name, mode, dir_fd=fd)
    dfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
    try:
        os.fchmod(dfd, mode)  # not the umask's idea
        if opaque:
            os.setxattr(dfd, OPAQUE_XATTR, b"y")
    finally:
        os.close(dfd)


def _own(fd: int, name: str, member: tarfile.TarInfo, symlink: bool) -> None:
    """Owner, mode and times of a symlink or fifo just made, by name (opening a fifo
    would block). Extended attributes are not kept on these: Linux refuses user.* there."""
    os.chown(name, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
    if not symlink:
        os.chmod(name, member.mode & 0o7777, dir_fd=fd)
    times = (_mtime_ns(member, "atime"), _mtime_ns(member))
    os.utime(name, ns=times, dir_fd=fd, follow_symlinks=False)


def _apply(fd: int, member: tarfile.TarInfo, xattrs: dict[str, bytes]) -> None:
    """Owner (numeric), mode (after chown, which clears setuid), xattrs and times."""
    os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, member.mode & 0o7777)
    for key, value in xattrs.items():
        os.setxattr(fd, key, value)
    os.utime(fd, ns=(_mtime_ns(member, "atime"), _mtime_ns(member)))
