"""SSH public keys: fingerprints agree with the real ``ssh-keygen``; every kind of bad
key is refused with a clear SSHKeyError and never any other exception."""

from __future__ import annotations

import base64
import contextlib
import datetime
import random
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID

from sdcd.auth.sshkeys import (
    SSHKeyError,
    SSHPublicKey,
    from_public_key,
    parse_authorized_key,
    parse_authorized_keys,
)

# (ssh-keygen arguments, key type word, bits)
KINDS = {
    "rsa-2048": (["-t", "rsa", "-b", "2048"], "ssh-rsa", 2048),
    "rsa-3072": (["-t", "rsa", "-b", "3072"], "ssh-rsa", 3072),
    "ecdsa-256": (["-t", "ecdsa", "-b", "256"], "ecdsa-sha2-nistp256", 256),
    "ecdsa-384": (["-t", "ecdsa", "-b", "384"], "ecdsa-sha2-nistp384", 384),
    "ecdsa-521": (["-t", "ecdsa", "-b", "521"], "ecdsa-sha2-nistp521", 521),
    "ed25519": (["-t", "ed25519"], "ssh-ed25519", 256),
}
COMMENT = "alice@laptop with spaces"


def ssh_keygen(*args: str) -> str:
    return subprocess.run(["ssh-keygen", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def keydir(tmp_path_factory) -> Path:
    """One real ssh-keygen key of every kind, made once for the module."""
    directory = tmp_path_factory.mktemp("sshkeys")
    for kind, (args, _, _) in KINDS.items():
        ssh_keygen("-q", *args, "-N", "", "-C", COMMENT, "-f", str(directory / kind))
    return directory


def pub_line(keydir: Path, kind: str) -> str:
    return (keydir / f"{kind}.pub").read_text().strip()


def private_key(keydir: Path, kind: str):
    return serialization.load_ssh_private_key((keydir / kind).read_bytes(), password=None)


def keygen_fingerprint(keydir: Path, kind: str, *hash_args: str) -> tuple[int, str]:
    """(bits, fingerprint) as ``ssh-keygen -l`` prints them."""
    fields = ssh_keygen(*hash_args, "-lf", str(keydir / f"{kind}.pub")).split()
    return int(fields[0]), fields[1]


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def line_for(key_type: str, blob: bytes, comment: str = "") -> str:
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}".strip()


def openssh_of(public_key) -> str:
    return public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def self_signed_cert(key) -> x509.Certificate:
    """As the setup helper makes it: CN=<account>, self-signed with the SSH key."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )


# --- parsing real keys ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fingerprints_agree_with_ssh_keygen(keydir, kind):
    key = parse_authorized_key(pub_line(keydir, kind))
    bits, md5 = keygen_fingerprint(keydir, kind, "-E", "md5")
    _, sha256 = keygen_fingerprint(keydir, kind)
    assert md5 == "MD5:" + key.md5_fingerprint
    assert key.sha256_fingerprint == sha256
    assert key.bits == bits == KINDS[kind][2]


@pytest.mark.parametrize("kind", KINDS)
def test_fields_and_openssh_round_trip(keydir, kind):
    line = pub_line(keydir, kind)
    key = parse_authorized_key(line)
    assert key.key_type == KINDS[kind][1]
    assert key.comment == COMMENT
    assert key.openssh == line
    assert base64.b64encode(key.blob).decode() == line.split()[1]
    assert parse_authorized_key(key.openssh) == key


@pytest.mark.parametrize("kind", KINDS)
def test_public_key_is_the_private_keys_half(keydir, kind):
    key = parse_authorized_key(pub_line(keydir, kind))
    assert openssh_of(key.public_key()) == " ".join(pub_line(keydir, kind).split()[:2])


def test_md5_fingerprint_format(keydir):
    fingerprint = parse_authorized_key(pub_line(keydir, "ed25519")).md5_fingerprint
    assert len(fingerprint) == 47
    assert all(len(part) == 2 for part in fingerprint.split(":"))
    assert fingerprint == fingerprint.lower()


def test_no_comment(keydir):
    line = " ".join(pub_line(keydir, "ed25519").split()[:2])
    key = parse_authorized_key(line)
    assert key.comment == ""
    assert key.openssh == line


def test_surrounding_and_inner_whitespace(keydir):
    key_type, data = pub_line(keydir, "ecdsa-256").split()[:2]
    key = parse_authorized_key(f"  \t{key_type}\t {data}   a  b   \n")
    assert key.comment == "a  b"
    assert key.key_type == key_type


@pytest.mark.parametrize(
    "options",
    [
        "no-pty",
        'command="echo a b",no-pty',
        'from="10.0.0.0/8,192.168.1.1",command="ls \\"x y\\"",no-agent-forwarding',
        'environment="A=ssh-rsa AAAA"',
    ],
)
def test_options_are_skipped(keydir, options):
    line = pub_line(keydir, "rsa-2048")
    key = parse_authorized_key(f"{options} {line}")
    assert key == parse_authorized_key(line)
    assert key.comment == COMMENT


def test_several_keys_with_comments_and_blank_lines(keydir):
    text = "\n".join(
        [
            "# my keys",
            "",
            pub_line(keydir, "rsa-2048"),
            "   ",
            "  # old laptop",
            f"no-pty {pub_line(keydir, 'ed25519')}",
        ]
    )
    keys = parse_authorized_keys(text + "\n")
    assert [k.key_type for k in keys] == ["ssh-rsa", "ssh-ed25519"]
    assert parse_authorized_keys("") == []
    assert parse_authorized_keys("# nothing\n\n") == []


def test_several_keys_error_names_the_line(keydir):
    text = f"# keys\n{pub_line(keydir, 'ed25519')}\n\nssh-rsa !!!!\n"
    with pytest.raises(SSHKeyError, match=r"^line 4: malformed SSH public key: bad base64$"):
        parse_authorized_keys(text)


# --- fingerprint_matches ---------------------------------------------------------------


def test_fingerprint_matches_every_spelling(keydir):
    key = parse_authorized_key(pub_line(keydir, "rsa-2048"))
    md5, sha = key.md5_fingerprint, key.sha256_fingerprint
    spellings = [
        md5,
        md5.upper(),
        md5.replace(":", ""),
        md5.replace(":", "").upper(),
        "MD5:" + md5,
        "md5:" + md5.replace(":", ""),
        f"  {md5} ",
        sha,
        sha + "=",
        "sha256:" + sha[7:],
    ]
    for text in spellings:
        assert key.fingerprint_matches(text), text


def test_fingerprint_does_not_match_others(keydir):
    key = parse_authorized_key(pub_line(keydir, "rsa-2048"))
    other = parse_authorized_key(pub_line(keydir, "rsa-3072"))
    md5, sha = key.md5_fingerprint, key.sha256_fingerprint
    for text in [
        other.md5_fingerprint,
        other.sha256_fingerprint,
        "",
        "MD5:",
        "SHA256:",
        sha[7:],  # a SHA256 fingerprint needs its prefix
        "SHA256:" + sha[7:].lower(),  # base64 is case-sensitive
        md5[:-1],
        md5 + "0",
        "SHA256:" + md5,
        "MD5:" + sha,
    ]:
        assert not key.fingerprint_matches(text), text


# --- matches ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_matches_the_key_of_a_certificate_made_from_it(keydir, kind):
    key = parse_authorized_key(pub_line(keydir, kind))
    cert = self_signed_cert(private_key(keydir, kind))
    assert key.matches(cert.public_key())


@pytest.mark.parametrize("kind", KINDS)
def test_does_not_match_another_key(keydir, kind):
    key = parse_authorized_key(pub_line(keydir, kind))
    for other in KINDS:
        if other != kind:
            assert not key.matches(private_key(keydir, other).public_key())
    same_type_other = {
        "ssh-rsa": rsa.generate_private_key(65537, 2048),
        "ecdsa-sha2-nistp256": ec.generate_private_key(ec.SECP256R1()),
        "ecdsa-sha2-nistp384": ec.generate_private_key(ec.SECP384R1()),
        "ecdsa-sha2-nistp521": ec.generate_private_key(ec.SECP521R1()),
        "ssh-ed25519": ed25519.Ed25519PrivateKey.generate(),
    }[key.key_type]
    assert not key.matches(self_signed_cert(same_type_other).public_key())


def test_matches_is_false_for_non_keys(keydir):
    key = parse_authorized_key(pub_line(keydir, "ed25519"))
    assert not key.matches(None)
    assert not key.matches("ssh-ed25519 AAAA")
    assert not key.matches(x25519.X25519PrivateKey.generate().public_key())


# --- from_public_key ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_from_public_key_equals_parsed_line(keydir, kind):
    public = private_key(keydir, kind).public_key()
    key = from_public_key(public, comment=COMMENT)
    assert key == parse_authorized_key(pub_line(keydir, kind))
    assert from_public_key(public).comment == ""
    assert key.matches(public)


@pytest.mark.parametrize(
    "public, message",
    [
        (lambda: ec.generate_private_key(ec.SECP224R1()).public_key(), "unsupported elliptic"),
        (lambda: ec.generate_private_key(ec.SECP256K1()).public_key(), "unsupported elliptic"),
        (lambda: x25519.X25519PrivateKey.generate().public_key(), "unsupported key"),
        (lambda: ed448.Ed448PrivateKey.generate().public_key(), "unsupported key"),
        (lambda: rsa.generate_private_key(65537, 1024).public_key(), "at least 2048 bits"),
        (lambda: "not a key", "unsupported key"),
    ],
)
def test_from_public_key_refuses(public, message):
    with pytest.raises(SSHKeyError, match=message):
        from_public_key(public())


def test_from_public_key_refuses_multiline_comment():
    with pytest.raises(SSHKeyError, match="single line"):
        from_public_key(ed25519.Ed25519PrivateKey.generate().public_key(), "a\nb")


# --- rejections ----------------------------------------------------------------------


def reject(line: str, message: str) -> None:
    with pytest.raises(SSHKeyError) as info:
        parse_authorized_key(line)
    assert type(info.value) is SSHKeyError
    assert message in str(info.value), str(info.value)


def test_rejects_bad_base64(keydir):
    key_type, data = pub_line(keydir, "ed25519").split()[:2]
    reject(f"{key_type} {data[:-3]}*{data[-2:]}", "malformed SSH public key: bad base64")
    reject(f"{key_type} {data[:-1]}", "malformed SSH public key: bad base64")
    reject(f"{key_type} AAAA\u00e9AAA", "malformed SSH public key: bad base64")


def test_rejects_truncated_blob(keydir):
    key_type, data = pub_line(keydir, "rsa-2048").split()[:2]
    blob = base64.b64decode(data)
    for cut in (2, 8, 30, len(blob) - 1):
        with pytest.raises(SSHKeyError, match="malformed SSH public key"):
            parse_authorized_key(line_for(key_type, blob[:cut]))
    reject(line_for(key_type, blob[:2]), "truncated key data")
    reject(line_for(key_type, blob[:8]), "truncated key data")


def test_rejects_trailing_data(keydir):
    key_type, data = pub_line(keydir, "ed25519").split()[:2]
    reject(line_for(key_type, base64.b64decode(data) + b"\0"), "malformed SSH public key")


def test_rejects_type_mismatch(keydir):
    ed_data = pub_line(keydir, "ed25519").split()[1]
    reject(f"ssh-rsa {ed_data}", "ssh-rsa does not match the key data (ssh-ed25519)")
    p256_data = pub_line(keydir, "ecdsa-256").split()[1]
    reject(f"ecdsa-sha2-nistp384 {p256_data}", "does not match the key data")


def test_rejects_curve_name_mismatch_inside_blob(keydir):
    blob = base64.b64decode(pub_line(keydir, "ecdsa-256").split()[1])
    point = blob[-65:]
    forged = ssh_string(b"ecdsa-sha2-nistp256") + ssh_string(b"nistp384") + ssh_string(point)
    reject(line_for("ecdsa-sha2-nistp256", forged), "malformed SSH public key")


def test_rejects_compressed_ec_point():
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    blob = ssh_string(b"ecdsa-sha2-nistp256") + ssh_string(b"nistp256") + ssh_string(point)
    reject(line_for("ecdsa-sha2-nistp256", blob), "malformed SSH public key")


def test_rejects_non_canonical_rsa():
    numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    e = ssh_string(b"\x00" + numbers.e.to_bytes(3, "big"))  # needless leading zero
    n = ssh_string(b"\x00" + numbers.n.to_bytes(256, "big"))
    reject(line_for("ssh-rsa", ssh_string(b"ssh-rsa") + e + n), "non-canonical key data")


def test_rejects_dsa():
    blob = ssh_string(b"ssh-dss") + b"".join(ssh_string(b"\x01" * 20) for _ in range(4))
    reject(line_for("ssh-dss", blob, "old"), "unsupported SSH key type ssh-dss")
    reject(line_for("ssh-dss", blob, "old"), "use RSA, ECDSA or Ed25519")


def test_rejects_security_key():
    blob = (
        ssh_string(b"sk-ssh-ed25519@openssh.com")
        + ssh_string(bytes(range(32)))
        + ssh_string(b"ssh:")
    )
    reject(line_for("sk-ssh-ed25519@openssh.com", blob, "yubikey"), "security-key")
    reject(f"no-touch-required {line_for('sk-ecdsa-sha2-nistp256@openssh.com', blob)}", "sk-")


def test_rejects_certificate(keydir, tmp_path):
    ca, user = tmp_path / "ca", tmp_path / "user"
    ssh_keygen("-q", "-t", "ed25519", "-N", "", "-f", str(ca))
    ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", "cert me", "-f", str(user))
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "alice", "-n", "alice", f"{user}.pub"],
        check=True,
        capture_output=True,
    )
    line = (tmp_path / "user-cert.pub").read_text().strip()
    assert line.startswith("ssh-ed25519-cert-v01@openssh.com ")
    reject(line, "SSH certificates (ssh-ed25519-cert-v01@openssh.com) are not supported")
    reject("ssh-rsa-cert-v01@openssh.com AAAA", "certificates")


def test_rejects_small_rsa():
    small = rsa.generate_private_key(65537, 1024)
    reject(openssh_of(small.public_key()) + " small", "RSA keys must be at least 2048 bits")


@pytest.mark.parametrize(
    "line, message",
    [
        ("", "empty SSH public key"),
        ("   \n\t", "empty SSH public key"),
        ("hello", 'expected "<type> <base64 key> [comment]"'),
        ("hello world", "unsupported SSH key type world"),
        ("ssh-rsa", "no key data after the key type"),
        ("ssh-ed25519", "no key data"),
        ("ssh-foo AAAA", "unsupported SSH key type ssh-foo"),
        ("rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ", "unsupported SSH key type"),
        ("ssh-rsa AAAA", "malformed SSH public key"),
        ("ssh-rsa ====", "malformed SSH public key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA", "malformed SSH public key"),
        ('command="unterminated ssh-rsa AAAA', "unterminated quote"),
        ("ssh-rsa AAAA\nssh-rsa AAAA", "single line"),
        ("ssh-rsa AAAA\0", "single line"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "unsupported SSH key type"),
        ("\u00e9\u00e9 \u2603 \U0001f600", "unsupported SSH key type"),
    ],
)
def test_rejects_garbage(line, message):
    reject(line, message)


def test_rejects_a_private_key_file(keydir):
    with pytest.raises(SSHKeyError):
        parse_authorized_keys((keydir / "ed25519").read_text())


def test_rejects_non_text():
    with pytest.raises(SSHKeyError):
        parse_authorized_key(b"ssh-rsa AAAA")  # type: ignore[arg-type]
    with pytest.raises(SSHKeyError):
        parse_authorized_keys(None)  # type: ignore[arg-type]


def mutations(line: str, rng: random.Random):
    alphabet = 'AZaz09+/= \t"\\,-@.:#\n\0\u00e9'
    for _ in range(400):
        chars = list(line)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(chars) + 1)
            if op == 0 and chars:
                del chars[min(pos, len(chars) - 1)]
            elif op == 1:
                chars.insert(pos, rng.choice(alphabet))
            elif chars:
                chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
        yield "".join(chars)
    for _ in range(100):
        yield line[: rng.randrange(len(line))]


@pytest.mark.parametrize("kind", KINDS)
def test_only_sshkeyerror_on_mutated_lines(keydir, kind):
    rng = random.Random(kind)
    line = pub_line(keydir, kind)
    for mutated in mutations(line, rng):
        try:
            key = parse_authorized_key(mutated)
        except SSHKeyError:
            continue
        # what survives must still be a sound key
        assert key.key_type == KINDS[kind][1]
        key.public_key()


def test_only_sshkeyerror_on_mutated_blobs(keydir):
    rng = random.Random(7)
    for kind in KINDS:
        key_type, data = pub_line(keydir, kind).split()[:2]
        blob = bytearray(base64.b64decode(data))
        for _ in range(200):
            mutated = bytearray(blob)
            for _ in range(rng.randint(1, 3)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            with contextlib.suppress(SSHKeyError):  # anything else fails the test
                parse_authorized_key(line_for(key_type, bytes(mutated)))


def test_only_sshkeyerror_on_random_bytes():
    rng = random.Random(11)
    for key_type in ("ssh-rsa", "ecdsa-sha2-nistp256", "ssh-ed25519"):
        for size in range(0, 80, 3):
            blob = ssh_string(key_type.encode()) + rng.randbytes(size)
            with pytest.raises(SSHKeyError):
                parse_authorized_key(line_for(key_type, blob))


def test_directly_built_key_still_answers(keydir):
    """SSHPublicKey is plain data; properties that do not need the key still work."""
    blob = base64.b64decode(pub_line(keydir, "ed25519").split()[1])
    key = SSHPublicKey("ssh-ed25519", blob)
    assert key == parse_authorized_key(f"ssh-ed25519 {base64.b64encode(blob).decode()}")
    with pytest.raises(AttributeError):
        key.comment = "x"  # type: ignore[misc]
