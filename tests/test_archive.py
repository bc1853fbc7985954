"""sdcd.compute.archive: docker cp's node side over a real directory as the root."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sdcd.compute.archive import ArchiveError, read_tar, resolve, stat_path, write_tar


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A container root with an etc/passwd, a tree, and two escaping symlinks."""
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("root:x:0:0:in-container\n")
    tree = r / "data"
    (tree / "sub").mkdir(parents=True)
    (tree / "f").write_text("hello")
    (tree / "sub" / "g").write_text("deep")
    os.symlink("f", tree / "ln")
    os.chmod(tree / "sub", 0o750)
    os.chmod(tree / "f", 0o644)
    for p in (tree, tree / "sub", tree / "f", tree / "sub" / "g"):
        os.chown(p, 1000, 1000)
    os.lchown(tree / "ln", 1000, 1000)
    os.symlink("/", r / "escape")
    os.symlink("../../..", r / "etc2")
    (tmp_path / "outside").mkdir()
    return r


def _tar_of(root: Path, path: str) -> tuple[tarfile.TarFile, list[int]]:
    chunks: list[bytes] = []
    read_tar(root, path, chunks.append)
    sizes = [len(c) for c in chunks]
    return tarfile.open(fileobj=io.BytesIO(b"".join(chunks))), sizes


def _reader(data: bytes):
    buf = io.BytesIO(data)
    return buf.read


