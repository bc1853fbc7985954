"""Dockerfile parsing and word expansion (pure), case by case as dockerd's classic builder
does them. The expected results and messages were taken from Debian's dockerd 20.10 with
``DOCKER_BUILDKIT=0`` (rows marked *newer* follow later dockerd)."""

from __future__ import annotations

import attrs
import pytest

from sdcd.core.dockerfile import (
    DockerfileError,
    Instruction,
    args,
    check,
    duration,
    escape_of,
    expand,
    healthcheck,
    key_values,
    onbuild_instructions,
    parse,
    shell_command,
    split_words,
    stages,
)

ENV = {"A": "one", "E": "", "SP": "a b", "P": "/usr/local/bin/app.tar.gz"}
SH = ["/bin/sh", "-c"]


def one(line: str, escape: str = "\\") -> Instruction:
    """The instruction after a FROM (with an escape directive when not the default)."""
    head = "" if escape == "\\" else f"# escape={escape}\n"
    return parse(head + "FROM x\n" + line)[1]


def refused(text: str) -> str:
    with pytest.raises(DockerfileError) as info:
        parse(text)
    return info.value.message


# -- lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rest", "original"),
    [
        ("ENV A=1 \\\n  B=2\n", "A=1   B=2", "ENV A=1   B=2"),
        ("ENV A=1 \\  \t\n  B=2\n", "A=1   B=2", "ENV A=1   B=2"),  # blanks after the escape
        ("ENV A=1 \\\n\n  \n  B=2\n", "A=1   B=2", "ENV A=1   B=2"),  # blank lines dropped
        ("ENV A=1 \\\n  # note\n#x\n  B=2\n", "A=1   B=2", "ENV A=1   B=2"),  # comments dropped
        ("ENV A=1 \\", "A=1", "ENV A=1"),  # continued at the end of the file
        ("ENV A=1 \\\n# the end\n", "A=1", "ENV A=1"),
        ("\\\nENV A=1\n", "A=1", "ENV A=1"),  # a line of just the escape character
        ("ENV A=x\\\\\n", "A=x\\\\", "ENV A=x\\\\"),  # an escaped escape: not continued
        ("   ENV   A=1   \n", "A=1", "ENV   A=1"),
        ("ENV B=2 \\\r\n C=3\r\n", "B=2  C=3", "ENV B=2  C=3"),  # CRLF
        ("env\tA=1\n", "A=1", "env\tA=1"),
    ],
)
def test_continuations_and_white_space(text: str, rest: str, original: str) -> None:
    inst = parse("FROM x\n" + text)[1]
    assert (inst.command, inst.rest, inst.original) == ("ENV", rest, original)


def test_line_numbers_comments_bom() -> None:
    text = "\ufeff# comment\nFROM busybox\n\n  # indented comment\nRUN a \\\n  b\nCMD c\n"
    insts = parse(text)
    assert [(i.command, i.line) for i in insts] == [("FROM", 2), ("RUN", 5), ("CMD", 7)]
    assert insts[1].rest == "a   b"


def test_three_escapes_end_the_line() -> None:
    """dockerd's continuation test cannot see that ``\\\\\\`` ends in an escape."""
    assert refused("FROM x\nENV A=x\\\\\\\nC=2\n") == (
        "dockerfile parse error line 3: unknown instruction: C=2"
    )


@pytest.mark.parametrize(
    ("head", "escape"),
    [
        ("# escape=`\n", "`"),
        ("#escape=`\n", "`"),
        ("# ESCAPE = ` \n", "`"),
        ("  # escape=`\n", "`"),
        ("\ufeff# escape=`\n", "`"),
        ("# syntax=docker/dockerfile:1\n# escape=`\n", "`"),
        ("# escape=\\\n", "\\"),
        ("# foo=bar\n# escape=`\n", "\\"),  # an unknown directive ends them
        ("# comment\n# escape=`\n", "\\"),  # so does a comment
        ("\n# escape=`\n", "\\"),  # and a blank line
        ("# escape=\n", "\\"),  # no value: a comment
        ("FROM x\n# escape=`\n", "\\"),  # only at the top
    ],
)
def test_escape_directive(head: str, escape: str) -> None:
    assert escape_of(head + "FROM x\n") == escape
    insts = parse(head + "FROM x\nRUN echo a " + escape + "\n  b\n")
    assert insts[-1].rest == "echo a   b" and insts[-1].escape == escape


