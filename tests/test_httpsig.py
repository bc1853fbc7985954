"""HTTP Signatures (draft-cavage, as CloudAPI uses them): round trips for every key type
and algorithm, interop with signatures made by the real ``openssl`` CLI, and refusal of
anything malformed with SignatureError only."""

from __future__ import annotations

import base64
import email.utils
import random
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from sdcd.auth import httpsig
from sdcd.auth.httpsig import (
    ALGORITHMS,
    SignatureError,
    SignatureParams,
    check_date,
    parse_authorization,
    sign,
    signing_string,
    verify,
)

NOW = 1_790_000_000.0
DATE = email.utils.formatdate(NOW, usegmt=True)
HEADERS = {"Date": DATE, "Host": "cloudapi.example.com", "X-Api-Version": "~8"}
KEY_ID = "/alice/keys/aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99"

_KEYS: dict[str, object] = {}


def key(kind: str):
    """One private key of each kind, made once (RSA generation is slow)."""
    if kind not in _KEYS:
        _KEYS[kind] = {
            "rsa": lambda: rsa.generate_private_key(65537, 2048),
            "rsa-other": lambda: rsa.generate_private_key(65537, 2048),
            "ecdsa-256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "ecdsa-384": lambda: ec.generate_private_key(ec.SECP384R1()),
            "ecdsa-521": lambda: ec.generate_private_key(ec.SECP521R1()),
            "ecdsa-256-other": lambda: ec.generate_private_key(ec.SECP256R1()),
            "ed25519": ed25519.Ed25519PrivateKey.generate,
            "ed25519-other": ed25519.Ed25519PrivateKey.generate,
        }[kind]()
    return _KEYS[kind]


# (key kind, algorithm) for every algorithm each key type may use
VALID = [
    ("rsa", "rsa-sha1"),
    ("rsa", "rsa-sha256"),
    ("rsa", "rsa-sha512"),
    *[
        (f"ecdsa-{b}", f"ecdsa-{h}")
        for b in (256, 384, 521)
        for h in ("sha256", "sha384", "sha512")
    ],
    ("ed25519", "ed25519-sha512"),
]
DEFAULT_ALGORITHM = {
    "rsa": "rsa-sha256",
    "ecdsa-256": "ecdsa-sha256",
    "ecdsa-384": "ecdsa-sha384",
    "ecdsa-521": "ecdsa-sha512",
    "ed25519": "ed25519-sha512",
}


def server_check(authorization: str, public_key, method="GET", path="/alice", headers=None):
    """What the server does with a request: parse, rebuild the signing string, verify."""
    params = parse_authorization(authorization)
    data = signing_string(params.headers, method, path, headers or HEADERS)
    return verify(params, data, public_key)


def params_for(kind: str, algorithm: str | None = None, data: bytes = b"date: x") -> tuple:
    """(params, signing string) signed by ``kind`` over ``data`` with ``algorithm``."""
    private = key(kind)
    algorithm = algorithm or DEFAULT_ALGORITHM[kind]
    signature = httpsig._sign(private, algorithm, data)
    return SignatureParams(KEY_ID, algorithm, ("date",), signature), data


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("kind, algorithm", VALID)
def test_round_trip(kind, algorithm):
    private = key(kind)
    authorization = sign(private, KEY_ID, "GET", "/alice", HEADERS, algorithm=algorithm)
    assert authorization.startswith(f'Signature keyId="{KEY_ID}",algorithm="{algorithm}",')
    assert server_check(authorization, private.public_key())


@pytest.mark.parametrize("kind", DEFAULT_ALGORITHM)
def test_default_algorithm_follows_the_key(kind):
    authorization = sign(key(kind), KEY_ID, "GET", "/alice", HEADERS)
    params = parse_authorization(authorization)
    assert params.algorithm == DEFAULT_ALGORITHM[kind]
    assert params.headers == ("date",)
    assert params.key_id == KEY_ID
    assert server_check(authorization, key(kind).public_key())


@pytest.mark.parametrize("kind", DEFAULT_ALGORITHM)
def test_wrong_key_is_false(kind):
    authorization = sign(key(kind), KEY_ID, "GET", "/alice", HEADERS)
    others = ["rsa-other", "ecdsa-256-other", "ed25519-other", *DEFAULT_ALGORITHM]
    for other in others:
        if other != kind:
            assert not server_check(authorization, key(other).public_key()), other


