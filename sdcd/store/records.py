"""The records the state store keeps: plain values, JSON-serialisable, no behaviour."""

from __future__ import annotations

from typing import Any

import attrs


class _JSONRecord:
    """to_json/from_json for flat attrs records (one place, not one copy per record)."""

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})


@attrs.frozen
class Account(_JSONRecord):
    """A tenant: everything it owns is scoped by ``login``."""

    login: str
    uuid: str
    created: str
    disabled: bool = False
    approved: bool = False


@attrs.frozen
class KeyRecord(_JSONRecord):
    """One SSH public key registered with an account, named by its MD5 fingerprint."""

    fingerprint: str
    name: str
    openssh: str
    created: str


@attrs.frozen
class LayerRecord(_JSONRecord):
    """One layer of an image: its compressed blob and what it unpacks to."""

    digest: str
    diff_id: str
    size: int
    media_type: str


@attrs.frozen
class ImageRecord:
    """An image as one account holds it. The ID is the config's digest, so two accounts
    pulling the same image hold records with one ID over the same blobs. Tags and repo
    digests live in their own indexes; ``repo_tags``/``repo_digests`` are filled on read."""

    id: str
    layers: tuple[LayerRecord, ...]
    created: str
    size: int
    added: str
    parent: str = ""
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()

    @property
    def config_digest(self) -> str:
        return self.id

    @property
    def blobs(self) -> tuple[str, ...]:
        """Every blob the record keeps alive: the config and the layers."""
        return (self.id, *(layer.digest for layer in self.layers))

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data.pop("repo_tags")
        data.pop("repo_digests")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], repo_tags=(), repo_digests=()) -> ImageRecord:
        return cls(
            id=data["id"],
            layers=tuple(LayerRecord(**layer) for layer in data["layers"]),
            created=data["created"],
            size=data["size"],
            added=data["added"],
            parent=data.get("parent", ""),
            repo_tags=tuple(sorted(repo_tags)),
            repo_digests=tuple(sorted(repo_digests)),
        )


@attrs.frozen
class ContainerRecord(_JSONRecord):
    """What sdcd knows of a container apart from its run state: the Docker config as
    normalized at create, and where it lives. ``state`` lives in its own record
    (``ContainerState``) because the node's events change it and nothing else."""

    id: str
    login: str
    name: str
    created: str
    seq: int
    image: str
    image_id: str
    config: dict
    host_config: dict
    package: dict
    node: str
    network: dict
    ports: dict
    args: tuple = ()


@attrs.frozen
class ContainerState(_JSONRecord):
    """A container's run state as the node last reported it (``docker inspect``'s State)."""

    status: str = "created"
    pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: str = "0001-01-01T00:00:00Z"
    finished_at: str = "0001-01-01T00:00:00Z"
    restart_count: int = 0
    removing: bool = False


@attrs.frozen
class ExecRecord(_JSONRecord):
    """One ``docker exec`` session: its config as created, and what became of it. Kept
    until its container is removed, so that ``exec inspect`` answers after the process
    has ended and across sdcd restarts (dockerd forgets them when it restarts)."""

    id: str
    login: str
    container: str
    created: str
    config: dict
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    size: tuple | None = None
