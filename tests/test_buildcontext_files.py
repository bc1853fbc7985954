"""The build context's file side (pure file work in temporary directories): safe
extraction, Dockerfile lookup, sources, checksums and the tar a COPY sends."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sdcd.images.buildcontext import (
    BuildContext,
    ContextError,
    first_file_text,
    ignored,
    parse_chown,
)


def tar_of(entries: list[tuple[str, str, bytes | str]], mode: str = "w") -> io.BytesIO:
    """(name, kind, data-or-linkname) -> a tar in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data
                t.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, data
                t.addfile(info)
            elif kind == "dev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
                t.addfile(info)
    buf.seek(0)
    return buf


@pytest.fixture
def ctx(tmp_path) -> BuildContext:
    entries = [("Dockerfile", "file", b"FROM busybox\n"), ("src", "dir", b""),
               ("src/a.txt", "file", b"a\n"), ("src/b.txt", "file", b"b\n"),
               ("src/sub", "dir", b""), ("src/sub/c", "file", b"c\n"),
               ("link", "sym", "src/a.txt"), ("out", "sym", "../../etc/passwd"),
               ("abs", "sym", "/src/b.txt"), ("dev", "dev", b"")]  # fmt: skip
    return BuildContext.extract(tar_of(entries, "w:gz"), tmp_path / "ctx", 10**6)


def test_extract_keeps_symlinks_and_skips_devices(ctx):
    assert os.readlink(ctx.root / "link") == "src/a.txt"
    assert not (ctx.root / "dev").exists()
    assert ctx.dockerfile("Dockerfile") == "FROM busybox\n"
    with pytest.raises(ContextError, match="Cannot locate specified Dockerfile: nope"):
        ctx.dockerfile("nope")
    with pytest.raises(ContextError):
        ctx.dockerfile("../../etc/passwd")


@pytest.mark.parametrize(
    "entries",
    [
        [("../evil", "file", b"x")],
        [("/abs", "file", b"x")],
        [("l", "sym", "/tmp"), ("l/x", "file", b"through a symlink")],
        [("h", "hard", "/etc/passwd")],
    ],
)
def test_extract_refuses_escapes(tmp_path, entries):
    with pytest.raises(ContextError):
        BuildContext.extract(tar_of(entries), tmp_path / "ctx", 10**6)
    assert not (tmp_path / "evil").exists()


def test_extract_limit(tmp_path):
    with pytest.raises(ContextError, match="larger than the limit"):
        BuildContext.extract(tar_of([("big", "file", b"x" * 100)]), tmp_path / "c", 50)


def test_sources_globs_and_errors(ctx):
    assert ctx.sources(["src/*.txt"]) == ["src/a.txt", "src/b.txt"]
    assert ctx.sources(["/src/sub", "link"]) == ["src/sub", "link"]
    assert ctx.resolve("abs") == ctx.root / "src" / "b.txt"  # absolute: from the root
    assert ctx.resolve("out") is None  # ../../etc/passwd stays in the root: missing
    for missing in ("missing", "src/a.txt/below-a-file", "x" * 300):
        with pytest.raises(ContextError, match="file not found in build context"):
            ctx.sources([missing])
    with pytest.raises(ContextError, match="no source files were specified"):
        ctx.sources(["*.nothing"])
    with pytest.raises(ContextError, match="outside the build context"):
        ctx.sources(["../x"])


def test_checksum_follows_content_mode_and_names_not_times(ctx):
    one = ctx.checksum(["src"])
    assert one.startswith("dir:") and ctx.checksum(["src/a.txt"]).startswith("file:")
    assert ctx.checksum(["src/a.txt", "src/b.txt"]).startswith("multi:")
    os.utime(ctx.root / "src" / "a.txt", (1, 1))
    assert ctx.checksum(["src"]) == one
    os.chmod(ctx.root / "src" / "a.txt", 0o600)
    two = ctx.checksum(["src"])
    assert two != one
    (ctx.root / "src" / "a.txt").write_text("A\n")
    assert ctx.checksum(["src"]) != two


def copy_into(ctx: BuildContext, tmp_path: Path, sources, dest, **kw) -> dict[str, tarfile.TarInfo]:
    out = io.BytesIO()
    ctx.write_copy_tar(sources, dest, out, **kw)
    out.seek(0)
    with tarfile.open(fileobj=out) as t:
        return {m.name: m for m in t.getmembers()}


