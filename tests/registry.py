"""A real Docker registry (Debian's ``docker-registry``, distribution 2.8) on loopback.

    reg = Registry()                                   # anonymous
    reg = Registry("htpasswd", users={"alice": "pw"})  # Basic auth, realm "sdcd-test"
    reg = Registry("token", users={"alice": "pw"})     # Bearer tokens from a TokenServer
    reg.start(); ...; reg.stop()                       # or: with Registry(...) as reg:

The registry's config is written as JSON (YAML's flow style, so no YAML library is
needed) into a temp dir that also holds its storage, htpasswd file, token certificate and
log; stop() removes it.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.imagebuilder import es256_sign, libtrust_key_id

REGISTRY_BIN = "/usr/bin/docker-registry"
REALM = "sdcd-test"
DEFAULT_USERS = {"sdcuser": "sdcpass"}
MODES = ("anonymous", "htpasswd", "token")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def htpasswd_line(user: str, password: str, rounds: int = 4) -> str:
    """A bcrypt htpasswd line (``$2y$``, what the registry's htpasswd auth reads)."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds, prefix=b"2b"))
    return f"{user}:$2y${hashed.decode()[4:]}"


# --- the token server --------------------------------------------------------------------


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:library/busybox:pull,push`` -> (type, name, actions); the name may hold
    ':' (a port in a registry host name), so split on the first and the last."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


Grant = Callable[[str | None, str, str, list[str]], list[str]]


class TokenServer:
    """A Docker token server (the ``realm`` of ``auth.token``) on loopback, in a thread.

    ``GET /token?service=...&scope=repository:<name>:pull,push[&scope=...]`` with Basic
    credentials of one of ``users`` grants every requested action; without credentials
    only ``pull`` (if ``anonymous_pull``); wrong credentials get 401. ``grant`` replaces
    that policy: ``grant(user or None, type, name, actions) -> granted actions``.

    Tokens are JWTs signed ES256 by a throw-away P-256 key whose self-signed certificate
    (``cert_pem``) is the registry's ``rootcertbundle``; the JWT header names the key by its
    libtrust ``kid`` (or carries the certificate in ``x5c`` if ``header="x5c"``).
    ``requests`` records (user, [scopes]) of every token request."""

    def __init__(
        self,
        users: dict[str, str],
        service: str = "sdcd-test-registry",
        issuer: str = "sdcd-test-token-issuer",
        *,
        anonymous_pull: bool = True,
        grant: Grant | None = None,
        expires_in: int = 300,
        header: str = "kid",
    ) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.anonymous_pull = anonymous_pull
        self.grant = grant or self._default_grant
        self.expires_in = expires_in
        self.header = header
        self.requests: list[tuple[str | None, list[str]]] = []
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sdcd test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.kid = libtrust_key_id(self.key.public_key())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- tokens

    def _default_grant(self, user: str | None, kind: str, name: str, actions: list[str]):
        if user is not None:
            return actions
        return (
            ["pull"] if self.anonymous_pull and "pull" in actions and kind == "repository" else []
        )

    def issue(
        self,
        subject: str | None,
        access: list[dict[str, Any]],
        *,
        expires_in: int | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        key: Any = None,
    ) -> str:
        """A signed JWT for ``access`` ([{"type", "name", "actions"}]); the keyword
        arguments let a test make bad tokens (expired, wrong audience/issuer/key)."""
        from cryptography.hazmat.primitives.serialization import Encoding

        now = int(time.time())
        ttl = self.expires_in if expires_in is None else expires_in
        header: dict[str, Any] = {"typ": "JWT", "alg": "ES256"}
        if self.header == "x5c":
            header["x5c"] = [base64.b64encode(self.cert.public_bytes(Encoding.DER)).decode()]
        else:
            header["kid"] = self.kid
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject or "",
            "aud": audience or self.service,
            "exp": now + ttl,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        return signing_input + "." + _b64url(es256_sign(key or self.key, signing_input.encode()))

    def _answer(self, authorization: str | None, query: dict[str, list[str]]):
        user = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "basic only"}]}
            try:
                name, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return 400, {"errors": [{"code": "BAD_REQUEST", "message": "bad basic"}]}
            if self.users.get(name) != password:
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
            user = name
        if query.get("service", [self.service])[0] != self.service:
            return 400, {"errors": [{"code": "BAD_REQUEST", "message": "unknown service"}]}
        scopes = [s for item in query.get("scope", []) for s in item.split(" ") if s]
        self.requests.append((user, scopes))
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            kind, name, actions = parsed
            granted = self.grant(user, kind, name, actions)
            access.append({"type": kind, "name": name, "actions": list(granted)})
        token = self.issue(user, access)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": now,
        }
        return 200, body

    # -- the HTTP server

    @property
    def url(self) -> str:
        assert self._server is not None, "TokenServer not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def realm(self) -> str:
        return self.url + "/token"

    def start(self) -> TokenServer:
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                if parts.path != "/token":
                    status, body = 404, {"errors": [{"code": "NOT_FOUND"}]}
                else:
                    query = urllib.parse.parse_qs(parts.query)
                    status, body = server_self._answer(self.headers.get("Authorization"), query)
                data = json.dumps(body).encode()
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", f'Basic realm="{REALM}"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="token-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


