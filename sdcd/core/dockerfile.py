"""Dockerfile parsing and word expansion, as dockerd's classic builder does them.

Re-done from the behaviour of moby's parser (buildkit ``frontend/dockerfile/parser``), its
shell lexer (``frontend/dockerfile/shell``) and ``instructions/parse.go``: parser
directives, continuation lines, comments, exec (JSON) and shell forms, leading
``--flags``, ``$VAR``/``${VAR:-x}`` expansion with quote removal, and dockerd's argument
checks in its own words. Pure functions: no I/O.

The words and the edge cases were compared with Debian's dockerd 20.10 (the reference
daemon of ``bench/``); what later dockerd accepts is accepted too: ``${VAR-x}``,
``${VAR+x}``, ``${VAR#pattern}``, ``${VAR%pattern}``, ``${VAR/a/b}``, HEALTHCHECK
``--start-interval``, ``--retries=0``, a zero interval; text after a JSON array makes the
line shell form (dockerd 27 fixed its JSON reading). Heredocs are not supported: ``<<EOF``
is literal text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from fractions import Fraction

import attrs

COMMANDS = frozenset({"FROM", "RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "ENV", "ARG",
                      "WORKDIR", "USER", "EXPOSE", "LABEL", "VOLUME", "STOPSIGNAL", "SHELL",
                      "HEALTHCHECK", "ONBUILD", "MAINTAINER"})  # fmt: skip
#: The flags each instruction takes; every one needs a value (``--name=value``).
FLAGS: dict[str, frozenset[str]] = {
    "COPY": frozenset({"from", "chown", "chmod"}),
    "ADD": frozenset({"chown", "chmod"}),
    "FROM": frozenset({"platform"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval",
                              "retries"}),
}  # fmt: skip
#: Flags dockerd parses but only BuildKit carries out.
BUILDKIT_FLAGS: dict[str, frozenset[str]] = {
    "RUN": frozenset({"mount", "network", "security", "device"}),
}
_BUILDKIT = (
    "the --{} option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to "
    "learn how to build images with BuildKit enabled"
)
#: Instructions whose flags dockerd never looks at (so any are accepted and ignored).
_FLAGS_IGNORED = frozenset({"ARG", "STOPSIGNAL"})
#: Instructions whose text may be a JSON array (the exec form).
_MAYBE_JSON = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"})
#: Instructions whose one argument is all of the text.
_WHOLE = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "MAINTAINER", "STOPSIGNAL", "USER",
                    "WORKDIR"})  # fmt: skip
#: Instructions whose arguments are the text split on white space.
_SPLIT = frozenset({"COPY", "ADD", "VOLUME", "EXPOSE", "FROM"})

#: Go's ``unicode.IsSpace`` (Python's ``str.isspace`` also takes \x1c-\x1f).
_SPACES = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    map(chr, range(0x2000, 0x200B))
)
_WS = re.compile(r"[\t\v\f\r ]+")  # the parser's own idea of white space
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_DIRECTIVE_KEYS = frozenset({"syntax", "escape", "check"})
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*")
_SPECIAL_PARAMS = "@*#?-$!0"
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", '"': '\\"', "\\": "\\\\"}  # fmt: skip
_UNITS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": 10**9,
          "m": 60 * 10**9, "h": 3600 * 10**9}  # fmt: skip
_MAX_DURATION = 2**63 - 1
_MILLISECOND = 10**6


class DockerfileError(Exception):
    """A Dockerfile dockerd would refuse; ``message`` in its words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class Instruction:
    """One instruction. ``rest`` is the text after the command and its flags;
    ``original`` is what dockerd prints after ``Step 1/5 :``. ``escape`` is the file's
    escape character; ``flag_words`` the flags as written (for dockerd's checks of
    duplicates and missing values)."""

    command: str
    rest: str
    flags: dict[str, str]
    json: list[str] | None
    original: str
    line: int
    escape: str = "\\"
    flag_words: tuple[str, ...] = attrs.field(default=(), repr=False)


@attrs.frozen
class Stage:
    """A ``FROM`` and the instructions up to the next one; ``base`` not yet expanded."""

    name: str | None
    base: str
    from_inst: Instruction
    instructions: tuple[Instruction, ...]
    index: int


