"""``docker events``: what happened to an account's containers, as dockerd reports it.

Events are kept per account in a bounded ring (for ``since``) and pushed to live
listeners. With several sdcd instances, what this instance's API did is also sent to the
others through a bus (``sdcd.store.eventbus``), and what they did arrives here by
``deliver``; the ring holds what happened since this instance started.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

#: Events kept per account for ``docker events --since``.
KEEP = 1024


def container_event(
    action: str,
    cid: str,
    image: str,
    name: str,
    labels: dict,
    extra: dict | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One event in dockerd's shape (the old ``status``/``id``/``from`` fields too)."""
    t = time.time() if now is None else now
    attributes = {
        **{k: str(v) for k, v in (labels or {}).items()},
        "image": image,
        "name": name,
        **(extra or {}),
    }
    return {
        "status": action,
        "id": cid,
        "from": image,
        "Type": "container",
        "Action": action,
        "Actor": {"ID": cid, "Attributes": attributes},
        "scope": "local",
        "time": int(t),
        "timeNano": int(t * 1e9),
    }


class EventLog:
    """Per-account event history and live subscriptions."""

    def __init__(self) -> None:
        #: Sends an event to the other instances (``send(login, event)``), if any.
        self.bus: Any = None
        self._kept: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=KEEP)
        )
        self._listeners: dict[str, set[Callable[[dict], None]]] = collections.defaultdict(set)

    def publish(self, login: str, event: dict, share: bool = True) -> None:
        """An event of this instance; ``share``: the other instances did not see it
        (an API action, not a node's event, which every instance hears)."""
        self.deliver(login, event)
        if share and self.bus is not None:
            self.bus.send(login, event)

    def deliver(self, login: str, event: dict) -> None:
        """An event for this instance's history and listeners."""
        self._kept[login].append(event)
        for listener in list(self._listeners[login]):
            listener(event)

    def history(self, login: str, since: float | None, until: float | None) -> list[dict]:
        """Kept events with since <= time <= until (unix seconds)."""
        out = []
        for event in self._kept.get(login, ()):
            t = event["timeNano"] / 1e9
            if (since is None or t >= since) and (until is None or t <= until):
                out.append(event)
        return out

    def listen(self, login: str, listener: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``listener`` for each new event; returns the function that stops it."""
        self._listeners[login].add(listener)
        return lambda: self._listeners[login].discard(listener)


def matches(event: dict, filters: dict[str, list[str]]) -> bool:
    """dockerd's event filters: type, event, container (id or name), image, label."""
    actor = event["Actor"]
    attrs = actor["Attributes"]
    checks = {
        "type": lambda v: event["Type"] == v,
        "event": lambda v: event["Action"] == v,
        "container": lambda v: actor["ID"].startswith(v) or attrs.get("name") == v,
        "image": lambda v: attrs.get("image") in (v, v + ":latest") or event["from"] == v,
        "label": lambda v: (
            (attrs.get(v.split("=", 1)[0]) == v.split("=", 1)[1]) if "=" in v else v in attrs
        ),
    }
    for key, values in filters.items():
        check = checks.get(key)
        if check is None:
            continue
        if not any(check(v) for v in values):
            return False
    return True
