"""net.tls: RFC 5922 identity matching, loading the TLS files, the connection creators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.certs import make_ca
from uacregistrant.net import tls
from uacregistrant.net.tls import TlsContext, TlsError, TlsSettings, identities_of, identity_matches, load_tls

_CA = make_ca("identity test CA")


def cert(**names: Any) -> x509.Certificate:
    """A leaf certificate with the names given (see L{tests.certs.Authority.sign})."""
    return _CA.sign(ec.generate_private_key(ec.SECP256R1()).public_key(), **names)


class IdentityTests(SynchronousTestCase):
    """identity_matches and identities_of, by RFC 5922 §7."""

    def test_hostile_names_are_escaped(self) -> None:
        """A certificate name holding CR/LF (anyone on the path can present one) is escaped in messages."""
        leaf = cert(sip_uris=["sip:evil.test\r\nX-Injected: 1"])
        self.assertEqual(identities_of(leaf), ["sip:evil.test\\r\\nX-Injected: 1"])

    def test_sip_uri(self) -> None:
        """A C{URI:sip:domain} entry is an identity."""
        leaf = cert(sip_uris=["sip:registrar.test"])
        self.assertTrue(identity_matches(leaf, "registrar.test"))
        self.assertFalse(identity_matches(leaf, "other.test"))
        self.assertEqual(identities_of(leaf), ["sip:registrar.test"])

    def test_sip_uri_hides_dns(self) -> None:
        """With a sip URI in the SAN, the DNS entries are not identities."""
        leaf = cert(sip_uris=["sip:a.test"], dns=["b.test"])
        self.assertTrue(identity_matches(leaf, "a.test"))
        self.assertFalse(identity_matches(leaf, "b.test"))
        self.assertEqual(identities_of(leaf), ["sip:a.test"])

    def test_sip_uri_only_exact(self) -> None:
        """A sip URI with a user part, port, parameters or headers is refused, and still hides the DNS entries."""
        for uri in ["sip:alice@a.test", "sip:a.test:5061", "sip:a.test;transport=tls", "sip:a.test?x=y", "sip:"]:
            leaf = cert(sip_uris=[uri], dns=["a.test"])
            self.assertFalse(identity_matches(leaf, "a.test"), uri)
            self.assertEqual(identities_of(leaf), [uri])

    def test_other_schemes_ignored(self) -> None:
        """A sips: or other URI is no identity and does not hide the DNS entries."""
        leaf = cert(sip_uris=["sips:a.test", "https://a.test/"], dns=["b.test"])
        self.assertFalse(identity_matches(leaf, "a.test"))
        self.assertTrue(identity_matches(leaf, "b.test"))
        self.assertEqual(identities_of(leaf), ["DNS:b.test"])

    def test_dns(self) -> None:
        """Without a sip URI, the DNS entries are identities."""
        leaf = cert(dns=["registrar.test", "backup.test"])
        self.assertTrue(identity_matches(leaf, "registrar.test"))
        self.assertTrue(identity_matches(leaf, "backup.test"))
        self.assertFalse(identity_matches(leaf, "sub.registrar.test"))
        self.assertEqual(identities_of(leaf), ["DNS:registrar.test", "DNS:backup.test"])

    def test_wildcard_never_matches(self) -> None:
        """C{*.example.com} matches nothing, not even itself."""
        for leaf in [cert(dns=["*.example.com"]), cert(sip_uris=["sip:*.example.com"]), cert(common_name="*.example.com")]:
            for domain in ["a.example.com", "example.com", "*.example.com"]:
                self.assertFalse(identity_matches(leaf, domain), (identities_of(leaf), domain))

    def test_cn_only_without_san(self) -> None:
        """The CN counts only when the certificate has no subjectAltName at all."""
        self.assertTrue(identity_matches(cert(common_name="registrar.test"), "registrar.test"))
        self.assertEqual(identities_of(cert(common_name="registrar.test")), ["CN=registrar.test"])
        with_san = cert(common_name="registrar.test", dns=["other.test"])
        self.assertFalse(identity_matches(with_san, "registrar.test"))
        with_ip_san = cert(common_name="registrar.test", ips=["192.0.2.1"])
        self.assertFalse(identity_matches(with_ip_san, "registrar.test"))
        self.assertEqual(identities_of(with_ip_san), ["IP:192.0.2.1"])

    def test_no_identity(self) -> None:
        """A certificate naming nothing matches nothing."""
        leaf = cert()
        self.assertFalse(identity_matches(leaf, "registrar.test"))
        self.assertEqual(identities_of(leaf), [])

    def test_case_insensitive(self) -> None:
        """Case does not matter, in the certificate or the domain; a final dot neither."""
        self.assertTrue(identity_matches(cert(sip_uris=["SIP:Registrar.Test"]), "registrar.TEST"))
        self.assertTrue(identity_matches(cert(dns=["Registrar.Test"]), "REGISTRAR.test."))
        self.assertTrue(identity_matches(cert(common_name="REGISTRAR.TEST"), "registrar.test"))

    def test_ip_literal(self) -> None:
        """An IP-literal domain matches C{IP:} entries (IPv6 in any spelling, with brackets or not), nothing else."""
        leaf = cert(ips=["192.0.2.1", "2001:db8::1"], dns=["192.0.2.2"])
        self.assertTrue(identity_matches(leaf, "192.0.2.1"))
        self.assertTrue(identity_matches(leaf, "[2001:DB8:0::1]"))
        self.assertTrue(identity_matches(leaf, "2001:db8::1"))
        self.assertFalse(identity_matches(leaf, "192.0.2.2"))
        self.assertFalse(identity_matches(cert(common_name="192.0.2.1"), "192.0.2.1"))
        self.assertFalse(identity_matches(cert(sip_uris=["sip:registrar.test"], ips=["192.0.2.1"]), "registrar.test.invalid"))
        self.assertEqual(identities_of(leaf), ["DNS:192.0.2.2", "IP:192.0.2.1", "IP:2001:db8::1"])

    def test_internationalised_domain(self) -> None:
        """A domain in Unicode is compared in its IDNA form, as certificates hold it."""
        self.assertTrue(identity_matches(cert(dns=["xn--bcher-kva.example"]), "bücher.example"))
        self.assertFalse(identity_matches(cert(dns=["xn--bcher-kva.example"]), "b\u0000cher.ex ample\u200f"))


class Files:
    """PEM files for the load tests, in a fresh directory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory
        self.ca = make_ca()
        self.ca_file = str(self.ca.write(directory / "ca.pem"))
        cert_path, key_path = self.ca.issue(directory / "own", dns=["uac.test"])
        self.cert_file, self.key_file = str(cert_path), str(key_path)

    def write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)