def _crafted(*entries: tuple[str, str, str]) -> bytes:
    """A tar of (type, name, linkname-or-content) entries."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, extra in entries:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                data = extra.encode()
                info.size = len(data)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _snapshot(d: Path) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, dirs, files in os.walk(d):
        for n in sorted(dirs + files):
            p = Path(dirpath) / n
            st = os.lstat(p)
            out.append((str(p.relative_to(d)), st.st_mode, st.st_size))
    return sorted(out)


def test_round_trip(root: Path) -> None:
    tar, _ = _tar_of(root, "/data")
    names = tar.getnames()
    assert names[0] == "data" and tar.getmember("data").isdir()
    assert set(names) == {"data", "data/f", "data/ln", "data/sub", "data/sub/g"}
    assert tar.getmember("data/ln").issym() and tar.getmember("data/ln").linkname == "f"
    assert tar.getmember("data/sub").mode == 0o750
    assert (tar.getmember("data/f").uid, tar.getmember("data/f").gid) == (1000, 1000)
    raw = io.BytesIO()
    read_tar(root, "/data", raw.write)
    (root / "dst").mkdir()
    write_tar(root, "/dst", _reader(raw.getvalue()), no_overwrite_dir_non_dir=True)
    out = root / "dst" / "data"
    assert (out / "f").read_text() == "hello"
    assert (out / "sub" / "g").read_text() == "deep"
    assert os.readlink(out / "ln") == "f"
    assert stat.S_IMODE(os.stat(out / "sub").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(out / "f").st_mode) == 0o644
    for p in (out, out / "f", out / "sub"):
        assert (os.stat(p).st_uid, os.stat(p).st_gid) == (1000, 1000)
    assert os.lstat(out / "ln").st_uid == 1000
    assert int(os.stat(out / "f").st_mtime) == int(os.stat(root / "data" / "f").st_mtime)


def test_read_forms(root: Path) -> None:
    tar, _ = _tar_of(root, "/data/.")
    assert tar.getnames()[0] == "." and "./f" in tar.getnames()
    tar, _ = _tar_of(root, "/data/f")
    assert tar.getnames() == ["f"]
    tar, _ = _tar_of(root, "/data/ln")
    assert tar.getmember("ln").issym()
    with pytest.raises(ArchiveError) as e:
        _tar_of(root, "/nope")
    assert e.value.kind == "not_found"


def test_symlinks_stay_inside(root: Path) -> None:
    for path in ("/escape/etc/passwd", "/etc2/etc/passwd", "/etc2/../../etc/passwd"):
        tar, _ = _tar_of(root, path)
        assert tar.extractfile("passwd").read() == b"root:x:0:0:in-container\n"
    fd, name = resolve(root, "/escape/escape/etc2/data/ln")
    try:
        assert name == "f"
        assert os.stat(fd).st_ino == os.stat(root / "data").st_ino
    finally:
        os.close(fd)
    write_tar(root, "/escape", _reader(_crafted(("file", "new", "x"))), False)
    assert (root / "new").read_text() == "x"
    assert not (root.parent.parent / "new").exists()
    os.symlink("loop", root / "loop")
    with pytest.raises(ArchiveError):
        resolve(root, "/loop/x")


def test_stat_path(root: Path) -> None:
    f = stat_path(root, "/data/f")
    assert (f["name"], f["size"], f["mode"], f["linkTarget"]) == ("f", 5, 0o644, "")
    assert f["mtime"].endswith("Z") and "T" in f["mtime"]
    d = stat_path(root, "/data/sub")
    assert d["mode"] == (1 << 31) | 0o750
    s = stat_path(root, "/escape")
    assert s["mode"] & (1 << 27) and s["linkTarget"] == "/"
    assert stat_path(root, "/data/ln")["linkTarget"] == "/data/f"
    assert stat_path(root, "/etc2")["linkTarget"] == "/"
    assert stat_path(root, "/escape/")["mode"] & (1 << 31)
    assert stat_path(root, "/")["name"] == "/"


@pytest.mark.parametrize(
    "entries",
    [
        [("file", "ok", "x"), ("file", "../evil", "x")],
        [("file", "ok", "x"), ("file", "/abs", "x")],
        [("file", "ok", "x"), ("hard", "h", "/etc/shadow")],
        [("file", "ok", "x"), ("hard", "h", "etc/passwd")],
        [("file", "ok", "x"), ("sym", "link", "/tmp-outside"), ("file", "link/file", "x")],
        [("file", "ok", "x"), ("file", "escape/x", "x")],
        [("file", "ok", "x"), ("chr", "null", "")],
    ],
)
def test_refused_nothing_written(root: Path, entries: list) -> None:
    before = _snapshot(root.parent)
    with pytest.raises(ArchiveError) as e:
        write_tar(root, "/", _reader(_crafted(*entries)), False)
    assert e.value.kind == "invalid"
    assert _snapshot(root.parent) == before


def test_destination_errors(root: Path) -> None:
    with pytest.raises(ArchiveError) as e:
        write_tar(root, "/nope", _reader(_crafted(("file", "a", "x"))), False)
    assert e.value.kind == "not_found"
    with pytest.raises(ArchiveError) as e:
        write_tar(root, "/data/f", _reader(_crafted(("file", "a", "x"))), False)
    assert e.value.kind == "invalid"


def test_no_overwrite_dir_non_dir(root: Path) -> None:
    before = _snapshot(root.parent)
    for entries in ([("file", "sub", "x")], [("dir", "f", "")]):
        with pytest.raises(ArchiveError):
            write_tar(root, "/data", _reader(_crafted(*entries)), True)
    assert _snapshot(root.parent) == before
    write_tar(root, "/data", _reader(_crafted(("file", "f", "replaced"))), True)
    assert (root / "data" / "f").read_text() == "replaced"
    write_tar(root, "/data", _reader(_crafted(("file", "sub", "now a file"))), False)
    assert (root / "data" / "sub").read_text() == "now a file"


def test_chunked(root: Path) -> None:
    with open(root / "big", "wb") as f:
        f.truncate(20 * 1024 * 1024)
    sizes: list[int] = []
    total = 0

    def write(b: bytes) -> None:
        nonlocal total
        sizes.append(len(b))
        total += len(b)

    read_tar(root, "/big", write)
    assert total > 20 * 1024 * 1024
    assert max(sizes) <= 1024 * 1024


def test_hardlink_within_tar(root: Path) -> None:
    tar = _crafted(("dir", "d", ""), ("file", "d/a", "same"), ("hard", "d/b", "d/a"))
    write_tar(root, "/", _reader(tar), True)
    assert os.stat(root / "d" / "a").st_ino == os.stat(root / "d" / "b").st_ino
