"""The layer cache and overlayfs root filesystems, on real overlayfs (as root).

Layers come from tests/imagebuilder.py; hostile ones are written with tarfile directly.
Every test unmounts what it mounted (the ``mounts`` fixture) and works under tmp_path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from sdcd.compute import layers as layers_mod
from sdcd.compute.layers import (
    LayerCache,
    LayerMismatch,
    UnsafeLayer,
    UnsupportedLayer,
)
from sdcd.compute.rootfs import (
    RootfsError,
    is_mounted,
    mount_overlay,
    overlay_options,
    unmount,
)
from tests.imagebuilder import OCI_LAYER, Layer, LayerBuilder, _RandomReader, gzip_bytes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlayfs needs root")
slow = pytest.mark.skipif(not os.environ.get("SDCD_SLOW"), reason="slow: set SDCD_SLOW=1")

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MTIME = 1704067200


@pytest.fixture
def cache(tmp_path):
    return LayerCache(tmp_path / "cache", reactor)


@pytest.fixture
def mounts():
    """Targets to unmount after the test, whatever happened."""
    targets: list[Path] = []
    yield targets
    for target in reversed(targets):
        for args in (["umount", str(target)], ["umount", "-l", str(target)]):
            if is_mounted(target):
                subprocess.run(args, check=False, capture_output=True)
        assert not is_mounted(target)


def write_blob(tmp_path: Path, layer: Layer) -> Path:
    path = tmp_path / "blobs" / layer.digest[7:]
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(layer.data)
    return path


def leftovers(cache: LayerCache) -> list[str]:
    return sorted(
        os.listdir(cache.layers_dir) + os.listdir(cache.link_dir) + os.listdir(cache.tmp_dir)
    )


async def ensure(cache: LayerCache, tmp_path: Path, layer: Layer) -> Path:
    return await cache.ensure(layer.diff_id, write_blob(tmp_path, layer), layer.media_type)


async def mount_image(
    cache: LayerCache, tmp_path: Path, image: list[Layer], mounts: list[Path], name: str = "c"
) -> Path:
    """Unpack an image's layers (base first) and mount them as a container would."""
    for layer in image:
        await ensure(cache, tmp_path, layer)
    cwd, lower = cache.lower_dirs([layer.diff_id for layer in image])
    top = tmp_path / name
    for sub in ("upper", "work", "rootfs"):
        (top / sub).mkdir(parents=True)
    target = top / "rootfs"
    mounts.append(target)
    await mount_overlay(lower, top / "upper", top / "work", target, cwd=cwd)
    assert is_mounted(target)
    return target


