"""The ``filters`` query parameter: parsing, and the image list's filters."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from typing import Any

from sdcd.api import images as render_images
from sdcd.core.errors import InvalidArgument
from sdcd.store.records import ImageRecord

IMAGE_FILTERS = {"dangling", "label", "before", "since", "reference"}


def parse_filters(text: str | None) -> dict[str, list[str]]:
    """``{"key": ["v", ...]}`` or the older ``{"key": {"v": true}}``; 400 if malformed."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"invalid filter: {text}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"invalid filter: {text}")
    filters: dict[str, list[str]] = {}
    for key, values in raw.items():
        if isinstance(values, dict):
            values = [v for v, on in values.items() if on]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"invalid filter '{key}'")
        filters[key] = values
    return filters


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    if key not in labels:
        return False
    return not eq or labels[key] == value


def _reference_matches(image: ImageRecord, pattern: str) -> bool:
    names = render_images.repo_tags(image)
    for name in names:
        repo = name.rsplit(":", 1)[0]
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(repo, pattern):
            return True
    return False


async def image_filter(filters: dict[str, list[str]], account, images) -> Callable:
    """A predicate ``(image, config) -> bool`` for ``GET /images/json``."""
    unknown = set(filters) - IMAGE_FILTERS
    if unknown:
        raise InvalidArgument(f"invalid filter '{sorted(unknown)[0]}'")
    dangling = filters.get("dangling", [])
    if any(v not in ("true", "false", "1", "0") for v in dangling):
        raise InvalidArgument(f"invalid filter 'dangling={dangling[0]}'")
    before = [await images.resolve(account, name) for name in filters.get("before", [])]
    since = [await images.resolve(account, name) for name in filters.get("since", [])]

    def keep(image: ImageRecord, config: dict[str, Any]) -> bool:
        if dangling:
            want = dangling[-1] in ("true", "1")
            if want != (not image.repo_tags):
                return False
        labels = (config.get("config") or {}).get("Labels") or {}
        if not all(_label_matches(labels, w) for w in filters.get("label", [])):
            return False
        if any(image.added >= other.added for other in before):
            return False
        if any(image.added <= other.added for other in since):
            return False
        references = filters.get("reference", [])
        return not references or any(_reference_matches(image, p) for p in references)

    return keep
