"""Build Docker/OCI images as bytes without docker, and push them with the registry HTTP API.

Everything here is deterministic: fixed mtimes, sorted tar entries, gzip without a
timestamp, so the digests of the ready-made images are stable (on one host: the busybox
layer carries the host's /bin/busybox).

    img = busybox_image()                      # Docker v2 schema 2 manifest
    img = busybox_image(oci=True)              # OCI image manifest
    push(registry.url, "library/busybox", "latest", img, auth=("user", "pass"))

The ``Image`` result carries the manifest bytes, media type and digest, the config bytes
and digest and the layers (compressed bytes, digest, diff_id, size); a manifest list /
OCI index carries its child images in ``children``.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

# --- media types -------------------------------------------------------------------------

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

LIST_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
#: An Accept header that takes every manifest type the registry may hold.
ACCEPT_ALL = ", ".join(
    (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED)
)

#: The fixed timestamp of every tar entry and of every ``created`` field.
EPOCH = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_BUSYBOX = Path("/bin/busybox")

#: Applets linked to /bin/busybox in busybox_image() (each /bin/<name> -> busybox).
BUSYBOX_APPLETS = (
    "[", "awk", "base64", "basename", "cat", "chgrp", "chmod", "chown", "cmp", "cp", "cut",
    "date", "dd", "df", "diff", "dirname", "dmesg", "du", "echo", "env", "expr", "false",
    "find", "free", "grep", "gunzip", "gzip", "head", "hexdump", "hostname", "id", "ifconfig",
    "ip", "kill", "killall", "less", "ln", "ls", "md5sum", "mkdir", "mkfifo", "mktemp",
    "more", "mount", "mv", "nc", "nproc", "nslookup", "od", "pidof", "ping", "printf", "ps",
    "pwd", "readlink", "realpath", "rm", "rmdir", "sed", "seq", "setsid", "sh", "sha256sum",
    "sleep", "sort", "stat", "su", "sync", "tac", "tail", "tar", "tee", "test", "timeout",
    "top", "touch", "tr", "true", "tty", "umount", "uname", "uniq", "usleep", "vi", "wc",
    "httpd", "wget", "which", "whoami", "xargs", "yes",
)  # fmt: skip


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer blob. Small layers hold their bytes in ``_data``; big ones live in ``path``."""

    digest: str  # sha256 of the compressed blob
    diff_id: str  # sha256 of the uncompressed tar
    size: int  # length of the compressed blob
    media_type: str = DOCKER_LAYER
    path: Path | None = None
    _data: bytes | None = field(default=None, repr=False)

    @property
    def data(self) -> bytes:
        """The compressed blob (read from disk for a file-backed layer: mind the size)."""
        if self._data is not None:
            return self._data
        assert self.path is not None
        return self.path.read_bytes()

    def open(self) -> BinaryIO:
        """The compressed blob as a binary file object (no copy in memory for big layers)."""
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self.path is not None
        return open(self.path, "rb")

    def uncompressed(self) -> bytes:
        return gzip.decompress(self.data)

    def with_media_type(self, media_type: str) -> Layer:
        return Layer(self.digest, self.diff_id, self.size, media_type, self.path, self._data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclass(frozen=True)
class Blob:
    """Anything push() uploads: a config or a layer."""

    digest: str
    size: int
    open: Callable[[], BinaryIO]


@dataclass(frozen=True)
class Image:
    """A built image: one manifest (or manifest list / index) with all it refers to."""

    manifest: bytes
    media_type: str
    digest: str  # sha256 of ``manifest``
    config: bytes = b""  # empty for a manifest list / index
    config_digest: str = ""
    layers: tuple[Layer, ...] = ()
    children: tuple[Image, ...] = ()  # the images of a manifest list / index
    platform: dict[str, str] | None = None  # {"architecture": ..., "os": ..., "variant": ...}
    workdir: Path | None = None  # temp dir holding file-backed layers (big_image)

    @property
    def is_list(self) -> bool:
        return self.media_type in LIST_TYPES

    @property
    def manifest_json(self) -> dict[str, Any]:
        return json.loads(self.manifest)

    @property
    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config)

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def size(self) -> int:
        """Config plus compressed layers, as ``docker images`` counts a pulled image."""
        return len(self.config) + sum(layer.size for layer in self.layers)

    def child(self, architecture: str) -> Image:
        for image in self.children:
            if image.platform and image.platform["architecture"] == architecture:
                return image
        raise KeyError(architecture)

    def blobs(self) -> Iterator[Blob]:
        """Config and layers of this image (and of its children), each once."""
        seen: set[str] = set()
        for image in (*self.children, self):
            if image.config_digest and image.config_digest not in seen:
                seen.add(image.config_digest)
                yield Blob(image.config_digest, len(image.config), _opener(image.config))
            for layer in image.layers:
                if layer.digest not in seen:
                    seen.add(layer.digest)
                    yield Blob(layer.digest, layer.size, layer.open)

    def cleanup(self) -> None:
        """Remove the temp dir of file-backed layers (big_image); harmless otherwise."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


# --- layers ------------------------------------------------------------------------------


@dataclass
class _Entry:
    info: tarfile.TarInfo
    data: bytes | None = None
    reader: Callable[[], BinaryIO] | None = None


class LayerBuilder:
    """Collects tar entries and writes one deterministic gzip'd layer.

    Paths are relative to the image root ("bin/sh", "/bin/sh" also accepted); missing
    parent directories are added (0755, root). Entries are written sorted by path.
    """

    def __init__(self, mtime: int = EPOCH) -> None:
        self.mtime = mtime
        self.entries: dict[str, _Entry] = {}

    @staticmethod
    def _norm(path: str) -> str:
        path = path.strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"bad layer path {path!r}")
        return path

    def _info(self, path: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        return info

    def _add(self, entry: _Entry) -> LayerBuilder:
        name = entry.info.name
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.entries:
                self.entries[parent] = _Entry(self._info(parent, tarfile.DIRTYPE, 0o755, 0, 0))
        self.entries[name] = entry
        return self

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> LayerBuilder:
        path = self._norm(path)
        return self._add(_Entry(self._info(path, tarfile.DIRTYPE, mode, uid, gid)))

    def file(
        self, path: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> LayerBuilder:
        path = self._norm(path)
        if isinstance(data, str):
            data = data.encode()
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        return self._add(_Entry(info, data=data))

    def stream_file(
        self, path: str, size: int, reader: Callable[[], BinaryIO], mode: int = 0o644
    ) -> LayerBuilder:
        """A regular file whose ``size`` bytes come from ``reader()`` when the tar is written."""
        path = self._norm(path)
        info = self._info(path, tarfile.REGTYPE, mode, 0, 0)
        info.size = size
        return self._add(_Entry(info, reader=reader))

    def symlink(self, path: str, target: str) -> LayerBuilder:
        path = self._norm(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777, 0, 0)
        info.linkname = target
        return self._add(_Entry(info))

    def hardlink(self, path: str, target: str) -> LayerBuilder:
        path = self._norm(path)
        info = self._info(path, tarfile.LNKTYPE, 0o644, 0, 0)
        info.linkname = self._norm(target)
        return self._add(_Entry(info))

    def whiteout(self, path: str) -> LayerBuilder:
        """Delete ``path`` of a lower layer: an empty file ``<dir>/.wh.<name>``."""
        head, _, name = self._norm(path).rpartition("/")
        return self.file(f"{head}/.wh.{name}" if head else f".wh.{name}", b"")

    def opaque(self, path: str) -> LayerBuilder:
        """Hide everything lower layers put in directory ``path``: ``<dir>/.wh..wh..opq``."""
        path = self._norm(path)
        if path not in self.entries:
            self.dir(path)
        return self.file(f"{path}/.wh..wh..opq", b"")

    def _write_tar(self, out: BinaryIO) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                entry = self.entries[name]
                if entry.data is not None:
                    tar.addfile(entry.info, io.BytesIO(entry.data))
                elif entry.reader is not None:
                    with entry.reader() as src:
                        tar.addfile(entry.info, src)
                else:
                    tar.addfile(entry.info)

    def tar(self) -> bytes:
        """The uncompressed layer tar."""
        buf = io.BytesIO()
        self._write_tar(buf)
        return buf.getvalue()

    def build(self, media_type: str = DOCKER_LAYER, compresslevel: int = 6) -> Layer:
        """The layer in memory."""
        raw = self.tar()
        blob = gzip_bytes(raw, compresslevel)
        return Layer(sha256_digest(blob), sha256_digest(raw), len(blob), media_type, None, blob)

    def build_to(self, path: Path, media_type: str = DOCKER_LAYER, compresslevel: int = 1) -> Layer:
        """The layer streamed into ``path``: neither the tar nor the blob is held in memory."""
        with open(path, "wb") as fh:
            blob = _HashingWriter(fh)
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=blob, compresslevel=compresslevel, mtime=0
            ) as gz:
                raw = _HashingWriter(gz)
                self._write_tar(raw)
        return Layer(
            "sha256:" + blob.hash.hexdigest(),
            "sha256:" + raw.hash.hexdigest(),
            blob.size,
            media_type,
            path,
        )


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: Any) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.hash.update(b)
        self.size += len(b)
        self.out.write(b)
        return len(b)


def gzip_bytes(data: bytes, compresslevel: int = 6) -> bytes:
    """gzip without a timestamp or file name: the same input gives the same bytes."""
    return gzip.compress(data, compresslevel=compresslevel, mtime=0)


class _RandomReader(io.RawIOBase):
    """``size`` seeded pseudo-random (incompressible) bytes, produced as they are read."""

    def __init__(self, size: int, seed: int | str) -> None:
        self.left = size
        self.rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.left)
        if n:
            b[:n] = self.rng.randbytes(n)
            self.left -= n
        return n


# --- configs and manifests ---------------------------------------------------------------


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, indent=3).encode()


def make_config(
    layers: Iterable[Layer],
    config: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    architecture: str = "amd64",
    os_name: str = "linux",
    variant: str | None = None,
    created: str = CREATED,
) -> bytes:
    """Image config JSON (Docker image spec v1 / OCI image config)."""
    diff_ids = [layer.diff_id for layer in layers]
    if history is None:
        history = [{"created": created, "created_by": f"layer {i}"} for i in range(len(diff_ids))]
    real = [h for h in history if not h.get("empty_layer")]
    if len(real) != len(diff_ids):
        raise ValueError(f"{len(real)} non-empty history entries for {len(diff_ids)} layers")
    doc: dict[str, Any] = {"architecture": architecture, "os": os_name}
    if variant:
        doc["variant"] = variant
    doc["created"] = created
    doc["config"] = dict(config or {})
    doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    doc["history"] = history
    return json.dumps(doc, separators=(",", ":")).encode()


def make_image(
    layers: Iterable[Layer],
    config: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    *,
    oci: bool = False,
    architecture: str = "amd64",
    os_name: str = "linux",
    variant: str | None = None,
    annotations: dict[str, str] | None = None,
    config_bytes: bytes | None = None,
    workdir: Path | None = None,
) -> Image:
    """An image from its layers: config JSON plus a Docker schema 2 or OCI manifest.

    ``config_bytes`` overrides the generated config (to test odd configs)."""
    layer_type = OCI_LAYER if oci else DOCKER_LAYER
    layers = tuple(layer.with_media_type(layer_type) for layer in layers)
    if config_bytes is None:
        config_bytes = make_config(layers, config, history, architecture, os_name, variant)
    config_digest = sha256_digest(config_bytes)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
            "size": len(config_bytes),
            "digest": config_digest,
        },
        "layers": [layer.descriptor() for layer in layers],
    }
    if annotations and oci:
        doc["annotations"] = dict(annotations)
    manifest = _dump(doc)
    platform = {"architecture": architecture, "os": os_name}
    if variant:
        platform["variant"] = variant
    return Image(
        manifest=manifest,
        media_type=doc["mediaType"],
        digest=sha256_digest(manifest),
        config=config_bytes,
        config_digest=config_digest,
        layers=layers,
        platform=platform,
        workdir=workdir,
    )


def make_index(children: Iterable[Image], *, oci: bool = False) -> Image:
    """A Docker manifest list (or an OCI index) of ``children``, each with its platform."""
    children = tuple(children)
    entries = []
    for child in children:
        entry: dict[str, Any] = {
            "mediaType": child.media_type,
            "size": len(child.manifest),
            "digest": child.digest,
        }
        if child.platform:
            entry["platform"] = dict(child.platform)
        entries.append(entry)
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    manifest = _dump({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return Image(manifest, media_type, sha256_digest(manifest), children=children)


# --- ready-made images -------------------------------------------------------------------

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


@functools.cache
def busybox_layer() -> Layer:
    """The busybox root filesystem: /bin/busybox from the host plus applet symlinks."""
    if not HOST_BUSYBOX.exists():
        raise FileNotFoundError("/bin/busybox is missing (apt-get install busybox-static)")
    b = LayerBuilder()
    for d in ("bin", "dev", "etc", "home", "proc", "sys", "usr", "var"):
        b.dir(d)
    b.dir("root", 0o700)
    b.dir("tmp", 0o1777)
    b.dir("var/tmp", 0o1777)
    b.file("bin/busybox", HOST_BUSYBOX.read_bytes(), 0o755)
    for applet in BUSYBOX_APPLETS:
        b.symlink(f"bin/{applet}", "busybox")
    b.file("etc/passwd", PASSWD)
    b.file("etc/group", GROUP)
    b.file("etc/os-release", 'NAME="sdcd test busybox"\nID=busybox\n')
    return b.build()


BUSYBOX_CONFIG: dict[str, Any] = {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["sh"]}


def _busybox_history() -> list[dict[str, Any]]:
    return [
        {"created": CREATED, "created_by": "/bin/sh -c #(nop) ADD file:busybox in / "},
        {"created": CREATED, "created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
    ]


@functools.cache
def busybox_image(oci: bool = False) -> Image:
    """One layer: /bin/busybox and its applets, /etc/passwd (root, nobody), /tmp; Cmd sh."""
    return make_image([busybox_layer()], BUSYBOX_CONFIG, _busybox_history(), oci=oci)


@functools.cache
def multilayer_image(oci: bool = False) -> Image:
    """busybox + a layer adding /data/a, /data/b, /data/dir/x + a layer deleting /data/a
    (whiteout) and making /data/dir opaque with a new /data/dir/y.

    Result: /data/b ("b\\n"), /data/dir/y ("y\\n"); no /data/a, no /data/dir/x."""
    add = (
        LayerBuilder().file("data/a", "a\n").file("data/b", "b\n").file("data/dir/x", "x\n").build()
    )
    remove = (
        LayerBuilder().dir("data").whiteout("data/a").opaque("data/dir").file("data/dir/y", "y\n")
    ).build()
    history = [
        *_busybox_history(),
        {"created": CREATED, "created_by": "/bin/sh -c #(nop) ADD dir:data in /data "},
        {"created": CREATED, "created_by": "/bin/sh -c rm /data/a; rm -rf /data/dir/*; ..."},
        {"created": CREATED, "created_by": "/bin/sh -c #(nop) LABEL layers=3", "empty_layer": True},
    ]
    config = {**BUSYBOX_CONFIG, "Labels": {"layers": "3"}}
    return make_image([busybox_layer(), add, remove], config, history, oci=oci)


CONFIGURED_CONFIG: dict[str, Any] = {
    "User": "nobody",
    "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
    "Env": [f"PATH={DEFAULT_PATH}", "GREETING=hello world", "EMPTY="],
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo $GREETING from $(pwd) as $(id -un)"],
    "Volumes": {"/srv/data": {}},
    "WorkingDir": "/srv/app",
    "Labels": {"org.example.name": "configured", "com.example.empty": ""},
    "StopSignal": "SIGQUIT",
}


@functools.cache
def configured_image(oci: bool = False) -> Image:
    """busybox + a small layer (/srv/app, /srv/data owned by nobody) with Entrypoint, Cmd,
    Env, WorkingDir, User, ExposedPorts, Volumes, Labels and StopSignal set
    (see CONFIGURED_CONFIG)."""
    app = (
        LayerBuilder()
        .dir("srv/app", 0o755, 65534, 65534)
        .file("srv/app/hello.txt", "hello\n", 0o644, 65534, 65534)
        .dir("srv/data", 0o755, 65534, 65534)
        .build()
    )
    history = [*_busybox_history()]
    for key in ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "Labels"):
        history.append(
            {"created": CREATED, "created_by": f"/bin/sh -c #(nop) {key}", "empty_layer": True}
        )
    history.insert(2, {"created": CREATED, "created_by": "/bin/sh -c mkdir -p /srv/app"})
    return make_image([busybox_layer(), app], CONFIGURED_CONFIG, history, oci=oci)


@functools.cache
def arm64_image(oci: bool = False) -> Image:
    """A tiny linux/arm64/v8 image (no runnable binary: just /etc/arch)."""
    layer = LayerBuilder().file("etc/arch", "arm64\n").build()
    return make_image([layer], {"Cmd": ["/bin/true"]}, oci=oci, architecture="arm64", variant="v8")


@functools.cache
def manifest_list_image(oci: bool = False) -> Image:
    """A Docker manifest list (OCI index if ``oci``) of busybox (linux/amd64) and a tiny
    linux/arm64/v8 image. ``image.child("amd64")`` is busybox_image(oci)."""
    return make_index([busybox_image(oci), arm64_image(oci)], oci=oci)


def big_image(
    size_mb: int,
    layers: int = 1,
    *,
    seed: int = 0,
    base: bool = True,
    oci: bool = False,
    directory: str | os.PathLike[str] | None = None,
) -> Image:
    """``size_mb`` MiB of incompressible seeded pseudo-random data split over ``layers``
    layers (each holding one file /big/layer<i>.bin), on top of the busybox layer if
    ``base`` (so it runs). Layers are streamed to files in a temp dir (under ``directory``)
    and never held in memory; call ``image.cleanup()`` (or use ``with``) when done —
    the dir is also removed when the Image is garbage collected or at exit.

    Gzip level 1 (random data does not compress anyway): ~10 s for 200 MB."""
    if layers < 1 or size_mb < 0:
        raise ValueError("need layers >= 1 and size_mb >= 0")
    workdir = Path(tempfile.mkdtemp(prefix="sdcd-bigimage-", dir=directory))
    total = size_mb * 1024 * 1024
    built: list[Layer] = [busybox_layer()] if base else []
    history = _busybox_history()[:1] if base else []
    try:
        for i in range(layers):
            size = total // layers + (1 if i < total % layers else 0)
            b = LayerBuilder()
            b.stream_file(
                f"big/layer{i}.bin",
                size,
                functools.partial(_RandomReader, size, f"{seed}:{i}"),
            )
            built.append(b.build_to(workdir / f"layer{i}.tar.gz"))
            history.append({"created": CREATED, "created_by": f"big layer {i} ({size} bytes)"})
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    image = make_image(built, BUSYBOX_CONFIG, history, oci=oci, workdir=workdir)
    weakref.finalize(image, shutil.rmtree, str(workdir), True)
    return image


# --- schema 1 ----------------------------------------------------------------------------


def schema1_manifest(image: Image, name: str, tag: str, *, signed: bool = True) -> bytes:
    """A Docker v2 schema 1 manifest for a (single-platform) image, signed like libtrust
    does (ES256 JWS with a throw-away key, ``application/vnd.docker.distribution.manifest
    .v1+prettyjws``) unless ``signed`` is False (plain ``...v1+json``).

    Its digest (what a registry reports) is sha256 of the manifest WITHOUT the signatures:
    see schema1_digest()."""
    config = image.config_json
    layers = list(image.layers)
    history = config.get("history") or []
    # One v1 entry per history entry, empty ones included; fsLayers top first.
    entries: list[tuple[dict[str, Any], str]] = []
    it = iter(layers)
    empty_blob = SCHEMA1_EMPTY_LAYER_DIGEST
    for h in history:
        blob = empty_blob if h.get("empty_layer") else next(it).digest
        entries.append((h, blob))
    ids: list[str] = []
    v1: list[dict[str, Any]] = []
    for i, (h, _blob) in enumerate(entries):
        ident = hashlib.sha256(f"{image.config_digest}:{i}".encode()).hexdigest()
        item: dict[str, Any] = {"id": ident, "created": h.get("created", CREATED)}
        if ids:
            item["parent"] = ids[-1]
        item["container_config"] = {"Cmd": [h.get("created_by", "")]}
        if h.get("empty_layer"):
            item["throwaway"] = True
        ids.append(ident)
        v1.append(item)
    if v1:  # the top entry carries the image config
        top = {k: v for k, v in config.items() if k not in ("rootfs", "history")}
        top.update({"id": ids[-1], "parent": ids[-2]} if len(ids) > 1 else {"id": ids[-1]})
        v1[-1] = {**top, "created": v1[-1]["created"]}
    doc = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": config.get("architecture", "amd64"),
        "fsLayers": [{"blobSum": blob} for _h, blob in reversed(entries)],
        "history": [{"v1Compatibility": json.dumps(item)} for item in reversed(v1)],
    }
    payload = _dump(doc)
    if not signed:
        return payload
    return _libtrust_sign(payload)


def schema1_digest(manifest: bytes) -> str:
    """The digest a registry gives a (signed) schema 1 manifest: of its JWS payload."""
    doc = json.loads(manifest)
    if "signatures" not in doc:
        return sha256_digest(manifest)
    protected = json.loads(_b64d(doc["signatures"][0]["protected"]))
    return sha256_digest(manifest[: protected["formatLength"]] + _b64d(protected["formatTail"]))


#: The gzip'd empty tar (1024 zero bytes, as Go's gzip writes it) that schema 1
#: ``throwaway`` history entries point at; push it (push_blob) before such a manifest.
SCHEMA1_EMPTY_LAYER = bytes(
    [31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 98, 24, 5, 163, 96, 20, 140, 88, 0, 8, 0, 0, 255,
     255, 46, 175, 181, 239, 0, 4, 0, 0]
)  # fmt: skip
SCHEMA1_EMPTY_LAYER_DIGEST = (
    "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def libtrust_key_id(public_key: Any) -> str:
    """libtrust's key ID: base32 of the first 240 bits of sha256(DER SubjectPublicKeyInfo),
    in 12 groups of 4 joined by ':' (what docker/distribution matches a JWT ``kid`` with)."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))


