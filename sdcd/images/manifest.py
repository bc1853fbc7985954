"""Registry manifests and image configs: what a pull reads before it downloads layers.

Everything here comes from a registry sdcd does not control, so every document is
checked field by field and anything malformed becomes a ``ManifestError`` with a message
for the user: never a ``KeyError`` deep inside a pull. The types and rules follow the
Docker v2 schema 2 and OCI image specs as dockerd and containerd apply them; schema 1
is recognised only to be refused with dockerd's explanation.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import attrs

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED_MANIFEST = "application/vnd.docker.distribution.manifest.v1+prettyjws"

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDISTRIBUTABLE_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDISTRIBUTABLE_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
SCHEMA1_TYPES = frozenset({SCHEMA1_MANIFEST, SCHEMA1_SIGNED_MANIFEST})
CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})
LAYER_TYPES = frozenset(
    {
        DOCKER_LAYER,
        DOCKER_FOREIGN_LAYER,
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_NONDISTRIBUTABLE_LAYER,
        OCI_NONDISTRIBUTABLE_LAYER_GZIP,
        OCI_NONDISTRIBUTABLE_LAYER_ZSTD,
    }
)
# dockerd accepts layer types by prefix too (e.g. a Docker-style uncompressed ".tar").
_LAYER_PREFIXES = ("application/vnd.docker.image.rootfs.", "application/vnd.oci.image.layer.")

# What a pull asks for, best first. Schema 1 comes last, only so that an image stored
# that way is recognised and refused with an explanation rather than a bare 404.
ACCEPT: tuple[str, ...] = (
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    SCHEMA1_SIGNED_MANIFEST,
    SCHEMA1_MANIFEST,
)

SCHEMA1_REMOVED = (
    "support for Docker Image manifest version 2, schema 1 has been removed: ask the "
    "image's author to push it again, or convert it to a newer format (OCI, or Docker "
    "image manifest v2, schema 2). More information at "
    "https://docs.docker.com/go/deprecated-image-specs/"
)

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_SIZE = 2**63 - 1  # Go's int64: a larger size is a lie or an attack


class ManifestError(ValueError):
    """A manifest or config is unusable; the message is for the user."""


@attrs.frozen
class Platform:
    """Where an image in a list runs: ``linux``/``amd64``, ``linux``/``arm64``/``v8``."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture, self.variant or ""]
        return "/".join(p for p in parts if p)


@attrs.frozen
class Descriptor:
    """A pointer to content by digest, as manifests and lists hold them."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()


@attrs.frozen
class ImageManifest:
    """One image: its config blob and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@attrs.frozen
class ManifestList:
    """A multi-platform image: one manifest per platform (Docker list or OCI index)."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@attrs.frozen
class ImageConfig:
    """An image's config document; ``raw`` is kept byte for byte, since the image ID is
    its sha256 and ``docker inspect`` shows what it says."""

    architecture: str
    os: str
    config: dict[str, Any]
    rootfs_diff_ids: tuple[str, ...]
    history: tuple[dict[str, Any], ...]
    created: str | None
    author: str | None
    raw: bytes

    @property
    def id(self) -> str:
        """The image ID: the digest of the config's exact bytes."""
        return digest_of(self.raw)


# -- digests ------------------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_digest(data: bytes, digest: str) -> None:
    """Refuse content that is not what was asked for: a registry may be wrong or hostile."""
    _check_digest(digest, "digest")
    actual = digest_of(data)
    if actual != digest:
        raise ManifestError(f"content verification failed: expected {digest}, got {actual}")


