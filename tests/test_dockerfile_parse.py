"""Dockerfile parsing and word expansion (pure), against the classic builder's rules."""

from __future__ import annotations

import pytest

from sdcd.core.dockerfile import (
    DockerfileError,
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

ENV = {"A": "one", "EMPTY": "", "SP": "a b"}


def test_continuations_comments_and_forms():
    text = (
        "\ufeff# a comment\nFROM busybox\n\n"
        "RUN echo a && \\\n# dropped comment\n    echo b\n"
        'CMD ["sh", "-c", "echo hi"]\r\n'
        "ENTRYPOINT [not json\n"
        "copy --chown=1:2 --from=build a b /dst/\n"
    )
    insts = parse(text)
    assert [i.command for i in insts] == ["FROM", "RUN", "CMD", "ENTRYPOINT", "COPY"]
    run = insts[1]
    assert run.rest == "echo a &&     echo b" and run.json is None and run.line == 4
    assert insts[2].json == ["sh", "-c", "echo hi"]
    assert insts[3].json is None and insts[3].rest == "[not json"  # shell form, as dockerd
    assert insts[4].flags == {"chown": "1:2", "from": "build"} and insts[4].rest == "a b /dst/"
    assert shell_command(run, ["/bin/sh", "-c"]) == ["/bin/sh", "-c", "echo a &&     echo b"]
    assert shell_command(insts[2], ["/bin/sh", "-c"]) == ["sh", "-c", "echo hi"]


def test_escape_directive():
    text = "# escape=`\nFROM busybox\nRUN echo a `\n  b\n"
    assert escape_of(text) == "`"
    assert parse(text)[1].rest == "echo a   b"
    assert escape_of("FROM x\n# escape=`\n") == "\\"  # only at the top
    with pytest.raises(DockerfileError):
        parse("# escape=x\nFROM busybox\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cannot be empty"),
        ("# only a comment\n", "cannot be empty"),
        ("FROM x\nFROBNICATE y\n", "unknown instruction: FROBNICATE"),
        ("FROM x\nCOPY a\n", "COPY requires at least two arguments"),
        ("FROM a b\n", "FROM requires either one or three arguments"),
        ("FROM x\nRUN\n", "RUN requires at least one argument"),
        ("FROM x\nWORKDIR\n", "WORKDIR requires exactly one argument"),
        ("FROM x\nSHELL /bin/bash -c\n", "SHELL requires the arguments to be in JSON form"),
        ("FROM x\nCOPY --bogus=1 a b\n", "Unknown flag: bogus"),
        ("FROM x\nRUN --mount=type=cache true\n", "Unknown flag: mount"),
    ],
)
def test_refusals(text, message):
    with pytest.raises(DockerfileError, match=message):
        parse(text)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$A", "one"),
        ("${A}x", "onex"),
        ("$MISSING-", "-"),
        ("${MISSING:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${A:+alt}", "alt"),
        ("${MISSING:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${MISSING:-$A}", "one"),
        ("'$A'", "$A"),
        ('"$A b"', "one b"),
        ('"\\$A"', "$A"),
        ("\\$A", "$A"),
        ("a\\ b", "a b"),
        ("$", "$"),
        ("$1", ""),  # a positional parameter: never set
    ],
)
def test_expand(word, expected):
    assert expand(word, ENV) == expected


def test_split_words_and_quotes():
    assert split_words("a \"b c\" $SP 'd e'", ENV) == ["a", "b c", "a b", "d e"]
    assert split_words("  x   y ", ENV) == ["x", "y"]
    assert expand("`$A", ENV, escape="`") == "$A"
    with pytest.raises(DockerfileError):
        expand('"open', ENV)


def one(line: str):
    return parse("FROM x\n" + line)[1]


def test_key_values_new_and_old_forms():
    assert key_values(one('ENV A=1 B="two words" C=$A'), ENV) == [
        ("A", "1"), ("B", "two words"), ("C", "one")]  # fmt: skip
    assert key_values(one("ENV OLD value with  spaces $A"), ENV) == [
        ("OLD", "value with  spaces one")]  # fmt: skip
    assert key_values(one('LABEL "com.x.y"="v w" z=1'), ENV) == [("com.x.y", "v w"), ("z", "1")]
    assert key_values(one("ARG N D=dflt"), ENV) == [("N", None), ("D", "dflt")]
    with pytest.raises(DockerfileError, match="can't find = in"):
        key_values(one("ENV A=1 B"), ENV)
    with pytest.raises(DockerfileError, match="names can not be blank"):
        key_values(one("ENV =x"), ENV)


def test_stages():
    insts = parse("ARG V=1\nFROM a AS Build\nRUN x\nFROM b\nCOPY --from=build /x /y\n")
    meta, found = stages(insts)
    assert [m.command for m in meta] == ["ARG"]
    assert [(s.name, s.base, s.index, len(s.instructions)) for s in found] == [
        ("build", "a", 0, 1), (None, "b", 1, 1)]  # fmt: skip
    with pytest.raises(DockerfileError, match="duplicate name"):
        stages(parse("FROM a AS x\nFROM b AS x\n"))
    with pytest.raises(DockerfileError, match="no build stage"):
        stages(parse("RUN x\nFROM a\n"))
    with pytest.raises(DockerfileError, match="invalid name for build stage"):
        stages(parse("FROM a AS 1st\n"))


def test_healthcheck():
    assert healthcheck(one("HEALTHCHECK NONE")) == {"Test": ["NONE"]}
    check = healthcheck(one("HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f x"))
    assert check == {"Test": ["CMD-SHELL", "curl -f x"], "Interval": 90 * 10**9, "Retries": 3}
    assert healthcheck(one('HEALTHCHECK CMD ["true"]'))["Test"] == ["CMD", "true"]
    assert duration("500ms", "interval") == 500 * 10**6
    for bad in ("HEALTHCHECK NONE x", "HEALTHCHECK FOO x", "HEALTHCHECK --interval=5 CMD x"):
        with pytest.raises(DockerfileError):
            healthcheck(one(bad))


def test_onbuild_triggers():
    assert [i.command for i in onbuild_instructions(["RUN echo", "ENV A=1"])] == ["RUN", "ENV"]
    for bad in ("ONBUILD RUN x", "FROM y", "MAINTAINER me"):
        with pytest.raises(DockerfileError, match="isn't allowed as an ONBUILD trigger"):
            onbuild_instructions([bad])