# --- the registry ------------------------------------------------------------------------


class Registry:
    """``/usr/bin/docker-registry serve <config>`` on 127.0.0.1:<free port>.

    ``mode``: "anonymous", "htpasswd" (Basic, realm "sdcd-test") or "token" (Bearer from
    a TokenServer run in this process: ``.token_server``). ``users`` maps user -> password
    for the two auth modes (default ``{"sdcuser": "sdcpass"}``; ``.username`` /
    ``.password`` / ``.credentials`` are the first). ``schema1=True`` sets
    ``compatibility.schema1.enabled`` (lets the registry accept signed schema 1 manifests).
    ``extra_config`` is merged (deeply) into the generated config."""

    def __init__(
        self,
        mode: str = "anonymous",
        users: dict[str, str] | None = None,
        *,
        anonymous_pull: bool = True,
        schema1: bool = False,
        extra_config: dict[str, Any] | None = None,
        token_header: str = "kid",
        startup_timeout: float = 20.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.users = dict(users or DEFAULT_USERS)
        self.anonymous_pull = anonymous_pull
        self.schema1 = schema1
        self.extra_config = extra_config or {}
        self.token_header = token_header
        self.startup_timeout = startup_timeout
        self.dir: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.token_server: TokenServer | None = None

    # -- facts

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def username(self) -> str:
        return next(iter(self.users))

    @property
    def password(self) -> str:
        return self.users[self.username]

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(user, password) for push()/RegistryClient, None for an anonymous registry."""
        return None if self.mode == "anonymous" else (self.username, self.password)

    @property
    def storage(self) -> Path:
        assert self.dir is not None
        return self.dir / "storage"

    def log(self) -> str:
        """What the registry printed so far."""
        if self.dir is None or not (self.dir / "registry.log").exists():
            return ""
        return (self.dir / "registry.log").read_text(errors="replace")

    # -- config

    def config(self) -> dict[str, Any]:
        assert self.dir is not None and self.port is not None
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": "sdcd-test-secret",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.mode == "htpasswd":
            path = self.dir / "htpasswd"
            path.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            cfg["auth"] = {"htpasswd": {"realm": REALM, "path": str(path)}}
        elif self.mode == "token":
            assert self.token_server is not None
            bundle = self.dir / "token-ca.pem"
            bundle.write_bytes(self.token_server.cert_pem)
            cfg["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(bundle),
                }
            }
        if self.schema1:
            cfg["compatibility"] = {"schema1": {"enabled": True}}
        _merge(cfg, self.extra_config)
        return cfg

    # -- lifecycle

    def start(self) -> Registry:
        if not os.path.exists(REGISTRY_BIN):
            raise FileNotFoundError(f"{REGISTRY_BIN} missing (apt-get install docker-registry)")
        self.dir = Path(tempfile.mkdtemp(prefix="sdcd-registry-"))
        self.storage.mkdir()
        try:
            if self.mode == "token":
                self.token_server = TokenServer(
                    self.users, anonymous_pull=self.anonymous_pull, header=self.token_header
                ).start()
            for _attempt in range(3):  # a free port may be taken before we bind it
                self.port = free_port()
                if self._spawn():
                    return self
            raise RuntimeError(f"docker-registry did not start:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> bool:
        assert self.dir is not None
        config = self.dir / "config.yml"
        config.write_text(json.dumps(self.config(), indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(self.dir / "registry.log", "ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.dir,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self.ping() is not None:
                return True
            time.sleep(0.05)
        self._terminate()
        raise TimeoutError(f"docker-registry did not answer GET /v2/:\n{self.log()}")

    def ping(self) -> int | None:
        """The status of ``GET /v2/`` (200, or 401 with auth), None if nothing answers."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _terminate(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the registry (to test a registry dying mid-pull); stop() still cleans up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        """Start the registry again on the same port with the same storage (after kill())."""
        self._terminate()
        if not self._spawn():
            raise RuntimeError(f"docker-registry did not restart:\n{self.log()}")

    def stop(self) -> None:
        """Terminate (SIGKILL after 10 s), stop the token server, remove the temp dir."""
        self._terminate()
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
