"""A Docker Registry HTTP API v2 client on treq.

Authentication follows the registry's ``WWW-Authenticate`` challenge: Basic with the
caller's credentials, or Bearer tokens fetched from the named realm (with a password or an
identity token) and cached until they expire. TLS is verified against the system CAs;
plain HTTP is used only for registries configured as insecure, loopback included (as
dockerd does): for those HTTPS is tried first. Every request has a deadline, and a body
that stops arriving is abandoned, so an unreachable registry fails in seconds.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import attrs
import treq
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from sdcd.images.bodies import BodyCollector
from sdcd.images.tls import RegistryTLSPolicy, SystemAndExtraCAs


class RegistryError(Exception):
    """A registry operation failed; ``message`` is for the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RegistryUnauthorized(RegistryError):
    """The registry refused the credentials (or wants some)."""


class RegistryNotFound(RegistryError):
    """No such repository, tag, manifest or blob."""


class RegistryUnreachable(RegistryError):
    """No answer: connection refused, timed out, TLS failure."""


@attrs.frozen
class Credentials:
    """What a client sends in ``X-Registry-Auth`` (or ``POST /auth``'s body)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""

    @property
    def cache_key(self) -> str:
        """What a cached token is filed under: the whole secret, hashed, so that a token
        earned by one tenant's credentials never serves another's different ones."""
        secret = "\0".join((self.username, self.password, self.identity_token, self.registry_token))
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Credentials:
        def text(*names: str) -> str:
            for name in names:
                value = data.get(name)
                if isinstance(value, str) and value:
                    return value
            return ""

        return cls(
            username=text("username", "Username"),
            password=text("password", "Password"),
            identity_token=text("identitytoken", "IdentityToken"),
            registry_token=text("registrytoken", "RegistryToken"),
            server_address=text("serveraddress", "ServerAddress"),
        )

    @classmethod
    def from_header(cls, value: str | bytes | None) -> Credentials | None:
        """Decode ``X-Registry-Auth`` (base64url JSON, padding optional); None if absent
        or empty; ``RegistryError`` if it cannot be decoded."""
        data = header_json(value, "X-Registry-Auth")
        if data is None:
            return None
        creds = cls.from_json(data)
        return creds if (creds.username or creds.identity_token or creds.registry_token) else None


def header_json(value: str | bytes | None, name: str) -> dict[str, Any] | None:
    """A header holding base64url JSON of an object (``X-Registry-Auth``,
    ``X-Registry-Config``; padding optional, ``+``/``/`` accepted): None if absent or
    empty; ``RegistryError`` (400) if it cannot be decoded."""
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    value = value.strip()
    padded = value + "=" * (-len(value) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_")))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise RegistryError(f"invalid {name} header", 400) from None
    if not isinstance(data, dict):
        raise RegistryError(f"invalid {name} header", 400)
    return data


_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {...})."""
    scheme, _, rest = value.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One client for every registry; tokens and URL schemes are cached per host."""

    log = Logger()

    def __init__(
        self,
        reactor,
        insecure: Iterable[str] = (),
        timeout: float = 15.0,
        idle_timeout: float = 60.0,
        ca_files: Iterable = (),
    ) -> None:
        self._reactor = reactor
        self._insecure = set(insecure)
        self._timeout = timeout
        self._idle = idle_timeout
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
        policy = RegistryTLSPolicy(self.is_insecure, SystemAndExtraCAs(ca_files))
        agent = Agent(reactor, contextFactory=policy, pool=pool)
        self._http = treq.client.HTTPClient(agent)
        self._pool = pool
        self._schemes: dict[str, str] = {}
        self._tokens: dict[tuple, tuple[str, float]] = {}

    def close(self) -> defer.Deferred:
        return self._pool.closeCachedConnections()

    # -- transport ------------------------------------------------------------------

    def is_insecure(self, host: str, port: int | None = None) -> bool:
        """Configured as insecure (by host or host:port), or loopback, as in dockerd."""
        name = host.strip("[]")
        return (
            host in self._insecure
            or (port is not None and f"{host}:{port}" in self._insecure)
            or is_loopback(host)
            or is_loopback(name)
        )

    def _candidate_schemes(self, host: str) -> list[str]:
        if host in self._schemes:
            return [self._schemes[host]]
        if self.is_insecure(host):
            return ["https", "http"]
        return ["https"]

    async def _send(self, method: str, url: str, headers: dict, data=None, stream=False):
        try:
            return await self._http.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self._timeout,
                unbuffered=stream,
                allow_redirects=method in ("GET", "HEAD"),
            )
        except defer.CancelledError:
            raise RegistryUnreachable(f"no answer from {url} within {self._timeout:.0f}s") from None
        except (error.ConnectError, error.DNSLookupError, ResponseFailed, OSError) as e:
            raise RegistryUnreachable(f"cannot reach {url}: {_reason(e)}") from None

    async def _raw(self, method: str, host: str, path: str, headers: dict, data=None, stream=False):
        """One request, picking https or (insecure hosts only) http."""
        last: Exception | None = None
        for scheme in self._candidate_schemes(host):
            try:
                response = await self._send(
                    method, f"{scheme}://{host}{path}", headers, data, stream
                )
            except RegistryUnreachable as e:
                last = e
                continue
            self._schemes[host] = scheme
            return response
        assert last is not None
        raise last

    # -- authentication -------------------------------------------------------------

    async def request(
        self,
        method: str,
        host: str,
        path: str,
        *,
        scope: str | None = None,
        creds: Credentials | None = None,
        headers: dict[str, str] | None = None,
        data=None,
        stream: bool = False,
    ):
        """A request answered after at most one authentication round; the response,
        whatever its status."""
        headers = dict(headers or {})
        token_key = (host, scope, creds.cache_key if creds else "")
        cached = self._tokens.get(token_key)
        if cached and cached[1] > time.monotonic():
            headers["Authorization"] = cached[0]
        response = await self._raw(method, host, path, headers, _body(data), stream)
        if response.code != 401:
            return response
        challenge = response.headers.getRawHeaders("www-authenticate", [""])[0]
        await _discard(response)
        authorization, lifetime = await self._authorize(host, challenge, scope, creds)
        if authorization is None:
            raise RegistryUnauthorized(f"{host}: authentication required", 401)
        self._tokens[token_key] = (authorization, time.monotonic() + lifetime)
        headers["Authorization"] = authorization
        return await self._raw(method, host, path, headers, _body(data), stream)

    async def _authorize(self, host, challenge, scope, creds) -> tuple[str | None, float]:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not creds or not creds.username:
                return None, 0
            pair = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(pair).decode(), 3600
        if scheme == "bearer":
            if creds and creds.registry_token:
                return f"Bearer {creds.registry_token}", 60
            return await self._token(params, scope, creds)
        raise RegistryError(f"{host}: unsupported authentication scheme {scheme!r}")

    async def _token(self, params, scope, creds) -> tuple[str, float]:
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise RegistryError("registry sent a Bearer challenge without a usable realm")
        query = {"service": params.get("service", "")}
        scope = scope or params.get("scope")
        if scope:
            query["scope"] = scope
        headers = {}
        if creds and creds.identity_token:
            return await self._refresh_token(realm, query, creds)
        if creds and creds.username:
            pair = f"{creds.username}:{creds.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            query["account"] = creds.username
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        response = await self._send("GET", url, headers)
        body = await response.content()
        if response.code in (401, 403):
            raise RegistryUnauthorized(_error_text(body) or "incorrect username or password", 401)
        if response.code != 200:
            raise RegistryError(f"token server answered {response.code}: {_error_text(body)}")
        return _bearer(body)

    async def _refresh_token(self, realm, query, creds) -> tuple[str, float]:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": creds.identity_token,
            "client_id": "sdcd",
            **query,
        }
        response = await self._send(
            "POST",
            realm,
            {"Content-Type": "application/x-www-form-urlencoded"},
            urlencode(form).encode(),
        )
        body = await response.content()
        if response.code in (400, 401, 403):
            raise RegistryUnauthorized(_error_text(body) or "identity token refused", 401)
        if response.code != 200:
            raise RegistryError(f"token server answered {response.code}: {_error_text(body)}")
        return _bearer(body)

    # -- the API --------------------------------------------------------------------

    async def check_login(self, host: str, creds: Credentials) -> None:
        """``RegistryUnauthorized`` unless the registry accepts the credentials."""
        self._tokens = {k: v for k, v in self._tokens.items() if k[0] != host}
        response = await self.request("GET", host, "/v2/", creds=creds)
        body = await response.content()
        if response.code == 401:
            raise RegistryUnauthorized(_error_text(body) or "unauthorized", 401)
        if response.code != 200:
            raise RegistryError(f"{host}/v2/ answered {response.code}", response.code)

    async def get_manifest(
        self, host: str, repo: str, reference: str, accept: Iterable[str], creds=None
    ) -> tuple[bytes, str, str | None]:
        """(body, content type, Docker-Content-Digest) of a manifest by tag or digest."""
        response = await self.request(
            "GET",
            host,
            f"/v2/{repo}/manifests/{reference}",
            scope=f"repository:{repo}:pull",
            creds=creds,
            headers={"Accept": ", ".join(accept)},
        )
        body = await response.content()
        await _check(response, body, f"{host}/{repo}:{reference}")
        content_type = response.headers.getRawHeaders("content-type", [""])[0]
        digest = response.headers.getRawHeaders("docker-content-digest", [None])[0]
        return body, content_type.split(";")[0].strip(), digest

    async def fetch_blob(
        self, host: str, repo: str, digest: str, sink, creds=None, attach=None
    ) -> None:
        """Stream a blob into ``sink(bytes)``; ``attach(producer)`` is called with the
        response's producer so a slow sink can pause it."""
        response = await self.request(
            "GET",
            host,
            f"/v2/{repo}/blobs/{digest}",
            scope=f"repository:{repo}:pull",
            creds=creds,
            stream=True,
        )
        if response.code != 200:
            body = await response.content()
            await _check(response, body, f"{host}/{repo}@{digest}")
        done: defer.Deferred = defer.Deferred()
        collector = BodyCollector(sink, done, self._reactor, self._idle, RegistryUnreachable)
        response.deliverBody(collector)
        if attach is not None and collector.transport is not None:
            attach(collector.transport)
        await done

    async def blob_exists(self, host: str, repo: str, digest: str, creds=None) -> bool:
        response = await self.request(
            "HEAD",
            host,
            f"/v2/{repo}/blobs/{digest}",
            scope=f"repository:{repo}:pull,push",
            creds=creds,
        )
        await _discard(response)
        if response.code == 404:
            return False
        await _check(response, b"", f"{host}/{repo}@{digest}")
        return True

    async def start_upload(
        self, host: str, repo: str, digest: str, creds=None, mount_from: str | None = None
    ) -> str | None:
        """Begin a blob upload; None when the registry mounted the blob from
        ``mount_from`` (another repository of it) instead, else the upload URL."""
        query = f"?mount={digest}&from={mount_from}" if mount_from else ""
        scope = f"repository:{repo}:pull,push"
        if mount_from:
            scope += f" repository:{mount_from}:pull"
        response = await self.request(
            "POST", host, f"/v2/{repo}/blobs/uploads/{query}", scope=scope, creds=creds
        )
        body = await response.content()
        if response.code == 201 and mount_from:
            return None
        if response.code != 202:
            await _check(response, body, f"{host}/{repo} upload")
            raise RegistryError(f"{host}/{repo}: upload not started ({response.code})")
        location = response.headers.getRawHeaders("location", [""])[0]
        if not location:
            raise RegistryError(f"{host}/{repo}: upload started without a Location")
        return location

    async def finish_upload(
        self, host: str, repo: str, location: str, digest: str, producer, creds=None
    ) -> None:
        """PUT the whole blob to the upload URL; ``producer`` makes a fresh
        IBodyProducer each time it is called."""
        if location.startswith(("http://", "https://")):
            path = "/" + location.split("://", 1)[1].split("/", 1)[1]
        else:
            path = location
        path += ("&" if "?" in path else "?") + f"digest={digest}"
        response = await self.request(
            "PUT",
            host,
            path,
            scope=f"repository:{repo}:pull,push",
            creds=creds,
            headers={"Content-Type": "application/octet-stream"},
            data=producer,
        )
        body = await response.content()
        await _check(response, body, f"{host}/{repo}@{digest}")

    async def put_manifest(
        self, host: str, repo: str, tag: str, body: bytes, media_type: str, creds=None
    ) -> str | None:
        response = await self.request(
            "PUT",
            host,
            f"/v2/{repo}/manifests/{tag}",
            scope=f"repository:{repo}:pull,push",
            creds=creds,
            headers={"Content-Type": media_type},
            data=body,
        )
        text = await response.content()
        await _check(response, text, f"{host}/{repo}:{tag}")
        return response.headers.getRawHeaders("docker-content-digest", [None])[0]

    async def catalog(self, host: str, creds=None, limit: int = 1000) -> list[str]:
        response = await self.request(
            "GET", host, f"/v2/_catalog?n={limit}", scope="registry:catalog:*", creds=creds
        )
        body = await response.content()
        await _check(response, body, f"{host} catalog")
        try:
            return [r for r in json.loads(body).get("repositories") or [] if isinstance(r, str)]
        except (ValueError, AttributeError):
            raise RegistryError(f"{host}: malformed catalog") from None