def test_backtick_escape_in_words() -> None:
    inst = one('ENV A="a`"b" B=a`$c C=\'x`y\' D="p\\q" W=C:\\x', escape="`")
    assert key_values(inst, ENV, "`") == [
        ("A", 'a"b'), ("B", "a$c"), ("C", "x`y"), ("D", "p\\q"), ("W", "C:\\x")]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the Dockerfile (Dockerfile) cannot be empty"),
        ("\n", "failed to parse Dockerfile: file with no instructions"),
        ("# only a comment\n  \n", "failed to parse Dockerfile: file with no instructions"),
        ("\ufeff", "failed to parse Dockerfile: file with no instructions"),
        ("# escape=x\nFROM x\n", "failed to parse Dockerfile: invalid escape token 'x' does not "
         "match ` or \\"),
        ("# escape=`\n# escape=`\nFROM x\n",
         "failed to parse Dockerfile: only one escape parser directive can be used"),
    ],
)  # fmt: skip
def test_file_refusals(text: str, message: str) -> None:
    assert refused(text) == message


def test_the_dockerfile_name_is_in_the_message() -> None:
    with pytest.raises(DockerfileError, match=r"^failed to parse sub/Dockerfile\.dev: "):
        parse("\n", name="sub/Dockerfile.dev")
    with pytest.raises(DockerfileError, match=r"^the Dockerfile \(x\) cannot be empty$"):
        parse("", name="x")


# -- exec and shell forms ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "json_form", "command"),
    [
        ('CMD ["echo", "$A"]', ["echo", "$A"], ["echo", "$A"]),  # never expanded
        ('ENTRYPOINT [ "a" ,"b" ]  ', ["a", "b"], ["a", "b"]),
        ('CMD ["\\u00e9\\t"]', ["\u00e9\t"], ["\u00e9\t"]),
        ("CMD [\"a\", 'b']", None, [*SH, "[\"a\", 'b']"]),  # not JSON: shell form
        ('CMD ["a"] x', None, [*SH, '["a"] x']),  # *newer*: text after the array
        ('CMD ["a"', None, [*SH, '["a"']),
        ('CMD {"a": 1}', None, [*SH, '{"a": 1}']),
        ("CMD [NaN]", None, [*SH, "[NaN]"]),
        ("CMD []", [], []),
        ("CMD", None, SH),  # dockerd: the shell alone
        ("RUN", None, SH),
        ("ENTRYPOINT", None, []),  # no entrypoint
        ("ENTRYPOINT []", [], []),
        ('CMD  echo  $A  "x"  ', None, [*SH, 'echo  $A  "x"']),
        ('RUN ["sh", "-c", "a && b"]', ["sh", "-c", "a && b"], ["sh", "-c", "a && b"]),
    ],
)
def test_exec_and_shell_forms(line: str, json_form: list | None, command: list) -> None:
    inst = one(line)
    assert inst.json == json_form
    assert shell_command(inst, SH) == command


def test_shell_form_under_another_shell() -> None:
    assert shell_command(one("RUN echo hi"), ["/bin/bash", "-c"]) == ["/bin/bash", "-c", "echo hi"]


@pytest.mark.parametrize(
    "line", ['WORKDIR ["/a"]', 'USER ["x"]', 'EXPOSE ["80"]', 'LABEL ["a"]=1', 'ONBUILD ["x"]']
)
def test_json_only_where_an_exec_form_exists(line: str) -> None:
    """dockerd reads WORKDIR ["/a"] as the text ``["/a"]`` (which expands to ``[/a]``)."""
    inst = one(line)
    assert inst.json is None and inst.rest.startswith("[")
    assert expand('["/a"]', ENV) == "[/a]"


def test_non_string_json_is_refused() -> None:
    assert refused('FROM x\nCMD ["a", null]\n') == (
        "failed to parse Dockerfile: when using JSON array syntax, arrays must be comprised "
        "of strings only"
    )
    assert "strings only" in refused('FROM x\nHEALTHCHECK CMD ["a", 1]\n')


