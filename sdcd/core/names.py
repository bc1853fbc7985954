"""Container names: dockerd's validity rule and Docker-style ``adjective_surname`` names.

The word lists are sdcd's own: adjectives, and surnames of scientists and engineers.
Names are returned without dockerd's leading ``/``; the API adds it where dockerd shows it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from sdcd.core.errors import Conflict, InvalidArgument

VALID_NAME_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"
# dockerd's pattern: note the "+", so a name has at least two characters.
_VALID_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
MAX_NAME_LENGTH = 255  # dockerd sets none; ours keeps names filterable in bounded time

# The one pair dockerd never generates, and neither do we.
NEVER = "boring_wozniak"
# dockerd tries this many random names (the later ones with a digit) before giving up.
ATTEMPTS = 6


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ADJECTIVES = _words(
    """
    agile amber ancient ardent astute balmy bashful blissful bold boring brave breezy
    bright brisk calm candid careful cheerful clever cosmic crisp curious dapper daring
    dazzling deft diligent dreamy dusky eager earnest elated elegant epic fearless
    festive fluent focused frank friendly frosty gallant gentle gifted glad golden
    graceful happy hardy hearty helpful honest hopeful humble jolly jovial keen kind
    lively loyal lucid lucky magical mellow merry mighty modest musing nimble noble
    patient peaceful plucky polite proud quiet quirky radiant rapid relaxed resolute
    rustic serene sharp shiny silent sincere snowy spirited steady stoic sunny swift
    tender thrifty tidy upbeat valiant vibrant vivid warm wise witty zealous zesty
    """
)

SURNAMES = _words(
    """
    adleman agnesi aho allen ampere archimedes atanasoff avogadro babbage backus banach
    bardeen bell bellman berners bethe bohr boltzmann boole born bose boyle brahe burnell
    cannon cantor carnot carson cauchy cavendish cerf chadwick chandrasekhar chebyshev
    church cook copernicus coulomb curie dalton dantzig darwin descartes diffie dijkstra
    dirac doppler eckert einstein engelbart euclid euler faraday fermat fermi feynman
    fleming fourier franklin frege galileo gauss germain gibbs goddard godel goldwasser
    goodall hahn hale halley hamilton hamming hawking hellman helmholtz herschel hertz
    hilbert hoare hodgkin hooke hopcroft hopper hoyle hubble huffman huygens hypatia
    jackson jemison johnson joule kahn kalman karp kay kelvin kepler kernighan kilby
    kleene kolmogorov korolev kovalevskaya kuiper lagrange lamarr lamport landau laplace
    lavoisier leavitt leibniz lemaitre liskov lovelace lyapunov mach markov mauchly
    maxwell mcclintock meitner mendel mendeleev micali millikan minsky mitchell moore
    nash neumann newton noether noyce nyquist oberth ochoa ohm oort pascal pasteur payne
    penrose perlman planck poincare raman ramanujan riemann ritchie rivest rubin
    rutherford sagan saha shamir shannon somerville stroustrup sutherland szilard tarjan
    tesla tharp thompson tomonaga torvalds tsiolkovsky turing ullman vaughan viterbi
    volta watt wiener wigner wilkes wirth wozniak wu yukawa zuse zwicky
    """
)


class _Random(Protocol):
    def choice(self, seq, /): ...

    def randrange(self, stop: int, /) -> int: ...


def valid_name(name: str) -> str:
    """``name`` without a leading ``/``, or a 400 in dockerd's words."""
    bare = name.removeprefix("/") if isinstance(name, str) else ""
    if not _VALID_NAME_RE.fullmatch(bare) or len(bare) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"Invalid container name ({name}), only {VALID_NAME_CHARS} are allowed"
        )
    return bare


def random_name(rng: _Random, taken: Callable[[str], bool], fallback: str | None = None) -> str:
    """A free ``adjective_surname``, as dockerd makes them: after a first try, each
    retry appends one random digit. After ``ATTEMPTS`` tries, ``fallback`` (dockerd
    uses the short id) if given and free; else wider random suffixes, then 409."""
    for attempt in range(ATTEMPTS):
        name = _pair(rng)
        if attempt:
            name += str(rng.randrange(10))
        if not taken(name):
            return name
    if fallback is not None and not taken(fallback):
        return fallback
    for _ in range(100):
        name = f"{_pair(rng)}{rng.randrange(10_000)}"
        if not taken(name):
            return name
    raise Conflict("could not find a free name for the container; give one with --name")


def _pair(rng: _Random) -> str:
    while True:
        name = f"{rng.choice(ADJECTIVES)}_{rng.choice(SURNAMES)}"
        if name != NEVER:
            return name