# -- text helpers --------------------------------------------------------------------------


def _strip(text: str) -> str:
    return text.strip(_SPACES)


def _lstrip(text: str) -> str:
    return text.lstrip(_SPACES)


def _go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` prints it (dockerd quotes words in its messages so)."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


# -- lines ---------------------------------------------------------------------------------


def parse(text: str, name: str = "Dockerfile") -> list[Instruction]:
    """Every instruction of a Dockerfile, checked as dockerd checks them before the first
    step. ``name`` is the Dockerfile's name in the context (dockerd's messages say it)."""
    if not text:
        raise DockerfileError(f"the Dockerfile ({name}) cannot be empty")
    try:
        instructions = _parse_lines(text)
    except DockerfileError as e:
        raise DockerfileError(f"failed to parse {name}: {e.message}") from None
    for inst in instructions:
        try:
            check(inst)
        except DockerfileError as e:
            raise DockerfileError(f"dockerfile parse error line {inst.line}: {e.message}") from None
    return instructions


def escape_of(text: str) -> str:
    """The escape character the ``# escape=`` directive chose (default backslash)."""
    directives = _Directives()
    for line in _lines(text):
        try:
            directives.feed(_lstrip(line))
        except DockerfileError:
            break
        if directives.done:
            break
    return directives.escape


def _lines(text: str) -> list[str]:
    """Lines as Go's scanner gives them: split on LF only, CRs at the end dropped."""
    lines = text.removeprefix("\ufeff").split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [line.rstrip("\r") for line in lines]


class _Directives:
    """``# escape=`` and friends: only in the comment lines at the very top; any other
    line (a blank one, a plain comment, an unknown key) ends them."""

    def __init__(self) -> None:
        self.escape = "\\"
        self.done = False
        self._seen: set[str] = set()

    def feed(self, line: str) -> None:
        if self.done:
            return
        match = _DIRECTIVE.match(_lstrip(line[1:])) if line.startswith("#") else None
        if match is None or match.group(1).lower() not in _DIRECTIVE_KEYS:
            self.done = True
            return
        key, value = match.group(1).lower(), match.group(2)
        if key in self._seen:
            raise DockerfileError(f"only one {key} parser directive can be used")
        self._seen.add(key)
        if key == "escape":
            if value not in ("`", "\\"):
                raise DockerfileError(f"invalid escape token '{value}' does not match ` or \\")
            self.escape = value


def _is_comment(line: str) -> bool:
    return _lstrip(line).startswith("#")


def _continued(line: str, escape: str) -> tuple[str, bool]:
    """A line ending in the escape character (white space after it allowed) goes on
    on the next line; an escaped escape character (``\\\\``) does not."""
    stripped = line.rstrip(" \t")
    if stripped.endswith(escape) and (len(stripped) == 1 or stripped[-2] != escape):
        return stripped[:-1], True
    return line, False


def _parse_lines(text: str) -> list[Instruction]:
    """The instructions with the checks dockerd's parser makes; errors unprefixed."""
    directives = _Directives()
    lines = _lines(text)
    result, i = [], 0
    while i < len(lines):
        start, line = i + 1, _lstrip(lines[i])
        directives.feed(line)
        i += 1
        line, more = _continued("" if _is_comment(line) else line, directives.escape)
        if not more and not line:
            continue
        parts = [line]
        while more and i < len(lines):
            line, i = lines[i], i + 1
            if _is_comment(line) or not _lstrip(line):
                continue  # comments and blank lines inside a continuation are dropped
            line, more = _continued(line, directives.escape)
            parts.append(line)
        result.append(_instruction("".join(parts), start, directives.escape))
    if not result:
        raise DockerfileError("file with no instructions")
    return result


def _instruction(line: str, number: int, escape: str) -> Instruction:
    original = _strip(line)
    parts = _WS.split(original, maxsplit=1)
    command, text = parts[0], parts[1] if len(parts) > 1 else ""
    rest, flag_words = _extract_flags(text, escape) if text else ("", [])
    rest = _strip(rest)
    command = command.upper()
    flags = {}
    for word in flag_words:
        name, _, value = word[2:].partition("=")
        flags[name] = value
    exec_form = _parsed_rest(command, rest, escape)
    return Instruction(command, rest, flags, exec_form, original, number, escape, tuple(flag_words))