def _body(data):
    """Request bodies may be given as a factory (a file producer), so that a request
    repeated after an authentication challenge sends the whole body again."""
    return data() if callable(data) else data


def _bearer(body: bytes) -> tuple[str, float]:
    try:
        data = json.loads(body)
        token = data.get("token") or data.get("access_token")
        lifetime = float(data.get("expires_in") or 60)
    except (ValueError, AttributeError, TypeError):
        raise RegistryError("token server sent a malformed answer") from None
    if not isinstance(token, str) or not token:
        raise RegistryError("token server sent no token")
    return f"Bearer {token}", max(5.0, lifetime - 5)


def _error_text(body: bytes) -> str:
    """The registry's own words from its ``{"errors": [...]}`` body, if any."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace").strip()[:200]
    if isinstance(data, dict):
        errors = data.get("errors") or data.get("details") or []
        if isinstance(errors, list):
            texts = [e.get("message", "") for e in errors if isinstance(e, dict)]
            if any(texts):
                return "; ".join(t for t in texts if t)
        for key in ("message", "error_description", "error", "details"):
            if isinstance(data.get(key), str):
                return data[key]
    return ""


async def _check(response, body: bytes, what: str) -> None:
    code = response.code
    if 200 <= code < 300:
        return
    text = _error_text(body)
    if code == 401:
        raise RegistryUnauthorized(f"{what}: {text or 'unauthorized'}", 401)
    if code == 404:
        raise RegistryNotFound(f"{what}: {text or 'not found'}", 404)
    raise RegistryError(f"{what}: registry answered {code} {text}".strip(), code)


async def _discard(response) -> None:
    with contextlib.suppress(Exception):
        await response.content()


def _reason(e: Exception) -> str:
    if isinstance(e, ResponseFailed):
        return "; ".join(f.getErrorMessage() for f in e.reasons) or "response failed"
    return str(e) or type(e).__name__