# -- flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "flags", "rest"),
    [
        ("COPY --chown=1:2 --from=build a b /dst/", {"chown": "1:2", "from": "build"},
         "a b /dst/"),
        ('COPY --from="a b" --chown=x\\ y a b', {"from": "a b", "chown": "x y"}, "a b"),
        ("COPY --from= a b", {"from": ""}, "a b"),
        ("COPY -- --x b", {}, "--x b"),  # -- ends the flags
        ("COPY --from=s -- --chown=1 b", {"from": "s"}, "--chown=1 b"),
        ("COPY -x a b", {}, "-x a b"),
        ("FROM --platform=linux/amd64 img AS b", {"platform": "linux/amd64"}, "img AS b"),
        ("ARG --foo=1 x", {"foo": "1"}, "x"),  # dockerd never looks at ARG's flags
        ("STOPSIGNAL --x=y 9", {"x": "y"}, "9"),  # nor at STOPSIGNAL's
        ("HEALTHCHECK --foo=1s NONE", {"foo": "1s"}, "NONE"),  # nor at HEALTHCHECK NONE's
    ],
)  # fmt: skip
def test_flags(line: str, flags: dict, rest: str) -> None:
    inst = one(line)
    assert (inst.flags, inst.rest) == (flags, rest)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY --bogus=1 a b", "Unknown flag: bogus"),
        ("ADD --from=x a b", "Unknown flag: from"),
        ("ENV --x=1 A=1", "Unknown flag: x"),
        ("ONBUILD --x=1 RUN y", "Unknown flag: x"),
        ("WORKDIR --x=1 /a", "Unknown flag: x"),
        ("COPY --from=a --from=b a b", "Duplicate flag specified: from"),
        ("COPY --from a b", "Missing a value on flag: from"),
        ("HEALTHCHECK --timeout CMD x", "Missing a value on flag: timeout"),
        ("RUN --mount=type=cache,target=/x true", "the --mount option requires BuildKit. Refer to "
         "https://docs.docker.com/go/buildkit/ to learn how to build images with BuildKit "
         "enabled"),
        ("RUN --network=none true", "the --network option requires BuildKit."),
    ],
)  # fmt: skip
def test_flag_refusals(line: str, message: str) -> None:
    assert refused("FROM x\n" + line + "\n").startswith("dockerfile parse error line 2: " + message)


