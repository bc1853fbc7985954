"""Dockerfile parsing and word expansion, as dockerd's classic builder reads them
(moby ``builder/dockerfile/parser``, ``frontend/dockerfile/shell`` and ``instructions``):
parser directives, continuation lines, comments, exec (JSON) and shell forms, leading
``--flags``, ``$VAR``/``${VAR:-x}`` expansion with quote removal. Pure functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import attrs

COMMANDS = frozenset({"FROM", "RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "ENV", "ARG",
                      "WORKDIR", "USER", "EXPOSE", "LABEL", "VOLUME", "STOPSIGNAL", "SHELL",
                      "HEALTHCHECK", "ONBUILD", "MAINTAINER"})  # fmt: skip
FLAGS = {
    "COPY": {"from", "chown", "chmod"},
    "ADD": {"chown", "chmod"},
    "FROM": {"platform"},
    "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
}
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
          "h": 3600 * 10**9}  # fmt: skip


class DockerfileError(Exception):
    """A Dockerfile dockerd would refuse; ``message`` in its words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class Instruction:
    """One instruction: ``rest`` is what follows the command and its flags."""

    command: str
    rest: str
    flags: dict[str, str]
    json: list[str] | None
    original: str
    line: int


@attrs.frozen
class Stage:
    """A ``FROM`` and the instructions up to the next one."""

    name: str | None
    base: str
    from_inst: Instruction
    instructions: tuple[Instruction, ...]
    index: int


def parse(text: str) -> list[Instruction]:
    """Every instruction of the file, checked (unknown ones, argument counts, flags)."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").split("\n")
    escape, start = _directives(lines)
    instructions = []
    i = start
    while i < len(lines):
        line = lines[i]
        i += 1
        if _blank_or_comment(line):
            continue
        first = i
        joined = line.rstrip()
        while joined.endswith(escape) and not _escaped_escape(joined, escape):
            joined = joined[:-1]
            while i < len(lines) and _blank_or_comment(lines[i]) and lines[i].strip():
                i += 1  # comment lines inside a continuation are dropped
            if i >= len(lines):
                break
            joined += lines[i].rstrip()
            i += 1
        inst = _instruction(joined.strip(), first)
        check(inst)
        instructions.append(inst)
    if not instructions:
        raise DockerfileError("the Dockerfile (Dockerfile) cannot be empty")
    return instructions


def escape_of(text: str) -> str:
    """The escape character the ``# escape=`` directive chose (default backslash)."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").split("\n")
    return _directives(lines)[0]


def _directives(lines: list[str]) -> tuple[str, int]:
    escape = "\\"
    seen = set()
    for n, line in enumerate(lines):
        match = _DIRECTIVE.match(line.strip())
        if not match:
            return escape, n
        key, value = match.group(1).lower(), match.group(2)
        if key in seen:
            raise DockerfileError(f"only one {key} parser directive can be used")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(f"invalid escape token '{value}' does not match ` or \\")
            escape = value
    return escape, len(lines)


def _blank_or_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _escaped_escape(text: str, escape: str) -> bool:
    """Never: dockerd treats any trailing escape character as a continuation."""
    return False


def _instruction(text: str, line: int) -> Instruction:
    command, _, rest = text.partition(" ")
    if "\t" in command:
        command, _, more = command.partition("\t")
        rest = more + " " + rest
    command = command.upper()
    if command not in COMMANDS:
        raise DockerfileError(f"unknown instruction: {command}")
    rest = rest.strip()
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, remainder = rest.partition(" ")
        if word == "--":
            rest = remainder.strip()
            break
        name, _, value = word[2:].partition("=")
        if name not in FLAGS.get(command, set()):
            raise DockerfileError(f"Unknown flag: {name}")
        flags[name] = value
        rest = remainder.strip()
    return Instruction(command, rest, flags, _json_form(rest), text, line)


def _json_form(rest: str) -> list[str] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def check(inst: Instruction) -> None:
    """dockerd's argument checks for one instruction."""
    c, rest = inst.command, inst.rest
    if c in ("ENV", "LABEL", "ARG", "EXPOSE", "VOLUME", "ONBUILD", "HEALTHCHECK", "RUN"):
        if not rest or (inst.json is not None and not inst.json and c in ("RUN", "VOLUME")):
            raise DockerfileError(f"{c} requires at least one argument")
    elif c in ("COPY", "ADD"):
        words = inst.json if inst.json is not None else _raw_words(rest)
        if len(words) < 2:
            raise DockerfileError(f"{c} requires at least two arguments")
    elif c == "FROM":
        words = rest.split()
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise DockerfileError("FROM requires either one or three arguments")
    elif c in ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER"):
        if not rest:
            raise DockerfileError(f"{c} requires exactly one argument")
    elif c == "SHELL" and not inst.json:
        raise DockerfileError("SHELL requires the arguments to be in JSON form")


