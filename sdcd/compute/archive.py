"""``docker cp`` on a node: ``GET|HEAD|PUT /containers/{id}/archive`` as pure,
synchronous functions over a container's mounted root (run them in a thread).

The container may be running and owned by a hostile tenant who can swap any directory
for a symlink while we work. So nothing here ever hands a path string to the kernel
below the root: every lookup goes from directory descriptor to directory descriptor
with ``O_NOFOLLOW``, symlinks are read with ``readlink`` on a descriptor and resolved
by us, in scope (absolute targets start again at the root, ``..`` stops at it).

dockerd's behaviour we follow (moby ``daemon/archive_unix.go``, ``containerfs_linux.go``,
go-archive ``copy.go``/``archive.go``):

- the path is cleaned as ``filepath.Join("/", path)`` keeping a trailing ``/`` or
  ``/.``; everything but the last component is resolved; the last one is followed
  only when the path asserts a directory (trailing ``/`` or ``/.``), as ``lstat`` does;
- ``X-Docker-Container-Path-Stat``: ``name`` is ``filepath.Base`` of that path (``/``
  for the root, ``.`` for ``dir/.``), ``mode`` Go's ``os.FileMode``, ``linkTarget``
  the symlink fully resolved in scope;
- GET of a directory gives ``<base>/`` then ``<base>/...``; of ``dir/.`` gives ``./``
  and ``./...``; of ``/`` gives ``/`` and ``/bin``...; of anything else one entry;
- PUT resolves the destination fully (last symlink too); it must be a directory.

Stricter than dockerd on extraction (on purpose): every header is checked before
anything is written (the tar is spooled to a temporary file); absolute names, ``..``
escapes, hard links to anything but an earlier entry of the same tar, device nodes,
and paths through a symlink (one in the tar or one already in the container) are
refused.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from sdcd.compute.changes import (
    _DIR_FLAGS,
    CHUNK,
    _export_dir,
    _export_file,
    _header,
    _tar_writer,
)

MAX_LINKS = 40

# Go os.FileMode type bits (io/fs).
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_GO_DEVICE = 1 << 26
_GO_PIPE = 1 << 25
_GO_SOCKET = 1 << 24
_GO_SETUID = 1 << 23
_GO_SETGID = 1 << 22
_GO_CHARDEV = 1 << 21
_GO_STICKY = 1 << 20

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(Exception):
    """A request dockerd answers with an error: ``kind`` is ``"not_found"`` (404) or
    ``"invalid"`` (400)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.message, self.kind = message, kind


# -- path resolution


def container_path(path: str) -> str:
    """dockerd's absolute form of a request path: cleaned, rooted, with a trailing
    ``/`` or ``/.`` kept (go-archive ``PreserveTrailingDotOrSeparator``)."""
    clean = posixpath.normpath("/" + path.lstrip("/"))
    if (path == "." or path.endswith("/.")) and clean != "/":
        return clean + "/."
    if path == "." or path.endswith("/."):
        return "/."
    if path.endswith("/") and clean != "/":
        return clean + "/"
    return clean


def _base(abs_path: str) -> str:
    """Go's ``filepath.Base``."""
    stripped = abs_path.rstrip("/")
    return posixpath.basename(stripped) if stripped else "/"


def _asserts_dir(abs_path: str) -> bool:
    return abs_path.endswith("/") or _base(abs_path) == "."


def _parts(path: str) -> list[str]:
    """A path's components, reversed (for ``pop``), lexically cleaned."""
    return [p for p in reversed(posixpath.normpath(path).split("/")) if p not in ("", ".")]