def tree(root: Path) -> dict[str, str]:
    """Relative path -> kind ('d', 'f', 'l', 'c', 'p') of everything under root."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            kind = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l"}.get(
                stat.S_IFMT(mode), "c" if stat.S_ISCHR(mode) else "p"
            )
            result[str(path.relative_to(root))] = kind
    return result


# -- hostile layers, written with tarfile directly ------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def raw_layer(members: list[tuple], compress: bool = True, media_type: str = OCI_LAYER) -> Layer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buf.getvalue()
    blob = gzip_bytes(raw) if compress else raw
    return Layer(
        "sha256:" + hashlib.sha256(blob).hexdigest(),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
        len(blob),
        media_type,
        None,
        blob,
    )


# -- the merged tree ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_three_layers_whiteouts_and_opaque_dirs(cache, tmp_path, mounts):
    base = (
        LayerBuilder()
        .file("etc/a", "a1")
        .file("etc/b", "b1")
        .file("d/x", "x")
        .file("d/sub/y", "y")
        .file("keep/k", "k")
        .file("-dash", "dash")
        .build()
    )
    middle = (
        LayerBuilder()
        .whiteout("etc/b")
        .opaque("d")
        .file("d/z", "z")
        .file("new", "n")
        .whiteout("-dash")  # sorts after "-dash": '-' < '.'
        .build()
    )
    top = LayerBuilder().whiteout("keep").file("etc/c", "c3").file("etc/a", "a3").build()
    target = await mount_image(cache, tmp_path, [base, middle, top], mounts)
    assert tree(target) == {
        "etc": "d",
        "etc/a": "f",
        "etc/c": "f",
        "d": "d",
        "d/z": "f",
        "new": "f",
    }
    assert (target / "etc/a").read_text() == "a3"
    # in the cache: overlayfs whiteouts, not Docker's
    middle_dir = cache.path(middle.diff_id)
    assert os.getxattr(middle_dir / "d", "trusted.overlay.opaque") == b"y"
    white = (middle_dir / "etc/b").lstat()
    assert stat.S_ISCHR(white.st_mode) and white.st_rdev == os.makedev(0, 0)
    assert not any(".wh." in p for p in tree(middle_dir))


@pytest_twisted.ensureDeferred
async def test_metadata_is_kept(cache, tmp_path, mounts):
    pax = {
        "SCHILY.xattr.user.comment": "hello",
        "SCHILY.xattr.security.selinux": "system_u:object_r:etc_t:s0",  # dropped
        "mtime": "1700000000.123456789",
    }
    layer = raw_layer(
        [
            member("bin", tarfile.DIRTYPE),
            member("bin/su", data=b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
            member("bin/sgid", data=b"g", mode=0o2711, uid=1000, gid=50),
            member("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"),
            member("bin/rel", tarfile.SYMTYPE, linkname="../etc/motd", uid=7, gid=8),
            member("etc", tarfile.DIRTYPE, mode=0o750, uid=0, gid=42, mtime=1600000000),
            member("etc/motd", data=b"hi\n", uid=1234, gid=5678, pax_headers=pax),
            member("etc/motd2", tarfile.LNKTYPE, linkname="etc/motd"),
            member("tmp", tarfile.DIRTYPE, mode=0o1777),
            member("srv", tarfile.DIRTYPE, mode=0o2775, uid=33, gid=33),
            member("run/pipe", tarfile.FIFOTYPE, mode=0o620, uid=3, gid=4),
        ]
    )
    target = await mount_image(cache, tmp_path, [layer], mounts)
    for root in (cache.path(layer.diff_id), target):
        su = (root / "bin/su").stat()
        assert (stat.S_IMODE(su.st_mode), su.st_uid) == (0o4755, 0)
        sgid = (root / "bin/sgid").stat()
        assert (stat.S_IMODE(sgid.st_mode), sgid.st_uid, sgid.st_gid) == (0o2711, 1000, 50)
        assert os.readlink(root / "bin/sh") == "/bin/busybox"
        rel = (root / "bin/rel").lstat()
        assert os.readlink(root / "bin/rel") == "../etc/motd" and (rel.st_uid, rel.st_gid) == (7, 8)
        etc = (root / "etc").stat()
        assert (stat.S_IMODE(etc.st_mode), etc.st_gid, etc.st_mtime) == (0o750, 42, 1600000000)
        motd = (root / "etc/motd").stat()
        assert (motd.st_uid, motd.st_gid, motd.st_mtime_ns) == (1234, 5678, 1700000000123456789)
        assert os.getxattr(root / "etc/motd", "user.comment") == b"hello"
        assert "security.selinux" not in os.listxattr(root / "etc/motd")
        assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
        assert stat.S_IMODE((root / "srv").stat().st_mode) == 0o2775
        pipe = (root / "run/pipe").lstat()
        assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620
        assert (pipe.st_uid, pipe.st_gid) == (3, 4)
    unpacked = cache.path(layer.diff_id)
    motd, motd2 = (unpacked / "etc/motd").stat(), (unpacked / "etc/motd2").stat()
    assert motd.st_ino == motd2.st_ino and motd.st_nlink == 2
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700  # setuid files out of reach


@pytest_twisted.ensureDeferred
async def test_whiteout_and_directory_made_again_in_one_layer(cache, tmp_path):
    """`rm -rf d && mkdir d && touch d/new`: the lower d is hidden, not merged."""
    layer = raw_layer([member(".wh.d"), member("d", tarfile.DIRTYPE), member("d/new")])
    path = await ensure(cache, tmp_path, layer)
    assert (path / "d").is_dir() and (path / "d/new").is_file()
    assert os.getxattr(path / "d", "trusted.overlay.opaque") == b"y"


@pytest_twisted.ensureDeferred
async def test_uncompressed_and_multi_member_gzip(cache, tmp_path):
    plain = raw_layer([member("f", data=b"plain")], compress=False, media_type=OCI_TAR)
    assert (await ensure(cache, tmp_path, plain) / "f").read_bytes() == b"plain"
    # gzip found by its magic whatever the media type, in several members
    raw = LayerBuilder().file("g", "gz").tar()
    blob = gzip.compress(raw[:700]) + gzip.compress(raw[700:]) + b"\0" * 10
    path = tmp_path / "multi.gz"
    path.write_bytes(blob)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    assert (await cache.ensure(diff_id, path, OCI_TAR) / "g").read_bytes() == b"gz"


# -- refusals -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_diff_id_mismatch_leaves_nothing(cache, tmp_path):
    good, other = LayerBuilder().file("a", "1").build(), LayerBuilder().file("b", "2").build()
    with pytest.raises(LayerMismatch, match="does not match its diff_id"):
        await cache.ensure(other.diff_id, write_blob(tmp_path, good), good.media_type)
    assert leftovers(cache) == []
    assert not cache.has(other.diff_id)


def hostile_layers(outside: Path) -> dict[str, tuple[list[tuple], str]]:
    """name -> (members, message); ``outside`` is where an escape would write."""
    out = str(outside)
    sym = tarfile.SYMTYPE
    return {
        "dotdot": ([member("../evil")], "escapes the layer"),
        "nested dotdot": ([member("a/../../evil")], "escapes the layer"),
        "absolute dotdot": ([member("/../../evil")], "escapes the layer"),
        "through abs symlink": (
            [member("a", sym, linkname=out), member("a/evil")],
            "writes through the symlink 'a'",
        ),
        "through rel symlink": (
            [member("a", sym, linkname="../../../.."), member("a/evil")],
            "writes through the symlink",
        ),
        "deep through symlink": (
            [member("d", tarfile.DIRTYPE), member("d/a", sym, linkname=out), member("d/a/b/c")],
            "writes through the symlink 'd/a'",
        ),
        "whiteout through symlink": (
            [member("a", sym, linkname=out), member("a/.wh.evil")],
            "writes through the symlink",
        ),
        "opaque through symlink": (
            [member("a", sym, linkname=out), member("a/.wh..wh..opq")],
            "writes through the symlink",
        ),
        "hardlink outside": (
            [member("x", tarfile.LNKTYPE, linkname="../../etc/passwd")],
            "escapes the layer",
        ),
        "hardlink absolute": (
            [member("x", tarfile.LNKTYPE, linkname="/etc/passwd")],
            "in this layer",
        ),
        "hardlink missing": ([member("x", tarfile.LNKTYPE, linkname="nope")], "in this layer"),
        "hardlink via symlink": (
            [member("s", sym, linkname="/etc"), member("x", tarfile.LNKTYPE, linkname="s/passwd")],
            "through the symlink 's'",
        ),
        "char device": (
            [member("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
            "device nodes",
        ),
        "whiteout device": ([member("w", tarfile.CHRTYPE)], "device nodes"),
        "block device": ([member("sda", tarfile.BLKTYPE, devmajor=8)], "device nodes"),
        "overlay xattr": (
            [member("f", pax_headers={"SCHILY.xattr.trusted.overlay.redirect": "/etc"})],
            "overlayfs's own attribute",
        ),
    }


@pytest.mark.parametrize("case", sorted(hostile_layers(Path("/x"))))
@pytest_twisted.ensureDeferred
async def test_unsafe_layers_refused(cache, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    members, message = hostile_layers(outside)[case]
    layer = raw_layer([member("ok"), *members])
    with pytest.raises(UnsafeLayer, match=message):
        await ensure(cache, tmp_path, layer)
    assert leftovers(cache) == []
    assert list(outside.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_zstd_refused(cache, tmp_path):
    plain = raw_layer([member("f")], compress=False)
    with pytest.raises(UnsupportedLayer, match="zstd"):
        await cache.ensure(plain.diff_id, write_blob(tmp_path, plain), OCI_ZSTD)
    blob = tmp_path / "zstd"
    blob.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    with pytest.raises(UnsupportedLayer, match="zstd"):
        await cache.ensure(plain.diff_id, blob, OCI_LAYER)
    assert leftovers(cache) == []


# -- sharing and pruning ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_ensure_unpacks_once(cache, tmp_path):
    layer = LayerBuilder().file("f", "x" * 100000).build()
    blob = write_blob(tmp_path, layer)
    calls = []
    original = cache._unpack

    def counting(*args):
        calls.append(args[0])
        return original(*args)

    cache._unpack = counting
    paths = await defer.gatherResults(
        [
            defer.ensureDeferred(cache.ensure(layer.diff_id, blob, layer.media_type))
            for _ in range(8)
        ]
    )
    assert calls == [layer.diff_id]
    assert set(paths) == {cache.path(layer.diff_id)}
    assert await cache.ensure(layer.diff_id, blob, layer.media_type) == paths[0]
    assert calls == [layer.diff_id]
    assert sorted(os.listdir(cache.tmp_dir)) == []


@pytest_twisted.ensureDeferred
async def test_prune(cache, tmp_path, monkeypatch):
    kept, gone1, gone2 = (LayerBuilder().file("f", str(i)).build() for i in range(3))
    for layer in (kept, gone1, gone2):
        await ensure(cache, tmp_path, layer)
    (cache.tmp_dir / "unpack.stale").mkdir()  # an unpack interrupted by a crash

    # an unpack in progress while pruning: held after unpacking, before publishing
    busy = LayerBuilder().file("busy", "b").build()
    release, unpacked = threading.Event(), threading.Event()
    real = layers_mod.unpack_stream

    def held(*args):
        result = real(*args)
        unpacked.set()
        release.wait(10)
        return result

    monkeypatch.setattr(layers_mod, "unpack_stream", held)
    pending = defer.ensureDeferred(ensure(cache, tmp_path, busy))
    while not unpacked.is_set():
        await task.deferLater(reactor, 0.01, lambda: None)
    removed = await cache.prune({kept.diff_id})
    release.set()
    assert sorted(removed) == sorted([gone1.diff_id, gone2.diff_id])
    assert await pending == cache.path(busy.diff_id)
    assert cache.has(kept.diff_id) and cache.has(busy.diff_id)
    assert not cache.has(gone1.diff_id) and not cache.has(gone2.diff_id)
    assert sorted(os.listdir(cache.link_dir)) == sorted(
        cache.short_name(d) for d in (kept.diff_id, busy.diff_id)
    )
    assert os.listdir(cache.tmp_dir) == []
    assert sorted(await cache.prune(set())) == sorted([kept.diff_id, busy.diff_id])
    assert leftovers(cache) == []


# -- overlay mounts ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_container_writes_go_to_upper(cache, tmp_path, mounts):
    layer = LayerBuilder().file("etc/a", "lower").file("etc/b", "b").build()  # one layer
    target = await mount_image(cache, tmp_path, [layer], mounts)
    (target / "etc/a").write_text("changed")
    (target / "etc/new").write_text("new")
    (target / "etc/b").unlink()
    unpacked, upper = cache.path(layer.diff_id), tmp_path / "c" / "upper"
    assert (unpacked / "etc/a").read_text() == "lower"
    assert (unpacked / "etc/b").read_text() == "b"
    assert not (unpacked / "etc/new").exists()
    assert (upper / "etc/a").read_text() == "changed"
    assert (upper / "etc/new").read_text() == "new"
    assert stat.S_ISCHR((upper / "etc/b").lstat().st_mode)
    assert sorted(os.listdir(target / "etc")) == ["a", "new"]


@pytest_twisted.ensureDeferred
async def test_120_layers_fit_in_one_mount(cache, tmp_path, mounts):
    image = [LayerBuilder().file(f"f/{i}", str(i)).file("top", str(i)).build() for i in range(120)]
    await defer.gatherResults([defer.ensureDeferred(ensure(cache, tmp_path, x)) for x in image])
    absolute = [cache.path(x.diff_id) for x in reversed(image)]
    with pytest.raises(RootfsError, match="more than the kernel's 4095"):
        overlay_options(absolute, tmp_path / "u", tmp_path / "w")
    target = await mount_image(cache, tmp_path, image, mounts)
    assert sorted(os.listdir(target / "f"), key=int) == [str(i) for i in range(120)]
    assert (target / "top").read_text() == "119"  # the last layer is on top


@pytest_twisted.ensureDeferred
async def test_repeated_and_empty_layers(cache, tmp_path, mounts):
    """The empty layer (1024 zero bytes) may appear several times in an image; overlayfs
    refuses a lower directory twice, lower_dirs names it once."""
    empty = raw_layer([])
    a = LayerBuilder().file("a", "1").build()
    b = LayerBuilder().file("a", "2").file("b", "b").build()
    target = await mount_image(cache, tmp_path, [a, empty, b, empty, a], mounts)
    assert (target / "a").read_text() == "1"
    assert sorted(os.listdir(target)) == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_unmount_is_idempotent_and_detaches_busy_mounts(cache, tmp_path, mounts):
    layer = LayerBuilder().file("f", "x").build()
    target = await mount_image(cache, tmp_path, [layer], mounts)
    with open(target / "f") as busy:  # umount says EBUSY: detached lazily
        await unmount(target)
        assert not is_mounted(target)
        assert busy.read() == "x"
    await unmount(target)
    await unmount(tmp_path / "never-mounted")


@pytest_twisted.ensureDeferred
async def test_mount_failure_is_reported(tmp_path):
    for sub in ("upper", "work", "rootfs"):
        (tmp_path / sub).mkdir()
    with pytest.raises(RootfsError, match="mounting the root filesystem"):
        await mount_overlay(
            [tmp_path / "missing"], tmp_path / "upper", tmp_path / "work", tmp_path / "rootfs"
        )
    assert not is_mounted(tmp_path / "rootfs")
    with pytest.raises(RootfsError, match="cannot be used"):
        overlay_options([tmp_path / "a,b"], tmp_path / "upper", tmp_path / "work")


# -- measured, not run by default --------------------------------------------------------


@slow
@pytest_twisted.ensureDeferred
async def test_measure_unpack_of_a_200mb_layer(cache, tmp_path):
    size = 200 * 1024 * 1024
    builder = LayerBuilder()
    builder.stream_file("big", size, lambda: _RandomReader(size, "big"))
    for i in range(2000):
        builder.file(f"small/{i // 100}/{i}", os.urandom(1000))
    start = time.monotonic()
    layer = builder.build_to(tmp_path / "big.tar.gz")
    built = time.monotonic() - start
    start = time.monotonic()
    path = await cache.ensure(layer.diff_id, layer.path, layer.media_type)
    took = time.monotonic() - start
    assert (path / "big").stat().st_size == size
    print(f"\nbuilt 200 MiB layer in {built:.1f}s; ensure() unpacked it in {took:.1f}s")
