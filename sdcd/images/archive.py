"""``docker save`` / ``docker load`` archives: the OCI image layout with dockerd's
``manifest.json`` beside it (what Docker 25+ writes, and what every dockerd loads).

Writing streams the stored blobs as they are (layers stay compressed; dockerd and sdcd
both detect compression on load). Reading is done in a thread over a file: every
member name is checked before anything is stored, each layer's uncompressed digest must
be the config's diff_id, and blobs are published only once the whole archive checks out.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from sdcd.images import manifest as mf

CHUNK = 1 << 20
MAX_SMALL = 16 * 1024 * 1024


class ArchiveError(ValueError):
    """The archive is malformed or unsafe; the message is for the user."""


# -- writing ---------------------------------------------------------------------------


@attrs.frozen
class SavedImage:
    """What one image contributes to an archive."""

    config_digest: str
    layer_digests: tuple[str, ...]
    layer_types: tuple[str, ...]
    repo_tags: tuple[str, ...]


def _json_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _oci_manifest(image: SavedImage, config_size: int, layer_sizes: list[int]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mf.OCI_MANIFEST,
            "config": {
                "mediaType": mf.OCI_CONFIG,
                "digest": image.config_digest,
                "size": config_size,
            },
            "layers": [
                {"mediaType": _oci_layer_type(t), "digest": d, "size": s}
                for d, t, s in zip(image.layer_digests, image.layer_types, layer_sizes, strict=True)
            ],
        }
    ).encode()


def _oci_layer_type(media_type: str) -> str:
    return mf.OCI_LAYER_GZIP if media_type in (mf.DOCKER_LAYER, mf.OCI_LAYER_GZIP) else media_type


def archive_plan(images: list[SavedImage], blob_path) -> list[tuple[str, Any]]:
    """The members in order: (name, bytes) for small documents, (name, Path) for blobs.
    Each blob appears once however many images share it."""
    members: list[tuple[str, Any]] = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
    seen: set[str] = set()
    index, manifest_json = [], []
    for image in images:
        paths = []
        for digest in (image.config_digest, *image.layer_digests):
            name = f"blobs/sha256/{digest[7:]}"
            paths.append(name)
            if digest not in seen:
                seen.add(digest)
                members.append((name, blob_path(digest)))
        sizes = [blob_path(d).stat().st_size for d in image.layer_digests]
        oci = _oci_manifest(image, blob_path(image.config_digest).stat().st_size, sizes)
        oci_digest = mf.digest_of(oci)
        if oci_digest not in seen:
            seen.add(oci_digest)
            members.append((f"blobs/sha256/{oci_digest[7:]}", oci))
        for tag in image.repo_tags or (None,):
            entry = {"mediaType": mf.OCI_MANIFEST, "digest": oci_digest, "size": len(oci)}
            if tag:
                entry["annotations"] = {
                    "io.containerd.image.name": tag,
                    "org.opencontainers.image.ref.name": tag.rsplit(":", 1)[-1],
                }
            index.append(entry)
        manifest_json.append(
            {"Config": paths[0], "RepoTags": list(image.repo_tags) or None, "Layers": paths[1:]}
        )
    members.append(
        (
            "index.json",
            json.dumps(
                {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": index}
            ).encode(),
        )
    )
    members.append(("manifest.json", json.dumps(manifest_json).encode()))
    return members


def tar_chunks(members: list[tuple[str, Any]]) -> Iterator[bytes]:
    """The archive as a sequence of chunks (run in a thread: it reads blob files)."""
    out = io.BytesIO()
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    for name, content in members:
        if isinstance(content, bytes):
            info, data = _json_member(name, content)
            tar.addfile(info, io.BytesIO(data))
        else:
            info = tarfile.TarInfo(name)
            info.size = content.stat().st_size
            info.mode = 0o644
            with open(content, "rb") as f:
                tar.addfile(info, f)
        if out.tell() >= CHUNK:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    tar.close()
    yield out.getvalue()


# -- reading ---------------------------------------------------------------------------


@attrs.frozen
class LoadedLayer:
    digest: str  # of the stored (gzip) blob
    diff_id: str
    size: int
    media_type: str


@attrs.frozen
class LoadedImage:
    config_digest: str
    config_raw: bytes
    layers: tuple[LoadedLayer, ...]
    repo_tags: tuple[str, ...]


def _safe_name(name: str) -> str:
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal.startswith("..") or "\0" in name:
        raise ArchiveError(f"unsafe path in archive: {name!r}")
    return normal


def _index(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Regular files by normalised name; links, devices and escaping names refused."""
    files = {}
    for member in tar.getmembers():
        name = _safe_name(member.name)
        if member.isdir():
            continue
        if not member.isfile():
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise ArchiveError(f"unexpected {kind} in archive: {member.name!r}")
        files[name] = member
    return files


