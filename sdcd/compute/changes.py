"""``docker diff`` and ``docker export`` on a node: pure, synchronous file-system walks.

Both functions block on disk I/O; callers run them in a thread (``deferToThread``).

``changes`` reports what dockerd reports. dockerd (overlay2 and containerd snapshotters
alike) compares the container's merged root with its image's merged root
(go-archive ``ChangesDirs``): an entry only in the container is added (1), with its whole
subtree; one only in the image is deleted (2), without its subtree; one in both is
modified (0) when mode, uid, gid, rdev or ``security.capability`` differ, or, for
non-directories, size or mtime. A directory with changes inside that is not itself
listed is listed as modified just before them. We get the same answer without mounting
anything: only paths present in the upper directory can differ, so we walk it and look
each entry up in the lower directories with overlay's own rules (whiteouts, opaque
directories). dockerd's order within a directory is Go map order (random) with
deletions last; ours is depth-first with names in byte order, deletions last.

``export_tar`` writes the tar dockerd's ``GET /containers/{id}/export`` writes
(go-archive ``Tar``): PAX, names relative without ``./`` and no entry for the root,
directories with a trailing ``/``, mtimes in whole seconds, no user or group names,
hard links as links to the first name, ``security.capability`` kept.

The upper directory and the mounted root can be changed by a running container while
we read them, so both walks go from directory descriptor to directory descriptor with
``O_NOFOLLOW``: a directory swapped for a symlink is never followed out of the root.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable, Collection
from pathlib import Path

MODIFIED, ADDED, DELETED = 0, 1, 2
OPAQUE_XATTR = "trusted.overlay.opaque"
CAPABILITY_XATTR = "security.capability"
#: Bytes handed to ``write`` at a time (tar headers and file data are coalesced).
CHUNK = 256 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_GONE = (FileNotFoundError, NotADirectoryError)


# -- docker diff


def changes(upper: Path, lowers: list[Path], skip: Collection[str] = ()) -> list[dict]:
    """The ``GET /containers/{id}/changes`` list for a container whose upper directory is
    ``upper`` over ``lowers`` (top-most first, as overlay's lowerdir; absolute, or
    relative to this process's cwd). ``skip`` names absolute paths left out with their
    subtrees: mount points the runtime made in the upper directory, which dockerd keeps
    in its init layer. Synchronous (run it in a thread); no upper directory, no changes."""
    try:
        fd = os.open(upper, _DIR_FLAGS)
    except _GONE:
        return []
    try:
        merged = not _is_opaque(fd)
        out = _diff_dir(fd, "", [Path(p) for p in lowers], merged, frozenset(skip))
    finally:
        os.close(fd)
    return [{"Path": path, "Kind": kind} for path, kind in out]


def _diff_dir(
    fd: int, rel: str, old_dirs: list[Path], merged: bool, skip: frozenset[str]
) -> list[tuple[str, int]]:
    """Changes under one directory of the upper tree. ``old_dirs`` are the lower
    directories the image's view of it merges; ``merged`` whether the container's view
    merges them too (not below an opaque directory)."""
    out: list[tuple[str, int]] = []
    present: set[str] = set()
    whiteouts: list[str] = []
    for name in _sorted_names(fd):
        path = f"{rel}/{name}"
        if path in skip:
            present.add(name)
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we walked
        if _is_whiteout(st):
            whiteouts.append(name)
            continue
        present.add(name)
        out.extend(_diff_entry(fd, name, path, st, old_dirs, merged, skip))
    if merged:
        gone = [n for n in whiteouts if _lookup(old_dirs, n)[0] is not None]
    else:
        gone = [n for n in _visible(old_dirs) if n not in present]
    out.extend((f"{rel}/{n}", DELETED) for n in sorted(gone, key=os.fsencode))
    return [c for c in out if c[0] not in skip]


def _diff_entry(
    fd: int,
    name: str,
    path: str,
    st: os.stat_result,
    old_dirs: list[Path],
    merged: bool,
    skip: frozenset[str],
) -> list[tuple[str, int]]:
    """The changes for one upper entry: its own, then its subtree's (a directory with
    changes inside that is not itself changed is listed as modified, as dockerd does)."""
    old, old_children = _lookup(old_dirs, name)
    if old is None:
        own: int | None = ADDED
    elif _differs(old, st, old_dirs, fd, name):
        own = MODIFIED
    else:
        own = None
    inner: list[tuple[str, int]] = []
    if stat.S_ISDIR(st.st_mode):
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            child = -1
        if child >= 0:
            try:
                if old is None or not stat.S_ISDIR(old.st_mode):
                    old_children = []
                keep = merged and not _is_opaque(child)
                inner = _diff_dir(child, path, old_children, keep, skip)
            finally:
                os.close(child)
    if own is not None:
        return [(path, own), *inner]
    return [(path, MODIFIED), *inner] if inner else []


def _lookup(dirs: list[Path], name: str) -> tuple[os.stat_result | None, list[Path]]:
    """``name``'s stat in the overlay of ``dirs`` (top-most first) and, for a directory,
    the directories of it that overlay merges: down to a whiteout, a non-directory or an
    opaque directory. Symlinks are never followed."""
    found: os.stat_result | None = None
    merged: list[Path] = []
    for d in dirs:
        p = d / name
        try:
            st = os.lstat(p)
        except _GONE:
            continue
        if found is None:
            if _is_whiteout(st):
                return None, []
            found = st
            if not stat.S_ISDIR(st.st_mode):
                return found, []
        elif not stat.S_ISDIR(st.st_mode):
            break
        merged.append(p)
        if _is_opaque_path(p):
            break
    return found, merged


def _visible(dirs: list[Path]) -> list[str]:
    """The names the overlay of ``dirs`` shows (whiteouts hide lower names)."""
    seen: set[str] = set()
    shown: list[str] = []
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except _GONE:
            continue
        for entry in entries:
            if entry.name in seen:
                continue
            seen.add(entry.name)
            if not _is_whiteout(entry.stat(follow_symlinks=False)):
                shown.append(entry.name)
    return shown


def _differs(
    old: os.stat_result, new: os.stat_result, old_dirs: list[Path], fd: int, name: str
) -> bool:
    """go-archive's statDifferent plus its security.capability comparison."""
    if (old.st_mode, old.st_uid, old.st_gid, old.st_rdev) != (
        new.st_mode,
        new.st_uid,
        new.st_gid,
        new.st_rdev,
    ):
        return True
    if not stat.S_ISDIR(old.st_mode) and (
        old.st_size != new.st_size or not _same_time(old.st_mtime_ns, new.st_mtime_ns)
    ):
        return True
    old_path = next((d / name for d in old_dirs if _exists(d / name)), None)
    old_cap = _xattr(old_path, CAPABILITY_XATTR) if old_path else None
    return old_cap != _xattr(f"/proc/self/fd/{fd}/{name}", CAPABILITY_XATTR)