class LoadTests(SynchronousTestCase):
    """load_tls: what it reads, and its one-line errors naming the file."""

    def setUp(self) -> None:
        self.files = Files(Path(self.mktemp()))

    def refused(self, settings: TlsSettings, *words: str) -> str:
        """load_tls(settings) raises a one-line TlsError containing C{words}."""
        message = str(self.assertRaises(TlsError, load_tls, settings))
        self.assertNotIn("\n", message)
        for word in words:
            self.assertIn(word, message)
        return message

    def test_defaults(self) -> None:
        """No files: the system store, no certificate of ours, no listen-socket options."""
        context = load_tls(TlsSettings())
        self.assertTrue(context.verify)
        self.assertFalse(context.presents_certificate)
        self.assertIsNone(context.server_options())

    def test_everything(self) -> None:
        """A CA file and our certificate: client creators, and server options that provide their interface."""
        files = self.files
        context = load_tls(TlsSettings(ca_file=files.ca_file, cert_file=files.cert_file, key_file=files.key_file))
        self.assertTrue(context.presents_certificate)
        server = context.server_options()
        assert server is not None
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, server))
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, context.client_creator("registrar.test")))

    def test_no_verify(self) -> None:
        """--tls-no-verify: verify is False, and a CA file is not even read."""
        context = load_tls(TlsSettings(ca_file=str(self.files.directory / "absent.pem"), verify=False))
        self.assertFalse(context.verify)

    def test_missing_files(self) -> None:
        """A file that cannot be read is named, with the reason."""
        files, absent = self.files, str(self.files.directory / "absent.pem")
        self.refused(TlsSettings(ca_file=absent), absent, "CA", "No such file")
        self.refused(TlsSettings(cert_file=absent, key_file=files.key_file), absent, "certificate")
        self.refused(TlsSettings(cert_file=files.cert_file, key_file=absent), absent, "key")

    def test_garbage(self) -> None:
        """A file holding no PEM certificate or key is named."""
        files = self.files
        garbage = files.write("garbage.pem", b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        empty = files.write("empty.pem", b"")
        self.refused(TlsSettings(ca_file=garbage), garbage, "no PEM certificate")
        self.refused(TlsSettings(ca_file=empty), empty, "no PEM certificate")
        self.refused(TlsSettings(cert_file=garbage, key_file=files.key_file), garbage, "no PEM certificate")
        self.refused(TlsSettings(cert_file=files.cert_file, key_file=garbage), garbage, "no PEM private key")
        # A certificate is no key.
        self.refused(TlsSettings(cert_file=files.cert_file, key_file=files.cert_file), files.cert_file, "no PEM private key")

    def test_encrypted_key(self) -> None:
        """An encrypted key is refused with a word on what to do."""
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
        )
        encrypted = self.files.write("encrypted.key", pem)
        self.refused(TlsSettings(cert_file=self.files.cert_file, key_file=encrypted), encrypted, "encrypted")

    def test_key_not_matching(self) -> None:
        """A key that is not the certificate's is refused, naming both files."""
        _, other_key = self.files.ca.issue(self.files.directory / "other", dns=["other.test"])
        settings = TlsSettings(cert_file=self.files.cert_file, key_file=str(other_key))
        self.refused(settings, str(other_key), self.files.cert_file, "does not match")

    def test_cert_without_key(self) -> None:
        """A certificate without a key, or a key without a certificate, is refused."""
        self.refused(TlsSettings(cert_file=self.files.cert_file), self.files.cert_file, "key file")
        self.refused(TlsSettings(key_file=self.files.key_file), self.files.key_file, "certificate file")

    def test_chain_in_cert_file(self) -> None:
        """The certificate file may hold its chain, and the key beside it."""
        files = self.files
        with_chain = files.write("chain.pem", Path(files.cert_file).read_bytes() + files.ca.pem)
        self.assertTrue(load_tls(TlsSettings(cert_file=with_chain, key_file=files.key_file)).presents_certificate)
        combined = files.write("combined.pem", Path(files.key_file).read_bytes() + Path(files.cert_file).read_bytes())
        self.assertTrue(load_tls(TlsSettings(cert_file=combined, key_file=combined)).presents_certificate)

    def test_ca_bundle(self) -> None:
        """Every certificate of a CA bundle is read."""
        bundle = self.files.write("bundle.pem", make_ca("first").pem + self.files.ca.pem)
        self.assertTrue(load_tls(TlsSettings(ca_file=bundle)).verify)


