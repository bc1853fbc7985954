"""Image references mean here what they mean to dockerd: same grammar, same normal form."""

from __future__ import annotations

import hashlib

import pytest

from sdcd.images import reference as refs
from sdcd.images.reference import Reference, ReferenceError

DIGEST = "sha256:" + hashlib.sha256(b"an image manifest").hexdigest()
HEX64 = hashlib.sha256(b"an image config").hexdigest()

# input -> (domain, path, tag, digest, str(), familiar)
VALID = {
    "busybox": (
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "docker.io/library/busybox:latest",
        "busybox:latest",
    ),
    "busybox:1.36": (
        "docker.io",
        "library/busybox",
        "1.36",
        None,
        "docker.io/library/busybox:1.36",
        "busybox:1.36",
    ),
    "library/busybox": (
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "docker.io/library/busybox:latest",
        "busybox:latest",
    ),
    "docker.io/busybox": (
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "docker.io/library/busybox:latest",
        "busybox:latest",
    ),
    "docker.io/library/busybox:glibc": (
        "docker.io",
        "library/busybox",
        "glibc",
        None,
        "docker.io/library/busybox:glibc",
        "busybox:glibc",
    ),
    "index.docker.io/busybox": (
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "docker.io/library/busybox:latest",
        "busybox:latest",
    ),
    "index.docker.io/ns/app:2": (
        "docker.io",
        "ns/app",
        "2",
        None,
        "docker.io/ns/app:2",
        "ns/app:2",
    ),
    "ns/name": (
        "docker.io",
        "ns/name",
        "latest",
        None,
        "docker.io/ns/name:latest",
        "ns/name:latest",
    ),
    "foo/bar/baz:1.0": (
        "docker.io",
        "foo/bar/baz",
        "1.0",
        None,
        "docker.io/foo/bar/baz:1.0",
        "foo/bar/baz:1.0",
    ),
    # "library/" is only hidden for one-component official names.
    "library/a/b": (
        "docker.io",
        "library/a/b",
        "latest",
        None,
        "docker.io/library/a/b:latest",
        "library/a/b:latest",
    ),
    "localhost/foo": (
        "localhost",
        "foo",
        "latest",
        None,
        "localhost/foo:latest",
        "localhost/foo:latest",
    ),
    "localhost:5000/foo:bar": (
        "localhost:5000",
        "foo",
        "bar",
        None,
        "localhost:5000/foo:bar",
        "localhost:5000/foo:bar",
    ),
    "127.0.0.1:5000/name": (
        "127.0.0.1:5000",
        "name",
        "latest",
        None,
        "127.0.0.1:5000/name:latest",
        "127.0.0.1:5000/name:latest",
    ),
    "registry.example.com/team/app:v1.2.3": (
        "registry.example.com",
        "team/app",
        "v1.2.3",
        None,
        "registry.example.com/team/app:v1.2.3",
        "registry.example.com/team/app:v1.2.3",
    ),
    "registry.example.com:443/app": (
        "registry.example.com:443",
        "app",
        "latest",
        None,
        "registry.example.com:443/app:latest",
        "registry.example.com:443/app:latest",
    ),
    "[::1]:5000/foo": (
        "[::1]:5000",
        "foo",
        "latest",
        None,
        "[::1]:5000/foo:latest",
        "[::1]:5000/foo:latest",
    ),
    "[fc00::1]/a/b": (
        "[fc00::1]",
        "a/b",
        "latest",
        None,
        "[fc00::1]/a/b:latest",
        "[fc00::1]/a/b:latest",
    ),
    "a-b---c/d.e_f__g": (
        "docker.io",
        "a-b---c/d.e_f__g",
        "latest",
        None,
        "docker.io/a-b---c/d.e_f__g:latest",
        "a-b---c/d.e_f__g:latest",
    ),
    f"busybox@{DIGEST}": (
        "docker.io",
        "library/busybox",
        None,
        DIGEST,
        f"docker.io/library/busybox@{DIGEST}",
        f"busybox@{DIGEST}",
    ),
    f"busybox:1.36@{DIGEST}": (
        "docker.io",
        "library/busybox",
        "1.36",
        DIGEST,
        f"docker.io/library/busybox:1.36@{DIGEST}",
        f"busybox:1.36@{DIGEST}",
    ),
    f"localhost:5000/foo@{DIGEST}": (
        "localhost:5000",
        "foo",
        None,
        DIGEST,
        f"localhost:5000/foo@{DIGEST}",
        f"localhost:5000/foo@{DIGEST}",
    ),
    # A bare host-looking name without "/" is a Docker Hub repository (and a tag).
    "192.168.0.1:80": (
        "docker.io",
        "library/192.168.0.1",
        "80",
        None,
        "docker.io/library/192.168.0.1:80",
        "192.168.0.1:80",
    ),
    "localhost": (
        "docker.io",
        "library/localhost",
        "latest",
        None,
        "docker.io/library/localhost:latest",
        "localhost:latest",
    ),
    "localhost:5000": (
        "docker.io",
        "library/localhost",
        "5000",
        None,
        "docker.io/library/localhost:5000",
        "localhost:5000",
    ),
    # An uppercase first component can only be a host (dockerd's rule).
    "Docker/docker": (
        "Docker",
        "docker",
        "latest",
        None,
        "Docker/docker:latest",
        "Docker/docker:latest",
    ),
    f"docker.io/{HEX64}": (
        "docker.io",
        f"library/{HEX64}",
        "latest",
        None,
        f"docker.io/library/{HEX64}:latest",
        f"{HEX64}:latest",
    ),
    "busybox:Latest_1.0-rc.2": (
        "docker.io",
        "library/busybox",
        "Latest_1.0-rc.2",
        None,
        "docker.io/library/busybox:Latest_1.0-rc.2",
        "busybox:Latest_1.0-rc.2",
    ),
    "busybox:_": (
        "docker.io",
        "library/busybox",
        "_",
        None,
        "docker.io/library/busybox:_",
        "busybox:_",
    ),
}

