"""Users and paths inside a container's root filesystem, resolved without leaving it.

A container's ``/etc/passwd`` is the image author's (or, after a restart, the container
process's) file: it may be a symlink to ``/etc/shadow`` or to ``../../../../etc/shadow``.
Everything here therefore resolves paths as the container would see them, with the
rootfs as ``/``: an absolute symlink restarts at the rootfs and ``..`` stops at it.
Only regular files are read, and only up to a size cap, so a FIFO or a device node
planted at ``/etc/passwd`` can neither hang nor flood the node.

``resolve_user`` follows dockerd's rules (moby/sys/user ``GetExecUser``): the empty user
is uid 0; a name must be in passwd; a number need not be; an explicit group replaces
the primary gid and turns off supplementary groups.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from pathlib import Path

#: Symlinks followed in one resolution before giving up, like the kernel's ELOOP.
MAX_SYMLINKS = 255
#: Largest passwd/group file read; a real one is a few KiB.
MAX_FILE_SIZE = 16 * 1024 * 1024
#: uid/gid range dockerd accepts.
MAX_ID = 2**31 - 1


class UserError(Exception):
    """The container's user cannot be resolved; the message is dockerd's wording."""


def resolve_in_root(rootfs: Path, path: str) -> Path:
    """The host path of container path ``path``, following symlinks inside ``rootfs`` only.

    Components that do not exist are kept as they are (the result may not exist); ``..``
    never climbs above the rootfs. Raises ``OSError(ELOOP)`` on a symlink loop.
    """
    root = Path(os.path.abspath(rootfs))
    pending = deque(_components(path))
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.popleft()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extendleft(reversed(_components(target)))
    return root.joinpath(*resolved)


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def read_in_root(rootfs: Path, path: str) -> str | None:
    """The text of regular file ``path`` inside ``rootfs``, or None when there is none.

    None also for anything that is not a regular file (FIFO, device, directory).
    """
    try:
        host_path = resolve_in_root(rootfs, path)
        fd = os.open(host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        return None
    return data.decode("utf-8", errors="replace")


def _parse_id(text: str) -> int | None:
    """A decimal id, or None if ``text`` is not one."""
    if not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _checked_id(value: int) -> int:
    if value > MAX_ID:
        raise UserError(f"uids and gids must be in range 0-{MAX_ID}")
    return value


def _records(text: str | None, fields: int) -> list[list[str]]:
    """The colon-separated lines of a passwd/group file, padded to ``fields``."""
    if text is None:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        out.append((parts + [""] * fields)[:fields])
    return out


def _passwd(rootfs: Path) -> list[tuple[str, int, int, str]] | None:
    """(name, uid, gid, home) entries, or None when the container has no passwd file."""
    text = read_in_root(rootfs, "/etc/passwd")
    if text is None:
        return None
    entries = []
    for name, _pw, uid, gid, _gecos, home, _shell in _records(text, 7):
        u, g = _parse_id(uid), _parse_id(gid)
        if u is not None and g is not None:
            entries.append((name, u, g, home))
    return entries


def _groups(rootfs: Path) -> list[tuple[str, int, list[str]]]:
    """(name, gid, members) entries; empty when the container has no group file."""
    entries = []
    for name, _pw, gid, members in _records(read_in_root(rootfs, "/etc/group"), 4):
        g = _parse_id(gid)
        if g is not None:
            entries.append((name, g, [m for m in members.split(",") if m]))
    return entries


def resolve_user(rootfs: Path, user: str) -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary gids, home) for Docker's ``User`` inside ``rootfs``.

    ``user`` is "", "name", "uid", "name:group", "uid:gid" (any mix). Raises UserError
    with dockerd's message when a name is in neither passwd nor group.
    """
    user_part, _, group_part = user.partition(":")
    uid, gid, home = 0, 0, "/"
    passwd = _passwd(rootfs)
    matched = None
    if user_part:
        number = _parse_id(user_part)
        matched = _find_user(passwd or [], user_part, number)
        if matched is None:
            if number is None:
                raise UserError(
                    f"unable to find user {user_part}: no matching entries in passwd file"
                )
            uid = _checked_id(number)
    else:
        matched = _find_user(passwd or [], None, 0)
    if matched is not None:
        _name, uid, gid, home = matched
        home = home or "/"
    if group_part:
        return uid, _resolve_group(rootfs, group_part), [], home
    extra: list[int] = []
    if matched is not None:
        extra = [g for _n, g, members in _groups(rootfs) if matched[0] in members]
    return uid, gid, extra, home


def _find_user(
    passwd: list[tuple[str, int, int, str]], name: str | None, uid: int | None
) -> tuple[str, int, int, str] | None:
    """The first entry with that name or uid (first match wins, like dockerd)."""
    for entry in passwd:
        if entry[0] == name or (uid is not None and entry[1] == uid):
            return entry
    return None


def _resolve_group(rootfs: Path, group: str) -> int:
    """The gid of an explicit group (name or number) in the container's group file."""
    number = _parse_id(group)
    for name, gid, _members in _groups(rootfs):
        if name == group or (number is not None and gid == number):
            return gid
    if number is None:
        raise UserError(f"unable to find group {group}: no matching entries in group file")
    return _checked_id(number)