# -- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("FROBNICATE y", "unknown instruction: FROBNICATE"),
        ("foo a", "unknown instruction: FOO"),
        ("COPY a", "COPY requires at least two arguments, but only one was provided. "
         "Destination could not be determined"),
        ("ADD", "ADD requires at least two arguments, but only one was provided. "
         "Destination could not be determined"),
        ("FROM", "FROM requires either one or three arguments"),
        ("FROM a b", "FROM requires either one or three arguments"),
        ("FROM a TO b", "FROM requires either one or three arguments"),
        ("FROM a AS 1st", 'invalid name for build stage: "1st", name can\'t start with a number '
         "or contain symbols"),
        ("FROM a AS a!b", 'invalid name for build stage: "a!b"'),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("USER", "USER requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("ENV", "ENV requires at least one argument"),
        ("LABEL", "LABEL requires at least one argument"),
        ("ARG", "ARG requires at least one argument"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        ("VOLUME []", "VOLUME requires at least one argument"),
        ('VOLUME [""]', "VOLUME specified can not be an empty string"),
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("SHELL", "SHELL requires at least one argument"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("SHELL /bin/bash -c", "SHELL requires the arguments to be in JSON form"),
        ("ENV =1", "ENV names can not be blank"),
        ("LABEL =1", "LABEL names can not be blank"),
        ("ARG =x", "ARG names can not be blank"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD onbuild x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD maintainer x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ],
)  # fmt: skip
def test_instruction_refusals(line: str, message: str) -> None:
    assert refused("FROM x\n\n" + line + "\n").startswith(
        "dockerfile parse error line 3: " + message
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ENV A", "ENV must have two arguments"),
        ("LABEL a", "LABEL must have two arguments"),
        ("ENV A=1 B", 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
        ("ENV A=${M:-a b}", 'Syntax error - can\'t find = in "b}".'),
        ("ONBUILD ENV A", "ENV must have two arguments"),  # the trigger is parsed too
    ],
)
def test_parser_refusals(line: str, message: str) -> None:
    """What dockerd's parser refuses comes before any instruction's own checks."""
    text = "FROM x\nCOPY a\n" + line + "\n"
    assert refused(text).startswith("failed to parse Dockerfile: " + message)


@pytest.mark.parametrize(
    "line",
    ["WORKDIR a b", "USER a b", "MAINTAINER Me <me@x>", "RUN", "CMD", "ENTRYPOINT",
     "ONBUILD FOO x", "ONBUILD COPY a", "EXPOSE 80 443/udp", "HEALTHCHECK NONE []"],
)  # fmt: skip
def test_accepted_as_dockerd_accepts(line: str) -> None:
    check(one(line))


def test_parse_works_on_lone_instructions() -> None:
    """No FROM needed (the caller makes one LABEL step of ``--label``s this way)."""
    assert [i.command for i in parse('LABEL "a"="b"')] == ["LABEL"]


# -- words ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$A", "one"),
        ("${A}", "one"),
        ("${A}x", "onex"),
        ("$Ax", ""),
        ("$MISSING-", "-"),
        ("${MISSING:-dflt}", "dflt"),
        ("${E:-dflt}", "dflt"),
        ("${A:-dflt}", "one"),
        ("${MISSING-dflt}", "dflt"),  # *newer*
        ("${E-dflt}", ""),  # *newer*
        ("${A:+alt}", "alt"),
        ("${E:+alt}", ""),
        ("${MISSING:+alt}", ""),
        ("${E+alt}", "alt"),  # *newer*
        ("${MISSING+alt}", ""),  # *newer*
        ("${E?}", ""),
        ("${A:?msg}", "one"),
        ("${A:-${MISSING:-x}}", "one"),
        ("${MISSING:-${E:-x}}", "x"),
        ("${MISSING:-$A}", "one"),
        ("${MISSING:-a b}", "a b"),
        ('${MISSING:-"q"}', "q"),
        ("${MISSING:-'$A'}", "$A"),
        ("${MISSING:-a\\}b}", "a}b"),
        ("${MISSING:-{x}}", "{x}"),
        ("${P#*/}", "usr/local/bin/app.tar.gz"),  # *newer* from here
        ("${P##*/}", "app.tar.gz"),
        ("${P%.*}", "/usr/local/bin/app.tar"),
        ("${P%%.*}", "/usr/local/bin/app"),
        ("${P#/usr}", "/local/bin/app.tar.gz"),
        ("${P%?z}", "/usr/local/bin/app.tar."),
        ("${P#x}", "/usr/local/bin/app.tar.gz"),
        ("${MISSING#x}", ""),
        ("${P/l/L}", "/usr/Local/bin/app.tar.gz"),
        ("${P//l/L}", "/usr/LocaL/bin/app.tar.gz"),
        ("${P/*bin\\//}", "app.tar.gz"),
        ("${P//[a]/x}", "/usr/local/bin/app.tar.gz"),  # no bracket expressions
        ("$", "$"),
        ("a$", "a$"),
        ('"$"', "$"),
        ("$1", ""),  # positional parameters are never set
        ("$12x", "x"),
        ("${1}x${@}", "x"),
        ("$@", ""),
        ("$$", ""),
        ("$-x", "x"),
        ("$\u00e9a", ""),  # a name may have any letters
        ("'$A'", "$A"),
        ('"$A b"', "one b"),
        ('"\\$A"', "$A"),
        ("\\$A", "$A"),
        ("a\\ b", "a b"),
        ('"a\\b"', "a\\b"),  # in double quotes the escape only escapes " $ and itself
        ('"a\\\\b"', "a\\b"),
        ('"a\\"b"', 'a"b'),
        ("'a\\b'", "a\\b"),
        ("a\\\\b", "a\\b"),
        ("a\\", "a"),  # an escape at the end goes
        ('"a\'b"', "a'b"),
        ("'a\"b'", 'a"b'),
        ('"x""y"', "xy"),
        ('""', ""),
        ("a  b", "a  b"),
        ("<<EOF", "<<EOF"),  # no heredocs
    ],
)
def test_expand(word: str, expected: str) -> None:
    assert expand(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${M:?oops}", "M: oops"),
        ("${M?}", "M: is not allowed to be unset"),
        ("${M:?}", "M: is not allowed to be unset"),
        ("${E:?}", "E: is not allowed to be empty"),
        ("${}", "syntax error: bad substitution"),
        ("${:x}", "syntax error: bad substitution"),
        ("${{x}", "syntax error: bad substitution"),
        ("${", "syntax error: missing '}'"),
        ("${A", "syntax error: missing '}'"),
        ("${A:-x", "syntax error: missing '}'"),
        ("${A:", "syntax error: missing '}'"),
        ("${A:x}", "unsupported modifier (:x) in substitution"),
        ("${A!}", "unsupported modifier (!) in substitution"),
        ("${A:#x}", "unsupported modifier (:#) in substitution"),
        ("${A/x", "syntax error: missing '/' in ${}"),
        ("${A#\\q}", "invalid pattern (\\q) in substitution: invalid escape '\\q'"),
        ('"abc', "unexpected end of statement while looking for matching double-quote"),
        ("'abc", "unexpected end of statement while looking for matching single-quote"),
        ('a"\\', "unexpected end of statement while looking for matching double-quote"),
    ],
)
def test_expand_refusals(word: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        expand(word, ENV)
    quoted = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert info.value.message == f"failed to process {quoted}: {message}"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a \"b c\" $SP 'd e'", ["a", "b c", "a", "b", "d e"]),  # a value splits, quotes do not
        ('"$SP"', ["a b"]),
        ("  x   y ", ["x", "y"]),
        ("x\\ y", ["x y"]),
        ('a$SP"" "" x', ["aa", "b", "x"]),  # empty words go
        ('${M:-"p q"}', ["p", "q"]),
        ("8${X:-0}80 443", ["8080", "443"]),
        ("", []),
        ("   ", []),
    ],
)
def test_split_words(text: str, words: list[str]) -> None:
    assert split_words(text, ENV) == words


