"""tools/sdc-docker-setup.sh on its own, against a fake CloudAPI: the requests it makes
(HTTP Signatures checked with the openssl CLI), the profile it writes, and its errors.

Needs nothing but bash, curl, openssl and ssh-keygen (no sdcd, no Redis, no docker)."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HELPER = REPO / "tools" / "sdc-docker-setup.sh"

# ssh-keygen arguments for each kind of key
KINDS = {
    "rsa": ["-t", "rsa", "-b", "2048"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "ed25519": ["-t", "ed25519"],
}
# the HTTP Signature algorithm for each kind of SSH public key
ALGORITHMS = {
    "ssh-rsa": "rsa-sha256",
    "ecdsa-sha2-nistp256": "ecdsa-sha256",
    "ecdsa-sha2-nistp384": "ecdsa-sha384",
    "ecdsa-sha2-nistp521": "ecdsa-sha512",
    "ssh-ed25519": "ed25519-sha512",
}
DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" \d{4} \d\d:\d\d:\d\d GMT"
)
AUTH_RE = re.compile(
    r'Signature keyId="([^"]+)",algorithm="([^"]+)",headers="date",signature="([A-Za-z0-9+/=]+)"'
)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("bash", "curl", "openssl", "ssh-keygen")),
    reason="needs bash, curl, openssl and ssh-keygen",
)


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, **kwargs)


def md5_fingerprint(pub: Path) -> str:
    out = run("ssh-keygen", "-E", "md5", "-l", "-f", pub, text=True).stdout
    return out.split()[1].removeprefix("MD5:")


def spki_pem(pub: Path) -> bytes:
    """The SubjectPublicKeyInfo PEM of an OpenSSH public key, made independently of the
    helper (ssh-keygen cannot export Ed25519 keys, whose SPKI is a fixed prefix + key)."""
    kind, blob = pub.read_text().split()[:2]
    if kind != "ssh-ed25519":
        return run("ssh-keygen", "-e", "-m", "PKCS8", "-f", pub).stdout
    der = bytes.fromhex("302a300506032b6570032100") + base64.b64decode(blob)[-32:]
    return b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END PUBLIC KEY-----\n"


def der_of(pem: bytes, *, cert: bool = False) -> bytes:
    """The DER SubjectPublicKeyInfo of a PEM public key or of a certificate's key."""
    if cert:
        pem = run("openssl", "x509", "-noout", "-pubkey", input=pem).stdout
    return run("openssl", "pkey", "-pubin", "-outform", "DER", input=pem).stdout


def verify_signature(pub: Path, algorithm: str, signature: bytes, data: bytes, tmp: Path) -> bool:
    (tmp / "pub.pem").write_bytes(spki_pem(pub))
    (tmp / "sig").write_bytes(signature)
    (tmp / "data").write_bytes(data)
    if algorithm == "ed25519-sha512":
        cmd = ["openssl", "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", "pub.pem"]
        cmd += ["-in", "data", "-sigfile", "sig"]
    else:
        digest = "-sha" + algorithm.rsplit("sha", 1)[1]
        cmd = ["openssl", "dgst", digest, "-verify", "pub.pem", "-signature", "sig", "data"]
    return subprocess.run(cmd, cwd=tmp, capture_output=True).returncode == 0


def make_key(where: Path, kind: str, *extra: str) -> Path:
    path = where / f"id_{kind}"
    run("ssh-keygen", "-q", *KINDS[kind], "-N", "", "-C", f"{kind}@test", *extra, "-f", path)
    return path