# -- stages ------------------------------------------------------------------------------


def stages(instructions: list[Instruction]) -> tuple[list[Instruction], list[Stage]]:
    """(global ARGs before the first FROM, the stages)."""
    meta: list[Instruction] = []
    result: list[Stage] = []
    current: tuple[Instruction, str, str | None] | None = None
    body: list[Instruction] = []
    for inst in instructions:
        if inst.command == "FROM":
            if current is not None:
                result.append(_stage(current, body, len(result)))
            current, body = _from(inst, {s.name for s in result} - {None}), []
        elif current is None:
            if inst.command != "ARG":
                raise DockerfileError("no build stage in current context")
            meta.append(inst)
        else:
            body.append(inst)
    if current is None:
        raise DockerfileError("no build stage in current context")
    result.append(_stage(current, body, len(result)))
    return meta, result


def _from(inst: Instruction, taken: set) -> tuple[Instruction, str, str | None]:
    words = inst.rest.split()
    name = None
    if len(words) == 3:
        name = words[2].lower()
        if not _STAGE_NAME.match(name):
            raise DockerfileError(
                f'invalid name for build stage: "{words[2]}", name can\'t start with a number '
                "or contain symbols"
            )
        if name in taken:
            raise DockerfileError(f'duplicate name "{name}"')
    return inst, words[0], name


def _stage(current, body: list[Instruction], index: int) -> Stage:
    inst, base, name = current
    return Stage(name, base, inst, tuple(body), index)


# -- words -------------------------------------------------------------------------------


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word: variables expanded, quotes and escapes removed (spaces kept)."""
    return "".join(_Lexer(word, env, escape, split=False).words())


def split_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Words split on unquoted white space, each expanded as ``expand`` does."""
    return _Lexer(text, env, escape, split=True).words()


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str, split: bool) -> None:
        self.text, self.env, self.escape, self.split = text, env, escape, split
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def words(self) -> list[str]:
        words, word, started = [], [], False
        while self.pos < len(self.text):
            ch = self.take()
            if self.split and ch.isspace():
                if started:
                    words.append("".join(word))
                    word, started = [], False
                continue
            started = True
            if ch == self.escape:
                nxt = self.take()
                word.append(nxt if nxt else ch)
            elif ch == "'":
                word.append(self._until("'"))
            elif ch == '"':
                word.append(self._double())
            elif ch == "$":
                word.append(self._variable())
            else:
                word.append(ch)
        if started:
            words.append("".join(word))
        return words

    def _until(self, end: str) -> str:
        out = []
        while self.pos < len(self.text):
            ch = self.take()
            if ch == end:
                return "".join(out)
            out.append(ch)
        raise DockerfileError("unexpected end of statement while looking for matching '")

    def _double(self) -> str:
        out = []
        while self.pos < len(self.text):
            ch = self.take()
            if ch == '"':
                return "".join(out)
            if ch == self.escape:
                nxt = self.peek()
                if nxt in ('"', "$", self.escape):
                    out.append(self.take())
                else:
                    out.append(ch)
            elif ch == "$":
                out.append(self._variable())
            else:
                out.append(ch)
        raise DockerfileError('unexpected end of statement while looking for matching "')

    def _variable(self) -> str:
        if self.peek() == "{":
            self.take()
            return self._braced()
        name = self._name()
        if not name:
            return "$"
        return self.env.get(name, "")

    def _name(self) -> str:
        start = self.pos
        while self.peek() and _NAME_CHAR.match(self.peek()):
            self.pos += 1
        return self.text[start : self.pos]

    def _braced(self) -> str:
        name = self._name()
        ch = self.take()
        if ch == "}":
            return self.env.get(name, "")
        modifier = ch
        if ch == ":":
            modifier = ":" + self.take()
        if modifier not in (":-", ":+", "-", "+") or not name:
            raise DockerfileError(f"unsupported modifier ({modifier}) in substitution")
        word = self._modifier_word()
        value = self.env.get(name)
        present = value is not None and (value != "" or not modifier.startswith(":"))
        if modifier.endswith("-"):
            return value if present else word
        return word if present else ""

    def _modifier_word(self) -> str:
        depth, start = 0, self.pos
        while self.pos < len(self.text):
            ch = self.take()
            if ch == self.escape:
                self.pos += 1
            elif ch == "{":
                depth += 1
            elif ch == "}":
                if depth == 0:
                    inner = self.text[start : self.pos - 1]
                    return expand(inner, self.env, self.escape)
                depth -= 1
        raise DockerfileError("missing '}'")


