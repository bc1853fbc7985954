"""TLS towards registries: verified against the system CAs plus the operator's, except
for insecure registries (configured, or loopback), which dockerd reaches over HTTPS
without verification (and then over plain HTTP)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot  # public in use, private in name
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from sdcd.config import ConfigError


@implementer(IOpenSSLTrustRoot)
class SystemAndExtraCAs:
    """The platform's CA bundle and the certificates of the operator's PEM files."""

    def __init__(self, pem_files: Iterable[Path]) -> None:
        self._certs = []
        for path in pem_files:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise ConfigError(f"cannot read registry CA file {path}: {e.strerror}") from None
            marker = b"-----END CERTIFICATE-----"
            blocks = [b + marker for b in data.split(marker) if b"BEGIN CERTIFICATE" in b]
            if not blocks:
                raise ConfigError(f"registry CA file {path} holds no PEM certificate")
            for block in blocks:
                self._certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, block))

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        for cert in self._certs:
            store.add_cert(cert)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """TLS with SNI and no certificate check: only ever for insecure registries."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname.encode("idna") if not hostname[:1].isdigit() else None
        self._context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._context.set_verify(SSL.VERIFY_NONE, lambda *a: True)

    def clientConnectionForTLS(self, tls_protocol):
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tls_protocol)
        if self._hostname:
            connection.set_tlsext_host_name(self._hostname)
        connection.set_connect_state()
        return connection


@implementer(IPolicyForHTTPS)
class RegistryTLSPolicy:
    """Chooses, per registry, verified or (insecure registries) unverified TLS."""

    def __init__(self, is_insecure, trust_root: IOpenSSLTrustRoot) -> None:
        self._is_insecure = is_insecure
        self._trust = trust_root

    def creatorForNetloc(self, hostname: bytes, port: int):
        host = hostname.decode("ascii")
        if self._is_insecure(host, port):
            return _Unverified(host)
        return ssl.optionsForClientTLS(host, trustRoot=self._trust)