def _read_small(tar, files, name: str) -> bytes:
    member = files.get(_safe_name(name))
    if member is None:
        raise ArchiveError(f"archive lacks {name!r}")
    if member.size > MAX_SMALL:
        raise ArchiveError(f"{name!r} is too large")
    return tar.extractfile(member).read()


def _is_gzip(head: bytes) -> bool:
    return head[:2] == b"\x1f\x8b"


def _stage_layer(src: IO[bytes], tmp_dir: Path) -> tuple[Path, str, str, int]:
    """Copy a layer into a gzip file under tmp_dir: (path, gzip digest, diff_id, size)."""
    head = src.read(2)
    fd, path = tempfile.mkstemp(dir=tmp_dir)
    stored, plain = hashlib.sha256(), hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        if _is_gzip(head):
            inflate = zlib.decompressobj(wbits=47)
            chunk = head
            while chunk:
                stored.update(chunk)
                out.write(chunk)
                try:
                    plain.update(inflate.decompress(chunk))
                except zlib.error as e:
                    raise ArchiveError(f"corrupt compressed layer: {e}") from None
                chunk = src.read(CHUNK)
            plain.update(inflate.flush())
        else:
            writer = _HashingWriter(out, stored)
            with gzip.GzipFile(fileobj=writer, mode="wb", compresslevel=1, mtime=0) as gz:
                chunk = head
                while chunk:
                    plain.update(chunk)
                    gz.write(chunk)
                    chunk = src.read(CHUNK)
    size = Path(path).stat().st_size
    return Path(path), "sha256:" + stored.hexdigest(), "sha256:" + plain.hexdigest(), size


class _HashingWriter:
    def __init__(self, out, hasher) -> None:
        self._out, self._hasher = out, hasher

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


def read_archive(source: IO[bytes], tmp_dir: Path) -> tuple[list[LoadedImage], dict[str, Path]]:
    """Check a whole archive; (images, staged blob files by digest). Nothing is
    published: the caller moves the staged files into the blob store."""
    staged: dict[str, Path] = {}
    try:
        with tarfile.open(fileobj=source, mode="r:*") as tar:
            files = _index(tar)
            try:
                entries = json.loads(_read_small(tar, files, "manifest.json"))
            except ValueError:
                raise ArchiveError("manifest.json is not valid JSON") from None
            if not isinstance(entries, list) or not entries:
                raise ArchiveError("manifest.json lists no images")
            images = [_load_one(tar, files, entry, tmp_dir, staged) for entry in entries]
    except tarfile.TarError as e:
        discard(staged)
        raise ArchiveError(f"not a valid image archive: {e}") from None
    except BaseException:
        discard(staged)
        raise
    return images, staged


def _load_one(tar, files, entry, tmp_dir, staged) -> LoadedImage:
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise ArchiveError("manifest.json entry without Config")
    layers_names = entry.get("Layers") or []
    tags = entry.get("RepoTags") or []
    if not isinstance(layers_names, list) or not all(isinstance(n, str) for n in layers_names):
        raise ArchiveError("manifest.json entry with malformed Layers")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ArchiveError("manifest.json entry with malformed RepoTags")
    config_raw = _read_small(tar, files, entry["Config"])
    try:
        config = mf.parse_config(config_raw)
    except mf.ManifestError as e:
        raise ArchiveError(str(e)) from None
    if len(config.rootfs_diff_ids) != len(layers_names):
        raise ArchiveError("layers in manifest.json don't match the image configuration")
    layers = []
    for name, diff_id in zip(layers_names, config.rootfs_diff_ids, strict=True):
        member = files.get(_safe_name(name))
        if member is None:
            raise ArchiveError(f"archive lacks layer {name!r}")
        path, digest, actual, size = _stage_layer(tar.extractfile(member), tmp_dir)
        if actual != diff_id:
            path.unlink()
            raise ArchiveError(f"layer {name} does not match its diff_id {diff_id}")
        if digest in staged:
            path.unlink()
        else:
            staged[digest] = path
        layers.append(LoadedLayer(digest, diff_id, size, mf.DOCKER_LAYER))
    return LoadedImage(mf.digest_of(config_raw), config_raw, tuple(layers), tuple(tags))


def discard(staged: dict[str, Path]) -> None:
    for path in staged.values():
        path.unlink(missing_ok=True)


def publish(staged: dict[str, Path], blob_path) -> None:
    """Move staged blob files into the store (content-addressed: an existing one stays)."""
    for digest, path in staged.items():
        target = blob_path(digest)
        if target.exists():
            path.unlink(missing_ok=True)
        else:
            shutil.move(path, target)