def _check_digest(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{where}: a digest must be a string")
    if _DIGEST_RE.fullmatch(value):
        return value
    algorithm = value.partition(":")[0]
    if ":" in value and algorithm != "sha256":
        raise ManifestError(f"{where}: unsupported digest algorithm {algorithm!r}")
    raise ManifestError(f"{where}: invalid digest {value[:80]!r} (want sha256:<64 hex>)")


# -- JSON field helpers --------------------------------------------------------------------


def _load_object(body: bytes, what: str) -> dict[str, Any]:
    """The JSON object in ``body``; any other bytes are a ``ManifestError``."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise ManifestError(f"invalid {what}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"invalid {what}: not a JSON object")
    return doc


def _string(doc: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        wanted = "a non-empty string" if required else "a string"
        raise ManifestError(f"{where}: {key} must be {wanted}")
    return value


def _list(doc: dict[str, Any], key: str, where: str, required: bool = True) -> list[Any]:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ManifestError(f"{where}: {key} must be a list")
    return value


def _size(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SIZE:
        raise ManifestError(f"{where}: size must be a non-negative integer")
    return value


# -- manifests -----------------------------------------------------------------------------


def _bare_type(content_type: str | None) -> str | None:
    """``type/subtype`` of a Content-Type header, without parameters."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _is_schema1(doc: dict[str, Any], declared: str | None, header: str | None) -> bool:
    return (
        declared in SCHEMA1_TYPES
        or (declared is None and header in SCHEMA1_TYPES)
        or (doc.get("schemaVersion") == 1 and not isinstance(doc.get("schemaVersion"), bool))
    )


def _media_type(doc: dict[str, Any], declared: str | None, header: str | None) -> str:
    """The manifest's type: its ``mediaType`` field, else the Content-Type, else (OCI
    allows omitting the field) its shape: ``manifests`` is an index, ``config`` and
    ``layers`` a manifest."""
    is_index = "manifests" in doc
    is_manifest = "config" in doc or "layers" in doc
    if is_index and is_manifest:
        raise ManifestError("invalid manifest: it has both manifests and config/layers")
    known = MANIFEST_TYPES | INDEX_TYPES
    if declared is not None:
        if declared not in known:
            raise ManifestError(f"unsupported manifest media type {declared[:100]!r}")
        return declared
    if header in known:
        return header
    if is_index:
        return OCI_INDEX
    if is_manifest:
        return OCI_MANIFEST
    raise ManifestError("invalid manifest: neither an image manifest nor an index")


def parse_manifest(body: bytes, content_type: str | None = None) -> ImageManifest | ManifestList:
    """Parse what a registry returned for a manifest request, validating all of it."""
    doc = _load_object(body, "manifest")
    declared = _string(doc, "mediaType", "invalid manifest")
    header = _bare_type(content_type)
    if _is_schema1(doc, declared, header):
        raise ManifestError(SCHEMA1_REMOVED)
    media_type = _media_type(doc, declared, header)
    version = doc.get("schemaVersion")
    if version != 2 or isinstance(version, bool):
        raise ManifestError("invalid manifest: schemaVersion must be 2")
    if media_type in INDEX_TYPES:
        return _parse_list(doc, media_type)
    return _parse_image_manifest(doc, media_type)


def _parse_list(doc: dict[str, Any], media_type: str) -> ManifestList:
    if "config" in doc or "layers" in doc:
        raise ManifestError("invalid manifest list: it has config or layers")
    entries = _list(doc, "manifests", "invalid manifest list")
    manifests = tuple(
        _descriptor(entry, f"invalid manifest list: manifests[{i}]")
        for i, entry in enumerate(entries)
    )
    return ManifestList(media_type, manifests)


def _parse_image_manifest(doc: dict[str, Any], media_type: str) -> ImageManifest:
    if "manifests" in doc:
        raise ManifestError("invalid manifest: an image manifest has no manifests")
    config = _descriptor(doc.get("config"), "invalid manifest: config")
    if config.media_type.lower() not in CONFIG_TYPES:
        raise ManifestError(
            f"unsupported config media type {config.media_type[:100]!r}: "
            "this is not a container image (an OCI artifact such as a Helm chart?)"
        )
    entries = _list(doc, "layers", "invalid manifest")
    layers = tuple(
        _layer(entry, f"invalid manifest: layers[{i}]") for i, entry in enumerate(entries)
    )
    return ImageManifest(media_type, config, layers)


def _layer(entry: object, where: str) -> Descriptor:
    descriptor = _descriptor(entry, where)
    if not is_layer_type(descriptor.media_type):
        raise ManifestError(f"{where}: unsupported layer media type {descriptor.media_type!r}")
    return descriptor


def _descriptor(entry: object, where: str) -> Descriptor:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: must be an object")
    media_type = _string(entry, "mediaType", where, required=True)
    digest = _check_digest(entry.get("digest"), f"{where}.digest")
    size = _size(entry.get("size"), where)
    urls = _list(entry, "urls", where, required=False)
    if not all(isinstance(url, str) for url in urls):
        raise ManifestError(f"{where}: urls must be strings")
    platform = _platform(entry.get("platform"), f"{where}.platform")
    return Descriptor(media_type, digest, size, platform, tuple(urls))


def _platform(value: object, where: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: must be an object")
    os = _string(value, "os", where, required=True)
    architecture = _string(value, "architecture", where, required=True)
    variant = _string(value, "variant", where) or None
    return Platform(os, architecture, variant)


# -- layer types ---------------------------------------------------------------------------


def is_layer_type(media_type: str) -> bool:
    """Whether ``media_type`` names a filesystem layer (dockerd also accepts prefixes)."""
    lowered = media_type.lower()
    return lowered in LAYER_TYPES or lowered.startswith(_LAYER_PREFIXES)


def layer_compression(media_type: str) -> str:
    """``"gzip"``, ``"zstd"`` or ``"none"``: what unpacking a layer would need."""
    lowered = media_type.lower()
    if lowered.endswith(("+gzip", ".gzip")):
        return "gzip"
    if lowered.endswith(("+zstd", ".zstd")):
        return "zstd"
    return "none"


def is_foreign_layer(media_type: str) -> bool:
    """Whether a layer is "foreign"/non-distributable: fetched from its ``urls`` (if at
    all), never pushed to another registry."""
    lowered = media_type.lower()
    return ".foreign." in lowered or ".nondistributable." in lowered


# -- platform choice -----------------------------------------------------------------------

_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
}
_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7", "amd64": "v1"}
# Variants an older CPU level of which also runs here, newest first (containerd's order).
_LADDERS = {"amd64": ("v4", "v3", "v2", "v1"), "arm": ("v8", "v7", "v6", "v5")}


def _normal(os: str, architecture: str, variant: str | None) -> tuple[str, str, str]:
    """(os, arch, variant) normalised as containerd does, default variants filled in:
    ``aarch64`` is ``arm64``, arm64 ``8``/``v8.0`` is ``v8``, ``armhf`` is ``arm/v7``."""
    arch, implied = _ARCH_ALIASES.get(architecture.lower(), (architecture.lower(), None))
    wanted = (variant or implied or _DEFAULT_VARIANTS.get(arch, "")).lower()
    if wanted.isdigit():
        wanted = "v" + wanted
    if arch == "arm64" and wanted == "v8.0":
        wanted = "v8"
    return os.lower(), arch, wanted


def _acceptable_variants(arch: str, variant: str) -> tuple[str, ...]:
    ladder = _LADDERS.get(arch, ())
    return ladder[ladder.index(variant) :] if variant in ladder else (variant,)


def choose_platform(
    lst: ManifestList,
    os: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
) -> Descriptor:
    """The list's entry for this platform, as containerd's default matcher picks it:
    same os and architecture, the best variant the CPU runs (arm64 means v8; amd64 has
    none), and an entry without a platform only if nothing matched."""
    want_os, want_arch, want_variant = _normal(os, architecture, variant)
    variants = _acceptable_variants(want_arch, want_variant)
    best: tuple[int, Descriptor] | None = None
    for entry in lst.manifests:
        if entry.platform is None:
            continue
        have = _normal(entry.platform.os, entry.platform.architecture, entry.platform.variant)
        if have[:2] == (want_os, want_arch) and have[2] in variants:
            rank = variants.index(have[2])
            if best is None or rank < best[0]:
                best = (rank, entry)
    if best is not None:
        return best[1]
    for entry in lst.manifests:
        if entry.platform is None and entry.media_type in MANIFEST_TYPES:
            return entry
    hidden = want_arch == "amd64" and want_variant == "v1"  # dockerd shows arm64's v8
    shown = str(Platform(want_os, want_arch, None if hidden else want_variant))
    raise ManifestError(f"no matching manifest for {shown} in the manifest list entries")


# -- image configs -------------------------------------------------------------------------

_STRING_FIELDS = ("User", "WorkingDir", "StopSignal", "Hostname", "Domainname", "Image")
_STRING_LIST_FIELDS = ("Env", "OnBuild")
_COMMAND_FIELDS = ("Cmd", "Entrypoint", "Shell")
_SET_FIELDS = ("ExposedPorts", "Volumes")


def parse_config(raw: bytes) -> ImageConfig:
    """Parse and check an image config (Docker or OCI), keeping its exact bytes."""
    doc = _load_object(raw, "image config")
    where = "invalid image config"
    diff_ids = _rootfs(doc.get("rootfs"))
    history = _history(doc.get("history"))
    non_empty = sum(1 for entry in history if not entry.get("empty_layer"))
    if non_empty > len(diff_ids):
        raise ManifestError(f"{where}: too many non-empty layers in History section")
    return ImageConfig(
        architecture=_string(doc, "architecture", where) or "",
        # dockerd assumes its own OS when a config omits it.
        os=_string(doc, "os", where) or "linux",
        config=_container_config(doc.get("config")),
        rootfs_diff_ids=diff_ids,
        history=history,
        created=_string(doc, "created", where),
        author=_string(doc, "author", where),
        raw=bytes(raw),
    )


def _rootfs(rootfs: object) -> tuple[str, ...]:
    where = "invalid image config: rootfs"
    if not isinstance(rootfs, dict):
        raise ManifestError("invalid image config: no rootfs")
    if rootfs.get("type") != "layers":
        kind = repr(rootfs.get("type"))[:40]
        raise ManifestError(f'{where}: type must be "layers", not {kind}')
    diff_ids = _list(rootfs, "diff_ids", where, required=False)
    return tuple(_check_digest(d, f"{where}.diff_ids[{i}]") for i, d in enumerate(diff_ids))


def _history(value: object) -> tuple[dict[str, Any], ...]:
    where = "invalid image config: history"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(f"{where} must be a list")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}[{i}] must be an object")
        if not isinstance(entry.get("empty_layer", False), bool):
            raise ManifestError(f"{where}[{i}]: empty_layer must be true or false")
        for key in ("created", "created_by", "author", "comment"):
            _string(entry, key, f"{where}[{i}]")
    return tuple(value)


