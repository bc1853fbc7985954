"""``docker diff`` and ``docker export`` node functions (sdcd.compute.changes), on real
directories, real whiteouts and opaque xattrs, and a real overlay mount (as root).

The expected diffs are what dockerd's ChangesDirs gives for the same image and container
views (merged container root against merged image root).
"""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from sdcd.compute.changes import CHUNK, changes, export_tar
from sdcd.compute.rootfs import is_mounted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and overlayfs need root")

BIG = 20 * 1024 * 1024
MTIME_NS = 1_600_000_000_123_456_789
CAP_NET_RAW = bytes.fromhex("0000000200200000000000000000000000000000")  # v2 header


def mkdir(path: Path, mode: int = 0o755) -> Path:
    """A directory with an exact mode (the umask does not decide)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    mkdir(path.parent)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def whiteout(path: Path) -> None:
    mkdir(path.parent)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def opaque(path: Path) -> None:
    os.setxattr(path, "trusted.overlay.opaque", b"y")


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """Two image layers and a container's upper directory, built by hand."""
    bottom, top, upper = (mkdir(tmp_path / n) for n in ("l0", "l1", "upper"))
    # the image
    write(bottom / "bin/busybox", b"\x7fELF busybox", 0o755)
    write(bottom / "etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    write(bottom / "etc/group", b"root:x:0:\n")
    write(bottom / "etc/shadow", b"root:*::::::\n", 0o600)
    write(bottom / "usr/lib/libc.so", b"libc")
    write(bottom / "usr/lib/sub/deep", b"deep")
    write(bottom / "opt/app/a", b"old a")
    write(bottom / "opt/app/b/c", b"c")
    write(bottom / "var/cache/k1", b"k1")
    os.utime(bottom / "var/cache/k1", ns=(MTIME_NS, MTIME_NS))
    setuid = write(bottom / "usr/bin/su", b"su")
    os.chown(setuid, 1234, 5678)
    os.chmod(setuid, 0o4755)  # after chown, which clears set-uid
    os.link(setuid, bottom / "usr/bin/su2")
    os.mknod(bottom / "etc/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(bottom / "etc/fifo", 0o600)
    write(top / "etc/os-release", b"NAME=test\n")
    whiteout(top / "etc/shadow")  # the top layer deleted /etc/shadow
    os.symlink("busybox", mkdir(top / "bin") / "sh")
    # the container
    write(upper / "new/dir/f", b"new")  # added in a new directory
    write(upper / "etc/passwd", b"root:x:0:0::/root:/bin/ash\n")  # modified
    write(upper / "etc/shadow", b"root:!::::::\n", 0o600)  # re-created after the image
    whiteout(upper / "etc/group")  # deleted file
    write(upper / "etc/hosts", b"")  # a runtime mount point, skipped
    mkdir(upper / "usr")
    whiteout(upper / "usr/lib")  # deleted directory
    write(upper / "opt/app/a", b"new a!")  # opaque directory replacing /opt/app
    write(upper / "opt/app/n", b"n")
    opaque(upper / "opt/app")
    write(upper / "var/cache/k1", b"k1")  # copied up, unchanged
    os.utime(upper / "var/cache/k1", ns=(MTIME_NS, MTIME_NS))
    os.symlink("busybox", mkdir(upper / "bin") / "ls")  # added symlink
    return {"bottom": bottom, "top": top, "upper": upper, "root": tmp_path}


def test_changes_match_dockerd(layout: dict[str, Path]) -> None:
    got = changes(layout["upper"], [layout["top"], layout["bottom"]], skip={"/etc/hosts"})
    assert got == [
        {"Path": "/bin", "Kind": 0},
        {"Path": "/bin/ls", "Kind": 1},
        {"Path": "/etc", "Kind": 0},
        {"Path": "/etc/passwd", "Kind": 0},
        {"Path": "/etc/shadow", "Kind": 1},  # the image's top layer had deleted it
        {"Path": "/etc/group", "Kind": 2},
        {"Path": "/new", "Kind": 1},
        {"Path": "/new/dir", "Kind": 1},
        {"Path": "/new/dir/f", "Kind": 1},
        {"Path": "/opt", "Kind": 0},
        {"Path": "/opt/app", "Kind": 0},
        {"Path": "/opt/app/a", "Kind": 0},
        {"Path": "/opt/app/n", "Kind": 1},
        {"Path": "/opt/app/b", "Kind": 2},  # not its contents, as dockerd
        {"Path": "/usr", "Kind": 0},
        {"Path": "/usr/lib", "Kind": 2},
    ]


def test_changes_mode_and_owner_changes(tmp_path: Path) -> None:
    """A chmod'd directory is modified by itself; a chown'd file is modified though
    size and mtime are the same; a file replaced by a directory is modified and its
    contents added."""
    lower, upper = mkdir(tmp_path / "lower"), mkdir(tmp_path / "upper")
    write(lower / "d/x", b"x")
    write(lower / "f", b"f")
    write(lower / "g", b"g")
    for name in ("f", "g"):
        os.utime(lower / name, ns=(MTIME_NS, MTIME_NS))
    mkdir(upper / "d", 0o700)
    write(upper / "f", b"f")
    os.utime(upper / "f", ns=(MTIME_NS, MTIME_NS))
    os.chown(upper / "f", 1, 1)
    write(upper / "g/inside", b"i")
    opaque(upper / "g")
    write(lower / "h", b"h")
    write(upper / "h", b"h")
    os.utime(lower / "h", ns=(MTIME_NS, MTIME_NS))
    os.utime(upper / "h", ns=(MTIME_NS, MTIME_NS // 10**9 * 10**9))  # tar-truncated: same
    write(lower / "ping", b"p")
    write(upper / "ping", b"p")
    for p in (lower / "ping", upper / "ping"):
        os.utime(p, ns=(MTIME_NS, MTIME_NS))
    os.setxattr(upper / "ping", "security.capability", CAP_NET_RAW)
    assert changes(upper, [lower]) == [
        {"Path": "/d", "Kind": 0},
        {"Path": "/f", "Kind": 0},
        {"Path": "/g", "Kind": 0},
        {"Path": "/g/inside", "Kind": 1},
        {"Path": "/ping", "Kind": 0},
    ]


def test_changes_without_upper_dir(tmp_path: Path) -> None:
    assert changes(tmp_path / "missing", [tmp_path]) == []
    assert changes(mkdir(tmp_path / "empty"), [tmp_path]) == []


@pytest.fixture
def merged(layout: dict[str, Path]):
    """The layout mounted as overlayfs, unmounted afterwards."""
    root = layout["root"]
    work, target = mkdir(root / "work"), mkdir(root / "merged")
    write(layout["upper"] / "big", os.urandom(1024) * (BIG // 1024))
    options = (
        f"lowerdir={layout['top']}:{layout['bottom']},upperdir={layout['upper']},workdir={work}"
    )
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
        assert not is_mounted(target)


def test_export_merged_view(merged: Path) -> None:
    chunks: list[bytes] = []
    export_tar(merged, chunks.append)
    assert max(map(len, chunks)) <= CHUNK
    assert len(chunks) >= BIG // CHUNK
    assert sum(map(len, chunks)) % tarfile.RECORDSIZE == 0

    path = merged.parent / "out.tar"
    path.write_bytes(b"".join(chunks))
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        by_name = {m.name: m for m in members}

        def content(name: str) -> bytes:
            f = tar.extractfile(by_name[name])
            assert f is not None
            return f.read()

        assert names == sorted(set(names), key=lambda n: n.split("/"))  # WalkDir order
        assert not any(n.startswith(("/", "./")) for n in names)
        assert {"bin", "bin/busybox", "etc/os-release", "etc/passwd", "new/dir/f"} <= set(names)
        for gone in ("etc/group", "usr/lib", "usr/lib/libc.so", "opt/app/b", "opt/app/b/c"):
            assert gone not in names
        assert content("etc/passwd") == b"root:x:0:0::/root:/bin/ash\n"  # upper wins
        assert content("etc/shadow") == b"root:!::::::\n"
        assert content("opt/app/a") == b"new a!"
        assert content("big") == (merged / "big").read_bytes()
        assert by_name["bin/sh"].issym() and by_name["bin/sh"].linkname == "busybox"
        assert by_name["bin/ls"].issym()
        su, su2 = by_name["usr/bin/su"], by_name["usr/bin/su2"]
        assert (su.mode, su.uid, su.gid, su.uname) == (0o4755, 1234, 5678, "")
        assert su2.islnk() and su2.linkname == "usr/bin/su"
        null = by_name["etc/null"]
        assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
        assert by_name["etc/fifo"].isfifo() and by_name["etc/fifo"].mode == 0o600
        assert by_name["var/cache/k1"].mtime == MTIME_NS // 10**9
        assert by_name["bin"].isdir() and by_name["bin"].mode == 0o755


def test_export_keeps_file_capabilities(tmp_path: Path) -> None:
    """security.capability travels as a SCHILY.xattr PAX record, as dockerd writes it."""
    root = mkdir(tmp_path / "root")
    ping = write(root / "ping", b"ping", 0o755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    chunks: list[bytes] = []
    export_tar(root, chunks.append)
    (tmp_path / "out.tar").write_bytes(b"".join(chunks))
    with tarfile.open(tmp_path / "out.tar") as tar:
        member = tar.getmember("ping")
    raw = member.pax_headers["SCHILY.xattr.security.capability"]
    assert raw.encode("utf-8", "surrogateescape") == CAP_NET_RAW


def test_layer_tar_turns_whiteouts_and_opaque_dirs_into_image_layer_entries(tmp_path):
    import io

    from sdcd.compute.changes import layer_tar

    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "new").write_text("n")
    os.mknod(upper / "etc" / "gone", 0o600 | stat.S_IFCHR, 0)
    (upper / "opq").mkdir()
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    (upper / "proc").mkdir()
    out = io.BytesIO()
    layer_tar(upper, out.write, skip=["/proc"])
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert set(names) == {"etc", "etc/new", "etc/.wh.gone", "opq", "opq/.wh..wh..opq"}
    assert names["etc/.wh.gone"].isfile() and names["etc/.wh.gone"].size == 0