def make_cert(where: Path, name: str) -> tuple[Path, Path]:
    key, cert = where / f"{name}.key", where / f"{name}.pem"
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """One OpenSSH-format key of each kind, plus PEM variants."""
    where = tmp_path_factory.mktemp("keys")
    made = {kind: make_key(where, kind) for kind in KINDS}
    pem = where / "pem"
    pem.mkdir()
    for kind in ("rsa", "ecdsa384"):  # PKCS#1 / SEC1, as ssh-keygen -m PEM writes them
        made[f"pem-{kind}"] = make_key(pem, kind, "-m", "PEM")
    # PKCS#8 from openssl, with the OpenSSH public key made by converting the helper-free way
    for kind, args in (("rsa", ["-algorithm", "rsa"]), ("ec", ["-algorithm", "ec", "-pkeyopt",
                       "ec_paramgen_curve:P-256"])):  # fmt: skip
        path = pem / f"pkcs8_{kind}"
        run("openssl", "genpkey", *args, "-out", path)
        path.chmod(0o600)
        Path(f"{path}.pub").write_bytes(run("ssh-keygen", "-y", "-f", path).stdout)
        made[f"pkcs8-{kind}"] = path
    return made


class FakeCloud:
    """CloudAPI (`/--ping`, `/<login>`, `/<login>/services`) and the Docker endpoint's
    `/ca.pem` on one HTTPS port. Every request is recorded; a signed request is accepted
    only if its signature verifies against the account's key (with the openssl CLI)."""

    def __init__(self, where: Path, name: str = "cloud"):
        self.where = where
        self.cert, self.key = make_cert(where, name)
        self.ca_pem = self.cert.read_bytes()
        self.accounts: dict[str, list[Path]] = {}
        self.requests: list[dict] = []
        self.failures: list[str] = []
        self.docker: str | None = None
        self.services_error: tuple[int, str] | None = None
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code: int, body: bytes, ctype: str = "application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                cloud.requests.append({"path": self.path, "headers": dict(self.headers)})
                if self.path == "/--ping":
                    ping = {"ping": "pong", "cloudapi": {"versions": ["9.0.0"]}}
                    return self.reply(200, json.dumps(ping).encode())
                if self.path == "/ca.pem":
                    return self.reply(200, cloud.ca_pem, "application/x-pem-file")
                match = re.fullmatch(r"/([^/]+)(/services)?", self.path)
                if not match:
                    return self.reply(404, b'{"code": "ResourceNotFound", "message": "no"}')
                problem = cloud.check_signature(match.group(1), self.headers)
                if problem:
                    cloud.failures.append(problem)
                    body = {"code": "InvalidCredentials", "message": "Invalid key"}
                    return self.reply(401, json.dumps(body).encode())
                if not match.group(2):
                    return self.reply(200, json.dumps({"login": match.group(1)}).encode())
                if cloud.services_error:
                    code, message = cloud.services_error
                    return self.reply(code, json.dumps({"code": "X", "message": message}).encode())
                services = {"cloudapi": "https://cloudapi.example"}
                if cloud.docker:
                    services["docker"] = cloud.docker
                return self.reply(200, json.dumps(services).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://localhost:{self.port}"
        self.docker = f"tcp://localhost:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def check_signature(self, login: str, headers) -> str | None:
        date, auth = headers.get("Date", ""), headers.get("Authorization", "")
        match = AUTH_RE.fullmatch(auth)
        if not match:
            return f"malformed Authorization {auth!r}"
        if not DATE_RE.fullmatch(date):
            return f"malformed Date {date!r}"
        if abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) > 300:
            return f"Date {date!r} is off"
        key_id, algorithm, signature = match.groups()
        for pub in self.accounts.get(login, []):
            if key_id == f"/{login}/keys/{md5_fingerprint(pub)}":
                wanted = ALGORITHMS[pub.read_text().split()[0]]
                if algorithm != wanted:
                    return f"algorithm {algorithm} for a {wanted} key"
                scratch = self.where / f"verify-{threading.get_ident()}"
                scratch.mkdir(exist_ok=True)
                data = f"date: {date}".encode()
                if verify_signature(pub, algorithm, base64.b64decode(signature), data, scratch):
                    return None
                return "bad signature"
        return f"unknown keyId {key_id}"

    def register(self, login: str, key: Path) -> None:
        registered = self.accounts.setdefault(login, [])
        pub = self.where / f"{login}_{len(registered)}.pub"
        shutil.copy(f"{key}.pub", pub)
        registered.append(pub)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cloud(tmp_path):
    where = tmp_path / "cloud"
    where.mkdir()
    fake = FakeCloud(where)
    yield fake
    fake.close()


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def helper(home: Path, *args: str | Path, env: dict | None = None, **kwargs):
    """Run the helper as a user would, with HOME and TMPDIR of the test's own."""
    tmpdir = home.parent / "helper-tmp"
    tmpdir.mkdir(exist_ok=True)
    dropped = ("DOCKER_", "SDC_", "CURL_CA_BUNDLE", "SSL_CERT_")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    environ.update(HOME=str(home), TMPDIR=str(tmpdir), **(env or {}))
    result = subprocess.run(
        ["bash", str(HELPER), *map(str, args)],
        capture_output=True,
        text=True,
        env=environ,
        stdin=subprocess.DEVNULL,
        timeout=120,
        **kwargs,
    )
    assert list(tmpdir.iterdir()) == [], "the helper left temporary files"
    assert "Traceback" not in result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- arguments -------------------------------------------------------------------------