def _walk(
    root: Path, path: str, follow_last: bool, lenient: bool = False
) -> tuple[list[int], list[str], str]:
    """Resolve ``path`` inside ``root``: the stack of open directory descriptors from
    the root to the parent, their names, and the final name (``"."`` when the path
    ends on a directory reached by ``..`` or a symlink). ``lenient`` (for a link's
    target) continues lexically past a missing component instead of raising."""
    fds = [os.open(root, _DIR_FLAGS)]
    names: list[str] = []
    todo = _parts(path)
    links = 0
    try:
        while todo:
            part = todo.pop()
            if part == "..":
                if len(fds) > 1:
                    os.close(fds.pop())
                    names.pop()
                continue
            last = not todo
            if last and not (follow_last and _is_link(fds[-1], part)):
                return fds, names, part
            if not last:
                try:
                    fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
                    names.append(part)
                    continue
                except FileNotFoundError:
                    if not lenient:
                        raise
                    rest = posixpath.normpath("/".join([*names, part, *reversed(todo)]))
                    return fds, [p for p in rest.split("/")[:-1] if p], _basename(rest)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    if not _is_link(fds[-1], part):
                        raise ArchiveError(f"{part}: not a directory", "not_found") from e
            links += 1
            if links > MAX_LINKS:
                raise ArchiveError(f"{path}: too many levels of symbolic links", "invalid")
            try:
                target = os.readlink(part, dir_fd=fds[-1])
            except OSError:
                todo.append(part)  # swapped meanwhile: look again (counts as a link)
                continue
            if target.startswith("/"):
                while len(fds) > 1:
                    os.close(fds.pop())
                names.clear()
            todo.extend(_parts(target))
        return fds, names, "."
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _basename(p: str) -> str:
    return posixpath.basename(p) or "."


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def resolve(root: Path, path: str, follow_last: bool = True) -> tuple[int, str]:
    """Resolve a container ``path`` inside ``root`` as if ``root`` were ``/``: the open
    descriptor of the parent directory (the caller closes it) and the final name,
    ``"."`` when the path names that directory itself. Symlinks are followed component
    by component (at most MAX_LINKS), the last one only if ``follow_last``. Raises
    FileNotFoundError for a missing directory on the way, ArchiveError otherwise."""
    fds, _, final = _walk(root, path, follow_last)
    for fd in fds[:-1]:
        os.close(fd)
    return fds[-1], final


def _lstat_at(root: Path, abs_path: str) -> tuple[int, str, os.stat_result]:
    """The parent descriptor, final name and ``lstat`` of a request path, with
    dockerd's errors."""
    try:
        fd, name = resolve(root, abs_path, follow_last=_asserts_dir(abs_path))
    except FileNotFoundError as e:
        raise ArchiveError(f"Could not find the file {abs_path}", "not_found") from e
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError as e:
        os.close(fd)
        raise ArchiveError(f"Could not find the file {abs_path}", "not_found") from e
    except BaseException:
        os.close(fd)
        raise
    if _asserts_dir(abs_path) and not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise ArchiveError(f"{abs_path}: not a directory", "invalid")
    return fd, name, st


# -- stat


def go_file_mode(mode: int) -> int:
    """A Unix ``st_mode`` as Go's ``os.FileMode`` (what dockerd's JSON carries)."""
    out = stat.S_IMODE(mode) & 0o777
    fmt = stat.S_IFMT(mode)
    out |= {
        stat.S_IFDIR: _GO_DIR,
        stat.S_IFLNK: _GO_SYMLINK,
        stat.S_IFBLK: _GO_DEVICE,
        stat.S_IFCHR: _GO_DEVICE | _GO_CHARDEV,
        stat.S_IFIFO: _GO_PIPE,
        stat.S_IFSOCK: _GO_SOCKET,
    }.get(fmt, 0)
    for bit, go in ((stat.S_ISUID, _GO_SETUID), (stat.S_ISGID, _GO_SETGID)):
        if mode & bit:
            out |= go
    if mode & stat.S_ISVTX:
        out |= _GO_STICKY
    return out


def rfc3339(ns: int) -> str:
    """Go's ``time.Time`` JSON (RFC 3339 with trimmed nanoseconds), in UTC."""
    secs, frac = divmod(ns, 10**9)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def stat_path(root: Path, path: str) -> dict:
    """The ``X-Docker-Container-Path-Stat`` object for ``path`` (the caller
    base64-encodes its JSON). Raises ArchiveError."""
    abs_path = container_path(path)
    fd, _, st = _lstat_at(root, abs_path)
    os.close(fd)
    target = ""
    if stat.S_ISLNK(st.st_mode):
        fds, names, final = _walk(root, abs_path, follow_last=True, lenient=True)
        for d in fds:
            os.close(d)
        target = "/" + "/".join(names + ([] if final == "." else [final]))
    return {
        "name": _base(abs_path),
        "size": st.st_size,
        "mode": go_file_mode(st.st_mode),
        "mtime": rfc3339(st.st_mtime_ns),
        "linkTarget": target,
    }