def _container_config(value: object) -> dict[str, Any]:
    """The runtime defaults, type-checked where Go's decoder would be strict, so that
    code using them can trust the types. ``Cmd``/``Entrypoint`` given as one string
    become a list, as Go's ``StrSlice`` reads them."""
    where = "invalid image config: config"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be an object")
    config = dict(value)
    for key in _STRING_FIELDS:
        _string(config, key, where)
    for key in _STRING_LIST_FIELDS:
        _strings(config.get(key), f"{where}.{key}")
    for key in _COMMAND_FIELDS:
        if isinstance(config.get(key), str):
            config[key] = [config[key]]
        _strings(config.get(key), f"{where}.{key}")
    for key in _SET_FIELDS:
        _object(config.get(key), f"{where}.{key}")
    _labels(config.get("Labels"), f"{where}.Labels")
    _healthcheck(config.get("Healthcheck"), f"{where}.Healthcheck")
    return config


def _strings(value: object, where: str) -> None:
    if value is not None and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        raise ManifestError(f"{where} must be a list of strings")


def _object(value: object, where: str) -> None:
    if value is not None and not isinstance(value, dict):
        raise ManifestError(f"{where} must be an object")


def _labels(value: object, where: str) -> None:
    _object(value, where)
    if isinstance(value, dict) and not all(isinstance(v, str | None) for v in value.values()):
        raise ManifestError(f"{where} values must be strings")


def _healthcheck(value: object, where: str) -> None:
    _object(value, where)
    if not isinstance(value, dict):
        return
    _strings(value.get("Test"), f"{where}.Test")
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
        number = value.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise ManifestError(f"{where}.{key} must be an integer")


def check_layers_match(manifest: ImageManifest, config: ImageConfig) -> None:
    """A manifest and its config must describe the same number of layers, or the
    unpacked filesystem would not be the image the config describes."""
    if len(manifest.layers) != len(config.rootfs_diff_ids):
        raise ManifestError(
            "layers from manifest don't match image configuration: "
            f"{len(manifest.layers)} layers but {len(config.rootfs_diff_ids)} diff_ids"
        )