class CreatorTests(SynchronousTestCase):
    """The client connection creators: cached, SNI for names only, verification as configured."""

    def setUp(self) -> None:
        self.context = load_tls(TlsSettings())

    def connection(self, context: TlsContext, domain: str) -> SSL.Connection:
        protocol = object()
        connection = context.client_creator(domain).clientConnectionForTLS(protocol)  # type: ignore[arg-type]
        self.assertIs(connection.get_app_data(), protocol)
        return connection

    def test_sni_for_names_only(self) -> None:
        """A DNS name is sent as SNI (lower-case, IDNA, no final dot); an IP literal is not."""
        self.assertEqual(self.connection(self.context, "Registrar.Test.").get_servername(), b"registrar.test")
        self.assertEqual(self.connection(self.context, "bücher.example").get_servername(), b"xn--bcher-kva.example")
        self.assertIsNone(self.connection(self.context, "192.0.2.1").get_servername())
        self.assertIsNone(self.connection(self.context, "[2001:db8::1]").get_servername())

    def test_verify_mode(self) -> None:
        """Verifying asks for the peer's certificate; --tls-no-verify does not."""
        verified = self.connection(self.context, "registrar.test")
        self.assertEqual(verified.get_verify_mode(), SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        unverified = load_tls(TlsSettings(verify=False))
        self.assertEqual(self.connection(unverified, "registrar.test").get_verify_mode(), SSL.VERIFY_NONE)

    def test_cached_and_bounded(self) -> None:
        """One creator per domain, the oldest forgotten beyond CREATORS_MAX."""
        self.patch(tls, "CREATORS_MAX", 2)
        first = self.context.client_creator("a.test")
        self.assertIs(self.context.client_creator("a.test"), first)
        self.context.client_creator("b.test")
        self.context.client_creator("c.test")
        self.assertIsNot(self.context.client_creator("a.test"), first)

    def test_unusable_domain(self) -> None:
        """A domain that is no host name gets a creator (no SNI) whose identity check fails."""
        self.assertIsNone(self.connection(self.context, "b\u0000cher.ex ample\u200f").get_servername())

