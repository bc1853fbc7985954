"""Rendering of images in dockerd's shapes (inspect, list, history), by API version."""

from __future__ import annotations

import datetime
from typing import Any

from sdcd.images import reference as refs
from sdcd.store.records import ImageRecord


def _familiar(name: str) -> str:
    try:
        return refs.parse(name, default_tag=None).familiar
    except refs.ReferenceError:
        return name


def _unix(created: str) -> int:
    if not created:
        return 0
    try:
        return int(datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def repo_tags(image: ImageRecord) -> list[str]:
    return sorted(_familiar(t) for t in image.repo_tags)


def repo_digests(image: ImageRecord) -> list[str]:
    return sorted(_familiar(d) for d in image.repo_digests)


def inspect_body(image: ImageRecord, config: dict[str, Any], api: tuple[int, int]) -> dict:
    """``GET /images/{name}/json``."""
    container_config = config.get("container_config") or {}
    body: dict[str, Any] = {
        "Id": image.id,
        "RepoTags": repo_tags(image),
        "RepoDigests": repo_digests(image),
        "Parent": image.parent,
        "Comment": config.get("comment", ""),
        "Created": config.get("created", image.created) or "",
        "Container": config.get("container", ""),
        "ContainerConfig": container_config,
        "DockerVersion": config.get("docker_version", ""),
        "Author": config.get("author", ""),
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": {"Name": "sdc", "Data": None},
        "RootFS": {"Type": "layers", "Layers": list(config.get("rootfs", {}).get("diff_ids", []))},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }
    if config.get("variant"):
        body["Variant"] = config["variant"]
    if api < (1, 25):
        del body["Metadata"]
    return body


def list_entry(image: ImageRecord, config: dict[str, Any], digests: bool) -> dict:
    """One element of ``GET /images/json``."""
    tags = repo_tags(image)
    entry = {
        "Id": image.id,
        "ParentId": image.parent,
        "RepoTags": tags or ["<none>:<none>"],
        "RepoDigests": repo_digests(image) or ["<none>@<none>"],
        "Created": _unix(config.get("created", image.created)),
        "Size": image.size,
        "VirtualSize": image.size,
        "SharedSize": -1,
        "Labels": (config.get("config") or {}).get("Labels") or None,
        "Containers": -1,
    }
    if not digests and not image.repo_digests:
        entry["RepoDigests"] = ["<none>@<none>"] if not tags else []
    return entry


def history_body(chain: list[tuple[ImageRecord, dict[str, Any]]]) -> list[dict]:
    """``GET /images/{name}/history``: newest first. ``chain`` is the image and the
    parents the account has, each with its config: an entry carries the id (and tags)
    of the image that added it, ``<missing>`` when that image is not here (as dockerd)."""
    image, config = chain[0]
    history = config.get("history") or []
    layers = list(image.layers)
    by_length = {len(c.get("history") or []): i for i, c in chain}
    entries = []
    for n, item in enumerate(history, start=1):
        size = 0
        if not item.get("empty_layer") and layers:
            size = layers.pop(0).size
        owner = by_length.get(n)
        entries.append(
            {
                "Id": owner.id if owner else "<missing>",
                "Created": _unix(item.get("created", "")),
                "CreatedBy": item.get("created_by", ""),
                "Tags": (repo_tags(owner) or None) if owner else None,
                "Size": size,
                "Comment": item.get("comment", ""),
            }
        )
    entries.reverse()
    if entries:
        entries[0]["Id"] = image.id
        entries[0]["Tags"] = repo_tags(image) or None
    return entries
