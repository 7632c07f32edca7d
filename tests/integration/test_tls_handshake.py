"""
net.tls against a real Twisted TLS server on 127.0.0.1: the RFC 5922
identity check, the chain check, --tls-no-verify, and client certificates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.certs import make_ca
from uacregistrant.net.tls import ServerConnectionCreator, TlsChainError, TlsIdentityError, TlsSettings, load_tls

DOMAIN = "registrar.test"


class Server(Protocol):
    """Records what it receives and the client's certificate; answers each chunk with C{pong}."""

    def __init__(self, factory: ServerFactory) -> None:
        self.factory = factory

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += data
        certificate = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        self.factory.peer_certificates.append(None if certificate is None else certificate.to_cryptography())
        self.factory.versions.append(self.transport.getHandle().get_protocol_version_name())  # type: ignore[union-attr]
        self.transport.write(b"pong")  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.factory.reason = reason
        self.factory.lost.callback(None)


class ServerFactory(Factory):
    """One connection's worth of server: what it received, and a Deferred for its end."""

    def __init__(self) -> None:
        self.received = b""
        self.peer_certificates: list[Any] = []
        self.versions: list[str] = []
        self.server_names: list[bytes | None] = []
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> Server:
        return Server(self)


class Client(Protocol):
    """Sends C{hello} at once (TLS holds it until the handshake is done); records the answer and the end."""

    def __init__(self) -> None:
        self.received = b""
        self.answered: Deferred[bytes] = Deferred()
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.answered.called:
            self.answered.callback(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.reason = reason
        self.lost.callback(None)


class HandshakeTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.ca = make_ca("registrar CA")
        self.ca_file = str(self.ca.write(self.directory / "ca.pem"))

    def server(
        self,
        *,
        dns: list[str] | None = None,
        ips: list[str] | None = None,
        sip_uris: list[str] | None = None,
        client_ca: str | None = None,
        tls12: bool = False,
    ) -> tuple[int, ServerFactory]:
        """
        A TLS server on 127.0.0.1 with a certificate from C{self.ca} for the
        names given; requiring a client certificate from C{client_ca} if set;
        speaking at most TLS 1.2 if C{tls12}.

        @return: its port and factory.
        """
        cert, key = self.ca.issue(self.directory / "server", dns=dns or [], ips=ips or [], sip_uris=sip_uris or [], common_name="server")
        factory = ServerFactory()
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_file(str(cert))
        context.use_privatekey_file(str(key))
        context.set_session_id(b"test")
        if tls12:
            context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_tlsext_servername_callback(lambda connection: factory.server_names.append(connection.get_servername()))
        if client_ca is not None:
            context.load_verify_locations(client_ca)
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda connection, x509, error, depth, ok: bool(ok))
        port = reactor.listenSSL(0, factory, ServerConnectionCreator(context), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return port.getHost().port, factory

    @inlineCallbacks
    def connect(self, port: int, settings: TlsSettings, domain: str = DOMAIN) -> Any:
        """Connect to C{port} with the creator C{load_tls(settings)} gives for C{domain}; the client protocol."""
        creator = load_tls(settings).client_creator(domain)
        client = Client()
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5))
        yield connectProtocol(endpoint, client)
        self.addCleanup(self.closed, client)
        return client

    def closed(self, client: Client) -> Deferred[None]:
        """Cleanup: the client's connection closed (aborted if still open)."""
        if not client.lost.called and client.transport is not None:
            client.transport.abortConnection()  # type: ignore[attr-defined]
        return client.lost

    @inlineCallbacks
    def talks(self, port: int, factory: ServerFactory, settings: TlsSettings, domain: str = DOMAIN) -> Any:
        """The client's hello reaches the server and the answer comes back; both ends then close."""
        client = yield self.connect(port, settings, domain)
        answer = yield client.answered
        self.assertEqual(answer, b"pong")
        self.assertEqual(factory.received, b"hello")
        client.transport.loseConnection()
        yield client.lost
        yield factory.lost

    @inlineCallbacks
    def refused(self, port: int, factory: ServerFactory, settings: TlsSettings, expected: type[Exception], domain: str = DOMAIN) -> Any:
        """
        The connection is lost for an C{expected} exception before the
        server received a single byte of application data; that exception.
        """
        client = yield self.connect(port, settings, domain)
        yield client.lost
        yield factory.lost
        self.assertEqual(factory.received, b"")
        self.assertEqual(client.received, b"")
        assert client.reason is not None
        client.reason.trap(expected)
        return client.reason.value

    @inlineCallbacks
    def test_right_name(self) -> None:
        """A DNS SAN naming the domain: data flows, and the domain was sent as SNI."""
        port, factory = self.server(dns=[DOMAIN])
        yield self.talks(port, factory, TlsSettings(ca_file=self.ca_file), "Registrar.Test")
        self.assertEqual(factory.server_names, [DOMAIN.encode()])
        self.assertEqual(factory.versions, ["TLSv1.3"])

    @inlineCallbacks
    def test_sip_uri_only(self) -> None:
        """A certificate naming only C{URI:sip:domain} is accepted (service_identity's DNS_ID would refuse it)."""
        port, factory = self.server(sip_uris=[f"sip:{DOMAIN}"])
        yield self.talks(port, factory, TlsSettings(ca_file=self.ca_file))

    @inlineCallbacks
    def test_ip_literal(self) -> None:
        """An IP-literal domain matches an C{IP:} SAN, and sends no SNI."""
        port, factory = self.server(ips=["127.0.0.1"])
        yield self.talks(port, factory, TlsSettings(ca_file=self.ca_file), "127.0.0.1")
        self.assertEqual(factory.server_names, [None])

    @inlineCallbacks
    def test_wrong_name(self) -> None:
        """A certificate for another name: lost with the identity error; the server got nothing."""
        port, factory = self.server(dns=["other.test"])
        reason = yield self.refused(port, factory, TlsSettings(ca_file=self.ca_file), TlsIdentityError)
        self.assertEqual(str(reason), f"certificate of 127.0.0.1:{port} is for DNS:other.test; not for {DOMAIN}")

    @inlineCallbacks
    def test_wildcard_refused(self) -> None:
        """A wildcard certificate is refused (RFC 5922 §7.2)."""
        port, factory = self.server(dns=["*.test"])
        yield self.refused(port, factory, TlsSettings(ca_file=self.ca_file), TlsIdentityError)

    @inlineCallbacks
    def test_dns_hidden_by_sip_uri(self) -> None:
        """The right DNS SAN beside a sip URI for another domain is refused."""
        port, factory = self.server(dns=[DOMAIN], sip_uris=["sip:other.test"])
        reason = yield self.refused(port, factory, TlsSettings(ca_file=self.ca_file), TlsIdentityError)
        self.assertIn("is for sip:other.test; not for", str(reason))

    @inlineCallbacks
    def test_unknown_ca(self) -> None:
        """A certificate from a CA not trusted: lost with the chain error; the server got nothing."""
        other_ca = str(make_ca("other CA").write(self.directory / "other-ca.pem"))
        port, factory = self.server(dns=[DOMAIN])
        reason = yield self.refused(port, factory, TlsSettings(ca_file=other_ca), TlsChainError)
        self.assertEqual(str(reason), f"certificate of 127.0.0.1:{port} is issued by an unknown CA")

    @inlineCallbacks
    def test_system_store(self) -> None:
        """Without a CA file the system's store is used, which does not hold the test CA."""
        port, factory = self.server(dns=[DOMAIN])
        yield self.refused(port, factory, TlsSettings(), TlsChainError)

    @inlineCallbacks
    def test_no_verify(self) -> None:
        """--tls-no-verify: an unknown CA and a wrong name are accepted; SNI is still sent."""
        other_ca = str(make_ca("other CA").write(self.directory / "other-ca.pem"))
        port, factory = self.server(dns=["other.test"])
        yield self.talks(port, factory, TlsSettings(ca_file=other_ca, verify=False))
        self.assertEqual(factory.server_names, [DOMAIN.encode()])

    @inlineCallbacks
    def test_client_certificate_presented(self) -> None:
        """A server asking for a client certificate gets ours."""
        client_cert, client_key = self.ca.issue(self.directory / "client", dns=["uac.test"], common_name="uac", client=True)
        port, factory = self.server(dns=[DOMAIN], client_ca=self.ca_file)
        yield self.talks(port, factory, TlsSettings(ca_file=self.ca_file, cert_file=str(client_cert), key_file=str(client_key)))
        [peer] = factory.peer_certificates
        self.assertEqual(peer.subject.rfc4514_string(), "CN=uac")

    @inlineCallbacks
    def test_client_certificate_missing(self) -> None:
        """
        A server requiring a client certificate, and none configured: the
        connection is lost (with TLS 1.3 the client's handshake succeeds and
        the server's alert arrives on the first read).
        """
        port, factory = self.server(dns=[DOMAIN], client_ca=self.ca_file)
        reason = yield self.refused(port, factory, TlsSettings(ca_file=self.ca_file), SSL.Error)
        self.assertIn("certificate required", str(reason))

    @inlineCallbacks
    def test_tls12(self) -> None:
        """With TLS 1.2 too: the right name talks, a wrong one is refused before any data."""
        port, factory = self.server(dns=[DOMAIN], tls12=True)
        yield self.talks(port, factory, TlsSettings(ca_file=self.ca_file))
        self.assertEqual(factory.versions, ["TLSv1.2"])
        port, factory = self.server(dns=["other.test"], tls12=True)
        yield self.refused(port, factory, TlsSettings(ca_file=self.ca_file), TlsIdentityError)

    @inlineCallbacks
    def test_tls12_client_certificate_missing(self) -> None:
        """With TLS 1.2 a missing client certificate fails the handshake itself."""
        port, factory = self.server(dns=[DOMAIN], client_ca=self.ca_file, tls12=True)
        reason = yield self.refused(port, factory, TlsSettings(ca_file=self.ca_file), SSL.Error)
        self.assertIn("handshake failure", str(reason))

    @inlineCallbacks
    def test_server_options(self) -> None:
        """The listen-socket options of load_tls serve our certificate, to a client that verifies it."""
        cert, key = self.ca.issue(self.directory / "own", dns=[DOMAIN])
        options = load_tls(TlsSettings(cert_file=str(cert), key_file=str(key))).server_options()
        factory = ServerFactory()
        port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        yield self.talks(port.getHost().port, factory, TlsSettings(ca_file=self.ca_file))
        self.assertEqual(factory.peer_certificates, [None])
