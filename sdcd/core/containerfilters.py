"""``GET /containers/json``: which containers ``docker ps`` shows, as dockerd decides.

Works on plain summary dicts, one per container of the account::

    {"id", "names": ["/name"], "image" (as given), "image_id", "created" (unix),
     "state", "exit_code", "labels", "ancestors" (refs and ids the image is known by),
     "sequence" (creation order)}

and optionally ``"started"`` (False: never started), ``"health"`` (default "none"),
``"mounts"`` ([{"Name", "Source", "Destination"}]), ``"networks"`` ({name: id}; default
the bridge), ``"ports"`` (published, ``{"80/tcp": ...}``), ``"exposed_ports"``,
``"isolation"``. Filters come parsed (``sdcd.api.filters.parse_filters``).

The ``name`` filter is a regular expression, as in dockerd; it is run by a small
linear-time matcher (below) rather than Python's backtracking ``re``, so that no
pattern a tenant sends can stall the reactor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from re import _constants as _c  # the parse tree of re: stable since 3.11
from re import _parser as _p
from typing import Any

from sdcd.core.errors import InvalidArgument, NotFound
from sdcd.images import reference as refs

PS_FILTERS = frozenset(
    {"ancestor", "before", "exited", "health", "id", "isolation", "label", "name", "since"}
    | {"status", "volume", "network", "is-task", "publish", "expose"}
)
STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
HEALTH_STATES = ("starting", "healthy", "unhealthy", "none")
RUNNING_STATES = frozenset({"running", "paused", "restarting"})

Summary = dict[str, Any]
Predicate = Callable[[Summary], bool]


def filter_containers(
    items: list[Summary],
    filters: dict[str, list[str]],
    all_: bool,
    limit: int,
    before: str | None,
    since: str | None,
    lookup: Callable[[str], Summary | None],
) -> list[Summary]:
    """The containers to list, newest first.

    Without ``all_`` only running (also paused, restarting) containers are shown,
    unless ``limit`` > 0, ``before``/``since`` (query or filter) or a ``status`` filter
    ask for more (dockerd's rules). Values of one filter key are alternatives (any
    matches), except ``label`` (all must match); different keys must all match.
    ``limit`` (<= 0: none) applies last.
    """
    unknown = sorted(set(filters) - PS_FILTERS)
    if unknown:
        raise InvalidArgument(f"Invalid filter '{unknown[0]}'")
    before_refs = [*filters.get("before", []), *([before] if before else [])]
    since_refs = [*filters.get("since", []), *([since] if since else [])]
    predicates = _predicates(filters)
    predicates += _window(before_refs, since_refs, lookup)
    show_all = all_ or limit > 0 or bool(before_refs or since_refs) or "status" in filters
    if not show_all:
        predicates.insert(0, lambda c: c["state"] in RUNNING_STATES)
    ordered = sorted(items, key=lambda c: (c["sequence"], c["created"]), reverse=True)
    chosen = [c for c in ordered if all(p(c) for p in predicates)]
    return chosen[:limit] if limit > 0 else chosen


def _predicates(filters: dict[str, list[str]]) -> list[Predicate]:
    out: list[Predicate] = []
    for key, build in _BUILDERS.items():
        values = filters.get(key)
        if values:
            out.append(build(values))
    return out


def _window(before: list[str], since: list[str], lookup) -> list[Predicate]:
    """Containers created before all ``before`` ones and after all ``since`` ones
    (each named by id, id prefix or name; an unknown one is a 404 as in dockerd)."""

    def sequence(ref: str) -> int:
        found = lookup(ref)
        if found is None:
            raise NotFound(f"No such container: {ref}")
        return found["sequence"]

    out: list[Predicate] = []
    if before:
        first = min(sequence(ref) for ref in before)
        out.append(lambda c: c["sequence"] < first)
    if since:
        last = max(sequence(ref) for ref in since)
        out.append(lambda c: c["sequence"] > last)
    return out


# -- one builder per filter key: values -> predicate (validating the values) ----------------


def _id_filter(values: list[str]) -> Predicate:
    return lambda c: any(c["id"].startswith(v) for v in values)


def _name_filter(values: list[str]) -> Predicate:
    patterns = [p for p in (SafePattern.compile(v) for v in values) if p is not None]

    def keep(c: Summary) -> bool:
        for name in c["names"]:
            bare = name.removeprefix("/")
            if name in values or bare in values:
                return True
            if any(p.search(name) or p.search(bare) for p in patterns):
                return True
        return False

    return keep


def label_matches(labels: dict[str, str], wanted: str) -> bool:
    """``key`` (present) or ``key=value`` (equal)."""
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _label_filter(values: list[str]) -> Predicate:
    return lambda c: all(label_matches(c.get("labels") or {}, v) for v in values)


def _status_filter(values: list[str]) -> Predicate:
    for value in values:
        if value not in STATES:
            raise InvalidArgument(f"Invalid filter 'status={value}'")
    return lambda c: c["state"] in values


def _exited_filter(values: list[str]) -> Predicate:
    codes = set()
    for value in values:
        try:
            codes.add(int(value))
        except ValueError:
            raise InvalidArgument(f"Invalid filter 'exited={value}'") from None
    return lambda c: (
        c["state"] in ("exited", "dead") and c.get("started", True) and c.get("exit_code") in codes
    )


def _health_filter(values: list[str]) -> Predicate:
    for value in values:
        if value not in HEALTH_STATES:
            raise InvalidArgument(f"Invalid filter 'health={value}'")
    return lambda c: (c.get("health") or "none") in values


def _is_task_filter(values: list[str]) -> Predicate:
    wanted = set(values)
    if wanted - {"true", "false"} or len(wanted) != 1:
        raise InvalidArgument(f"Invalid filter 'is-task={values[0]}'")
    tasks = wanted == {"true"}  # no container here is a swarm task
    return lambda c: not tasks


def _isolation_filter(values: list[str]) -> Predicate:
    patterns = [p for p in (SafePattern.compile(v) for v in values) if p is not None]
    return lambda c: any(p.search((c.get("isolation") or "default").lower()) for p in patterns)


def _volume_filter(values: list[str]) -> Predicate:
    def keep(c: Summary) -> bool:
        for mount in c.get("mounts") or ():
            names = (mount.get("Destination"), mount.get("Name") or mount.get("Source"))
            if any(v in names for v in values):
                return True
        return False

    return keep


def _network_filter(values: list[str]) -> Predicate:
    def keep(c: Summary) -> bool:
        networks = c.get("networks") or {"bridge": ""}
        for value in values:
            if value in networks or any(i and i.startswith(value) for i in networks.values()):
                return True
        return False

    return keep


def _port_filter(key: str, field: str) -> Callable[[list[str]], Predicate]:
    def build(values: list[str]) -> Predicate:
        wanted = {port for value in values for port in _filter_ports(key, value)}
        return lambda c: bool(wanted & set(c.get(field) or ()))

    return build


def _filter_ports(key: str, value: str) -> list[str]:
    """``80``, ``80/udp``, ``8000-8080/tcp`` -> ``["80/tcp"]``, ... (dockerd's forms)."""
    if ":" in value:
        raise InvalidArgument(f"filter for '{key}' should not contain ':': {value}")
    match = re.fullmatch(r"(\d+)(?:-(\d+))?(?:/([a-z]+))?", value)
    if match is None or not 0 < int(match.group(1)) <= int(match.group(2) or match.group(1)):
        raise InvalidArgument(f"error while looking up for {key} {value}")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if last > 65535 or last - first > 65535:
        raise InvalidArgument(f"error while looking up for {key} {value}")
    proto = match.group(3) or "tcp"
    return [f"{port}/{proto}" for port in range(first, last + 1)]


def _normal_ref(text: str) -> str | None:
    try:
        return str(refs.parse(text))
    except refs.ReferenceError:
        return None


def _ancestor_filter(values: list[str]) -> Predicate:
    """Image name[:tag] (a bare name means ``:latest``), name@digest, id or id prefix
    (4+ hex digits), matched against everything the container's image is known by."""
    wanted_refs = {r for r in map(_normal_ref, values) if r}
    wanted_ids = [v.removeprefix("sha256:") for v in values if refs.is_short_id(v)]

    def keep(c: Summary) -> bool:
        for known in _known_as(c):
            if _normal_ref(known) in wanted_refs:
                return True
            hexpart = known.removeprefix("sha256:")
            if re.fullmatch(r"[0-9a-f]+", hexpart) and any(
                hexpart.startswith(w) for w in wanted_ids
            ):
                return True
        return False

    return keep


def _known_as(c: Summary) -> Iterable[str]:
    yield from c.get("ancestors") or ()
    yield from (c.get("image") or "", c.get("image_id") or "")


_BUILDERS: dict[str, Callable[[list[str]], Predicate]] = {
    "id": _id_filter,
    "name": _name_filter,
    "label": _label_filter,
    "status": _status_filter,
    "exited": _exited_filter,
    "health": _health_filter,
    "is-task": _is_task_filter,
    "isolation": _isolation_filter,
    "volume": _volume_filter,
    "network": _network_filter,
    "publish": _port_filter("publish", "ports"),
    "expose": _port_filter("expose", "exposed_ports"),
    "ancestor": _ancestor_filter,
}


# -- a regular expression matcher without backtracking -------------------------------------

MAX_PROGRAM = 4000  # instructions; a pattern that expands to more is not used


class _Unsupported(Exception):
    pass


def _anchored(parsed) -> bool:
    """Whether a parsed pattern begins with ``^`` (and MULTILINE is off)."""
    if parsed.state.flags & re.MULTILINE or not len(parsed):
        return False
    op, arg = parsed[0]
    return op == _c.AT and arg == _c.AT_BEGINNING


class SafePattern:
    """A regular expression run as a Thompson NFA: time linear in the text, whatever
    the pattern. The syntax is Python's (as Go's for what ps filters use); back
    references and look-around are not supported, and such a pattern matches nothing
    (dockerd likewise skips a pattern it cannot compile)."""

    def __init__(self, program: list[tuple], ignore_case: bool, anchored: bool = False) -> None:
        self._program = program
        self._ignore_case = ignore_case
        #: Starts with ``^`` (no MULTILINE): only a match from position 0 can succeed,
        #: so the search stops as soon as no thread is left (``^db-`` reads 3 characters).
        self._anchored = anchored

    @classmethod
    def compile(cls, pattern: str) -> SafePattern | None:
        """The compiled pattern, or None if it is invalid or unsupported."""
        try:
            parsed = _p.parse(pattern)
            compiler = _Compiler(bool(parsed.state.flags & re.IGNORECASE))
            compiler.emit(parsed)
            compiler.code.append(("match",))
        except (re.error, _Unsupported, RecursionError, OverflowError):
            return None
        return cls(compiler.code, compiler.ignore_case, _anchored(parsed))

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text`` (``re.search``)."""
        current: list[int] = []
        for i in range(len(text) + 1):
            seeds = current if self._anchored and i else [*current, 0]
            if not seeds:
                return False
            current = self._closure(seeds, text, i)
            if any(self._program[pc][0] == "match" for pc in current):
                return True
            if i == len(text):
                break
            ch = text[i]
            current = [pc + 1 for pc in current if self._program[pc][1](ch)]
        return False

    def _closure(self, pcs: list[int], text: str, i: int) -> list[int]:
        """The instructions reachable without reading a character (deduplicated)."""
        seen: set[int] = set()
        out: list[int] = []
        stack = list(reversed(pcs))
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            op = self._program[pc]
            if op[0] == "jmp":
                stack.append(op[1])
            elif op[0] == "split":
                stack.extend((op[2], op[1]))
            elif op[0] == "assert":
                if _assertion(op[1], text, i):
                    stack.append(pc + 1)
            else:
                out.append(pc)
        return out


def _is_word(text: str, i: int) -> bool:
    return 0 <= i < len(text) and (text[i] == "_" or (text[i].isascii() and text[i].isalnum()))


def _assertion(kind: Any, text: str, i: int) -> bool:
    if kind in (_c.AT_BEGINNING, _c.AT_BEGINNING_STRING):
        return i == 0
    if kind in (_c.AT_END, _c.AT_END_STRING):
        return i == len(text)
    boundary = _is_word(text, i - 1) != _is_word(text, i)
    return boundary if kind == _c.AT_BOUNDARY else not boundary


_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    _c.CATEGORY_DIGIT: lambda ch: "0" <= ch <= "9",
    _c.CATEGORY_NOT_DIGIT: lambda ch: not "0" <= ch <= "9",
    _c.CATEGORY_SPACE: lambda ch: ch in " \t\n\r\f\v",
    _c.CATEGORY_NOT_SPACE: lambda ch: ch not in " \t\n\r\f\v",
    _c.CATEGORY_WORD: lambda ch: _is_word(ch, 0),
    _c.CATEGORY_NOT_WORD: lambda ch: not _is_word(ch, 0),
}
_ASSERTIONS = (
    _c.AT_BEGINNING,
    _c.AT_BEGINNING_STRING,
    _c.AT_END,
    _c.AT_END_STRING,
    _c.AT_BOUNDARY,
    _c.AT_NON_BOUNDARY,
)


class _Compiler:
    """Turns ``re._parser``'s tree into NFA instructions: ``("char", predicate)``,
    ``("split", a, b)``, ``("jmp", a)``, ``("assert", kind)``, ``("match",)``."""

    def __init__(self, ignore_case: bool) -> None:
        self.ignore_case = ignore_case
        self.code: list[tuple] = []

    def _add(self, op: tuple) -> int:
        if len(self.code) >= MAX_PROGRAM:
            raise _Unsupported("pattern too large")
        self.code.append(op)
        return len(self.code) - 1

    def _char(self, test: Callable[[str], bool]) -> None:
        if self.ignore_case:
            self._add(("char", lambda ch: test(ch) or test(ch.lower()) or test(ch.upper())))
        else:
            self._add(("char", test))

    def emit(self, nodes) -> None:
        for op, av in nodes:
            self._emit_one(op, av)

    def _emit_one(self, op, av) -> None:
        if op == _c.LITERAL:
            self._char(_equals(chr(av)))
        elif op == _c.NOT_LITERAL:
            self._char(_differs(chr(av)))
        elif op == _c.ANY:
            self._char(lambda ch: ch != "\n")
        elif op == _c.IN:
            self._char(_set_predicate(av))
        elif op == _c.SUBPATTERN:
            self.emit(av[3])
        elif op == _c.BRANCH:
            self._branch(av[1])
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            self._repeat(*av)
        elif op == _c.AT and av in _ASSERTIONS:
            self._add(("assert", av))
        else:
            raise _Unsupported(str(op))

    def _branch(self, alternatives) -> None:
        jumps = []
        for alternative in alternatives[:-1]:
            split = self._add(("split", 0, 0))
            self.emit(alternative)
            jumps.append(self._add(("jmp", 0)))
            self.code[split] = ("split", split + 1, len(self.code))
        self.emit(alternatives[-1])
        for jump in jumps:
            self.code[jump] = ("jmp", len(self.code))

    def _repeat(self, low: int, high: int, body) -> None:
        for _ in range(low):
            self.emit(body)
        if high == _c.MAXREPEAT:
            split = self._add(("split", 0, 0))
            self.emit(body)
            self._add(("jmp", split))
            self.code[split] = ("split", split + 1, len(self.code))
            return
        splits = []
        for _ in range(high - low):
            splits.append(self._add(("split", 0, 0)))
            self.emit(body)
        for split in splits:
            self.code[split] = ("split", split + 1, len(self.code))


def _equals(c: str) -> Callable[[str], bool]:
    return lambda ch: ch == c


def _differs(c: str) -> Callable[[str], bool]:
    return lambda ch: ch != c


def _between(low: int, high: int) -> Callable[[str], bool]:
    return lambda ch: low <= ord(ch) <= high


def _set_predicate(items) -> Callable[[str], bool]:
    negate = bool(items) and items[0][0] == _c.NEGATE
    tests: list[Callable[[str], bool]] = []
    for op, av in items[1:] if negate else items:
        if op == _c.LITERAL:
            tests.append(_equals(chr(av)))
        elif op in (_c.RANGE, _c.RANGE_UNI_IGNORE):
            tests.append(_between(av[0], av[1]))
        elif op == _c.CATEGORY and av in _CATEGORIES:
            tests.append(_CATEGORIES[av])
        else:
            raise _Unsupported(str(op))
    return lambda ch: any(t(ch) for t in tests) != negate