def test_help_and_version(home):
    for flag in ("-h", "--help"):
        result = helper(home, flag)
        assert result.returncode == 0
        assert "CLOUDAPI_URL ACCOUNT SSH_PRIVATE_KEY_PATH" in result.stdout
        for option in ("-k", "-f", "-p PROFILE", "-s", "-q"):
            assert option in result.stdout
    for flag in ("-V", "--version"):
        result = helper(home, flag)
        assert result.returncode == 0
        assert re.fullmatch(r"sdc-docker-setup\.sh \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "expected CLOUDAPI_URL ACCOUNT SSH_PRIVATE_KEY_PATH"),
        (["https://x", "acct"], "expected CLOUDAPI_URL ACCOUNT SSH_PRIVATE_KEY_PATH"),
        (["https://x", "acct", "k", "extra"], "expected CLOUDAPI_URL"),
        (["-z", "https://x", "acct", "k"], "unknown option -z"),
        (["-p"], "option -p needs a value"),
        (["ftp://x", "acct", "KEY"], "CLOUDAPI_URL must be an https:// URL"),
        (["https://x", "bad acct", "KEY"], "invalid account name"),
        (["https://x", "a/b", "KEY"], "invalid account name"),
        (["-p", "../x", "https://x", "acct", "KEY"], "invalid profile name"),
        (["https://x", "acct", "/no/such/key"], "does not exist"),
    ],
)
def test_usage_errors(home, keys, args, message):
    args = [str(keys["ed25519"]) if a == "KEY" else a for a in args]
    result = helper(home, *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""
    assert not (home / ".sdc").exists()


def test_public_key_instead_of_private(home, keys):
    result = helper(home, "-k", "https://localhost:9", "acct", f"{keys['ed25519']}.pub")
    assert result.returncode == 1
    assert "is a public key" in result.stderr


def test_not_a_key(home, tmp_path):
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    result = helper(home, "-k", "https://localhost:9", "acct", junk)
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "private key" in result.stderr


@pytest.mark.parametrize("fmt", ["openssh", "pem"])
def test_passphrase_protected_key_without_a_terminal(home, tmp_path, fmt):
    key = tmp_path / f"secret_{fmt}"
    fmt_args = ["-m", "PEM"] if fmt == "pem" else []
    run("ssh-keygen", "-q", "-t", "ecdsa", "-N", "sekrit", *fmt_args, "-f", key)
    result = helper(home, "-k", "https://localhost:9", "acct", key)
    assert result.returncode == 1
    assert "passphrase-protected" in result.stderr
    assert not (home / ".sdc").exists()


def test_unsupported_key_type(home, tmp_path):
    key = tmp_path / "id_dsa"
    made = subprocess.run(
        ["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", str(key)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("this ssh-keygen cannot make DSA keys")
    result = helper(home, "-k", "https://localhost:9", "acct", key)
    assert result.returncode == 1
    assert "unsupported key type" in result.stderr


# --- against the fake CloudAPI ---------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["rsa", "ecdsa256", "ecdsa384", "ecdsa521", "ed25519", "pem-rsa", "pem-ecdsa384",
     "pkcs8-rsa", "pkcs8-ec"],
)  # fmt: skip
def test_setup_with_each_key_kind(cloud, home, keys, kind):
    key = keys[kind]
    login = "u" + kind.replace("-", "")
    cloud.register(login, key)
    result = helper(home, "-k", cloud.url, login, key)
    assert result.returncode == 0, result.stderr
    assert cloud.failures == []
    assert cloud.paths() == ["/--ping", f"/{login}", f"/{login}/services", "/ca.pem"]

    fingerprint = md5_fingerprint(Path(f"{key}.pub"))
    for request in cloud.requests[1:3]:
        assert f'keyId="/{login}/keys/{fingerprint}"' in request["headers"]["Authorization"]

    profile = home / ".sdc" / "docker" / login
    assert f"source {profile}/env.sh" in result.stdout
    assert mode(profile) == 0o700
    assert mode(profile / "key.pem") == 0o600
    for name in ("cert.pem", "ca.pem", "env.sh"):
        assert mode(profile / name) == 0o644
    assert (profile / "ca.pem").read_bytes() == cloud.ca_pem

    # key.pem is the same key, in a PEM form openssl reads; cert.pem is self-signed by it
    spki = der_of(spki_pem(Path(f"{key}.pub")))
    key_pub = run("openssl", "pkey", "-in", profile / "key.pem", "-pubout").stdout
    assert der_of(key_pub) == spki
    cert = (profile / "cert.pem").read_bytes()
    assert der_of(cert, cert=True) == spki
    subject = run("openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", input=cert)
    assert subject.stdout.decode().strip() == f"subject=CN={login}"
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", profile / "cert.pem", profile / "cert.pem"],
        capture_output=True,
    )
    assert verified.returncode == 0, verified.stderr
    for days, expires in ((364, False), (366, True)):  # valid for 365 days
        check = ["openssl", "x509", "-noout", "-checkend", str(days * 86400)]
        assert subprocess.run(check, input=cert, capture_output=True).returncode == expires

    env_sh = (profile / "env.sh").read_text()
    assert f"export DOCKER_CERT_PATH={profile}\n" in env_sh
    assert f"export DOCKER_HOST=tcp://localhost:{cloud.port}\n" in env_sh
    assert "export DOCKER_TLS_VERIFY=1\n" in env_sh
    assert "export DOCKER_CLIENT_TIMEOUT=300\n" in env_sh
    assert "export COMPOSE_HTTP_TIMEOUT=300\n" in env_sh
    assert "SDC_" not in env_sh
    assert "export DOCKER_HOST=" in result.stdout