def _extract_flags(text: str, escape: str) -> tuple[str, list[str]]:
    """The leading ``--name=value`` words (quotes and escapes removed) and the text after
    them; a ``--`` word ends the flags."""
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _SPACES:
            pos += 1
        if not text.startswith("--", pos):
            return text[pos:], words
        word, pos = _flag_word(text, pos, escape)
        if word == "--":
            return text[pos:], words
        if word:
            words.append(word)
        if pos >= len(text):
            return "", words


def _flag_word(text: str, pos: int, escape: str) -> tuple[str, int]:
    out, quote = [], ""
    while pos < len(text):
        ch = text[pos]
        pos += 1
        if not quote and ch in _SPACES:
            return "".join(out), pos - 1
        if quote and ch == quote:
            quote = ""
            continue
        if not quote and ch in "'\"":
            quote = ch
            continue
        if ch == escape:
            if pos == len(text):
                continue  # an escape character at the end is dropped
            ch = text[pos]
            pos += 1
        out.append(ch)
    return "".join(out), pos


def _parsed_rest(command: str, rest: str, escape: str) -> list[str] | None:
    """The exec form of ``rest`` if this instruction takes one; raises what dockerd's
    parser refuses (non-string JSON, ENV/LABEL syntax, a bad ONBUILD trigger line)."""
    if command in _MAYBE_JSON:
        return _json_array(rest)
    if command in ("ENV", "LABEL"):
        _name_values(command, rest, escape)
    elif command == "HEALTHCHECK":
        _json_array(_health_split(rest)[1])
    elif command == "ONBUILD" and rest:
        _instruction(rest, 0, escape)
    return None


def _json_array(text: str) -> list[str] | None:
    """A JSON array of strings, or None when ``text`` is no JSON array (shell form)."""
    text = _lstrip(text)
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise DockerfileError(
            "when using JSON array syntax, arrays must be comprised of strings only"
        )
    return [re.sub("[\ud800-\udfff]", "\ufffd", item) for item in value]


def _no_constant(name: str) -> None:
    raise ValueError(name)  # NaN and Infinity are not JSON to Go


def _parse_words(text: str, escape: str) -> list[str]:
    """dockerd's parse-time words: split on white space outside quotes, with quotes and
    escapes kept (they go when the word is expanded)."""
    words: list[str] = []
    word: list[str] = []
    quote, pos = "", 0
    while pos < len(text):
        ch = text[pos]
        pos += 1
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if pos == len(text):
                    quote = ""
                    continue
                word.append(ch)
                ch, pos = text[pos], pos + 1
        elif ch in _SPACES:
            if word:
                words.append("".join(word))
            word = []
            continue
        else:
            if ch in "'\"":
                quote = ch
            elif ch == escape:
                if pos == len(text):
                    continue
                word.append(ch)
                ch, pos = text[pos], pos + 1
        word.append(ch)
    if word:
        words.append("".join(word))
    return words


