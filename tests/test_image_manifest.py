"""Manifests and image configs from registries: parsed strictly, refused clearly."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any

import pytest

from sdcd.images import manifest as mf
from sdcd.images.manifest import (
    Descriptor,
    ImageManifest,
    ManifestError,
    ManifestList,
    Platform,
)


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def dump(doc: Any) -> bytes:
    return json.dumps(doc, indent=3).encode()


DIFF_IDS = [digest("diff-1"), digest("diff-2")]

DOCKER_CONFIG: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "created": "2024-09-26T21:31:42.123456789Z",
    "author": "someone@example.com",
    "config": {
        "Hostname": "",
        "User": "nobody",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
        "Entrypoint": None,
        "WorkingDir": "/srv",
        "ExposedPorts": {"80/tcp": {}},
        "Volumes": {"/data": {}},
        "Labels": {"org.opencontainers.image.title": "demo"},
        "StopSignal": "SIGTERM",
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30000000000, "Retries": 3},
        "OnBuild": None,
        "ArgsEscaped": True,
    },
    "container_config": {"Cmd": ["/bin/sh", "-c", '#(nop) CMD ["sh"]']},
    "docker_version": "20.10.23",
    "rootfs": {"type": "layers", "diff_ids": DIFF_IDS},
    "history": [
        {"created": "2024-09-26T21:31:41Z", "created_by": "ADD file:abc in / "},
        {"created": "2024-09-26T21:31:41Z", "created_by": "RUN make", "comment": "buildkit"},
        {"created": "2024-09-26T21:31:42Z", "created_by": 'CMD ["sh"]', "empty_layer": True},
    ],
}
CONFIG_RAW = dump(DOCKER_CONFIG)

DOCKER_MANIFEST: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": mf.DOCKER_MANIFEST,
    "config": {
        "mediaType": mf.DOCKER_CONFIG,
        "size": len(CONFIG_RAW),
        "digest": mf.digest_of(CONFIG_RAW),
    },
    "layers": [
        {"mediaType": mf.DOCKER_LAYER, "size": 2152262, "digest": digest("layer-1")},
        {"mediaType": mf.DOCKER_LAYER, "size": 0, "digest": digest("layer-2")},
    ],
}

OCI_MANIFEST: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": mf.OCI_MANIFEST,
    "config": {"mediaType": mf.OCI_CONFIG, "size": 581, "digest": digest("oci-config")},
    "layers": [
        {"mediaType": mf.OCI_LAYER_GZIP, "size": 3623807, "digest": digest("oci-1")},
        {"mediaType": mf.OCI_LAYER_ZSTD, "size": 1024, "digest": digest("oci-2")},
    ],
    "annotations": {"org.opencontainers.image.created": "2024-10-01T00:00:00Z"},
}


def entry(
    os: str, arch: str, variant: str | None = None, media_type: str = mf.DOCKER_MANIFEST
) -> dict[str, Any]:
    platform: dict[str, Any] = {"os": os, "architecture": arch}
    if variant:
        platform["variant"] = variant
    seed = f"{os}/{arch}/{variant}"
    return {"mediaType": media_type, "size": 528, "digest": digest(seed), "platform": platform}


DOCKER_LIST: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": mf.DOCKER_MANIFEST_LIST,
    "manifests": [
        entry("linux", "arm", "v6"),
        entry("linux", "arm", "v7"),
        entry("linux", "arm64", "v8"),
        entry("windows", "amd64"),
        entry("linux", "386"),
        entry("linux", "amd64"),
        entry("linux", "ppc64le"),
    ],
}

OCI_INDEX: dict[str, Any] = {
    "schemaVersion": 2,
    "mediaType": mf.OCI_INDEX,
    "manifests": [
        entry("linux", "amd64", media_type=mf.OCI_MANIFEST),
        entry("linux", "arm64", media_type=mf.OCI_MANIFEST),
        {
            "mediaType": mf.OCI_MANIFEST,
            "size": 840,
            "digest": digest("attestation"),
            "platform": {"os": "unknown", "architecture": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
        },
    ],
}

SCHEMA1: dict[str, Any] = {
    "schemaVersion": 1,
    "name": "library/old",
    "tag": "latest",
    "architecture": "amd64",
    "fsLayers": [{"blobSum": digest("s1")}],
    "history": [{"v1Compatibility": "{}"}],
    "signatures": [{"header": {"alg": "ES256"}, "signature": "abc", "protected": "xyz"}],
}


def without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


# -- manifests ---------------------------------------------------------------------------


def test_docker_manifest() -> None:
    parsed = mf.parse_manifest(dump(DOCKER_MANIFEST), mf.DOCKER_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == mf.DOCKER_MANIFEST
    assert parsed.config == Descriptor(
        mf.DOCKER_CONFIG, mf.digest_of(CONFIG_RAW), len(CONFIG_RAW), None, ()
    )
    assert [(d.digest, d.size) for d in parsed.layers] == [
        (digest("layer-1"), 2152262),
        (digest("layer-2"), 0),
    ]


def test_oci_manifest() -> None:
    parsed = mf.parse_manifest(dump(OCI_MANIFEST), mf.OCI_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == mf.OCI_MANIFEST
    assert parsed.config.media_type == mf.OCI_CONFIG
    assert [d.media_type for d in parsed.layers] == [mf.OCI_LAYER_GZIP, mf.OCI_LAYER_ZSTD]


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, mf.OCI_MANIFEST),
        ("application/json", mf.OCI_MANIFEST),
        ("application/octet-stream", mf.OCI_MANIFEST),
        (f"{mf.OCI_MANIFEST}; charset=utf-8", mf.OCI_MANIFEST),
        (mf.DOCKER_MANIFEST, mf.DOCKER_MANIFEST),
    ],
)
def test_manifest_without_media_type(content_type: str | None, expected: str) -> None:
    parsed = mf.parse_manifest(dump(without(OCI_MANIFEST, "mediaType")), content_type)
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == expected


def test_body_media_type_wins_over_header() -> None:
    parsed = mf.parse_manifest(dump(DOCKER_MANIFEST), "application/json")
    assert parsed.media_type == mf.DOCKER_MANIFEST


def test_docker_manifest_list() -> None:
    parsed = mf.parse_manifest(dump(DOCKER_LIST), mf.DOCKER_MANIFEST_LIST)
    assert isinstance(parsed, ManifestList)
    assert parsed.media_type == mf.DOCKER_MANIFEST_LIST
    assert len(parsed.manifests) == 7
    assert parsed.manifests[2].platform == Platform("linux", "arm64", "v8")
    assert parsed.manifests[5].platform == Platform("linux", "amd64", None)


@pytest.mark.parametrize("content_type", [None, mf.OCI_INDEX, "application/json"])
def test_oci_index_without_media_type(content_type: str | None) -> None:
    parsed = mf.parse_manifest(dump(without(OCI_INDEX, "mediaType")), content_type)
    assert isinstance(parsed, ManifestList)
    assert parsed.media_type == mf.OCI_INDEX
    assert parsed.manifests[2].platform == Platform("unknown", "unknown")


def test_foreign_and_nondistributable_layers() -> None:
    doc = copy.deepcopy(DOCKER_MANIFEST)
    doc["layers"][0] = {
        "mediaType": mf.DOCKER_FOREIGN_LAYER,
        "size": 1,
        "digest": digest("foreign"),
        "urls": ["https://go.microsoft.com/fwlink/?linkid=837858"],
    }
    doc["layers"][1]["mediaType"] = mf.OCI_NONDISTRIBUTABLE_LAYER_ZSTD
    parsed = mf.parse_manifest(dump(doc), None)
    assert isinstance(parsed, ImageManifest)
    assert parsed.layers[0].urls == ("https://go.microsoft.com/fwlink/?linkid=837858",)
    assert [mf.is_foreign_layer(d.media_type) for d in parsed.layers] == [True, True]
    assert mf.layer_compression(parsed.layers[1].media_type) == "zstd"


@pytest.mark.parametrize(
    ("media_type", "compression", "foreign"),
    [
        (mf.DOCKER_LAYER, "gzip", False),
        (mf.DOCKER_FOREIGN_LAYER, "gzip", True),
        (mf.OCI_LAYER, "none", False),
        (mf.OCI_LAYER_GZIP, "gzip", False),
        (mf.OCI_LAYER_ZSTD, "zstd", False),
        (mf.OCI_NONDISTRIBUTABLE_LAYER, "none", True),
        (mf.OCI_NONDISTRIBUTABLE_LAYER_GZIP, "gzip", True),
        (mf.OCI_NONDISTRIBUTABLE_LAYER_ZSTD, "zstd", True),
        ("application/vnd.docker.image.rootfs.diff.tar", "none", False),
    ],
)
def test_layer_types(media_type: str, compression: str, foreign: bool) -> None:
    assert mf.is_layer_type(media_type)
    assert mf.layer_compression(media_type) == compression
    assert mf.is_foreign_layer(media_type) is foreign


def test_accept_lists_every_supported_type() -> None:
    assert set(mf.ACCEPT) >= mf.MANIFEST_TYPES | mf.INDEX_TYPES
    assert len(set(mf.ACCEPT)) == len(mf.ACCEPT)
    assert mf.ACCEPT.index(mf.DOCKER_MANIFEST) < mf.ACCEPT.index(mf.SCHEMA1_SIGNED_MANIFEST)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (SCHEMA1, mf.SCHEMA1_SIGNED_MANIFEST),
        (SCHEMA1, "application/json"),
        (SCHEMA1, None),
        ({**SCHEMA1, "mediaType": mf.SCHEMA1_MANIFEST}, None),
        (without(SCHEMA1, "schemaVersion"), f"{mf.SCHEMA1_SIGNED_MANIFEST}; charset=utf-8"),
        (without(SCHEMA1, "schemaVersion"), mf.SCHEMA1_MANIFEST),
    ],
)
def test_schema1_is_refused(body: dict[str, Any], content_type: str | None) -> None:
    with pytest.raises(ManifestError) as caught:
        mf.parse_manifest(dump(body), content_type)
    message = str(caught.value)
    assert "schema 1 has been removed" in message
    assert "convert it to a newer format" in message


def test_artifact_is_not_an_image() -> None:
    helm = copy.deepcopy(OCI_MANIFEST)
    helm["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"
    with pytest.raises(ManifestError, match="not a container image"):
        mf.parse_manifest(dump(helm), mf.OCI_MANIFEST)


def _mutated(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> bytes:
    doc = copy.deepcopy(base)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return dump(doc)


_DELETE = object()

BAD_MANIFESTS = {
    "not json": b"{not json",
    "empty": b"",
    "invalid utf-8": b'{"schemaVersion": 2, "mediaType": "\xff\xfe"}',
    "array": b"[1, 2]",
    "string": b'"manifest"',
    "null": b"null",
    "deep nesting": b"[" * 100000 + b"]" * 100000,
    "huge number": b'{"schemaVersion": 2, "layers": [], "config": {"size": 1' + b"0" * 5000 + b"}}",
    "nan size": dump(DOCKER_MANIFEST).replace(b'"size": 0', b'"size": NaN'),
    "neither kind": dump({"schemaVersion": 2}),
    "both kinds": dump({**DOCKER_MANIFEST, "manifests": []}),
    "list with layers": dump({**DOCKER_LIST, "layers": []}),
    "unknown media type": _mutated(OCI_MANIFEST, ("mediaType",), "application/x-what"),
    "artifact manifest": _mutated(
        OCI_MANIFEST, ("mediaType",), "application/vnd.oci.artifact.manifest.v1+json"
    ),
    "media type not a string": _mutated(OCI_MANIFEST, ("mediaType",), 7),
    "schema version 3": _mutated(DOCKER_MANIFEST, ("schemaVersion",), 3),
    "schema version string": _mutated(DOCKER_MANIFEST, ("schemaVersion",), "2"),
    "schema version true": _mutated(DOCKER_MANIFEST, ("schemaVersion",), True),
    "no schema version": _mutated(DOCKER_MANIFEST, ("schemaVersion",), _DELETE),
    "no config": _mutated(DOCKER_MANIFEST, ("config",), _DELETE),
    "config not object": _mutated(DOCKER_MANIFEST, ("config",), "sha256:abc"),
    "no layers": _mutated(DOCKER_MANIFEST, ("layers",), _DELETE),
    "layers not list": _mutated(DOCKER_MANIFEST, ("layers",), {"0": {}}),
    "layer not object": _mutated(DOCKER_MANIFEST, ("layers", 0), []),
    "layer unknown type": _mutated(
        DOCKER_MANIFEST, ("layers", 0, "mediaType"), "application/octet-stream"
    ),
    "layer no media type": _mutated(DOCKER_MANIFEST, ("layers", 0, "mediaType"), _DELETE),
    "layer no digest": _mutated(DOCKER_MANIFEST, ("layers", 0, "digest"), _DELETE),
    "short digest": _mutated(DOCKER_MANIFEST, ("layers", 0, "digest"), "sha256:abcd"),
    "uppercase digest": _mutated(
        DOCKER_MANIFEST, ("layers", 0, "digest"), digest("x").upper().replace("SHA", "sha")
    ),
    "sha512 digest": _mutated(DOCKER_MANIFEST, ("layers", 0, "digest"), "sha512:" + "a" * 128),
    "digest not string": _mutated(DOCKER_MANIFEST, ("config", "digest"), 12),
    "no size": _mutated(DOCKER_MANIFEST, ("layers", 0, "size"), _DELETE),
    "negative size": _mutated(DOCKER_MANIFEST, ("layers", 0, "size"), -1),
    "float size": _mutated(DOCKER_MANIFEST, ("layers", 0, "size"), 1.5),
    "string size": _mutated(DOCKER_MANIFEST, ("layers", 0, "size"), "10"),
    "bool size": _mutated(DOCKER_MANIFEST, ("layers", 0, "size"), True),
    "size over int64": _mutated(DOCKER_MANIFEST, ("layers", 0, "size"), 2**63),
    "urls not list": _mutated(DOCKER_MANIFEST, ("layers", 0, "urls"), "https://x"),
    "urls not strings": _mutated(DOCKER_MANIFEST, ("layers", 0, "urls"), [1]),
    "manifests not list": _mutated(DOCKER_LIST, ("manifests",), {}),
    "list entry not object": _mutated(DOCKER_LIST, ("manifests", 0), "x"),
    "platform not object": _mutated(DOCKER_LIST, ("manifests", 0, "platform"), "linux/amd64"),
    "platform no arch": _mutated(
        DOCKER_LIST, ("manifests", 0, "platform", "architecture"), _DELETE
    ),
    "platform os number": _mutated(DOCKER_LIST, ("manifests", 0, "platform", "os"), 1),
    "variant not string": _mutated(DOCKER_LIST, ("manifests", 0, "platform", "variant"), 7),
}


@pytest.mark.parametrize("name", sorted(BAD_MANIFESTS))
def test_malformed_manifest(name: str) -> None:
    with pytest.raises(ManifestError):
        mf.parse_manifest(BAD_MANIFESTS[name], None)


def test_error_says_where() -> None:
    with pytest.raises(ManifestError, match=r"layers\[0\]\.digest"):
        mf.parse_manifest(BAD_MANIFESTS["short digest"], None)


# -- platforms ---------------------------------------------------------------------------


def _list(*entries: dict[str, Any]) -> ManifestList:
    parsed = mf.parse_manifest(dump({"schemaVersion": 2, "manifests": list(entries)}), None)
    assert isinstance(parsed, ManifestList)
    return parsed


def test_choose_amd64_among_many() -> None:
    parsed = mf.parse_manifest(dump(DOCKER_LIST), None)
    assert isinstance(parsed, ManifestList)
    assert mf.choose_platform(parsed).digest == digest("linux/amd64/None")


@pytest.mark.parametrize(
    ("entries", "want", "chosen"),
    [
        # arm64 means v8, whether the entry or the request says so
        ([("linux", "arm64", None)], ("linux", "arm64", "v8"), "linux/arm64/None"),
        ([("linux", "arm64", "v8")], ("linux", "arm64", None), "linux/arm64/v8"),
        ([("linux", "aarch64", None)], ("linux", "arm64", None), "linux/aarch64/None"),
        ([("linux", "x86_64", None)], ("linux", "amd64", None), "linux/x86_64/None"),
        ([("linux", "amd64", "v1")], ("linux", "amd64", None), "linux/amd64/v1"),
        ([("Linux", "AMD64", None)], ("linux", "amd64", None), "Linux/AMD64/None"),
        # the best variant this CPU runs
        (
            [("linux", "arm", "v5"), ("linux", "arm", "v6"), ("linux", "arm", "v7")],
            ("linux", "arm", "v6"),
            "linux/arm/v6",
        ),
        ([("linux", "arm", "v6")], ("linux", "arm", "v7"), "linux/arm/v6"),
        ([("linux", "arm", "v7")], ("linux", "arm", None), "linux/arm/v7"),
        (
            [("linux", "amd64", None), ("linux", "amd64", "v3"), ("linux", "amd64", "v2")],
            ("linux", "amd64", "v3"),
            "linux/amd64/v3",
        ),
        (
            [("linux", "amd64", "v3"), ("linux", "amd64", None)],
            ("linux", "amd64", "v2"),
            "linux/amd64/None",
        ),
        # the first of equals
        ([("linux", "amd64", None), ("linux", "amd64", "v1")], ("linux", "amd64", None), None),
        ([("windows", "amd64", None)], ("windows", "amd64", None), "windows/amd64/None"),
    ],
)
def test_choose_platform(
    entries: list[tuple[str, str, str | None]],
    want: tuple[str, str, str | None],
    chosen: str | None,
) -> None:
    lst = _list(*(entry(*e) for e in entries))
    picked = mf.choose_platform(lst, *want)
    assert picked.digest == digest(chosen or "/".join(str(p) for p in entries[0]))


@pytest.mark.parametrize(
    ("entries", "want", "shown"),
    [
        (
            [("windows", "amd64", None), ("linux", "arm64", "v8"), ("linux", "386", None)],
            ("linux", "amd64", None),
            "linux/amd64",
        ),
        ([], ("linux", "amd64", None), "linux/amd64"),
        ([("linux", "amd64", "v3")], ("linux", "amd64", None), "linux/amd64"),
        ([("linux", "amd64", None)], ("linux", "arm64", None), "linux/arm64/v8"),
        ([("linux", "arm", "v7")], ("linux", "arm", "v6"), "linux/arm/v6"),
        ([("linux", "amd64", "v4")], ("linux", "amd64", "v3"), "linux/amd64/v3"),
        ([("unknown", "unknown", None)], ("linux", "amd64", None), "linux/amd64"),
    ],
)
def test_no_matching_platform(
    entries: list[tuple[str, str, str | None]],
    want: tuple[str, str, str | None],
    shown: str,
) -> None:
    with pytest.raises(ManifestError) as caught:
        mf.choose_platform(_list(*(entry(*e) for e in entries)), *want)
    assert str(caught.value) == f"no matching manifest for {shown} in the manifest list entries"


def test_entry_without_platform_is_the_last_resort() -> None:
    bare = {"mediaType": mf.OCI_MANIFEST, "size": 10, "digest": digest("bare")}
    assert mf.choose_platform(_list(bare, entry("windows", "amd64"))).digest == digest("bare")
    assert mf.choose_platform(_list(bare, entry("linux", "amd64"))).digest == digest(
        "linux/amd64/None"
    )


# -- digests -----------------------------------------------------------------------------


def test_digests() -> None:
    data = b"hello"
    assert mf.digest_of(data) == (
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    mf.verify_digest(data, mf.digest_of(data))
    with pytest.raises(ManifestError, match="verification failed"):
        mf.verify_digest(b"hellO", mf.digest_of(data))
    with pytest.raises(ManifestError, match="invalid digest"):
        mf.verify_digest(data, "sha256:1234")
    with pytest.raises(ManifestError, match="unsupported digest algorithm"):
        mf.verify_digest(data, "sha512:" + hashlib.sha512(data).hexdigest())


# -- configs -----------------------------------------------------------------------------


def test_docker_config() -> None:
    config = mf.parse_config(CONFIG_RAW)
    assert config.raw == CONFIG_RAW
    assert config.id == mf.digest_of(CONFIG_RAW)
    assert (config.architecture, config.os) == ("amd64", "linux")
    assert config.created == "2024-09-26T21:31:42.123456789Z"
    assert config.author == "someone@example.com"
    assert config.rootfs_diff_ids == tuple(DIFF_IDS)
    assert len(config.history) == 3
    assert config.config["Cmd"] == ["sh"]
    assert config.config["ExposedPorts"] == {"80/tcp": {}}
    assert config.config["Healthcheck"]["Retries"] == 3


def test_oci_config_minimal() -> None:
    raw = dump({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers"}})
    config = mf.parse_config(raw)
    assert config.rootfs_diff_ids == ()
    assert config.history == ()
    assert config.config == {}
    assert config.created is None and config.author is None


def test_config_defaults_and_commands() -> None:
    raw = dump(
        {
            "rootfs": {"type": "layers", "diff_ids": DIFF_IDS[:1]},
            "config": {"Cmd": "/bin/sh -c true", "Entrypoint": None, "Labels": None},
        }
    )
    config = mf.parse_config(raw)
    assert config.os == "linux", "dockerd assumes its own OS"
    assert config.architecture == ""
    assert config.config["Cmd"] == ["/bin/sh -c true"], "a string is a one-element list"
    assert config.config["Entrypoint"] is None


def _config_with(path: tuple[Any, ...], value: Any) -> bytes:
    return _mutated(DOCKER_CONFIG, path, value)


def test_history_with_fewer_layers_is_accepted() -> None:
    # dockerd only refuses more non-empty history entries than layers.
    history = [{"created_by": "ADD x"}]
    config = mf.parse_config(_config_with(("history",), history))
    assert len(config.history) == 1
    all_empty = [{"created_by": "CMD x", "empty_layer": True}] * 5
    assert len(mf.parse_config(_config_with(("history",), all_empty)).history) == 5


def test_history_with_too_many_layers_is_refused() -> None:
    history = [{"created_by": f"RUN step {i}"} for i in range(3)]
    with pytest.raises(ManifestError, match="too many non-empty layers in History section"):
        mf.parse_config(_config_with(("history",), history))


BAD_CONFIGS = {
    "not json": b"config",
    "array": b"[]",
    "no rootfs": _config_with(("rootfs",), _DELETE),
    "rootfs null": _config_with(("rootfs",), None),
    "rootfs type": _config_with(("rootfs", "type"), "windows"),
    "rootfs no type": _config_with(("rootfs", "type"), _DELETE),
    "diff_ids not list": _config_with(("rootfs", "diff_ids"), DIFF_IDS[0]),
    "diff_id bad": _config_with(("rootfs", "diff_ids", 0), "sha256:xyz"),
    "diff_id number": _config_with(("rootfs", "diff_ids", 0), 1),
    "history not list": _config_with(("history",), {}),
    "history entry not object": _config_with(("history", 0), "ADD"),
    "empty_layer not bool": _config_with(("history", 2, "empty_layer"), "yes"),
    "created_by not string": _config_with(("history", 0, "created_by"), ["ADD"]),
    "architecture number": _config_with(("architecture",), 64),
    "os list": _config_with(("os",), ["linux"]),
    "created number": _config_with(("created",), 1700000000),
    "config not object": _config_with(("config",), []),
    "Env not list": _config_with(("config", "Env"), "PATH=/bin"),
    "Env numbers": _config_with(("config", "Env"), [1]),
    "Cmd numbers": _config_with(("config", "Cmd"), ["sh", 1]),
    "Entrypoint object": _config_with(("config", "Entrypoint"), {"sh": 1}),
    "User number": _config_with(("config", "User"), 0),
    "WorkingDir list": _config_with(("config", "WorkingDir"), ["/"]),
    "ExposedPorts list": _config_with(("config", "ExposedPorts"), ["80/tcp"]),
    "Volumes string": _config_with(("config", "Volumes"), "/data"),
    "Labels list": _config_with(("config", "Labels"), ["a=b"]),
    "Labels number value": _config_with(("config", "Labels", "a"), 1),
    "Healthcheck string": _config_with(("config", "Healthcheck"), "CMD true"),
    "Healthcheck Test string": _config_with(("config", "Healthcheck", "Test"), "true"),
    "Healthcheck Interval string": _config_with(("config", "Healthcheck", "Interval"), "30s"),
    "OnBuild string": _config_with(("config", "OnBuild"), "RUN x"),
    "StopSignal number": _config_with(("config", "StopSignal"), 15),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_malformed_config(name: str) -> None:
    with pytest.raises(ManifestError):
        mf.parse_config(BAD_CONFIGS[name])


def test_check_layers_match() -> None:
    manifest = mf.parse_manifest(dump(DOCKER_MANIFEST), None)
    assert isinstance(manifest, ImageManifest)
    config = mf.parse_config(CONFIG_RAW)
    mf.check_layers_match(manifest, config)
    doc = {**DOCKER_CONFIG, "rootfs": {"type": "layers", "diff_ids": DIFF_IDS[:1]}}
    short = mf.parse_config(dump(without(doc, "history")))
    with pytest.raises(ManifestError, match="layers from manifest don't match"):
        mf.check_layers_match(manifest, short)


# -- fuzzing -----------------------------------------------------------------------------

_SAMPLES = [
    dump(DOCKER_MANIFEST),
    dump(OCI_MANIFEST),
    dump(without(OCI_MANIFEST, "mediaType")),
    dump(DOCKER_LIST),
    dump(OCI_INDEX),
    dump(SCHEMA1),
]
_CONTENT_TYPES = [None, "", "application/json", ";", *mf.ACCEPT, mf.OCI_INDEX + "; x=y"]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        2**64,
        1.5,
        float("inf"),
        "",
        "sha256:",
        digest("fuzz"),
        "linux",
        "\u0000\udcff",
        rng.choice(sorted(mf.MANIFEST_TYPES | mf.INDEX_TYPES | mf.SCHEMA1_TYPES)),
        rng.choice(sorted(mf.LAYER_TYPES | mf.CONFIG_TYPES)),
    ]
    if depth < 3:
        choices += [[_random_value(rng, depth + 1)], {"k": _random_value(rng, depth + 1)}, {}]
    return rng.choice(choices)


def _nodes(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _nodes(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _nodes(value, (*path, index))
    return found


def _structural(rng: random.Random, sample: bytes) -> bytes:
    """Replace, delete or add one node anywhere in the document."""
    doc = json.loads(sample)
    path = rng.choice(_nodes(doc))
    if not path:
        return json.dumps(_random_value(rng)).encode()
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = rng.random()
    if action < 0.6:
        parent[path[-1]] = _random_value(rng)
    elif action < 0.8:
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[rng.choice(["mediaType", "manifests", "layers", "config", "x"])] = _random_value(rng)
    else:
        parent.append(_random_value(rng))
    return json.dumps(doc).encode()


def _bytewise(rng: random.Random, sample: bytes) -> bytes:
    """Flip, delete, insert or truncate bytes."""
    data = bytearray(sample)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        at = rng.randrange(len(data))
        action = rng.random()
        if action < 0.4:
            data[at] = rng.randrange(256)
        elif action < 0.6:
            del data[at : at + rng.randint(1, 20)]
        elif action < 0.8:
            data[at:at] = rng.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\xff"])
        else:
            del data[at:]
    return bytes(data)


def test_fuzz_manifests_only_raise_manifest_error() -> None:
    rng = random.Random(20240926)
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(6000):
        sample = rng.choice(_SAMPLES)
        body = _structural(rng, sample) if i % 2 else _bytewise(rng, sample)
        try:
            parsed = mf.parse_manifest(body, rng.choice(_CONTENT_TYPES))
            if isinstance(parsed, ManifestList):
                mf.choose_platform(parsed)
            outcomes["parsed"] += 1
        except ManifestError:
            outcomes["refused"] += 1
    assert outcomes["parsed"] > 100 and outcomes["refused"] > 100, outcomes


def test_fuzz_configs_only_raise_manifest_error() -> None:
    rng = random.Random(1234)
    manifest = mf.parse_manifest(dump(DOCKER_MANIFEST), None)
    assert isinstance(manifest, ImageManifest)
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(4000):
        raw = _structural(rng, CONFIG_RAW) if i % 2 else _bytewise(rng, CONFIG_RAW)
        try:
            config = mf.parse_config(raw)
            mf.check_layers_match(manifest, config)
            outcomes["parsed"] += 1
        except ManifestError:
            outcomes["refused"] += 1
    assert outcomes["parsed"] > 100 and outcomes["refused"] > 100, outcomes