@pytest.mark.parametrize("kind", DEFAULT_ALGORITHM)
def test_tampered_signing_string_is_false(kind):
    authorization = sign(key(kind), KEY_ID, "GET", "/alice", HEADERS)
    later = dict(HEADERS, Date=email.utils.formatdate(NOW + 1, usegmt=True))
    assert not server_check(authorization, key(kind).public_key(), headers=later)
    params, data = params_for(kind)
    assert verify(params, data, key(kind).public_key())
    assert not verify(params, data + b" ", key(kind).public_key())
    assert not verify(params, b"", key(kind).public_key())


@pytest.mark.parametrize("kind", DEFAULT_ALGORITHM)
def test_tampered_signature_is_false(kind):
    params, data = params_for(kind)
    public = key(kind).public_key()
    flipped = bytearray(params.signature)
    flipped[len(flipped) // 2] ^= 0x01
    for signature in (bytes(flipped), params.signature[:-1], params.signature + b"\0", b"\0"):
        tampered = SignatureParams(KEY_ID, params.algorithm, params.headers, signature)
        assert not verify(tampered, data, public)


@pytest.mark.parametrize(
    "kind, algorithm",
    [
        ("rsa", "ecdsa-sha256"),
        ("rsa", "ed25519-sha512"),
        ("ecdsa-256", "rsa-sha256"),
        ("ecdsa-256", "ed25519-sha512"),
        ("ed25519", "rsa-sha256"),
        ("ed25519", "ecdsa-sha512"),
    ],
)
def test_algorithm_must_fit_the_key(kind, algorithm):
    """A valid signature claimed under another key type's algorithm is refused."""
    params, data = params_for(kind)
    assert verify(params, data, key(kind).public_key())
    claimed = SignatureParams(KEY_ID, algorithm, params.headers, params.signature)
    assert not verify(claimed, data, key(kind).public_key())
    with pytest.raises(SignatureError, match="does not fit"):
        sign(key(kind), KEY_ID, "GET", "/", HEADERS, algorithm=algorithm)


def test_hash_must_match_the_algorithm():
    params, data = params_for("rsa", "rsa-sha256")
    for algorithm in ("rsa-sha1", "rsa-sha512"):
        claimed = SignatureParams(KEY_ID, algorithm, params.headers, params.signature)
        assert not verify(claimed, data, key("rsa").public_key())
    params, data = params_for("ecdsa-256", "ecdsa-sha256")
    claimed = SignatureParams(KEY_ID, "ecdsa-sha512", params.headers, params.signature)
    assert not verify(claimed, data, key("ecdsa-256").public_key())


def test_unknown_algorithm_and_odd_keys_are_false():
    params, data = params_for("rsa")
    unknown = SignatureParams(KEY_ID, "hs2019", params.headers, params.signature)
    assert not verify(unknown, data, key("rsa").public_key())
    assert not verify(params, data, None)
    assert not verify(params, data, "a key")
    assert not verify(params, data, ed448.Ed448PrivateKey.generate().public_key())
    assert not verify(params, data, dsa.generate_private_key(2048).public_key())


@pytest.mark.parametrize("kind", ["ecdsa-256", "ecdsa-384", "ecdsa-521"])
def test_ecdsa_raw_r_s_signature_is_accepted(kind):
    params, data = params_for(kind)
    r, s = decode_dss_signature(params.signature)
    size = (key(kind).curve.key_size + 7) // 8
    raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    as_raw = SignatureParams(KEY_ID, params.algorithm, params.headers, raw)
    assert verify(as_raw, data, key(kind).public_key())
    assert not verify(as_raw, data + b"!", key(kind).public_key())
    assert not verify(
        as_raw, data, key(f"{kind}-other" if kind == "ecdsa-256" else "ecdsa-256").public_key()
    )


def test_request_target_binds_method_and_path():
    names = ("(request-target)", "host", "date")
    private = key("ed25519")
    path = "/alice/machines?limit=10&offset=0"
    authorization = sign(private, KEY_ID, "GET", path, HEADERS, header_names=names)
    assert 'headers="(request-target) host date"' in authorization
    public = private.public_key()
    assert server_check(authorization, public, "GET", path)
    assert server_check(authorization, public, "get", path)
    assert not server_check(authorization, public, "DELETE", path)
    assert not server_check(authorization, public, "GET", "/alice/machines")
    assert not server_check(authorization, public, "GET", "/bob/machines?limit=10&offset=0")


def test_signature_over_more_headers_needs_them_all():
    names = ("date", "x-api-version")
    authorization = sign(key("rsa"), KEY_ID, "GET", "/", HEADERS, header_names=names)
    public = key("rsa").public_key()
    assert server_check(authorization, public, path="/")
    changed = dict(HEADERS, **{"X-Api-Version": "~9"})
    assert not server_check(authorization, public, path="/", headers=changed)
    with pytest.raises(SignatureError, match="x-api-version"):
        server_check(authorization, public, path="/", headers={"Date": DATE})


# --- signing_string -----------------------------------------------------------------------


def test_signing_string_format():
    headers = {"DATE": f"  {DATE} ", "Content-Type": "application/json", "HOST": "h"}
    data = signing_string(
        ["(request-target)", "Date", "content-type", "host"], "POST", "/a/b?c=d", headers
    )
    lines = [
        "(request-target): post /a/b?c=d",
        f"date: {DATE}",
        "content-type: application/json",
        "host: h",
    ]
    assert data == "\n".join(lines).encode()
    assert signing_string(("date",), "GET", "/", {"date": DATE}) == f"date: {DATE}".encode()


def test_signing_string_missing_header():
    with pytest.raises(SignatureError, match="signed header date is missing"):
        signing_string(("date",), "GET", "/", {"Host": "h"})
    with pytest.raises(SignatureError, match="no headers"):
        signing_string((), "GET", "/", HEADERS)


def test_signing_string_unencodable_value():
    with pytest.raises(SignatureError):
        signing_string(("date",), "GET", "/", {"date": "\ud800"})


# --- interop with the openssl CLI ----------------------------------------------------------


def write_pem(private, path: Path) -> Path:
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def openssl_sign(kind: str, tmp_path: Path) -> tuple[bytes, str]:
    """(signature, algorithm) made by the openssl CLI over ``date: <DATE>``, as a shell
    client (e.g. the setup helper) does it."""
    pem = write_pem(key(kind), tmp_path / "key.pem")
    data, out = tmp_path / "data", tmp_path / "sig"
    data.write_bytes(f"date: {DATE}".encode())
    if kind == "ed25519":
        command = ["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", str(pem)]
        command += ["-in", str(data), "-out", str(out)]
    else:
        digest = DEFAULT_ALGORITHM[kind].split("-")[1]
        command = ["openssl", "dgst", f"-{digest}", "-sign", str(pem), "-out", str(out), str(data)]
    subprocess.run(command, check=True, capture_output=True)
    return out.read_bytes(), DEFAULT_ALGORITHM[kind]


@pytest.mark.parametrize("kind", DEFAULT_ALGORITHM)
def test_openssl_cli_signature_verifies(kind, tmp_path):
    signature, algorithm = openssl_sign(kind, tmp_path)
    b64 = base64.b64encode(signature).decode()
    authorization = (
        f'Signature keyId="{KEY_ID}",algorithm="{algorithm}",headers="date",signature="{b64}"'
    )
    assert server_check(authorization, key(kind).public_key())
    later = {"Date": email.utils.formatdate(NOW + 60, usegmt=True)}
    assert not server_check(authorization, key(kind).public_key(), headers=later)


def test_our_rsa_signature_verifies_with_openssl_cli(tmp_path):
    """And the other way round: what ``sign`` makes is what openssl expects."""
    private = key("rsa")
    authorization = sign(private, KEY_ID, "GET", "/", HEADERS)
    signature = parse_authorization(authorization).signature
    (tmp_path / "sig").write_bytes(signature)
    (tmp_path / "data").write_bytes(f"date: {DATE}".encode())
    (tmp_path / "pub.pem").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig", "data"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Verified OK" in result.stdout


# --- parse_authorization -------------------------------------------------------------------


def test_parse_full_header():
    sig = base64.b64encode(b"\x01\x02\x03").decode()
    params = parse_authorization(
        f'Signature keyId="{KEY_ID}",algorithm="RSA-SHA256",'
        f'headers="(request-target) Date Host",signature="{sig}"'
    )
    assert params == SignatureParams(
        key_id=KEY_ID,
        algorithm="rsa-sha256",
        headers=("(request-target)", "date", "host"),
        signature=b"\x01\x02\x03",
    )


def test_parse_is_lenient_where_clients_differ():
    sig = base64.b64encode(b"\xff" * 10).decode()
    params = parse_authorization(
        f'  signature   keyId = "/a,b=c/keys/x=y,z" ,\talgorithm=ecdsa-sha256,'
        f' extensions="a=b, c", created="123",signature="{sig.rstrip("=")}"  '
    )
    assert params.key_id == "/a,b=c/keys/x=y,z"
    assert params.algorithm == "ecdsa-sha256"
    assert params.headers == ("date",)
    assert params.signature == b"\xff" * 10
    assert params.account_and_fingerprint() == ("a,b=c", "x=y,z")


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "scheme is not Signature"),
        ("Signature", "no signature parameters"),
        ("Signature   ", "no signature parameters"),
        ('Basic keyId="/a/keys/b"', "scheme is not Signature"),
        ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "scheme is not Signature"),
        ('Signatures keyId="/a/keys/b"', "scheme is not Signature"),
        ('Signature algorithm="rsa-sha256",signature="AAAA"', "missing keyId"),
        ('Signature keyId="",algorithm="rsa-sha256",signature="AAAA"', "missing keyId"),
        ('Signature keyId="/a/keys/b",signature="AAAA"', "missing algorithm"),
        ('Signature keyId="/a/keys/b",algorithm="rsa-sha256"', "missing signature"),
        ('Signature keyId="/a/keys/b",algorithm="rsa-sha256",signature=""', "missing signature"),
        ('Signature keyId="/a/keys/b",algorithm="hs2019",signature="AAAA"', "unsupported algo"),
        ('Signature keyId="/a/keys/b",algorithm="hmac-sha256",signature="AAAA"', "unsupported"),
        ('Signature keyId="/a/keys/b",algorithm="dsa-sha1",signature="AAAA"', "unsupported"),
        ('Signature keyId="/a/keys/b",algorithm="rsa-sha256",signature="A!AA"', "not base64"),
        ('Signature keyId="/a/keys/b",algorithm="rsa-sha256",signature="A"', "not base64"),
        ('Signature keyId="/a/keys/b",algorithm="rsa-sha256",signature="===="', "signature"),
        ('Signature keyId="/a/keys/b",algorithm="rsa-sha256",signature="AAAA', "unterminated"),
        ('Signature keyId="/a/keys/b" algorithm="rsa-sha256",signature="AAAA"', "comma"),
        ('Signature keyId="/a/keys/b",,algorithm="rsa-sha256",signature="AAAA"', "name="),
        ('Signature keyId="/a/keys/b",algorithm="rsa-sha256",signature="AAAA",', "name="),
        ('Signature keyId="/a",keyId="/b",algorithm="rsa-sha256",signature="AAAA"', "twice"),
        ('Signature keyid="/a",keyId="/b",algorithm="rsa-sha256",signature="AAAA"', "twice"),
        ('Signature keyId"/a/keys/b",algorithm="rsa-sha256",signature="AAAA"', "name="),
        ('Signature keyId="/a/keys/b"x,algorithm="rsa-sha256",signature="AAAA"', "comma"),
        (
            'Signature keyId="/a/keys/b",algorithm="rsa-sha256",headers=" ",signature="AAAA"',
            "headers parameter is empty",
        ),
    ],
)
def test_parse_errors(value, message):
    with pytest.raises(SignatureError, match=message):
        parse_authorization(value)