# input -> a fragment of the message
INVALID = {
    "Foo": refs.MUST_BE_LOWERCASE,
    "ns/Foo": refs.MUST_BE_LOWERCASE,
    "localhost:5000/Foo:tag": refs.MUST_BE_LOWERCASE,
    "docker.io/library/Busybox": refs.MUST_BE_LOWERCASE,
    "foo:": "invalid reference format",
    ":tag": "invalid reference format",
    "": "invalid reference format",
    "a" * 256: "must not be more than 255 characters",
    "a" * 248: "must not be more than 255 characters",
    "registry.example.com/" + "a" * 256: "must not be more than 255 characters",
    "foo:-bar": "invalid reference format",
    "foo:.bar": "invalid reference format",
    "foo:" + "a" * 129: "invalid reference format",
    "foo:bar:baz": "invalid reference format",
    "foo/": "invalid reference format",
    "/foo": "invalid reference format",
    "foo//bar": "invalid reference format",
    "-foo": "invalid reference format",
    "foo-": "invalid reference format",
    "foo..bar": "invalid reference format",
    "foo_.bar": "invalid reference format",
    "foo___bar": "invalid reference format",
    "_foo": "invalid reference format",
    "-registry.io/foo": "invalid reference format",
    "foo_bar.com/x": "invalid reference format",
    "https://github.com/docker/docker": "invalid reference format",
    "[fc00::1]:5000": "invalid reference format",
    "fc00::1:5000/debian": "invalid reference format",
    "[fe80::1%eth0]:5000/debian": "invalid reference format",
    "localhost:port/foo": "invalid reference format",
    "foo@bar": "invalid reference format",
    "foo@sha256:abc": "invalid reference format",
    "foo@": "invalid reference format",
    "@" + DIGEST: "invalid reference format",
    "foo@sha256:" + "a" * 63: "invalid checksum digest length",
    "foo@sha256:" + "a" * 65: "invalid checksum digest length",
    "foo@sha256:" + "A" * 64: "invalid checksum digest format",
    "foo@sha512:" + "a" * 128: "unsupported digest algorithm: sha512",
    "foo@md5:" + "a" * 32: "unsupported digest algorithm: md5",
    HEX64: "cannot specify 64-byte hexadecimal strings",
    "föo": "invalid reference format",
    "busybox:lätest": "invalid reference format",
    "busybox\n": "invalid reference format",
    "busybox:latest\n": "invalid reference format",
    "bus box": "invalid reference format",
    "a" * 5000: "invalid reference format",
}