# -- GET archive


def read_tar(root: Path, path: str, write: Callable[[bytes], None]) -> None:
    """Write the tar ``docker cp <c>:<path> -`` receives to ``write`` in chunks of about
    CHUNK bytes: a directory as ``<base>/`` and its tree, anything else as one entry;
    symlinks below the top are never followed. Raises ArchiveError before writing."""
    abs_path = container_path(path)
    fd, name, st = _lstat_at(root, abs_path)
    try:
        base = _base(abs_path)
        top = "" if base == "/" else base
        if stat.S_ISDIR(st.st_mode):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError as e:
                raise ArchiveError(f"Could not find the file {abs_path}", "not_found") from e
            except OSError as e:
                raise ArchiveError(f"{abs_path}: changed while read", "invalid") from e
            tar, sink = _tar_writer(write)
            try:
                tar.addfile(_header(top, os.fstat(child)))
                _export_dir(tar, child, top + "/", {})
            finally:
                os.close(child)
        else:
            tar, sink = _tar_writer(write)
            _add_single(tar, fd, name, top, st)
        tar.close()
        sink.flush()
    finally:
        os.close(fd)


def _add_single(tar: tarfile.TarFile, fd: int, name: str, top: str, st: os.stat_result) -> None:
    """One non-directory entry named ``top``."""
    if stat.S_ISREG(st.st_mode):
        _export_file(tar, fd, name, top, st, {})
        return
    info = _header(top, st)
    if stat.S_ISLNK(st.st_mode):
        info.linkname = os.readlink(name, dir_fd=fd)
    tar.addfile(info)


# -- PUT archive


_ALLOWED = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.LNKTYPE: "file",
    tarfile.FIFOTYPE: "file",
    tarfile.SYMTYPE: "link",
    tarfile.DIRTYPE: "dir",
}


def write_tar(
    root: Path, path: str, read: Callable[[int], bytes], no_overwrite_dir_non_dir: bool
) -> None:
    """Extract the tar read from ``read`` (``b""`` at its end) into the directory
    ``path`` of the container, keeping modes, owners and mtimes. Every header is
    checked before anything is written; ArchiveError (nothing written) for a
    destination that is missing or not a directory, and for an entry that is absolute,
    escapes with ``..``, hard-links outside the tar, is a device, goes through a
    symlink, or (with ``no_overwrite_dir_non_dir``) replaces a directory by a
    non-directory or the reverse."""
    abs_path = container_path(path)
    try:
        fd, name = resolve(root, abs_path, follow_last=True)
    except FileNotFoundError as e:
        raise ArchiveError(f"Could not find the file {abs_path}", "not_found") from e
    try:
        dest = os.open(name, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError as e:
        raise ArchiveError(f"Could not find the file {abs_path}", "not_found") from e
    except OSError as e:
        raise ArchiveError("extraction point is not a directory", "invalid") from e
    finally:
        os.close(fd)
    try:
        with _spooled(read) as spool:
            with _open_tar(spool, headers_only=True) as tar:
                _check(tar, dest, no_overwrite_dir_non_dir)
            spool.seek(0)
            with _open_tar(spool) as tar:
                _Extractor(tar, dest, no_overwrite_dir_non_dir).run()
    finally:
        os.close(dest)


@contextlib.contextmanager
def _spooled(read: Callable[[int], bytes]) -> Iterator[IO[bytes]]:
    """The tar in a seekable file: the caller's own file when ``read`` is a regular
    file's ``read`` (the API host's request body is one already), else a copy."""
    source = getattr(read, "__self__", None)
    if source is not None and _is_regular_file(source):
        source.seek(0)
        yield source
        return
    with tempfile.TemporaryFile() as spool:
        while chunk := read(CHUNK):
            spool.write(chunk)
        spool.seek(0)
        yield spool


def _is_regular_file(f) -> bool:
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode) and f.seekable()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _open_tar(spool: IO[bytes], headers_only: bool = False) -> tarfile.TarFile:
    """Streamed for extraction; for the check pass of a plain tar, random access, so
    that file contents are seeked over rather than read."""
    mode = "r:" if headers_only and _plain_tar(spool) else "r|*"
    try:
        return tarfile.open(fileobj=spool, mode=mode, encoding="utf-8", errors="surrogateescape")
    except tarfile.TarError as e:
        raise ArchiveError(f"invalid tar archive: {e}", "invalid") from e