def test_ip_endpoint_sdc_vars_and_profile(cloud, home, keys):
    cloud.register("jill", keys["ed25519"])
    cloud.docker = f"tcp://127.0.0.1:{cloud.port}"
    result = helper(home, "-k", "-s", "-p", "other", cloud.url, "jill", keys["ed25519"])
    assert result.returncode == 0, result.stderr
    assert not (home / ".sdc" / "docker" / "jill").exists()
    env_sh = (home / ".sdc" / "docker" / "other" / "env.sh").read_text()
    assert "DOCKER_TLS_VERIFY=1" not in env_sh
    assert "unset DOCKER_TLS_VERIFY\n" in env_sh
    assert 'alias docker="docker --tls"\n' in env_sh
    assert f"export DOCKER_HOST=tcp://127.0.0.1:{cloud.port}\n" in env_sh
    fingerprint = md5_fingerprint(Path(f"{keys['ed25519']}.pub"))
    assert f"export SDC_URL={cloud.url}\n" in env_sh
    assert "export SDC_ACCOUNT=jill\n" in env_sh
    assert f"export SDC_KEY_ID={fingerprint}\n" in env_sh
    assert "export SDC_TESTING=1\n" in env_sh
    # sourcing env.sh in bash gives the variables and the alias
    shown = subprocess.run(
        ["bash", "-c", f'source "{home}/.sdc/docker/other/env.sh"; echo "$SDC_ACCOUNT"; alias'],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "DOCKER_TLS_VERIFY": "1"},
    )
    assert shown.stdout.startswith("jill\n") and "docker --tls" in shown.stdout