def test_backtick_escape_words() -> None:
    assert expand("`$A", ENV, escape="`") == "$A"
    assert expand("a\\b", ENV, escape="`") == "a\\b"
    assert split_words("a` b c", ENV, escape="`") == ["a b", "c"]


# -- ENV, LABEL, ARG -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "pairs"),
    [
        ('ENV A=1 B="two words" C=$A', [("A", "1"), ("B", "two words"), ("C", "one")]),
        ("ENV A=x B=$A", [("A", "x"), ("B", "one")]),  # all against the env before
        ("ENV A=a=b E=", [("A", "a=b"), ("E", "")]),
        ('ENV A="x""y" B=x""y C=""', [("A", "xy"), ("B", "xy"), ("C", "")]),
        ("ENV $A=1 ${A}2=2", [("one", "1"), ("one2", "2")]),
        ('ENV A="a \\\n b"', [("A", "a  b")]),
        ('ENV OLD value with  spaces "q" $A', [("OLD", "value with  spaces q one")]),
        ('ENV "$A" "x"y', [("one", "xy")]),
        ('LABEL "com.x.y"="v w" \'e\'=f g="$X"h', [("com.x.y", "v w"), ("e", "f"), ("g", "h")]),
        ("LABEL A b  c", [("A", "b  c")]),
        ('ARG N D=dflt Q="x y" R=$A', [("N", None), ("D", "dflt"), ("Q", "x y"), ("R", "one")]),
        ('ARG "Q"=1 E=', [("Q", "1"), ("E", "")]),
        ("ARG A=1 A=2", [("A", "1"), ("A", "2")]),
    ],
)
def test_key_values(line: str, pairs: list) -> None:
    assert key_values(one(line), ENV) == pairs


BARE = Instruction("ENV", "", {}, None, "ENV", 1)  # made by hand: not checked by parse


