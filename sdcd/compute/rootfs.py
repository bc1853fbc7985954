"""A container's root filesystem: an overlayfs mount over its image's cached layers.

The mount is made by ``mount(8)`` in a subprocess (never blocking the reactor). The
kernel reads the whole option string from one page, so the caller may name the lower
directories relative to ``cwd`` (``LayerCache.lower_dirs`` gives short names in its
``l/`` directory): ~17 bytes a layer instead of ~100.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet import utils

MOUNT = "/bin/mount"
UMOUNT = "/bin/umount"
#: The kernel copies mount data into one page, NUL included.
MAX_OPTIONS = 4095
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


class RootfsError(Exception):
    """A root filesystem could not be mounted or unmounted; the message says why."""


def overlay_options(lower: list[Path], upper: Path, work: Path) -> str:
    """The overlay option string (RootfsError when a path cannot be put in it)."""
    if not lower:
        raise RootfsError("an overlay needs at least one lower directory")
    for path in (*lower, upper, work):
        text = str(path)
        if any(c in text for c in ",:\\\n"):
            raise RootfsError(f"path {text!r} cannot be used in overlay options")
    options = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    if len(options) > MAX_OPTIONS:
        raise RootfsError(
            f"overlay options are {len(options)} bytes ({len(lower)} layers), more than "
            f"the kernel's {MAX_OPTIONS}: use short relative lower directories"
        )
    return options


async def mount_overlay(
    lower: list[Path], upper: Path, work: Path, target: Path, cwd: Path | None = None
) -> None:
    """Mount an overlay on ``target``. ``lower`` is top-most first (overlay order); its
    paths may be relative to ``cwd``. ``upper`` and ``work`` must be on one filesystem
    (``work`` empty); with an upper directory a single lower one is enough."""
    if cwd is None and not all(Path(p).is_absolute() for p in lower):
        raise RootfsError("relative lower directories need a cwd")
    if not (Path(upper).is_absolute() and Path(work).is_absolute()):
        raise RootfsError("upper and work directories must be absolute paths")
    options = overlay_options(list(lower), upper, work)
    out, err, code = await utils.getProcessOutputAndValue(
        MOUNT,
        ("-t", "overlay", "overlay", "-o", options, str(target)),
        env=_ENV,
        path=str(cwd) if cwd is not None else None,
    )
    if code != 0:
        message = (err or out).decode(errors="replace").strip()
        raise RootfsError(f"mounting the root filesystem on {target} failed: {message}")


async def unmount(target: Path) -> None:
    """Unmount ``target`` (every mount stacked on it); nothing to do if it is not a mount
    point. A busy mount is detached lazily, so the container can still be removed."""
    for _ in range(8):
        if not is_mounted(target):
            return
        _, err, code = await utils.getProcessOutputAndValue(UMOUNT, (str(target),), env=_ENV)
        if code == 0:
            continue
        if not is_mounted(target):
            return
        _, err, code = await utils.getProcessOutputAndValue(UMOUNT, ("-l", str(target)), env=_ENV)
        if code != 0 and is_mounted(target):
            message = err.decode(errors="replace").strip()
            raise RootfsError(f"unmounting {target} failed: {message}")
    if is_mounted(target):
        raise RootfsError(f"{target} is still mounted")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    out, i = [], 0
    raw = field.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out).decode("utf-8", "surrogateescape")


def mount_points() -> set[str]:
    """Every mount point of this mount namespace, from /proc/self/mountinfo."""
    points = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ", 5)
            if len(fields) > 4:
                points.add(_unescape(fields[4]))
    return points


def is_mounted(target: Path) -> bool:
    """Whether ``target`` is a mount point (symlinks in its path resolved as the kernel
    records them)."""
    return os.path.realpath(target) in mount_points()