def _plain_tar(spool: IO[bytes]) -> bool:
    """Not compressed (gzip, bzip2, xz, zstd magic): it can be read by seeking."""
    head = spool.read(6)
    spool.seek(0)
    return not head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd"))


def _entry_name(name: str, what: str = "entry") -> str:
    """An entry's name relative to the destination, or ArchiveError."""
    if name.startswith("/"):
        raise ArchiveError(f"invalid {what} name {name!r}: absolute", "invalid")
    clean = posixpath.normpath(name) if name else "."
    if clean == ".." or clean.startswith("../"):
        raise ArchiveError(f"invalid {what} name {name!r}: outside the destination", "invalid")
    return clean


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The tar's members, with read errors as ArchiveError."""
    try:
        yield from tar
    except tarfile.TarError as e:
        raise ArchiveError(f"invalid tar archive: {e}", "invalid") from e


def _check(tar: tarfile.TarFile, dest: int, no_overwrite: bool) -> None:
    """Pass one: refuse the whole tar for any bad entry, against the container's
    current state and what earlier entries will have made."""
    planned: dict[str, str] = {".": "dir"}
    cache: dict[str, str | None] = {}

    def kind(p: str) -> str | None:
        if p in planned:
            return planned[p]
        if p not in cache:
            cache[p] = _existing_kind(dest, p)
        return cache[p]

    for m in _members(tar):
        name = _entry_name(m.name)
        typ = _ALLOWED.get(m.type)
        if typ is None:
            what = "device" if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else "unsupported"
            raise ArchiveError(f"{m.name}: {what} entries are not accepted", "invalid")
        if name == "." and typ != "dir":
            raise ArchiveError(f"{m.name}: cannot replace the destination", "invalid")
        parts = name.split("/") if name != "." else []
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            k = kind(parent)
            if k == "link":
                raise ArchiveError(f"{m.name}: path goes through a symlink", "invalid")
            if k not in (None, "dir"):
                raise ArchiveError(f"{m.name}: {parent} is not a directory", "invalid")
            planned[parent] = "dir"
        existing = kind(name)
        if no_overwrite and existing == "dir" and typ != "dir":
            raise ArchiveError(f"cannot overwrite directory {name!r} with non-directory", "invalid")
        if no_overwrite and existing not in (None, "dir") and typ == "dir":
            raise ArchiveError(f"cannot overwrite non-directory {name!r} with directory", "invalid")
        if m.type == tarfile.LNKTYPE:
            target = _entry_name(m.linkname, "hard link target")
            if planned.get(target) != "file" or target == name:
                raise ArchiveError(
                    f"{m.name}: hard link target {m.linkname!r} is not in the archive", "invalid"
                )
        planned[name] = typ


