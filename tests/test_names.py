"""Container names: dockerd's validity rule and message, and Docker-style random names
from sdcd's own word lists (never boring_wozniak, a digit on retries)."""

from __future__ import annotations

import random
import re

import pytest

from sdcd.api.errors import status_of
from sdcd.core import names
from sdcd.core.errors import Conflict, InvalidArgument
from sdcd.core.names import random_name, valid_name


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("web", "web"),
        ("/web", "web"),
        ("ab", "ab"),
        ("Web_1.prod-2", "Web_1.prod-2"),
        ("0abc", "0abc"),
        ("a" * 255, "a" * 255),
    ],
)
def test_valid_names_lose_the_leading_slash(given, stored):
    assert valid_name(given) == stored


@pytest.mark.parametrize(
    "given",
    ["", "/", "a", "/a", "-web", "_web", ".web", "web app", "web/app", "//web", "wéb", "a" * 256],
)
def test_invalid_names_are_400_in_dockerds_words(given):
    with pytest.raises(InvalidArgument) as info:
        valid_name(given)
    assert info.value.message == (
        f"Invalid container name ({given}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
    )
    assert status_of(info.value) == 400


def test_non_string_name_is_400():
    with pytest.raises(InvalidArgument):
        valid_name(None)  # type: ignore[arg-type]


def test_word_lists_are_our_own_size_and_shape():
    assert len(names.ADJECTIVES) >= 100
    assert len(names.SURNAMES) >= 150
    for words in (names.ADJECTIVES, names.SURNAMES):
        assert len(set(words)) == len(words)
        assert all(re.fullmatch(r"[a-z]+", w) for w in words)


def test_random_names_are_adjective_underscore_surname_and_valid():
    rng = random.Random(4)
    for _ in range(500):
        name = random_name(rng, lambda _n: False)
        adjective, surname = name.split("_")
        assert adjective in names.ADJECTIVES
        assert surname in names.SURNAMES
        assert valid_name(name) == name


def test_random_names_vary():
    rng = random.Random(5)
    assert len({random_name(rng, lambda _n: False) for _ in range(200)}) > 150


class Scripted:
    """An rng that returns chosen words and digits in order."""

    def __init__(self, choices, digits=()):
        self._choices = list(choices)
        self._digits = list(digits)

    def choice(self, seq):
        word = self._choices.pop(0)
        assert word in seq
        return word

    def randrange(self, stop):
        return self._digits.pop(0) if self._digits else stop - 1


def test_never_boring_wozniak():
    assert "boring" in names.ADJECTIVES and "wozniak" in names.SURNAMES
    rng = Scripted(["boring", "wozniak", "boring", "turing"])
    assert random_name(rng, lambda _n: False) == "boring_turing"


def test_never_boring_wozniak_statistically():
    rng = random.Random(6)
    seen = {random_name(rng, lambda _n: False) for _ in range(20000)}
    assert names.NEVER not in seen


def test_taken_names_are_retried_with_a_digit():
    rng = Scripted(["calm", "curie", "calm", "curie"], digits=[7])
    taken = {"calm_curie"}
    assert random_name(rng, taken.__contains__) == "calm_curie7"


def test_first_try_has_no_digit_and_retries_all_have_one():
    rng = random.Random(8)
    tried = []

    def taken(name):
        tried.append(name)
        return name != "0123456789ab"

    assert random_name(rng, taken, fallback="0123456789ab") == "0123456789ab"
    assert len(tried) == names.ATTEMPTS + 1
    assert re.fullmatch(r"[a-z]+_[a-z]+", tried[0])
    assert all(re.fullmatch(r"[a-z]+_[a-z]+\d", t) for t in tried[1 : names.ATTEMPTS])


def test_without_fallback_wider_suffixes_are_tried():
    rng = random.Random(9)
    calls = []

    def taken(name):
        calls.append(name)
        return len(calls) <= names.ATTEMPTS

    name = random_name(rng, taken)
    assert re.fullmatch(r"[a-z]+_[a-z]+\d+", name)
    assert len(calls) == names.ATTEMPTS + 1


def test_everything_taken_is_a_conflict():
    with pytest.raises(Conflict):
        random_name(random.Random(10), lambda _n: True)
    with pytest.raises(Conflict):
        random_name(random.Random(10), lambda _n: True, fallback="0123456789ab")
