"""A ``docker build`` context on the API host: the client's tar extracted safely, the
Dockerfile read from it, COPY/ADD sources matched and hashed for the cache, and the tar a
COPY puts into a build container (the node extracts it as it does ``docker cp``'s).

Synchronous and blocking: call from a thread. The context is the tenant's: nothing in
it is trusted; symlinks are kept as symlinks and resolved by us, inside the root
(dockerd's ``FollowSymlinkInScope``), never by the kernel during extraction.
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024
MAX_DOCKERFILE = 1024 * 1024
MAX_LINKS = 255
_WILDCARD = set("*?[")


class ContextError(Exception):
    """The context or a COPY cannot be used; ``message`` in dockerd's words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BuildContext:
    """A directory holding a build context (or files fetched for ``COPY --from``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_dir(cls, root: Path) -> BuildContext:
        return cls(root)

    @classmethod
    def extract(cls, source: BinaryIO, dest: Path, max_bytes: int) -> BuildContext:
        """The client's tar (plain or compressed) into ``dest``: names are checked, no
        write goes through a symlink, device nodes are skipped, owners are root."""
        dest.mkdir(parents=True, exist_ok=True)
        context = cls(dest)
        context.add_tar(source, ".", max_bytes)
        return context

    def add_tar(self, source: BinaryIO, under: str, max_bytes: int) -> None:
        """Extract a tar below ``under`` (``COPY --from``'s fetched paths go where they
        were in the image), with the same checks: a path through a symlink, even one an
        earlier tar put here, is refused, never followed."""
        base = _clean(under)
        if base is None:
            raise ContextError(f"invalid path: {under}")
        total = 0
        try:
            with tarfile.open(fileobj=_Padded(_decompressed(source)), mode="r|") as tar:
                for member in tar:
                    total += member.size
                    if total > max_bytes:
                        raise ContextError(
                            f"build context is larger than the limit of {max_bytes} bytes"
                        )
                    _extract_member(tar, _below(member, base), self.root)
        except tarfile.TarError as e:
            raise ContextError(f"invalid build context: {e}") from None

    # -- the Dockerfile ------------------------------------------------------------------

    def dockerfile(self, name: str) -> str:
        """The Dockerfile's text (``dockerfile`` when the default name is missing)."""
        names = [name, "dockerfile"] if name == "Dockerfile" else [name]
        for candidate in names:
            rel = _clean(candidate)
            if rel is None:
                break
            path = self.resolve(rel)
            if path is not None and path.is_file():
                if path.stat().st_size > MAX_DOCKERFILE:
                    raise ContextError(f"the Dockerfile ({name}) is larger than 1 MiB")
                text = path.read_text(encoding="utf-8", errors="replace")
                self._drop_ignored((rel, ".dockerignore"))
                return text
        raise ContextError(f"Cannot locate specified Dockerfile: {name}")

    def _drop_ignored(self, names: tuple[str, ...]) -> None:
        """The CLI always sends the Dockerfile and .dockerignore; dockerd then removes
        them when .dockerignore excludes them, so that ``COPY .`` (and its cache key)
        does not see them. The same here."""
        ignore = self.root / ".dockerignore"
        if ignore.is_symlink() or not ignore.is_file():
            return
        patterns = ignore.read_text(encoding="utf-8", errors="replace").splitlines()
        for name in names:
            path = self.root / name
            if (
                "/" not in name
                and (path.is_file() or path.is_symlink())
                and ignored(name, patterns)
            ):
                path.unlink()

    # -- sources ---------------------------------------------------------------------

    def resolve(self, rel: str) -> Path | None:
        """``rel`` with every symlink followed inside the root; None if it escapes
        nothing but does not exist (a missing component)."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            path = self.root.joinpath(*done, part)
            try:
                st = os.lstat(path)
            except OSError:  # missing, below a file, name too long...
                return None
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise ContextError(f"too many links in {rel}")
                target = os.readlink(path)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            done.append(part)
        return self.root.joinpath(*done)

    def sources(self, patterns: list[str], command: str = "COPY") -> list[str]:
        """Each pattern's matches (relative to the root, sorted per pattern as Go's
        ``filepath.Glob``); a pattern that matches nothing is an error."""
        found: list[str] = []
        for pattern in patterns:
            rel = _clean(pattern)
            if rel is None:
                raise ContextError(
                    f"{command} failed: forbidden path outside the build context: {pattern} ()"
                )
            if _WILDCARD & set(rel):
                matches = self._glob(rel)
                if not matches:
                    raise ContextError(f"{command} failed: no source files were specified")
                found.extend(matches)
            elif self.resolve(rel) is None:
                raise ContextError(
                    f"{command} failed: file not found in build context or excluded by "
                    f".dockerignore: stat {pattern}: file does not exist"
                )
            else:
                found.append(rel)
        return found

    def _glob(self, rel: str) -> list[str]:
        candidates = [""]
        for part in rel.split("/"):
            nxt = []
            for base in candidates:
                if not _WILDCARD & set(part):
                    nxt.append(posixpath.join(base, part) if base else part)
                    continue
                directory = self.resolve(base) if base else self.root
                if directory is None or not directory.is_dir():
                    continue
                pattern = _go_pattern(part)
                for name in sorted(os.listdir(directory)):
                    if fnmatch.fnmatchcase(name, pattern):
                        nxt.append(posixpath.join(base, name) if base else name)
            candidates = nxt
        return [c for c in candidates if self.resolve(c) is not None]

    def checksum(self, sources: list[str]) -> str:
        """What the cache compares for COPY/ADD: names, contents, mode bits and link
        targets (not times or owners: the CLI's re-sent context hits the cache)."""
        digest = hashlib.sha256()
        kinds = []
        for rel in sources:
            path = self.resolve(rel)
            if path is None:
                raise ContextError(f"file not found in build context: {rel}")
            kinds.append("dir" if path.is_dir() else "file")
            digest.update(f"source {rel}\0".encode())
            for name, full in _walk(path):
                _hash_entry(digest, name, full)
        prefix = kinds[0] if len(kinds) == 1 else "multi"
        return f"{prefix}:{digest.hexdigest()}"

    # -- the tar for the container ---------------------------------------------------

    def write_copy_tar(
        self,
        sources: list[str],
        dest: str,
        out: BinaryIO,
        *,
        uid: int = 0,
        gid: int = 0,
        extract_archives: bool = False,
        chmod: int | None = None,
        dest_is_dir_hint: bool = False,
    ) -> None:
        """The tar that, extracted at the container's ``/``, performs ``COPY sources dest``.
        ``dest`` is absolute; ``dest_is_dir_hint`` says it is a directory in the image
        already. Missing parents are made by the node's extraction (0755)."""
        resolved = []
        for rel in sources:
            path = self.resolve(rel)
            if path is None:
                raise ContextError(f"file not found in build context: {rel}")
            resolved.append((rel, path))
        into_dir = (
            dest.endswith("/")
            or len(resolved) > 1
            or dest_is_dir_hint
            or any(p.is_dir() for _, p in resolved)
        )
        target = dest.strip("/")
        writer = _TarWriter(out, uid, gid, chmod)
        if into_dir and target and not dest_is_dir_hint:
            writer.directory(target, 0o755)
        for rel, path in resolved:
            if path.is_dir():
                for name, full in _walk(path):
                    if name:
                        writer.add(posixpath.join(target, name), full)
            elif extract_archives and _is_archive(path):
                writer.unpack(path, target)
            else:
                base = posixpath.basename(rel.rstrip("/")) or path.name
                name = posixpath.join(target, base) if into_dir else target
                writer.add(name, path, follow=True)
        writer.close()


def ignored(name: str, patterns: list[str]) -> bool:
    """Whether a top-level ``name`` is excluded by .dockerignore ``patterns`` (the last
    matching line decides; ``!`` lines re-include; ``**/`` matches any depth)."""
    excluded = False
    for line in patterns:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        while pattern.startswith("**/"):
            pattern = pattern[3:]
        if fnmatch.fnmatchcase(name, _go_pattern(pattern)) or pattern == "**":
            excluded = not negate
    return excluded


def first_file_text(tar: BinaryIO, limit: int = 4 * 1024 * 1024) -> str | None:
    """The text of the first regular file in a tar (``docker cp`` of one file, such as
    an image's /etc/passwd for ``--chown`` names); None if there is none this small."""
    with tarfile.open(fileobj=tar, mode="r|") as archive:
        for member in archive:
            if member.isfile() and member.size <= limit:
                data = archive.extractfile(member)
                return data.read().decode("utf-8", "replace") if data else None
    return None


def parse_chown(spec: str, passwd: str | None, group: str | None) -> tuple[int, int]:
    """``--chown=user[:group]``: ids, or names looked up in the image's /etc/passwd and
    /etc/group; a user alone gets the group of its name (else its primary group; a
    numeric one: the same id)."""
    user, _, grp = spec.partition(":")
    if not user:
        raise ContextError(f"unable to convert uid/gid chown string to host mapping: {spec}")
    if user.isdigit():
        uid, primary = int(user), int(user)
    else:
        entry = _lookup(passwd, user)
        if entry is None:
            raise ContextError(
                "unable to convert uid/gid chown string to host mapping: can't find uid for "
                f"user {user}: no such user: {user}"
            )
        uid, primary = int(entry[2]), int(entry[3])
    if not grp:
        # dockerd looks for a group of the user's name; without one, its primary group
        same = None if user.isdigit() else _lookup(group, user)
        return uid, int(same[2]) if same else primary
    if grp.isdigit():
        return uid, int(grp)
    entry = _lookup(group, grp)
    if entry is None:
        raise ContextError(
            "unable to convert uid/gid chown string to host mapping: can't find gid for "
            f"group {grp}: no such group: {grp}"
        )
    return uid, int(entry[2])


def _lookup(text: str | None, name: str) -> list[str] | None:
    for line in (text or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            if len(fields) < 4 or not fields[3].isdigit():
                fields = [*fields[:3], fields[2]]
            return fields
    return None


# -- helpers ---------------------------------------------------------------------------


def _clean(name: str) -> str | None:
    """A context-relative path, or None when it leaves the context."""
    rel = posixpath.normpath("/" + name.strip()).lstrip("/")
    if name.strip().startswith("..") or rel.startswith(".."):
        return None
    return rel or "."


def _go_pattern(part: str) -> str:
    """Go's ``[^...]`` is fnmatch's ``[!...]``."""
    return part.replace("[^", "[!")


def _walk(path: Path):
    """(relative name, full path) of ``path`` and everything below it, sorted;
    symlinks below it are entries, not followed."""
    if not path.is_dir():
        yield "", path
        return
    yield "", path
    for directory, dirs, files in os.walk(path):
        dirs.sort()
        base = Path(directory)
        for name in sorted(dirs + files):
            full = base / name
            yield str(full.relative_to(path)), full


def _hash_entry(digest, name: str, full: Path) -> None:
    st = os.lstat(full) if name else os.stat(full)
    kind = stat.S_IFMT(st.st_mode)
    digest.update(f"{name}\0{kind:o}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
    if stat.S_ISLNK(st.st_mode):
        digest.update(os.readlink(full).encode() + b"\0")
    elif stat.S_ISREG(st.st_mode):
        with open(full, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        digest.update(b"\0")


def _is_archive(path: Path) -> bool:
    """A tar, plain or compressed, as dockerd detects it: by its content."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


def _below(member: tarfile.TarInfo, base: str) -> tarfile.TarInfo:
    """The member named below ``base`` (checked names stay checked: ``_clean`` refuses
    what leaves it afterwards)."""
    if base == ".":
        return member
    name = _clean(member.name)
    if name is None or member.name.startswith("/"):
        raise ContextError(f"invalid build context: {member.name!r} is outside the context")
    member.name = posixpath.join(base, name)
    if member.islnk():
        link = _clean(member.linkname)
        if link is None:
            raise ContextError(f"invalid build context: link {member.name!r} leaves it")
        member.linkname = posixpath.join(base, link)
    return member


def _extract_member(tar: tarfile.TarFile, m: tarfile.TarInfo, dest: Path) -> None:
    rel = _clean(m.name)
    if rel is None or m.name.startswith("/"):
        raise ContextError(f"invalid build context: {m.name!r} is outside the context")
    if rel == ".":
        return
    parent = _real_parent(dest, rel)
    path = parent / posixpath.basename(rel)
    if m.isdir():
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            _remove(path)
        path.mkdir(mode=0o755, exist_ok=True)
        os.chmod(path, (m.mode & 0o7777) | 0o700)
        return
    _remove(path)
    if m.issym():
        os.symlink(m.linkname, path)
    elif m.islnk():
        target = _clean(m.linkname)
        if target is None:
            raise ContextError(f"invalid build context: link {m.name!r} leaves the context")
        source = _real_parent(dest, target) / posixpath.basename(target)
        if source.is_symlink() or not source.is_file():
            raise ContextError(f"invalid build context: link {m.name!r} to a missing file")
        os.link(source, path)
    elif m.isfile():
        data = tar.extractfile(m)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            while data is not None and (chunk := data.read(CHUNK)):
                f.write(chunk)
        os.chmod(path, m.mode & 0o7777)
        os.utime(path, (m.mtime, m.mtime))
    # device nodes and fifos are skipped: a build has no use for them


def _decompressed(source: BinaryIO) -> BinaryIO:
    """The context as a plain tar stream (the CLI's ``--compress`` sends it gzipped)."""
    head = source.read(6)
    source.seek(-len(head), os.SEEK_CUR)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=source, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(source)
    if head.startswith(b"\xfd7zXZ"):
        return lzma.LZMAFile(source)
    return source


class _Padded(io.RawIOBase):
    """A tar stream completed at its end: the CLI's context with a Dockerfile from
    outside it (``-f ../Dockerfile``) ends right after the last file's data, without
    the padding and the two zero blocks a tar ends with (Go's reader lets it pass)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._count = 0
        self._tail: bytes | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._tail is None:
            data = self._source.read(len(buffer))
            if data:
                self._count += len(data)
                buffer[: len(data)] = data
                return len(data)
            self._tail = b"\0" * ((-self._count) % 512 + 1024)
        n = min(len(buffer), len(self._tail))
        buffer[:n] = self._tail[:n]
        self._tail = self._tail[n:]
        return n


def _real_parent(dest: Path, rel: str) -> Path:
    """The directory that holds ``rel``, made if missing; every component a real
    directory (a symlink there would send the write elsewhere)."""
    current = dest
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            raise ContextError(f"invalid build context: {rel!r} goes through a symlink")
        if not current.exists():
            current.mkdir(mode=0o755)
        elif not current.is_dir():
            raise ContextError(f"invalid build context: {rel!r} is below a file")
    return current


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


class _TarWriter:
    """Entries for the container: owner and (``--chmod``) mode as the COPY says."""

    def __init__(self, out: BinaryIO, uid: int, gid: int, chmod: int | None) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.uid, self.gid, self.chmod = uid, gid, chmod

    def _info(self, name: str, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.uid, info.gid = self.uid, self.gid
        info.mode = self.chmod if self.chmod is not None else mode
        return info

    def directory(self, name: str, mode: int) -> None:
        info = self._info(name, mode)
        info.type = tarfile.DIRTYPE
        self.tar.addfile(info)

    def add(self, name: str, full: Path, follow: bool = False) -> None:
        st = os.stat(full) if follow else os.lstat(full)
        info = self._info(name, stat.S_IMODE(st.st_mode))
        info.mtime = int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            self.tar.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(full)
            info.mode = 0o777
            self.tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            info.size = st.st_size
            with open(full, "rb") as f:
                self.tar.addfile(info, f)

    def unpack(self, archive: Path, target: str) -> None:
        """ADD of a local tar: its entries re-rooted under ``target``, checked."""
        with tarfile.open(archive, mode="r:*") as src:
            for m in src:
                rel = _clean(m.name)
                if rel is None:
                    raise ContextError(f"ADD: {archive.name}: entry {m.name!r} leaves the archive")
                if rel == ".":
                    continue
                info = self._info(posixpath.join(target, rel), m.mode & 0o7777)
                info.mtime = m.mtime
                if not (self.uid or self.gid):  # no --chown: the archive's owners
                    info.uid, info.gid = m.uid, m.gid
                if m.isdir():
                    info.type = tarfile.DIRTYPE
                    self.tar.addfile(info)
                elif m.issym():
                    info.type, info.linkname = tarfile.SYMTYPE, m.linkname
                    self.tar.addfile(info)
                elif m.islnk():
                    link = _clean(m.linkname)
                    if link is None:
                        raise ContextError(f"ADD: {archive.name}: link {m.name!r} leaves it")
                    info.type, info.linkname = tarfile.LNKTYPE, posixpath.join(target, link)
                    self.tar.addfile(info)
                elif m.isfile():
                    info.size = m.size
                    self.tar.addfile(info, src.extractfile(m) or io.BytesIO())

    def close(self) -> None:
        self.tar.close()
