"""Tests for L{uacregistrant.sip.uri}."""

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.uri import parse_uri, transport_of, uris_equal


class ParseUriTests(SynchronousTestCase):
    def test_full(self) -> None:
        """User, password, host, port, parameters and headers are split out."""
        uri = parse_uri("<SIP:alice:secret@Example.COM:5070;transport=UDP;lr?subject=x>")
        self.assertEqual(
            (uri.scheme, uri.user, uri.password, uri.host, uri.port),
            ("sip", "alice", "secret", "example.com", 5070),
        )
        self.assertEqual(uri.params, {"transport": "UDP", "lr": None})
        self.assertEqual(uri.headers, "subject=x")

    def test_ipv6(self) -> None:
        """IPv6 references lose their brackets and keep the port."""
        uri = parse_uri("sip:[2001:DB8::1]:5080")
        self.assertEqual((uri.host, uri.port), ("2001:db8::1", 5080))

    def test_invalid(self) -> None:
        """Bad schemes, hosts and ports raise the codec's error."""
        for text in ["http://x", "sip:", "sip:@host", "sip:host:0", "sip:host:99999", "sip:[::1", "sip:ho st", "sip:a@"]:
            with self.assertRaises(SipParseError, msg=text):
                parse_uri(text)


class CompareTests(SynchronousTestCase):
    """RFC 3261 §19.1.4, with the RFC's own examples."""

    def assertEquivalent(self, a: str, b: str) -> None:
        self.assertTrue(uris_equal(parse_uri(a), parse_uri(b)), f"{a} != {b}")
        self.assertTrue(uris_equal(parse_uri(b), parse_uri(a)), f"{b} != {a}")

    def assertDifferent(self, a: str, b: str) -> None:
        self.assertFalse(uris_equal(parse_uri(a), parse_uri(b)), f"{a} == {b}")
        self.assertFalse(uris_equal(parse_uri(b), parse_uri(a)), f"{b} == {a}")

    def test_equivalent(self) -> None:
        """The RFC's equivalent pairs compare equal."""
        self.assertEquivalent("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp")
        self.assertEquivalent("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5")
        self.assertEquivalent("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5")
        self.assertEquivalent(
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        )
        self.assertEquivalent(
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        )

    def test_different(self) -> None:
        """The RFC's non-equivalent pairs compare different."""
        self.assertDifferent("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP")
        self.assertDifferent("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060")
        self.assertDifferent("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp")
        self.assertDifferent("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp")
        self.assertDifferent("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting")
        self.assertDifferent("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4")
        self.assertDifferent("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off")
        self.assertDifferent("sip:a@h", "sips:a@h")


class TransportTests(SynchronousTestCase):
    def test_transport_of(self) -> None:
        """RFC 3261 §18/§26.2.2, RFC 3263 §4.1: the parameter, else TLS for sips (hop or request), else UDP; sips never downgraded."""
        cases = [
            ("sip:a.example", False, "udp"),
            ("sip:a.example;transport=TCP", False, "tcp"),
            ("sip:a.example;transport=tls", False, "tls"),
            ("sip:192.0.2.1:5070", False, "udp"),
            ("sips:a.example", False, "tls"),
            ("sip:a.example", True, "tls"),
            ("sips:a.example;transport=udp", False, "tls"),
            ("sip:a.example;transport=udp", True, "tls"),
            ("sips:a.example;transport=tcp", False, "tls"),
            ("sip:a.example;transport=tcp", True, "tls"),
        ]
        for text, sips_request, expected in cases:
            self.assertEqual(transport_of(parse_uri(text), sips_request), expected, text)

