"""The records the state store keeps: plain values, JSON-serialisable, no behaviour."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Account:
    """A tenant: everything it owns is scoped by ``login``."""

    login: str
    uuid: str
    created: str
    disabled: bool = False
    approved: bool = False

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Account:
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})


@attrs.frozen
class KeyRecord:
    """One SSH public key registered with an account, named by its MD5 fingerprint."""

    fingerprint: str
    name: str
    openssh: str
    created: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})