def _raw_words(text: str) -> list[str]:
    """Words split on unquoted white space, quotes kept (dockerd's parse-time split)."""
    words, word, quote, i = [], [], "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            word.append(ch)
            if ch == "\\" and quote == '"' and i + 1 < len(text):
                word.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
            if ch in "\"'":
                quote = ch
            elif ch == "\\" and i + 1 < len(text):
                word.append(text[i + 1])
                i += 1
        i += 1
    if word:
        words.append("".join(word))
    return words


def key_values(
    inst: Instruction, env: Mapping[str, str], escape: str = "\\"
) -> list[tuple[str, str | None]]:
    """ENV/LABEL ``k=v`` pairs (or the old ``ENV key value words``), ARG ``name[=default]``
    (None without a default); values expanded."""
    c = inst.command
    words = _raw_words(inst.rest)
    if not words:
        raise DockerfileError(f"{c} requires at least one argument")
    if c == "ARG":
        pairs = []
        for word in words:
            name, eq, value = word.partition("=")
            if not name:
                raise DockerfileError("ARG names can not be blank")
            pairs.append((name, expand(value, env, escape) if eq else None))
        return pairs
    if "=" not in words[0]:
        if c == "ENV" and len(words) >= 2:
            value = inst.rest[len(words[0]) :].strip()
            return [(words[0], expand(value, env, escape))]
        raise DockerfileError(f"{c} must have two arguments")
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise DockerfileError(
                f'Syntax error - can\'t find = in "{word}". Must be of the form: name=value'
            )
        key = expand(key, env, escape) if c == "LABEL" else key
        if not key:
            raise DockerfileError(f"{c} names can not be blank")
        pairs.append((key, expand(value, env, escape)))
    return pairs


def shell_command(inst: Instruction, shell: list[str]) -> list[str]:
    """RUN/CMD/ENTRYPOINT: the exec form as written, else the shell form under SHELL."""
    if inst.json is not None:
        return list(inst.json)
    return [*shell, inst.rest]


def healthcheck(inst: Instruction) -> dict:
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [--options] CMD command``, as image config."""
    kind, _, rest = inst.rest.partition(" ")
    kind, rest = kind.upper(), rest.strip()
    if kind == "NONE":
        if rest or inst.flags:
            raise DockerfileError("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise DockerfileError(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    if not rest:
        raise DockerfileError("Missing command after HEALTHCHECK CMD")
    exec_form = _json_form(rest)
    check: dict = {"Test": ["CMD", *exec_form] if exec_form is not None else ["CMD-SHELL", rest]}
    for flag, key in _HEALTH_DURATIONS:
        if inst.flags.get(flag):
            check[key] = duration(inst.flags[flag], flag)
    if inst.flags.get("retries"):
        retries = inst.flags["retries"]
        if not retries.isdigit() or int(retries) < 1:
            raise DockerfileError(f"--retries must be at least 1 (not {retries})")
        check["Retries"] = int(retries)
    return check


_HEALTH_DURATIONS = (
    ("interval", "Interval"),
    ("timeout", "Timeout"),
    ("start-period", "StartPeriod"),
    ("start-interval", "StartInterval"),
)


def duration(text: str, flag: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) in nanoseconds; at least 1 ms."""
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise DockerfileError(f'time: invalid duration "{text}"')
    if total < 10**6:
        raise DockerfileError(f"Interval {flag} cannot be less than 1ms")
    return int(total)


def onbuild_instructions(triggers: list[str]) -> list[Instruction]:
    """An image's ONBUILD triggers as instructions; some may not be triggers."""
    result = []
    for trigger in triggers:
        inst = parse(trigger)[0]
        if inst.command in ("ONBUILD", "FROM", "MAINTAINER"):
            raise DockerfileError(f"{inst.command} isn't allowed as an ONBUILD trigger")
        result.append(inst)
    return result
