"""Which compute node a new container goes to. Pure: the caller reads the nodes and the
account's containers (and reserves the choice atomically); this only decides.

Filters first (the node is up, has the package's memory and disk free, satisfies every
hard affinity rule, is the ``--volumes-from`` source's node), then ranking: soft affinity
rules met, then the account's containers spread across nodes (fewest of its containers
first, as Triton's default), then the least loaded node, then the node id (so that a
decision can be reproduced).

Affinity is Swarm's syntax as Triton took it (``../shared/SDC-BEHAVIOUR.md``):
``-e affinity:container==web``, ``-e affinity:role!=db``, or the label
``com.docker.swarm.affinities=["container!=web"]``; ``==``/``!=`` are hard, ``==~``/``!=~``
soft; values are exact, ``*`` globs or ``/regex/`` (run by a linear-time matcher: a
tenant's pattern cannot stall the API); keys are ``container`` (name or id) or a label.
``==``: a node that holds at least one matching container of the account; ``!=``: a node
that holds none. Triton ignored soft rules when hard ones were given too; sdcd applies
both (hard ones filter, soft ones rank).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping

import attrs

from sdcd.core.containerfilters import SafePattern
from sdcd.core.errors import InvalidArgument, Unprocessable

AFFINITY_LABEL = "com.docker.swarm.affinities"
ENV_PREFIX = "affinity:"
_RULE = re.compile(r"^([A-Za-z0-9_.\-/]+)(==~|!=~|==|!=)(.+)$")
#: A create may name at most this many rules (each is checked against every container).
MAX_RULES = 32


@attrs.frozen
class Node:
    """What placement needs to know of a compute node (memory and disk in MiB)."""

    id: str
    up: bool
    memory_total: int
    memory_free: int
    disk_free: int


@attrs.frozen
class Placed:
    """One of the account's containers and where it is."""

    id: str
    name: str
    labels: Mapping[str, str]
    node: str


@attrs.frozen
class Rule:
    """One affinity rule; ``text`` is how the user wrote it (errors name it)."""

    key: str
    same: bool
    soft: bool
    value: str
    text: str
    _match: Callable[[str], bool] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_match", _matcher(self.value))

    def matches(self, container: Placed) -> bool:
        if self.key == "container":
            candidates = [container.name.removeprefix("/"), container.id]
            if (
                _is_exact(self.value)
                and len(self.value) >= 3
                and container.id.startswith(self.value)
            ):
                return True
        elif self.key in container.labels:
            candidates = [container.labels[self.key]]
        else:
            return False
        return any(self._match(c) for c in candidates)


def node_views(
    records: Iterable[Mapping],
    now: float,
    window: float,
    overcommit: float = 1.0,
    disk_overcommit: float = 1.0,
) -> list[Node]:
    """The registry's node records as placement sees them: up while the last heartbeat
    is within ``window`` seconds; free memory (disk) is capacity x ``overcommit``
    (``disk_overcommit``) less what is reserved (never below 0)."""
    views = []
    for r in records:
        memory = int(r["memory"] * overcommit)
        disk = int(r["disk"] * disk_overcommit)
        views.append(
            Node(
                id=r["id"],
                up=silence(r, now) <= window,
                memory_total=memory,
                memory_free=max(0, memory - r.get("reserved_memory", 0)),
                disk_free=max(0, disk - r.get("reserved_disk", 0)),
            )
        )
    return views


def silence(record: Mapping, now: float) -> float:
    """Seconds since the node's last heartbeat: as the registry measured it (on Redis's
    clock) when it did, else against ``now``."""
    silent = record.get("silent")
    return float(silent) if silent is not None else now - record["last_seen"]


class NoPlacement(Unprocessable):
    """No node can take the container; the message says which rule or resource."""


def parse_rules(env: Iterable[str], labels: Mapping[str, str]) -> list[Rule]:
    """The rules of a create: ``affinity:`` env entries and the Swarm label."""
    texts = [e[len(ENV_PREFIX) :] for e in env if e.startswith(ENV_PREFIX)]
    if AFFINITY_LABEL in labels:
        try:
            listed = json.loads(labels[AFFINITY_LABEL])
        except ValueError:
            listed = None
        if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
            raise InvalidArgument(
                f"invalid label {AFFINITY_LABEL}: must be a JSON array of strings, e.g. "
                '["container!=web"]'
            )
        texts += listed
    if len(texts) > MAX_RULES:
        raise InvalidArgument(f"too many affinity rules: {len(texts)} (at most {MAX_RULES})")
    return [_rule(t) for t in texts]