@pytest.mark.parametrize(
    ("command", "rest", "message"),
    [
        ("ENV", "A=1 B", 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
        ("ENV", "=x", "ENV names can not be blank"),
        ("LABEL", "", "LABEL requires at least one argument"),
        ("ENV", "A", "ENV must have two arguments"),
        ("ARG", "=x", "ARG names can not be blank"),
        ("ARG", "", "ARG requires at least one argument"),
        ("ENV", "$NOTHING=1", "invalid environment variable: =1"),
        ("ENV", "A=${M:?x}", 'failed to process "${M:?x}": M: x'),
    ],
)
def test_key_value_refusals(command: str, rest: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        key_values(attrs.evolve(BARE, command=command, rest=rest), ENV)
    assert info.value.message == message


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("COPY $X /d/", ["$X", "/d/"]),  # each is then one word: X="a b" is the file "a b"
        ('COPY ["a b", "/d/"]', ["a b", "/d/"]),
        ('COPY "a b" /d/', ['"a', 'b"', "/d/"]),  # dockerd then fails on the quote
        ("VOLUME /a  /b", ["/a", "/b"]),
        ('VOLUME ["/a b"]', ["/a b"]),
        ("EXPOSE 80 $P", ["80", "$P"]),
        ("FROM $B AS x", ["$B", "AS", "x"]),
        ("WORKDIR a  b", ["a  b"]),
        ("RUN a  b", ["a  b"]),
        ('RUN ["a", "b"]', ["a", "b"]),
        ('ARG A="x y" B', ['A="x y"', "B"]),
        ('ENV A=1 B="2 3"', ["A", "1", "B", '"2 3"']),
        ('HEALTHCHECK CMD ["a"]', ["CMD", "a"]),
        ("HEALTHCHECK NONE", ["NONE"]),
        ("ONBUILD COPY a b", ["COPY", "a", "b"]),
    ],
)
def test_args(line: str, expected: list[str]) -> None:
    assert args(one(line)) == expected


# -- stages --------------------------------------------------------------------------------


def test_stages() -> None:
    insts = parse(
        "ARG V=1\nARG B=busybox\nFROM $B AS Build\nRUN x\nfrom b as second\nFROM c\n"
        "COPY --from=build /x /y\n"
    )
    meta, found = stages(insts)
    assert [m.rest for m in meta] == ["V=1", "B=busybox"]
    assert [(s.name, s.base, s.index, len(s.instructions)) for s in found] == [
        ("build", "$B", 0, 1), ("second", "b", 1, 0), (None, "c", 2, 1)]  # fmt: skip
    assert found[0].from_inst.original == "FROM $B AS Build"
    assert found[2].instructions[0].flags == {"from": "build"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a AS x\nFROM b AS x\n", "x stage name already used"),
        ("FROM a AS foo\nFROM b AS Foo\n", "foo stage name already used"),
        ("RUN x\nFROM a\n", "no build stage in current context"),
        ("ARG A\nENV B=1\nFROM a\n", "no build stage in current context"),
        ("ARG A=1\n", "no build stage in current context"),
    ],
)
def test_stage_refusals(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        stages(parse(text))
    assert info.value.message == message


def test_stage_names_may_have_dots_dashes_underscores() -> None:
    _meta, found = stages(parse("FROM a AS a.b-c_d\nFROM b AS A_B\n"))
    assert [s.name for s in found] == ["a.b-c_d", "a_b"]


# -- HEALTHCHECK ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "config"),
    [
        ("HEALTHCHECK NONE", {"Test": ["NONE"]}),
        ("HEALTHCHECK none", {"Test": ["NONE"]}),
        ("HEALTHCHECK --interval=1m30s --timeout=2s --start-period=500ms --retries=3 "
         "CMD curl -f x",
         {"Test": ["CMD-SHELL", "curl -f x"], "Interval": 90 * 10**9, "Timeout": 2 * 10**9,
          "StartPeriod": 500 * 10**6, "Retries": 3}),
        ('HEALTHCHECK cmd ["a", "b"]', {"Test": ["CMD", "a", "b"]}),
        ("HEALTHCHECK CMD  a  b ", {"Test": ["CMD-SHELL", "a  b"]}),
        ("HEALTHCHECK --interval=1.5h CMD x", {"Test": ["CMD-SHELL", "x"],
                                               "Interval": 5400 * 10**9}),
        ("HEALTHCHECK --interval= CMD x", {"Test": ["CMD-SHELL", "x"]}),
        ("HEALTHCHECK --interval=0 --retries=0 CMD x", {"Test": ["CMD-SHELL", "x"]}),  # *newer*
        ("HEALTHCHECK --start-interval=2s CMD x", {"Test": ["CMD-SHELL", "x"],
                                                   "StartInterval": 2 * 10**9}),  # *newer*
        ("HEALTHCHECK --retries=+3 CMD x", {"Test": ["CMD-SHELL", "x"], "Retries": 3}),
        ("HEALTHCHECK --timeout=1\u00b5s1ms CMD x", {"Test": ["CMD-SHELL", "x"],
                                                     "Timeout": 1_001_000}),
    ],
)  # fmt: skip
def test_healthcheck(line: str, config: dict) -> None:
    assert healthcheck(one(line)) == config


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK FOO x", 'Unknown type "FOO" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK CMD []", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --interval=5 CMD x", 'time: missing unit in duration "5"'),
        ("HEALTHCHECK --interval=1h2 CMD x", 'time: missing unit in duration "1h2"'),
        ("HEALTHCHECK --interval=1x CMD x", 'time: unknown unit "x" in duration "1x"'),
        ("HEALTHCHECK --interval=x CMD x", 'time: invalid duration "x"'),
        ("HEALTHCHECK --interval=. CMD x", 'time: invalid duration "."'),
        ("HEALTHCHECK --interval=-1s CMD x", 'Interval "interval" cannot be less than 1ms'),
        ("HEALTHCHECK --timeout=1us CMD x", 'Interval "timeout" cannot be less than 1ms'),
        ("HEALTHCHECK --retries=x CMD x", 'strconv.ParseInt: parsing "x": invalid syntax'),
        ("HEALTHCHECK --retries=99999999999 CMD x",
         'strconv.ParseInt: parsing "99999999999": value out of range'),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)"),  # *newer*
        ("HEALTHCHECK --interval=1s --interval=2s CMD x", "Duplicate flag specified: interval"),
    ],
)  # fmt: skip
def test_healthcheck_refusals(line: str, message: str) -> None:
    assert refused("FROM x\n" + line + "\n") == "dockerfile parse error line 2: " + message