def _existing_kind(dest: int, rel: str) -> str | None:
    """What the container has at ``rel`` below ``dest``: "dir", "link", "file" (any
    other non-directory), "blocked" (a non-directory or symlink on the way) or None."""
    parts = rel.split("/")
    fds: list[int] = []
    try:
        cur = dest
        for part in parts[:-1]:
            try:
                cur = os.open(part, _DIR_FLAGS, dir_fd=cur)
            except FileNotFoundError:
                return None
            except OSError:
                return "blocked"
            fds.append(cur)
        try:
            st = os.stat(parts[-1], dir_fd=cur, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        return "link" if stat.S_ISLNK(st.st_mode) else "file"
    finally:
        for fd in fds:
            os.close(fd)


class _Extractor:
    """Pass two: create each entry through directory descriptors, never following a
    symlink; directory metadata is applied last (so their mtimes stick)."""

    def __init__(self, tar: tarfile.TarFile, dest: int, no_overwrite: bool) -> None:
        self.tar, self.dest, self.no_overwrite = tar, dest, no_overwrite
        self.dirs: list[tarfile.TarInfo] = []
        self._cached: tuple[str, int] | None = None

    def run(self) -> None:
        try:
            for m in _members(self.tar):
                name = _entry_name(m.name)
                if name == ".":
                    self.dirs.append(m)
                    continue
                parent, _, base = name.rpartition("/")
                pfd = self._parent(parent)
                self._extract(m, pfd, base)
            for m in reversed(self.dirs):
                self._dir_metadata(m)
        finally:
            self._drop_cache()

    def _parent(self, rel: str) -> int:
        """The descriptor of directory ``rel`` below dest, made (0755) if missing."""
        if self._cached and self._cached[0] == rel:
            return self._cached[1]
        self._drop_cache()
        fd = self._open_dir(rel, create=True)
        self._cached = (rel, fd)
        return fd

    def _drop_cache(self) -> None:
        if self._cached:
            if self._cached[1] != self.dest:
                os.close(self._cached[1])
            self._cached = None

    def _open_dir(self, rel: str, create: bool) -> int:
        cur = self.dest
        for part in rel.split("/") if rel not in ("", ".") else []:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=cur)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=cur)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=cur)
            except OSError as e:
                raise ArchiveError(f"{rel}: not a directory (or a symlink)", "invalid") from e
            finally:
                if cur != self.dest:
                    os.close(cur)
            cur = nxt
        return cur

    def _extract(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        self._clear(pfd, base, m.isdir(), m.name)
        if m.isdir():
            with contextlib.suppress(FileExistsError):
                os.mkdir(base, 0o700, dir_fd=pfd)
            self.dirs.append(m)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            _set_times(base, pfd, m.mtime)
        elif m.islnk():
            target = _entry_name(m.linkname)
            tparent, _, tbase = target.rpartition("/")
            tfd = self._open_dir(tparent, create=False)
            try:
                os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                if tfd != self.dest:
                    os.close(tfd)
        elif m.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
            fd = os.open(base, _PATH_FLAGS, dir_fd=pfd)
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    proc = f"/proc/self/fd/{fd}"
                    os.chown(proc, m.uid, m.gid)
                    os.chmod(proc, m.mode & 0o7777)
            finally:
                os.close(fd)
            _set_times(base, pfd, m.mtime)
        else:
            self._file(m, pfd, base)

    def _clear(self, pfd: int, base: str, want_dir: bool, what: str) -> None:
        """Make room for an entry: an existing directory stays for a directory entry;
        anything else there is removed (refused with ``no_overwrite`` for a change
        between directory and non-directory)."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and want_dir:
            return
        if self.no_overwrite and is_dir != want_dir:
            raise ArchiveError(f"cannot overwrite {base!r} with {what!r}", "invalid")
        if is_dir:
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)

    def _file(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        src = self.tar.extractfile(m)
        fd = os.open(base, _NEW_FILE, 0o600, dir_fd=pfd)
        try:
            if src is not None:
                while chunk := src.read(CHUNK):
                    _write_all(fd, chunk)
            os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)
            os.utime(fd, ns=(int(m.mtime) * 10**9,) * 2)
        finally:
            os.close(fd)

    def _dir_metadata(self, m: tarfile.TarInfo) -> None:
        name = _entry_name(m.name)
        fd = self._open_dir(name, create=False) if name != "." else os.dup(self.dest)
        try:
            os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)
            os.utime(fd, ns=(int(m.mtime) * 10**9,) * 2)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _set_times(name: str, dir_fd: int, mtime: float) -> None:
    ns = int(mtime) * 10**9
    os.utime(name, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=False)


__all__ = [
    "ArchiveError",
    "container_path",
    "go_file_mode",
    "read_tar",
    "resolve",
    "stat_path",
    "write_tar",
]