def _name_values(command: str, rest: str, escape: str) -> list[tuple[str, str]]:
    """ENV/LABEL raw pairs: ``k=v ...``, or the old ``KEY value words`` (one pair)."""
    words = _parse_words(rest, escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _WS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise DockerfileError(f"{command} must have two arguments")
        return [(parts[0], parts[1])]
    pairs = []
    for word in words:
        if "=" not in word:
            raise DockerfileError(
                f"Syntax error - can't find = in {_go_quote(word)}. Must be of the form: name=value"
            )
        key, _, value = word.partition("=")
        pairs.append((key, value))
    return pairs


def _health_split(rest: str) -> tuple[str, str]:
    """HEALTHCHECK's type word and the command text after it."""
    for i, ch in enumerate(rest):
        if ch in _SPACES:
            return rest[:i], _lstrip(rest[i:])
    return rest, ""


def args(inst: Instruction) -> list[str]:
    """The instruction's arguments as dockerd's parser makes them (quotes and ``$VAR``
    still in): the exec-form list; the shell-form text; COPY/ADD/VOLUME/EXPOSE/FROM words
    split on white space (dockerd then expands each one as a single word, so
    ``COPY $X /d/`` with ``X="a b"`` copies the file ``a b``); ENV/LABEL keys and values
    in turn; ARG words; HEALTHCHECK's type then its command; ONBUILD's trigger command
    then the trigger's arguments."""
    c, rest = inst.command, inst.rest
    if inst.json is not None and c in _MAYBE_JSON:
        return list(inst.json)
    if c in _WHOLE:
        return [rest] if rest else []
    if c in _SPLIT:
        return _WS.split(rest) if rest else []
    if c in ("ENV", "LABEL"):
        return [part for pair in _name_values(c, rest, inst.escape) for part in pair]
    if c == "ARG":
        return _parse_words(rest, inst.escape)
    if c == "HEALTHCHECK":
        kind, command = _health_split(rest)
        return [kind, *_health_command(command)[0]] if kind else []
    if c == "ONBUILD" and rest:
        trigger = _instruction(rest, inst.line, inst.escape)
        return [trigger.command, *args(trigger)]
    return []


# -- checks --------------------------------------------------------------------------------


def check(inst: Instruction) -> None:
    """dockerd's checks of one instruction's arguments and flags (its words, without the
    ``dockerfile parse error line N:`` that ``parse`` puts before them)."""
    checker = _CHECKS.get(inst.command)
    if checker is None:
        raise DockerfileError(f"unknown instruction: {inst.command}")
    checker(inst, args(inst))


def _flags(inst: Instruction) -> None:
    """dockerd's flag parsing: known names only, each once, each with a value."""
    if inst.command in _FLAGS_IGNORED:
        return
    allowed = FLAGS.get(inst.command, frozenset())
    buildkit = BUILDKIT_FLAGS.get(inst.command, frozenset())
    seen: set[str] = set()
    words = inst.flag_words or tuple(f"--{k}={v}" for k, v in inst.flags.items())
    for word in words:
        name, eq, _ = word[2:].partition("=")
        if name in buildkit:
            raise DockerfileError(_BUILDKIT.format(name))
        if name not in allowed:
            raise DockerfileError(f"Unknown flag: {name}")
        if name in seen:
            raise DockerfileError(f"Duplicate flag specified: {name}")
        if not eq:
            raise DockerfileError(f"Missing a value on flag: {name}")
        seen.add(name)


def _at_least_one(inst: Instruction, found: list[str]) -> None:
    if not found:
        raise DockerfileError(f"{inst.command} requires at least one argument")


def _exactly_one(inst: Instruction, found: list[str]) -> None:
    if len(found) != 1:
        raise DockerfileError(f"{inst.command} requires exactly one argument")


def _check_pairs(inst: Instruction, found: list[str]) -> None:
    _flags(inst)
    _at_least_one(inst, found)
    if any(not key for key in found[::2]):
        raise DockerfileError(f"{inst.command} names can not be blank")


def _check_one(inst: Instruction, found: list[str]) -> None:
    _exactly_one(inst, found)
    _flags(inst)


def _check_some(inst: Instruction, found: list[str]) -> None:
    _at_least_one(inst, found)
    _flags(inst)


def _check_copy(inst: Instruction, found: list[str]) -> None:
    if len(found) < 2:
        raise DockerfileError(
            f"{inst.command} requires at least two arguments, but only one was provided. "
            "Destination could not be determined"
        )
    _flags(inst)


def _check_from(inst: Instruction, found: list[str]) -> None:
    _stage_name(inst)
    _flags(inst)


def _check_onbuild(inst: Instruction, found: list[str]) -> None:
    _at_least_one(inst, found)
    _flags(inst)
    _trigger_allowed(found[0])


def _trigger_allowed(command: str) -> None:
    if command == "ONBUILD":
        raise DockerfileError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if command in ("MAINTAINER", "FROM"):
        raise DockerfileError(f"{command} isn't allowed as an ONBUILD trigger")


def _check_volume(inst: Instruction, found: list[str]) -> None:
    _check_some(inst, found)
    if any(not _strip(path) for path in found):
        raise DockerfileError("VOLUME specified can not be an empty string")


def _check_arg(inst: Instruction, found: list[str]) -> None:
    _at_least_one(inst, found)
    if any(word.startswith("=") for word in found):
        raise DockerfileError("ARG names can not be blank")


def _check_healthcheck(inst: Instruction) -> None:
    healthcheck(inst)


def _check_shell(inst: Instruction, found: list[str]) -> None:
    _flags(inst)
    _at_least_one(inst, found)
    if inst.json is None:
        raise DockerfileError("SHELL requires the arguments to be in JSON form")


_CHECKS: dict[str, Callable[[Instruction, list[str]], None]] = {
    "ENV": _check_pairs,
    "LABEL": _check_pairs,
    "MAINTAINER": _check_one,
    "WORKDIR": _check_one,
    "USER": _check_one,
    "STOPSIGNAL": _check_one,
    "ADD": _check_copy,
    "COPY": _check_copy,
    "FROM": _check_from,
    "ONBUILD": _check_onbuild,
    "RUN": lambda inst, _found: _flags(inst),
    "CMD": lambda inst, _found: _flags(inst),
    "ENTRYPOINT": lambda inst, _found: _flags(inst),
    "HEALTHCHECK": lambda inst, _found: _check_healthcheck(inst),
    "EXPOSE": _check_some,
    "VOLUME": _check_volume,
    "ARG": _check_arg,
    "SHELL": _check_shell,
}


# -- stages --------------------------------------------------------------------------------


def stages(instructions: list[Instruction]) -> tuple[list[Instruction], list[Stage]]:
    """(the ARGs before the first FROM, the stages). Stage names are lower case and may
    be used once."""
    meta: list[Instruction] = []
    found: list[Stage] = []
    current: Instruction | None = None
    body: list[Instruction] = []
    names: set[str] = set()
    for inst in instructions:
        if inst.command == "FROM":
            if current is not None:
                found.append(_stage(current, body, len(found)))
            current, body = inst, []
            name = _stage_name(inst)
            if name in names:
                raise DockerfileError(f"{name} stage name already used")
            if name is not None:
                names.add(name)
        elif current is not None:
            body.append(inst)
        elif inst.command == "ARG":
            meta.append(inst)
        else:
            raise DockerfileError("no build stage in current context")
    if current is None:
        raise DockerfileError("no build stage in current context")
    found.append(_stage(current, body, len(found)))
    return meta, found


def _stage_name(inst: Instruction) -> str | None:
    words = args(inst)
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            raise DockerfileError(
                f"invalid name for build stage: {_go_quote(words[2])}, name can't start with "
                "a number or contain symbols"
            )
        return name
    if len(words) != 1:
        raise DockerfileError("FROM requires either one or three arguments")
    return None


def _stage(inst: Instruction, body: list[Instruction], index: int) -> Stage:
    return Stage(_stage_name(inst), args(inst)[0], inst, tuple(body), index)


# -- what the instructions mean ------------------------------------------------------------


def key_values(
    inst: Instruction, env: Mapping[str, str], escape: str = "\\"
) -> list[tuple[str, str | None]]:
    """ENV/LABEL pairs (``k=v k2="v 2"`` or the old ``ENV key value words``) and ARG
    ``name[=default]`` (None without a default), keys and values expanded with ``env``
    (what was set before this instruction: ``ENV A=1 B=$A`` sees the old ``A``)."""
    c = inst.command
    if c == "ARG":
        return _arg_pairs(inst, env, escape)
    pairs = _name_values(c, inst.rest, escape)
    if not pairs:
        raise DockerfileError(f"{c} requires at least one argument")
    result: list[tuple[str, str | None]] = []
    for key, value in pairs:
        if not key:
            raise DockerfileError(f"{c} names can not be blank")
        key, value = expand(key, env, escape), expand(value, env, escape)
        if c == "ENV" and not key:
            raise DockerfileError(f"invalid environment variable: ={value}")
        result.append((key, value))
    return result


def _arg_pairs(
    inst: Instruction, env: Mapping[str, str], escape: str
) -> list[tuple[str, str | None]]:
    words = _parse_words(inst.rest, escape)
    if not words:
        raise DockerfileError("ARG requires at least one argument")
    result: list[tuple[str, str | None]] = []
    for word in words:
        name, eq, default = word.partition("=")
        if eq and not name:
            raise DockerfileError("ARG names can not be blank")
        result.append((expand(name, env, escape), expand(default, env, escape) if eq else None))
    return result


def shell_command(inst: Instruction, shell: list[str]) -> list[str]:
    """RUN/CMD/ENTRYPOINT's command: the exec form as written, else ``shell`` and the
    text. Without any text: ``shell`` alone for RUN and CMD (as dockerd), ``[]`` for
    ENTRYPOINT (dockerd then sets no entrypoint at all, like ``ENTRYPOINT []``)."""
    if inst.json is not None:
        return list(inst.json)
    if not inst.rest:
        return [] if inst.command == "ENTRYPOINT" else list(shell)
    return [*shell, inst.rest]


def healthcheck(inst: Instruction) -> dict:
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [--options] CMD command`` as the image
    config's Healthcheck: durations in ns, zero values left out (as dockerd's JSON)."""
    kind, text = _health_split(inst.rest)
    if not kind:
        raise DockerfileError("HEALTHCHECK requires at least one argument")
    command, exec_form = _health_command(text)
    kind = kind.upper()
    if kind == "NONE":
        if command:
            raise DockerfileError("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    _flags(inst)
    if kind != "CMD":
        raise DockerfileError(f"Unknown type {_go_quote(kind)} in HEALTHCHECK (try CMD)")
    if not command:
        raise DockerfileError("Missing command after HEALTHCHECK CMD")
    config: dict = {"Test": ["CMD" if exec_form else "CMD-SHELL", *command]}
    for flag, key in _HEALTH_DURATIONS:
        value = duration(inst.flags.get(flag, ""), flag)
        if value:
            config[key] = value
    retries = _retries(inst.flags.get("retries", ""))
    if retries:
        config["Retries"] = retries
    return config


_HEALTH_DURATIONS = (
    ("interval", "Interval"),
    ("timeout", "Timeout"),
    ("start-period", "StartPeriod"),
    ("start-interval", "StartInterval"),
)


def _health_command(text: str) -> tuple[list[str], bool]:
    exec_form = _json_array(text) if text else None
    if exec_form is not None:
        return exec_form, True
    return ([text] if text else []), False


def _retries(text: str) -> int:
    if not text:
        return 0
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise DockerfileError(f"strconv.ParseInt: parsing {_go_quote(text)}: invalid syntax")
    value = int(text)
    if not -(2**31) <= value < 2**31:
        raise DockerfileError(f"strconv.ParseInt: parsing {_go_quote(text)}: value out of range")
    if value < 0:
        raise DockerfileError(f"--retries cannot be negative ({value})")
    return value


def duration(text: str, flag: str) -> int:
    """A HEALTHCHECK duration flag (a Go duration: ``30s``, ``1m30s``, ``1.5h``) in
    nanoseconds; empty or zero is 0 (unset); otherwise at least 1 ms."""
    if not text:
        return 0
    value = _go_duration(text)
    if value and value < _MILLISECOND:
        raise DockerfileError(f"Interval {_go_quote(flag)} cannot be less than 1ms")
    return value


def _go_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, with its errors."""
    invalid = DockerfileError(f"time: invalid duration {_go_quote(text)}")
    s, negative = text, text.startswith("-")
    if s[:1] in ("-", "+"):
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = Fraction(0)
    while s:
        match = re.match(r"([0-9]*)(?:\.([0-9]*))?", s)
        whole, fraction = match.group(1), match.group(2) or ""
        if not whole and not fraction:
            raise invalid
        s = s[match.end() :]
        unit = re.match(r"[^0-9.]*", s).group(0)
        s = s[len(unit) :]
        if not unit:
            raise DockerfileError(f"time: missing unit in duration {_go_quote(text)}")
        if unit not in _UNITS:
            raise DockerfileError(
                f"time: unknown unit {_go_quote(unit)} in duration {_go_quote(text)}"
            )
        scale = Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0
        total += (int(whole or "0") + scale) * _UNITS[unit]
        if total > _MAX_DURATION:
            raise invalid
    return -int(total) if negative else int(total)


