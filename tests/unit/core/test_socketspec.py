"""Socket specs: udp:, tcp: and tls:HOST:PORT names."""

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.socketspec import SocketSpecError, normalise_socket, parse_socket


class SocketTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Protocol and port are optional; IPv6 needs brackets."""
        self.assertEqual(normalise_socket("10.0.0.1"), "udp:10.0.0.1:5060")
        self.assertEqual(normalise_socket("UDP:10.0.0.1:5070"), "udp:10.0.0.1:5070")
        self.assertEqual(normalise_socket("udp:[::1]:5062"), "udp:[::1]:5062")
        self.assertEqual(normalise_socket("TCP:10.0.0.1"), "tcp:10.0.0.1:5060")
        self.assertEqual(normalise_socket("tls:10.0.0.1"), "tls:10.0.0.1:5061")
        self.assertEqual(normalise_socket("tls:[::1]:5071"), "tls:[::1]:5071")
        for bad in ["sctp:1.2.3.4:5060", "ws:1.2.3.4", "udp:host.example:5060", "1.2.3.4:70000", "::1", "udp:[::1"]:
            with self.assertRaises(SocketSpecError, msg=bad):
                normalise_socket(bad)

    def test_properties(self) -> None:
        """A spec knows whether it is a stream and its family."""
        spec = parse_socket("tls:[::1]")
        self.assertEqual((spec.transport, spec.port, spec.stream, spec.ipv6), ("tls", 5061, True, True))
        spec = parse_socket("10.0.0.1:5080")
        self.assertEqual((spec.transport, spec.stream, spec.ipv6), ("udp", False, False))