def es256_sign(private_key: Any, data: bytes) -> bytes:
    """An ES256 JWS signature: r || s, 32 bytes each (not DER)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _libtrust_sign(payload: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    # libtrust: the signatures go in before the closing "\n}" of the indented JSON.
    tail_at = payload.rindex(b"}")
    while payload[tail_at - 1 : tail_at] in (b"\n", b" "):
        tail_at -= 1
    format_length, format_tail = tail_at, payload[tail_at:]
    protected = _b64(
        json.dumps(
            {"formatLength": format_length, "formatTail": _b64(format_tail), "time": CREATED}
        ).encode()
    )
    signing_input = f"{protected}.{_b64(payload)}".encode()
    signature = {
        "header": {
            "jwk": {
                "crv": "P-256",
                "kid": libtrust_key_id(key.public_key()),
                "kty": "EC",
                "x": _b64(numbers.x.to_bytes(32, "big")),
                "y": _b64(numbers.y.to_bytes(32, "big")),
            },
            "alg": "ES256",
        },
        "signature": _b64(es256_sign(key, signing_input)),
        "protected": protected,
    }
    sigs = json.dumps([signature], indent=3).replace("\n", "\n   ").encode()
    return payload[:format_length] + b',\n   "signatures": ' + sigs + format_tail


# --- the registry HTTP API ---------------------------------------------------------------


class RegistryError(Exception):
    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {url}: {status} {body[:500]!r}")


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def digest(self) -> str | None:
        return self.headers.get("Docker-Content-Digest")


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` -> ("bearer", {realm: ..., ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): m[3] if m[2] is None else m[2] for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


class Credentials:
    """Answers registry challenges like the docker CLI: Basic with user/password, Bearer by
    asking the realm (token server) for a token, with Basic credentials if there are any
    (anonymous otherwise). Tokens are cached per scope."""

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.username = username
        self.password = password
        self.tokens: dict[tuple[str, str], str] = {}
        self.token_requests: list[str] = []  # token server URLs asked, for tests

    def basic(self) -> str | None:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __call__(self, scheme: str, params: dict[str, str]) -> str | None:
        """The Authorization header value for this challenge, or None to give up."""
        if scheme == "basic":
            return self.basic()
        if scheme != "bearer" or "realm" not in params:
            return None
        key = (params["realm"], params.get("scope", ""))
        if key not in self.tokens:
            self.tokens[key] = self.fetch_token(params)
        return "Bearer " + self.tokens[key]

    def forget(self, params: dict[str, str]) -> None:
        """Drop the cached token for this challenge (the registry refused it)."""
        self.tokens.pop((params.get("realm", ""), params.get("scope", "")), None)

    def fetch_token(self, params: dict[str, str]) -> str:
        query = [(k, params[k]) for k in ("service",) if k in params]
        query += [("scope", s) for s in params.get("scope", "").split(" ") if s]
        if self.username is not None:
            query.append(("account", self.username))
        url = params["realm"] + ("&" if "?" in params["realm"] else "?")
        url += urllib.parse.urlencode(query)
        self.token_requests.append(url)
        headers = {}
        if (basic := self.basic()) is not None:
            headers["Authorization"] = basic
        resp = _request("GET", url, headers=headers)
        if resp.status != 200:
            raise RegistryError("GET", url, resp.status, resp.body)
        doc = resp.json
        return doc.get("token") or doc["access_token"]


AuthHandler = Callable[[str, dict[str, str]], "str | None"]


def _auth_handler(auth: Any) -> AuthHandler | None:
    if auth is None:
        return Credentials()  # anonymous: still follows a Bearer challenge, like docker
    if isinstance(auth, tuple):
        return Credentials(*auth)
    return auth


def _request(
    method: str,
    url: str,
    body: bytes | BinaryIO | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Response:
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.netloc, timeout=timeout, blocksize=1 << 20)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data)
    finally:
        conn.close()


class RegistryClient:
    """A minimal v2 registry client for tests: follows auth challenges and relative
    Locations, raises RegistryError on unexpected statuses. When the token server refuses
    the credentials, the registry's 401 is the answer (the refusal is in ``auth_error``)."""

    def __init__(self, url: str, auth: Any = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.auth = _auth_handler(auth)
        self.timeout = timeout
        self._authz: str | None = None  # the last Authorization that worked
        self.auth_error: RegistryError | None = None  # the token server's refusal, if any

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Callable[[], BinaryIO] | None = None,
        headers: dict[str, str] | None = None,
        expect: Iterable[int] | None = (200,),
    ) -> Response:
        """``body`` is bytes or a callable opening a file (re-opened if auth makes us retry)."""
        url = path if "://" in path else self.url + path
        headers = dict(headers or {})
        for attempt in range(2):
            send = dict(headers)
            if self._authz and "Authorization" not in send:
                send["Authorization"] = self._authz
            stream = body() if callable(body) else None
            try:
                resp = _request(
                    method, url, stream if stream is not None else body, send, self.timeout
                )
            finally:
                if stream is not None:
                    stream.close()
            challenge = resp.headers.get("WWW-Authenticate")
            if resp.status == 401 and challenge and attempt == 0 and self.auth is not None:
                scheme, params = parse_challenge(challenge)
                try:
                    value = self.auth(scheme, params)
                    if value is not None and value == send.get("Authorization"):
                        forget = getattr(self.auth, "forget", None)  # a cached token expired?
                        if forget is not None:
                            forget(params)
                            value = self.auth(scheme, params)
                except RegistryError as e:  # the token server said no: keep the 401
                    self.auth_error = e
                    break
                if value is None or value == send.get("Authorization"):
                    break
                self._authz = value
                continue
            break
        if expect is not None and resp.status not in tuple(expect):
            raise RegistryError(method, url, resp.status, resp.body)
        return resp

    # -- reads

    def ping(self) -> Response:
        return self.request("GET", "/v2/", expect=None)

    def get_manifest(self, repo: str, ref: str, accept: str = ACCEPT_ALL) -> Response:
        return self.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})

    def head_manifest(self, repo: str, ref: str, accept: str = ACCEPT_ALL) -> Response:
        return self.request(
            "HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, expect=None
        )

    def get_blob(self, repo: str, digest: str) -> bytes:
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", expect=(200, 307))
        if resp.status == 307:  # a redirecting storage backend
            resp = RegistryClient(resp.headers["Location"]).request("GET", "")
        return resp.body

    def blob_exists(self, repo: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}", expect=(200, 404)).status == 200

    def tags(self, repo: str) -> list[str]:
        return self.request("GET", f"/v2/{repo}/tags/list").json.get("tags") or []

    def catalog(self) -> list[str]:
        return self.request("GET", "/v2/_catalog").json.get("repositories") or []

    # -- writes

    def push_blob(
        self, repo: str, digest: str, data: bytes | Callable[[], BinaryIO], size: int | None = None
    ) -> None:
        """Monolithic upload: POST .../blobs/uploads/, then PUT <location>&digest=..."""
        if isinstance(data, bytes):
            size = len(data)
        assert size is not None
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"", expect=(202,))
        location = urllib.parse.urljoin(self.url + "/", resp.headers["Location"])
        location += ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        self.request("PUT", location, data, headers, expect=(201,))

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; the registry's Docker-Content-Digest."""
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            body,
            {"Content-Type": media_type},
            expect=(201,),
        )
        return resp.digest or ""

    def delete_manifest(self, repo: str, digest: str) -> None:
        self.request("DELETE", f"/v2/{repo}/manifests/{digest}", expect=(202,))

    def push(self, repo: str, tag: str | None, image: Image) -> str:
        """Blobs (skipping those the registry has), child manifests by digest, then the
        manifest under ``tag`` (by digest if None). The registry's digest of it."""
        for blob in image.blobs():
            if not self.blob_exists(repo, blob.digest):
                self.push_blob(repo, blob.digest, blob.open, blob.size)
        for child in image.children:
            self.put_manifest(repo, child.digest, child.manifest, child.media_type)
        return self.put_manifest(repo, tag or image.digest, image.manifest, image.media_type)


def push(registry_url: str, repo: str, tag: str | None, image: Image, auth: Any = None) -> str:
    """Push ``image`` to ``registry_url`` (``http://127.0.0.1:port``) as ``repo:tag``.

    ``auth``: None (anonymous; Bearer challenges still answered with an anonymous token),
    ``(user, password)`` (Basic, or Basic to the token server for Bearer), or a callable
    ``(scheme, params) -> Authorization header value | None`` given the parsed
    WWW-Authenticate challenge. Returns the registry's Docker-Content-Digest."""
    return RegistryClient(registry_url, auth).push(repo, tag, image)


def put_manifest(
    registry_url: str, repo: str, ref: str, body: bytes, media_type: str, auth: Any = None
) -> str:
    """PUT raw manifest bytes (e.g. a schema 1 one); the registry's digest. RegistryError
    (with ``.status`` and ``.body``) if the registry refuses it."""
    return RegistryClient(registry_url, auth).put_manifest(repo, ref, body, media_type)


def push_blob(registry_url: str, repo: str, data: bytes, auth: Any = None) -> str:
    """Upload one blob; its digest."""
    digest = sha256_digest(data)
    RegistryClient(registry_url, auth).push_blob(repo, digest, data)
    return digest