def onbuild_instructions(triggers: list[str]) -> list[Instruction]:
    """A base image's ONBUILD triggers as the instructions to run after the FROM that
    uses it, each checked; ONBUILD, FROM and MAINTAINER are refused as they are in a
    Dockerfile's ONBUILD."""
    result = []
    for trigger in triggers:
        found = _parse_lines(trigger)
        if len(found) != 1:
            raise DockerfileError("onbuild trigger should be a single expression")
        _trigger_allowed(found[0].command)
        check(found[0])
        result.append(found[0])
    return result


# -- words ---------------------------------------------------------------------------------


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word as dockerd's ProcessWord makes it: variables expanded (an unset one is
    empty), quotes and escape characters removed, white space kept."""
    return _process(word, env, escape)[0]


def split_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """dockerd's ProcessWords: expanded as ``expand`` does, then split on white space
    that is neither quoted nor escaped (a variable's value is split too); empty words
    are dropped."""
    return _process(text, env, escape)[1]


def _process(word: str, env: Mapping[str, str], escape: str) -> tuple[str, list[str]]:
    try:
        return _Lexer(word, env, escape).until("", raw=False)
    except DockerfileError as e:
        raise DockerfileError(f"failed to process {_go_quote(word)}: {e.message}") from None


class _Words:
    """The words of ProcessWords: quoted and escaped text never splits a word."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self._buf: list[str] = []

    def char(self, ch: str) -> None:
        if ch in _SPACES:
            self._flush()
        else:
            self._buf.append(ch)

    def raw(self, text: str) -> None:
        self._buf.append(text)

    def string(self, text: str) -> None:
        for ch in text:
            self.char(ch)

    def _flush(self) -> None:
        word = "".join(self._buf)
        if word:
            self.words.append(word)
        self._buf = []

    def done(self) -> list[str]:
        self._flush()
        return self.words


class _Lexer:
    """dockerd's shell lexer over one word (``frontend/dockerfile/shell/lex.go``)."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text, self.env, self.escape = text, env, escape
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += bool(ch)
        return ch

    def until(self, stop: str, raw: bool) -> tuple[str, list[str]]:
        """The text up to ``stop`` (or the end), expanded; ``raw`` keeps the escape
        characters (a pattern's ``\\*`` is a literal star)."""
        result: list[str] = []
        words = _Words()
        while ch := self.peek():
            if ch == stop:
                self.next()
                return "".join(result), words.done()
            if ch == "$":
                value = self.dollar()
                words.string(value)
            elif ch in "'\"":
                value = self.single() if ch == "'" else self.double(raw)
                words.raw(value)
            else:
                value = self.plain(words, raw)
            result.append(value)
        if stop:
            raise DockerfileError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.done()

    def plain(self, words: _Words, raw: bool) -> str:
        ch = self.next()
        if ch != self.escape:
            words.char(ch)
            return ch
        kept = ch if raw else ""
        words.raw(kept)
        ch = self.next()
        words.raw(ch)
        return kept + ch

    def single(self) -> str:
        self.next()
        out = []
        while (ch := self.next()) != "'":
            if not ch:
                raise DockerfileError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            out.append(ch)
        return "".join(out)

    def double(self, raw: bool) -> str:
        self.next()
        out = []
        while (ch := self.peek()) != '"':
            if not ch:
                raise DockerfileError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if raw:
                    out.append(ch)
                if not self.peek():
                    continue
                if self.peek() in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)
        self.next()
        return "".join(out)

    def name(self) -> str:
        """A variable's name: letters, digits and ``_``; or digits alone (a positional
        parameter); or one special parameter character."""
        first = self.peek()
        if first.isdecimal():
            start = self.pos
            while self.peek().isdecimal():
                self.next()
            return self.text[start : self.pos]
        if first and first in _SPECIAL_PARAMS:
            return self.next()
        start = self.pos
        while (ch := self.peek()) and (ch.isalpha() or ch.isdecimal() or ch == "_"):
            self.next()
        return self.text[start : self.pos]

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.next()
        ch = self.peek()
        if not ch:
            raise DockerfileError("syntax error: missing '}'")
        if ch in "{}:":
            raise DockerfileError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == "}":
            return self.env.get(name, "")
        if ch == "/":
            return self.replace(name)
        if not ch:
            raise DockerfileError("syntax error: missing '}'")
        return self.modifier(name, ch)

    def modifier(self, name: str, ch: str) -> str:
        """``${name:-word}`` and the rest; with the colon an empty value counts as unset."""
        colon = ch == ":"
        if colon:
            ch = self.next()
        modifier = ":" + ch if colon else ch
        if not ch or ch not in "+-?#%" or (colon and ch in "#%"):
            if colon and ch not in ("#", "%"):
                self.word(raw=False)  # dockerd reads the word first: a missing } wins
            raise DockerfileError(f"unsupported modifier ({modifier}) in substitution")
        word = self.word(raw=ch in "#%")
        value = self.env.get(name)
        missing = value is None or (colon and value == "")
        if ch == "-":
            return word if missing else value
        if ch == "+":
            return "" if missing else word
        if ch == "?":
            return self.required(name, value, colon, word)
        greedy = word.startswith(ch)
        pattern = word[1:] if greedy else word
        trim = _trim_suffix if ch == "%" else _trim_prefix
        return trim(pattern, value or "", greedy)

    @staticmethod
    def required(name: str, value: str | None, colon: bool, word: str) -> str:
        if value is None:
            raise DockerfileError(f"{name}: {word or 'is not allowed to be unset'}")
        if colon and value == "":
            raise DockerfileError(f"{name}: {word or 'is not allowed to be empty'}")
        return value

    def word(self, raw: bool, stop: str = "}") -> str:
        try:
            return self.until(stop, raw)[0]
        except DockerfileError:
            if not self.peek():
                missing = "'}'" if stop == "}" else "'/' in ${}"
                raise DockerfileError(f"syntax error: missing {missing}") from None
            raise

    def replace(self, name: str) -> str:
        """``${name/pattern/replacement}``, ``//`` for every match."""
        every = self.peek() == "/"
        if every:
            self.next()
        pattern = self.word(raw=True, stop="/")
        replacement = self.word(raw=True)
        value = self.env.get(name, "")
        _guard(pattern, value)
        regex = _shell_pattern(pattern, greedy=True, anchored=False)
        if every:
            return regex.sub(lambda _match: replacement, value)
        match = regex.search(value)
        if match is None:
            return value
        return value[: match.start()] + replacement + value[match.end() :]


#: Pattern substitutions run Python's backtracking ``re`` on the reactor: bounded so that
#: a tenant's ``${V#*a*a*a*b}`` over a long value cannot stall sdcd.
MAX_PATTERN_STARS = 1
MAX_PATTERN_VALUE = 4096


def _guard(pattern: str, value: str) -> None:
    stars = pattern.replace("\\*", "").count("*")
    if stars > MAX_PATTERN_STARS or len(value) > MAX_PATTERN_VALUE:
        raise DockerfileError(
            f"pattern substitution ({pattern}) is limited to {MAX_PATTERN_STARS} '*' and "
            f"values of {MAX_PATTERN_VALUE} characters here"
        )


def _shell_pattern(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell wildcard pattern (``*``, ``?``, backslash escapes; no brackets) as a
    regular expression; ``*`` the shortest match unless ``greedy``."""
    out = ["^"] if anchored else []
    pos = 0
    while pos < len(pattern):
        ch = pattern[pos]
        pos += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            nxt = pattern[pos : pos + 1]
            if nxt in ("}", "/"):
                continue  # escaped as part of ${...}, not of the pattern
            if nxt not in ("*", "?", "\\"):
                raise DockerfileError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'"
                )
            out.append("\\" + nxt)
            pos += 1
        else:
            out.append(re.escape(ch) if ch in "[]{}.+()|^$" else ch)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    _guard(pattern, value)
    match = _shell_pattern(pattern, greedy, anchored=True).search(value)
    return value[match.end() :] if match else value


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    """The shortest (or longest) matching suffix goes: the prefix of the reversed value
    under the reversed pattern (escapes stay before what they escape)."""
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _reverse_pattern(pattern: str) -> str:
    out = [""] * len(pattern)
    last, pos = len(pattern) - 1, 0
    while pos <= last:
        if pattern[pos] == "\\" and pos != last:
            out[last - pos - 1], out[last - pos] = "\\", pattern[pos + 1]
            pos += 2
        else:
            out[last - pos] = pattern[pos]
            pos += 1
    return "".join(out)