def test_parse_refuses_non_text():
    with pytest.raises(SignatureError):
        parse_authorization(None)  # type: ignore[arg-type]
    with pytest.raises(SignatureError):
        parse_authorization(b'Signature keyId="/a/keys/b"')  # type: ignore[arg-type]


def test_parse_only_raises_signature_error_on_mutations():
    rng = random.Random(5)
    good = sign(key("ecdsa-256"), KEY_ID, "GET", "/", HEADERS, header_names=("date", "host"))
    alphabet = ' ="=,\t\\/abcAZ09+-()\u00e9\0'
    parsed = 0
    for _ in range(3000):
        chars = list(good)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(chars))
            op = rng.randrange(3)
            if op == 0:
                del chars[pos]
            elif op == 1:
                chars.insert(pos, rng.choice(alphabet))
            else:
                chars[pos] = rng.choice(alphabet)
        try:
            params = parse_authorization("".join(chars))
        except SignatureError:
            continue
        parsed += 1
        assert params.algorithm in ALGORITHMS
        assert params.signature
        verify(params, b"date: x", key("ecdsa-256").public_key())
    assert parsed > 0


# --- keyId ----------------------------------------------------------------------------------


def with_key_id(key_id: str) -> SignatureParams:
    return SignatureParams(key_id, "rsa-sha256", ("date",), b"x")