@pytest.mark.parametrize("text", sorted(VALID))
def test_valid(text: str) -> None:
    domain, path, tag, digest, full, familiar = VALID[text]
    ref = refs.parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert refs.parse(str(ref)) == ref, "the normal form parses to itself"
    assert refs.parse(ref.familiar) == ref, "so does the familiar form"


@pytest.mark.parametrize("text", sorted(INVALID))
def test_invalid(text: str) -> None:
    with pytest.raises(ReferenceError) as caught:
        refs.parse(text)
    assert INVALID[text] in str(caught.value)


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^invalid reference format$"):
        refs.parse("foo:")


def test_lowercase_message_is_dockerds() -> None:
    with pytest.raises(ReferenceError) as caught:
        refs.parse("Foo")
    assert str(caught.value) == "invalid reference format: repository name must be lowercase"


def test_length_limit_is_on_the_path() -> None:
    assert refs.parse("a" * 247).path == "library/" + "a" * 247
    assert len(refs.parse("registry.example.com/" + "a" * 255).path) == 255
    assert refs.parse("registry.example.com/x:" + "t" * 128).tag == "t" * 128


def test_spellings_of_one_image_are_equal() -> None:
    spellings = [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/busybox",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
    ]
    assert len({refs.parse(s) for s in spellings}) == 1


def test_names() -> None:
    hub = refs.parse("busybox:1.36")
    assert hub.name == "docker.io/library/busybox"
    assert hub.familiar_name == hub.repository == "busybox"
    user = refs.parse("ns/app")
    assert (user.name, user.familiar_name) == ("docker.io/ns/app", "ns/app")
    local = refs.parse("127.0.0.1:5000/name:v1")
    assert local.name == local.familiar_name == "127.0.0.1:5000/name"
    assert local.familiar == "127.0.0.1:5000/name:v1"


def test_default_tag() -> None:
    bare = refs.parse("busybox", default_tag=None)
    assert bare.tag is None and bare.digest is None
    assert str(bare) == "docker.io/library/busybox"
    assert bare.familiar == "busybox"
    assert refs.parse("busybox", default_tag="stable").tag == "stable"
    assert refs.parse("busybox:1", default_tag="stable").tag == "1"
    assert refs.parse(f"busybox@{DIGEST}").tag is None, "a digest needs no default tag"


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("busybox", "registry-1.docker.io"),
        ("docker.io/ns/app", "registry-1.docker.io"),
        ("index.docker.io/ns/app", "registry-1.docker.io"),
        ("localhost:5000/a", "localhost:5000"),
        ("registry.example.com/a", "registry.example.com"),
        ("[::1]:5000/a", "[::1]:5000"),
    ],
)
def test_registry_host(text: str, host: str) -> None:
    assert refs.parse(text).registry_host == host


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("localhost/a", True),
        ("localhost:5000/a", True),
        ("LOCALHOST:5000/a", True),
        ("127.0.0.1:5000/a", True),
        ("127.1.2.3/a", True),
        ("[::1]:5000/a", True),
        ("[::1]/a", True),
        ("busybox", False),
        ("10.0.0.1:5000/a", False),
        ("registry.example.com/a", False),
        ("[fc00::1]:5000/a", False),
        ("localhost.example.com/a", False),
    ],
)
def test_is_loopback(text: str, loopback: bool) -> None:
    assert refs.parse(text).is_loopback is loopback