def _rule(text: str) -> Rule:
    match = _RULE.match(text.strip())
    if match is None:
        raise InvalidArgument(
            f'invalid affinity "{text}": expected <container|label><op><value> with op one '
            "of ==, !=, ==~, !=~"
        )
    key, op, value = match.groups()
    if _is_regex(value) and SafePattern.compile(value[1:-1]) is None:
        raise InvalidArgument(f'invalid affinity "{text}": bad regular expression')
    return Rule(key, op.startswith("=="), op.endswith("~"), value, text.strip())


def _is_regex(value: str) -> bool:
    return len(value) > 1 and value.startswith("/") and value.endswith("/")


def _is_exact(value: str) -> bool:
    return "*" not in value and not _is_regex(value)


def _matcher(value: str) -> Callable[[str], bool]:
    """The value as a predicate, compiled once per rule."""
    if _is_regex(value):
        pattern = SafePattern.compile(value[1:-1])
        return pattern.search if pattern is not None else (lambda _text: False)
    if "*" in value:
        return lambda text: _glob(value, text)
    return value.__eq__


def _glob(pattern: str, text: str) -> bool:
    """``*`` (any run of characters) and nothing else, in linear time."""
    parts = pattern.split("*")
    if not text.startswith(parts[0]):
        return False
    pos = len(parts[0])
    for part in parts[1:-1]:
        found = text.find(part, pos)
        if found < 0:
            return False
        pos = found + len(part)
    last = parts[-1]
    return len(text) - pos >= len(last) and text.endswith(last)


def place(
    nodes: Iterable[Node],
    containers: Iterable[Placed],
    rules: list[Rule],
    memory: int,
    disk: int = 0,
    with_node: str | None = None,
) -> Node:
    """The node for a new container of ``memory``/``disk`` MiB; ``NoPlacement`` with the
    reason when none qualifies. ``with_node``: ``--volumes-from``'s node."""
    containers = list(containers)
    held: dict[str, list[Placed]] = {}
    for c in containers:
        held.setdefault(c.node, []).append(c)
    candidates = [n for n in nodes if n.up]
    if not candidates:
        raise NoPlacement("No compute resources available: no compute node is up")
    if with_node is not None:
        candidates = [n for n in candidates if n.id == with_node]
        if not candidates:
            raise NoPlacement("No compute resources available: the --volumes-from "
                              "container's node is down")  # fmt: skip
    for rule in (r for r in rules if not r.soft):
        candidates = _apply_hard(rule, candidates, held, containers)
    fitting = [n for n in candidates if n.memory_free >= memory and n.disk_free >= disk]
    if not fitting:
        raise NoPlacement(
            f"No compute resources available: no node has {memory} MiB of memory free"
            + (f" and {disk} MiB of disk" if disk else "")
            + (" among those the affinity rules allow" if rules else "")
        )
    soft = [r for r in rules if r.soft]
    return min(fitting, key=lambda n: _rank(n, soft, held))


def _apply_hard(rule: Rule, candidates: list[Node], held, containers) -> list[Node]:
    if rule.same and not any(rule.matches(c) for c in containers):
        raise NoPlacement(f"cannot satisfy affinity rule {rule.text}: no container matches")
    kept = [n for n in candidates if _holds_match(rule, held.get(n.id, ())) == rule.same]
    if not kept:
        raise NoPlacement(f"cannot satisfy affinity rule {rule.text}: no node qualifies")
    return kept


def _holds_match(rule: Rule, on_node: Iterable[Placed]) -> bool:
    return any(rule.matches(c) for c in on_node)


def _rank(node: Node, soft: list[Rule], held) -> tuple:
    on_node = held.get(node.id, ())
    unmet = sum(_holds_match(r, on_node) != r.same for r in soft)
    used = 1 - node.memory_free / node.memory_total if node.memory_total else 1.0
    return (unmet, len(on_node), used, node.id)