def test_copy_tar_semantics(ctx, tmp_path):
    # a file to a new name; into a directory (trailing slash); dir contents; several
    assert list(copy_into(ctx, tmp_path, ["src/a.txt"], "/opt/x")) == ["opt/x"]
    assert list(copy_into(ctx, tmp_path, ["src/a.txt"], "/opt/")) == ["opt", "opt/a.txt"]
    got = copy_into(ctx, tmp_path, ["src"], "/app", dest_is_dir_hint=True)
    assert sorted(got) == ["app/a.txt", "app/b.txt", "app/sub", "app/sub/c"]
    got = copy_into(ctx, tmp_path, ["src/a.txt", "src/b.txt"], "/d", uid=1000, gid=50)
    assert sorted(got) == ["d", "d/a.txt", "d/b.txt"]
    assert {(m.uid, m.gid) for m in got.values()} == {(1000, 50)}
    # a symlink source copies its target's content under the link's name
    got = copy_into(ctx, tmp_path, ["link"], "/e/")
    assert got["e/link"].isfile() and got["e/link"].size == 2
    # --chmod
    got = copy_into(ctx, tmp_path, ["src/a.txt"], "/f", chmod=0o700)
    assert got["f"].mode == 0o700


def test_add_unpacks_local_archives(tmp_path):
    inner = tar_of([("in", "dir", b""), ("in/t", "file", b"tarball\n")], "w:gz").getvalue()
    entries = [("bundle.tgz", "file", inner), ("plain", "file", b"not a tar")]
    ctx = BuildContext.extract(tar_of(entries), tmp_path / "ctx", 10**6)
    got = copy_into(ctx, tmp_path, ["bundle.tgz", "plain"], "/u/", extract_archives=True)
    assert sorted(got) == ["u", "u/in", "u/in/t", "u/plain"]
    got = copy_into(ctx, tmp_path, ["bundle.tgz"], "/c/", extract_archives=False)
    assert sorted(got) == ["c", "c/bundle.tgz"]
    evil = tar_of([("../x", "file", b"x")]).getvalue()
    bad = BuildContext.extract(tar_of([("e.tar", "file", evil)]), tmp_path / "bad", 10**6)
    with pytest.raises(ContextError, match="leaves"):
        copy_into(bad, tmp_path, ["e.tar"], "/z/", extract_archives=True)


def test_parse_chown():
    passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
    group = "root:x:0:\nstaff:x:50:\n"
    assert parse_chown("1000", None, None) == (1000, 1000)
    assert parse_chown("1:2", None, None) == (1, 2)
    assert parse_chown("app", passwd, group) == (1000, 1001)
    assert parse_chown("app", passwd, group + "app:x:77:\n") == (1000, 77)
    assert parse_chown("app:staff", passwd, group) == (1000, 50)
    for bad in ("nobody", "app:nogroup", ":1"):
        with pytest.raises(ContextError, match="unable to convert uid/gid"):
            parse_chown(bad, passwd, group)


def test_add_tar_never_writes_through_a_symlink_it_placed(tmp_path):
    """COPY --from fetches each path into one directory: a symlink from the first fetch
    (an image's ``/a -> /outside``) must not carry the second fetch's files out of it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    ctx = BuildContext.from_dir(tmp_path / "root")
    ctx.root.mkdir()
    ctx.add_tar(tar_of([("a", "sym", str(outside))]), "/", 10**6)
    with pytest.raises(ContextError, match="symlink"):
        ctx.add_tar(tar_of([("passwd", "file", b"evil")]), "/a", 10**6)
    with pytest.raises(ContextError, match="symlink"):
        ctx.add_tar(tar_of([("a/x", "file", b"evil")]), "/", 10**6)
    assert list(outside.iterdir()) == []
    # a directory fetched below another one merges into it
    ctx.add_tar(tar_of([("out", "dir", b""), ("out/one", "file", b"1")]), "/", 10**6)
    ctx.add_tar(tar_of([("two", "file", b"2")]), "/out", 10**6)
    assert sorted(p.name for p in (ctx.root / "out").iterdir()) == ["one", "two"]


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        (["Dockerfile"], "Dockerfile", True),
        (["*"], ".dockerignore", True),
        (["*", "!Dockerfile"], "Dockerfile", False),
        (["**/Dockerfile"], "Dockerfile", True),
        (["# Dockerfile", "Docker*"], "Dockerfile", True),
        (["src"], "Dockerfile", False),
    ],
)
def test_dockerignore_names(patterns, name, expected):
    assert ignored(name, patterns) is expected


def test_dockerfile_and_dockerignore_leave_the_context_when_ignored(tmp_path):
    entries = [("Dockerfile", "file", b"FROM x\n"), (".dockerignore", "file", b"Dockerfile\n"),
               ("app.py", "file", b"1")]  # fmt: skip
    ctx = BuildContext.extract(tar_of(entries), tmp_path / "c", 10**6)
    assert ctx.dockerfile("Dockerfile") == "FROM x\n"
    assert sorted(p.name for p in ctx.root.iterdir()) == [".dockerignore", "app.py"]


def test_first_file_text():
    passwd = tar_of([("passwd", "file", b"root:x:0:0::/root:/bin/sh\n")])
    assert first_file_text(passwd) == "root:x:0:0::/root:/bin/sh\n"
    assert first_file_text(tar_of([("d", "dir", b"")])) is None
    assert first_file_text(tar_of([("big", "file", b"x" * 100)]), limit=10) is None