def test_duration() -> None:
    assert duration("500ms", "interval") == 500 * 10**6
    assert duration("1h1m1s", "interval") == 3661 * 10**9
    assert duration(".5s", "interval") == 5 * 10**8
    assert duration("", "interval") == duration("0", "interval") == 0


# -- ONBUILD -------------------------------------------------------------------------------


def test_onbuild_triggers() -> None:
    inst = one("ONBUILD   RUN   echo  hi")
    assert inst.rest == "RUN   echo  hi"  # what the image's OnBuild keeps
    found = onbuild_instructions(["RUN echo", 'ENV A=1 B="x y"', 'CMD ["a"]'])
    assert [(i.command, i.rest, i.json) for i in found] == [
        ("RUN", "echo", None), ("ENV", 'A=1 B="x y"', None), ("CMD", '["a"]', ["a"])]  # fmt: skip


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ("ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("FROM y", "FROM isn't allowed as an ONBUILD trigger"),
        ("MAINTAINER me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("FOO x", "unknown instruction: FOO"),
        ("COPY a", "COPY requires at least two arguments, but only one was provided. "
         "Destination could not be determined"),
        ("ENV A", "ENV must have two arguments"),
        ("RUN a\nRUN b", "onbuild trigger should be a single expression"),
    ],
)  # fmt: skip
def test_onbuild_trigger_refusals(trigger: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        onbuild_instructions(["RUN ok", trigger])
    assert info.value.message == message


def test_pattern_substitutions_are_bounded():
    """Python's backtracking re runs them on the reactor: a tenant's many-star pattern
    over a long value is refused at once instead of stalling sdcd."""
    import time as _time

    from sdcd.core.dockerfile import DockerfileError as _Error
    from sdcd.core.dockerfile import expand as _expand

    assert _expand("${V%%.*}", {"V": "a.b.c"}) == "a"
    started = _time.monotonic()
    for word in ("${V#*a*a*a*b}", "${V/*a*b/x}", "${V%%*b}"):
        with pytest.raises(_Error, match="limited"):
            _expand(word, {"V": "a" * 100_000})
    assert _time.monotonic() - started < 1.0