def test_account_and_fingerprint():
    assert with_key_id(KEY_ID).account_and_fingerprint() == (
        "alice",
        "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99",
    )
    # a SHA256 fingerprint's base64 may hold "/"
    assert with_key_id("/bob/keys/SHA256:ab+/c").account_and_fingerprint() == (
        "bob",
        "SHA256:ab+/c",
    )


def test_sub_users_are_refused():
    with pytest.raises(SignatureError, match="sub-users are not supported"):
        with_key_id("/alice/users/bob/keys/aa:bb").account_and_fingerprint()


@pytest.mark.parametrize(
    "key_id",
    [
        "",
        "/",
        "alice/keys/aa",
        "/alice/keys/",
        "//keys/aa",
        "/alice/key/aa",
        "/alice/users/bob/keys/",
        "/alice/users/bob",
        "/alice/keys",
        "/alice/users/bob/key/aa",
        "aa:bb:cc",
    ],
)
def test_bad_key_ids(key_id):
    with pytest.raises(SignatureError):
        with_key_id(key_id).account_and_fingerprint()


# --- sign ------------------------------------------------------------------------------------


def test_sign_refuses_what_it_cannot_do():
    with pytest.raises(SignatureError, match="unsupported algorithm"):
        sign(key("rsa"), KEY_ID, "GET", "/", HEADERS, algorithm="rsa-md5")
    with pytest.raises(SignatureError, match="cannot sign"):
        sign(ed448.Ed448PrivateKey.generate(), KEY_ID, "GET", "/", HEADERS)
    with pytest.raises(SignatureError, match="cannot sign"):
        sign(ec.generate_private_key(ec.SECP224R1()), KEY_ID, "GET", "/", HEADERS)
    with pytest.raises(SignatureError, match="double quote"):
        sign(key("rsa"), '/a"/keys/b', "GET", "/", HEADERS)
    with pytest.raises(SignatureError, match="missing"):
        sign(key("rsa"), KEY_ID, "GET", "/", {"Host": "h"})