def _same_time(a: int, b: int) -> bool:
    """Equal, or the same second with one side truncated to it (tar has whole seconds)."""
    return a == b or (a // 10**9 == b // 10**9 and (a % 10**9 == 0 or b % 10**9 == 0))


def _exists(p: Path) -> bool:
    try:
        os.lstat(p)
    except _GONE:
        return False
    return True


def _xattr(path: Path | str | int, key: str) -> bytes | None:
    """An extended attribute of a path's last component (never followed) or an fd."""
    try:
        if isinstance(path, int):
            return os.getxattr(path, key)
        return os.getxattr(path, key, follow_symlinks=False)
    except OSError:
        return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _is_opaque_path(p: Path) -> bool:
    return _xattr(p, OPAQUE_XATTR) == b"y"


def _sorted_names(fd: int) -> list[str]:
    """A directory's names in byte order (Go's order), read through its descriptor."""
    return sorted(os.listdir(fd), key=os.fsencode)


# -- docker export


class _Sink(io.RawIOBase):
    """The raw end of the buffered writer: hands each chunk, as bytes, to ``write``."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._offset = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """tarfile asks where the archive starts."""
        return self._offset

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self._write(data)
        self._offset += len(data)
        return len(data)


class _Exactly(io.RawIOBase):
    """At most ``size`` bytes of a file, padded with NULs if it shrank meanwhile (as
    GNU tar does): the header already promised ``size``."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd, self._left = fd, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = bytearray()
        while self._fd >= 0 and len(data) < n:
            try:
                piece = os.read(self._fd, n - len(data))
            except OSError:
                piece = b""
            if not piece:
                self._fd = -1
            data += piece
        data += bytes(n - len(data))
        self._left -= n
        return bytes(data)


def export_tar(rootfs: Path, write: Callable[[bytes], None]) -> None:
    """Write the tar of ``rootfs`` (a container's mounted root) to ``write``, in chunks of
    about CHUNK bytes. Synchronous (run it in a thread); memory stays bounded whatever
    the file sizes. Entries that vanish while we walk are left out."""
    tar, sink = _tar_writer(write)
    fd = os.open(rootfs, _DIR_FLAGS)
    try:
        _export_dir(tar, fd, "", {})
    finally:
        os.close(fd)
    tar.close()
    sink.flush()


def _tar_writer(write: Callable[[bytes], None]) -> tuple[tarfile.TarFile, io.BufferedWriter]:
    """A PAX tar writer whose bytes go to ``write`` in chunks of about CHUNK."""
    sink = io.BufferedWriter(_Sink(write), buffer_size=CHUNK)
    tar = tarfile.TarFile(
        fileobj=sink,
        mode="w",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
        copybufsize=CHUNK,
    )
    return tar, sink


def layer_tar(upper: Path, write: Callable[[bytes], None], skip: Collection[str] = ()) -> None:
    """The image layer ``docker commit`` makes of a container: its upper directory as a
    tar, overlay's whiteouts (0/0 character devices) as ``.wh.<name>`` files and opaque
    directories with a ``.wh..wh..opq`` entry, leaving out ``skip`` (absolute paths: the
    mount points the runtime made). Synchronous; chunks as ``export_tar``."""
    tar, sink = _tar_writer(write)
    fd = os.open(upper, _DIR_FLAGS)
    try:
        _export_dir(tar, fd, "", {}, layer={p.strip("/") for p in skip})
    finally:
        os.close(fd)
    tar.close()
    sink.flush()


def _export_dir(
    tar: tarfile.TarFile, fd: int, prefix: str, links: dict, layer: set | None = None
) -> None:
    """Add a directory's entries, each directory followed by its contents (Go's
    WalkDir order). ``layer`` (the paths to skip) makes an image layer of an upper
    directory: whiteouts and opaque directories in the image-layer form."""
    for name in _sorted_names(fd):
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = prefix + name
        if layer is not None:
            if path in layer:
                continue
            if _is_whiteout(st):
                info = _header(prefix + ".wh." + name, st)
                info.type, info.size, info.devmajor, info.devminor = tarfile.REGTYPE, 0, 0, 0
                tar.addfile(info)
                continue
        if stat.S_ISDIR(st.st_mode):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                tar.addfile(_header(path, st))
                if layer is not None and _is_opaque(child):
                    opaque = _header(path + "/.wh..wh..opq", st)
                    opaque.type, opaque.size = tarfile.REGTYPE, 0
                    tar.addfile(opaque)
                _export_dir(tar, child, path + "/", links, layer)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            _export_file(tar, fd, name, path, st, links)
        elif not stat.S_ISSOCK(st.st_mode):
            info = _header(path, st)
            if stat.S_ISLNK(st.st_mode):
                try:
                    info.linkname = os.readlink(name, dir_fd=fd)
                except OSError:
                    continue
            tar.addfile(info)


def _export_file(
    tar: tarfile.TarFile, fd: int, name: str, path: str, st: os.stat_result, links: dict
) -> None:
    """A regular file, or a hard link to one already written."""
    info = _header(path, st)
    if st.st_nlink > 1:
        first = links.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
            tar.addfile(info)
            return
    try:
        f = os.open(name, _FILE_FLAGS, dir_fd=fd)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(f).st_mode):
            os.close(f)
            f = -1  # swapped for something else: keep the promised size, as NULs
        else:
            cap = _xattr(f, CAPABILITY_XATTR)
            if cap is not None:
                info.pax_headers = {
                    "SCHILY.xattr." + CAPABILITY_XATTR: cap.decode("utf-8", "surrogateescape")
                }
        tar.addfile(info, _Exactly(f, info.size))
    finally:
        if f >= 0:
            os.close(f)


def _header(path: str, st: os.stat_result) -> tarfile.TarInfo:
    """go-archive's header: numeric ids only, mtime in whole seconds."""
    info = tarfile.TarInfo(path)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = st.st_mtime_ns // 10**9
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    else:
        info.size = st.st_size
    return info


__all__ = ["ADDED", "DELETED", "MODIFIED", "changes", "export_tar", "layer_tar"]
