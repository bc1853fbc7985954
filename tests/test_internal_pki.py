"""The internal PKI between sdcd and the node agents: certificates by role, mutual TLS
that needs a certificate from the internal CA on both sides, and role checks."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography import x509
from OpenSSL import SSL

from sdcd.auth import internal
from sdcd.auth.tls import make_ca


@pytest.fixture
def ca(tmp_path):
    return internal.internal_ca(tmp_path / "data", "testdc")


def handshake(client: internal.Material, server: internal.Material):
    """Both ends over memory: (client connection, server connection) or SSL.Error."""
    c = SSL.Connection(internal.context(client, server=False), None)
    s = SSL.Connection(internal.context(server, server=True), None)
    c.set_connect_state()
    s.set_accept_state()
    done = {c: False, s: False}
    for _ in range(20):
        for me, peer in ((c, s), (s, c)):
            if not done[me]:
                try:
                    me.do_handshake()
                    done[me] = True
                except SSL.WantReadError:
                    pass
            try:
                data = me.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                peer.bio_write(data)
        if all(done.values()):
            return c, s
    raise AssertionError("handshake did not finish")


def test_ca_is_made_once_and_kept_private(tmp_path, ca):
    assert internal.internal_ca(tmp_path / "data", "testdc") == ca
    key = tmp_path / "data" / internal.CA_DIR / "ca-key.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_node_and_api_certificates(ca, tmp_path):
    node = internal.issue(*ca, "node", "cn1", ["10.99.0.11", "cn1.dc"])
    cert = x509.load_pem_x509_certificate(node.cert_pem)
    assert internal.identity(cert) == internal.Identity("node", "cn1")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "cn1.dc" in names.get_values_for_type(x509.DNSName)
    node.write(tmp_path / "enrol", "node")
    assert stat.S_IMODE(os.stat(tmp_path / "enrol" / "node-key.pem").st_mode) == 0o600
    assert internal.Material.read(tmp_path / "enrol", "node") == node
    for role, ident in (("agent", "x"), ("node", ""), ("node", "a:b")):
        with pytest.raises(internal.PKIError):
            internal.issue(*ca, role, ident, [])


def test_mutual_tls_checks_chain_and_role(ca):
    node = internal.issue(*ca, "node", "cn1", ["127.0.0.1"])
    api = internal.issue(*ca, "api", "sdcd-a", [])
    client, server = handshake(api, node)
    assert internal.check_peer(server, "api") == internal.Identity("api", "sdcd-a")
    assert internal.check_peer(client, "node", "cn1").ident == "cn1"
    with pytest.raises(internal.PKIError, match="not node:cn2"):
        internal.check_peer(client, "node", "cn2")  # sdcd dialled another node
    # a node's certificate cannot act as sdcd towards another node
    other = internal.issue(*ca, "node", "cn2", [])
    _client, server = handshake(other, node)
    with pytest.raises(internal.PKIError, match="not api"):
        internal.check_peer(server, "api")


def test_certificates_of_another_ca_are_refused(ca):
    node = internal.issue(*ca, "node", "cn1", [])
    stranger = internal.issue(*make_ca("elsewhere"), "api", "sdcd-a", [])
    with pytest.raises(SSL.Error):
        handshake(stranger, node)
    with pytest.raises(SSL.Error):
        handshake(internal.issue(*ca, "api", "sdcd-a", []), stranger)