def test_sign_lowercases_header_names_and_algorithm():
    authorization = sign(
        key("rsa"),
        KEY_ID,
        "GET",
        "/",
        HEADERS,
        header_names=["Date", "Host"],
        algorithm="RSA-SHA512",
    )
    params = parse_authorization(authorization)
    assert (params.algorithm, params.headers) == ("rsa-sha512", ("date", "host"))
    assert server_check(authorization, key("rsa").public_key())


# --- check_date -------------------------------------------------------------------------------


def test_check_date_accepts_within_skew():
    check_date(DATE, NOW, 300)
    check_date(DATE, NOW + 300, 300)
    check_date(DATE, NOW - 300, 300)
    check_date(email.utils.formatdate(NOW, localtime=False), NOW, 1)  # "-0000" form
    check_date("Thu, 01 Jan 1970 00:00:00 GMT", 0.0, 0)


@pytest.mark.parametrize("offset", [301, -301, 86400 * 365, -86400 * 365])
def test_check_date_refuses_stale_or_future(offset):
    with pytest.raises(SignatureError, match="clock skew too large"):
        check_date(DATE, NOW + offset, 300)


def test_check_date_with_a_zone_offset():
    # 12:00 at +0200 is 10:00 GMT
    check_date("Tue, 15 Nov 1994 12:00:00 +0200", 784893600.0, 0)
    with pytest.raises(SignatureError, match="clock skew"):
        check_date("Tue, 15 Nov 1994 12:00:00 +0000", 784893600.0, 60)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "Sun, 99 Foo 2026 25:61:61 GMT",
        "Sun, 06 Nov 1994",
        "Sun, 06 Nov 99999 08:49:37 GMT",
        "1790000000",
        "\u00e9\0",
        None,
    ],
)
def test_check_date_refuses_non_dates(value):
    with pytest.raises(SignatureError, match="not an HTTP date"):
        check_date(value, NOW, 300)  # type: ignore[arg-type]


def test_check_date_refuses_nan_skew():
    with pytest.raises(SignatureError, match="clock skew"):
        check_date(DATE, float("nan"), 300)