def test_quiet_force_and_rerun(cloud, home, keys):
    cloud.register("jill", keys["rsa"])
    first = helper(home, "-k", "-q", cloud.url, "jill", keys["rsa"])
    assert first.returncode == 0, first.stderr
    assert first.stdout == "" and first.stderr == ""
    profile = home / ".sdc" / "docker" / "jill"
    old_cert = (profile / "cert.pem").read_bytes()

    cloud.requests.clear()
    cloud.register("jill", keys["ecdsa256"])
    second = helper(home, "-k", "-f", "-q", cloud.url, "jill", keys["ecdsa256"])
    assert second.returncode == 0, second.stderr
    assert cloud.paths() == ["/jill/services", "/ca.pem"]  # -f: no ping, no account check
    assert (profile / "cert.pem").read_bytes() != old_cert
    cert_key = der_of((profile / "cert.pem").read_bytes(), cert=True)
    assert cert_key == der_of(spki_pem(Path(f"{keys['ecdsa256']}.pub")))
    assert mode(profile / "key.pem") == 0o600


def test_unregistered_key_is_invalid_credentials(cloud, home, keys):
    cloud.register("jill", keys["rsa"])
    result = helper(home, "-k", cloud.url, "jill", keys["ed25519"])
    assert result.returncode == 1
    assert "invalid credentials" in result.stderr
    assert "jill" in result.stderr
    assert md5_fingerprint(Path(f"{keys['ed25519']}.pub")) in result.stderr
    assert "/jill/services" not in cloud.paths()
    assert not (home / ".sdc").exists()


def test_services_error_and_no_docker(cloud, home, keys):
    cloud.register("jill", keys["ecdsa384"])
    cloud.services_error = (503, 'docker is "resting"')
    result = helper(home, "-k", cloud.url, "jill", keys["ecdsa384"])
    assert result.returncode == 1
    assert 'docker is "resting"' in result.stderr and "503" in result.stderr

    cloud.services_error = None
    cloud.docker = None
    result = helper(home, "-k", cloud.url, "jill", keys["ecdsa384"])
    assert result.returncode == 1
    assert "no 'docker' service" in result.stderr
    assert not (home / ".sdc" / "docker" / "jill" / "env.sh").exists()


def test_unreachable_cloudapi(home, keys):
    for flags in (["-k"], ["-k", "-f"], ["-q", "-k"]):
        result = helper(home, *flags, "https://127.0.0.1:9", "acct", keys["ed25519"])
        assert result.returncode == 1
        assert "could not reach CloudAPI at https://127.0.0.1:9" in result.stderr
    assert result.stdout == ""
    assert not (home / ".sdc").exists()


def test_untrusted_cloudapi_needs_k(cloud, home, keys):
    cloud.register("jill", keys["ed25519"])
    result = helper(home, cloud.url, "jill", keys["ed25519"])
    assert result.returncode == 1
    assert "could not reach CloudAPI" in result.stderr and "-k" in result.stderr
    assert cloud.requests == []


def test_ca_download_falls_back_to_insecure(cloud, home, keys, tmp_path):
    """Without -k CloudAPI is verified, but the Docker endpoint's CA is what is being
    fetched, so its download may not be verifiable (as with SDC's helper)."""
    docker_side = tmp_path / "docker"
    docker_side.mkdir()
    endpoint = FakeCloud(docker_side, "docker-ca")
    try:
        cloud.register("jill", keys["ed25519"])
        cloud.docker = f"tcp://localhost:{endpoint.port}"
        result = helper(
            home, cloud.url, "jill", keys["ed25519"], env={"CURL_CA_BUNDLE": str(cloud.cert)}
        )
        assert result.returncode == 0, result.stderr
        ca = (home / ".sdc" / "docker" / "jill" / "ca.pem").read_bytes()
        assert ca == endpoint.ca_pem != cloud.ca_pem
        assert endpoint.paths() == ["/ca.pem"]
    finally:
        endpoint.close()