def test_is_loopback_mapped_ipv6() -> None:
    assert Reference("[::ffff:127.0.0.1]:5000", "a").is_loopback
    assert not Reference("[::ffff:10.0.0.1]:5000", "a").is_loopback


def test_with_tag_and_digest() -> None:
    ref = refs.parse("busybox:1.36")
    assert str(ref.with_tag("musl")) == "docker.io/library/busybox:musl"
    pinned = ref.with_digest(DIGEST)
    assert str(pinned) == f"docker.io/library/busybox:1.36@{DIGEST}"
    assert pinned.with_tag("x").digest == DIGEST
    with pytest.raises(ReferenceError, match="invalid tag format"):
        ref.with_tag("-bad")
    with pytest.raises(ReferenceError, match="invalid tag format"):
        ref.with_tag("t" * 129)
    with pytest.raises(ReferenceError, match="unsupported digest algorithm"):
        ref.with_digest("sha512:" + "a" * 128)
    with pytest.raises(ReferenceError, match="invalid digest format"):
        ref.with_digest("nonsense")


@pytest.mark.parametrize(
    ("repo", "tag", "expected"),
    [
        ("busybox", "latest", "docker.io/library/busybox:latest"),
        ("busybox", None, "docker.io/library/busybox:latest"),
        ("busybox", "", "docker.io/library/busybox:latest"),
        ("busybox:1.0", None, "docker.io/library/busybox:1.0"),
        ("busybox:1.0", "2.0", "docker.io/library/busybox:2.0"),
        ("busybox:", None, "docker.io/library/busybox:latest"),
        ("busybox", DIGEST, f"docker.io/library/busybox@{DIGEST}"),
        ("busybox:1.0", DIGEST, f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox@{DIGEST}", None, f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox@{DIGEST}", "1.0", f"docker.io/library/busybox:1.0@{DIGEST}"),
        ("localhost:5000/app", "v1", "localhost:5000/app:v1"),
        ("127.0.0.1:5000/ns/app", None, "127.0.0.1:5000/ns/app:latest"),
    ],
)
def test_parse_repository_and_tag(repo: str, tag: str | None, expected: str) -> None:
    assert str(refs.parse_repository_and_tag(repo, tag)) == expected


def test_parse_repository_and_tag_without_default() -> None:
    ref = refs.parse_repository_and_tag("busybox", None, default_tag=None)
    assert ref.tag is None and ref.digest is None


@pytest.mark.parametrize(
    ("repo", "tag", "message"),
    [
        ("busybox", "bad tag", "invalid tag format"),
        ("busybox", "-x", "invalid tag format"),
        ("busybox", "sha512:" + "a" * 128, "unsupported digest algorithm"),
        ("busybox", "sha256:" + "a" * 40, "invalid checksum digest length"),
        ("Busybox", "latest", refs.MUST_BE_LOWERCASE),
        ("", "latest", "invalid reference format"),
        ("busybox::", None, "invalid reference format"),
    ],
)
def test_parse_repository_and_tag_errors(repo: str, tag: str | None, message: str) -> None:
    with pytest.raises(ReferenceError) as caught:
        refs.parse_repository_and_tag(repo, tag)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "full", "short"),
    [
        (HEX64, True, True),
        ("sha256:" + HEX64, True, True),
        (HEX64[:12], False, True),
        ("sha256:" + HEX64[:12], False, True),
        (HEX64[:4], False, True),
        (HEX64[:3], False, False),
        (HEX64[:63], False, True),
        (HEX64 + "0", False, False),
        (HEX64.upper(), False, False),
        ("sha512:" + HEX64, False, False),
        ("sha256:", False, False),
        ("", False, False),
        ("busybox", False, False),
        ("beefcafe", False, True),
    ],
)
def test_id_helpers(text: str, full: bool, short: bool) -> None:
    assert refs.is_full_id(text) is full
    assert refs.is_short_id(text) is short


def test_short_id_minimum_length() -> None:
    assert refs.is_short_id("a", min_length=1)
    assert not refs.is_short_id("abcde", min_length=6)
