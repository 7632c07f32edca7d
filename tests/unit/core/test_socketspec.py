"""Socket specs: udp:HOST:PORT names."""

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.socketspec import SocketSpecError, normalise_socket


class SocketTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Protocol and port are optional; IPv6 needs brackets."""
        self.assertEqual(normalise_socket("10.0.0.1"), "udp:10.0.0.1:5060")
        self.assertEqual(normalise_socket("UDP:10.0.0.1:5070"), "udp:10.0.0.1:5070")
        self.assertEqual(normalise_socket("udp:[::1]:5062"), "udp:[::1]:5062")
        for bad in ["tcp:1.2.3.4:5060", "udp:host.example:5060", "1.2.3.4:70000", "::1", "udp:[::1"]:
            with self.assertRaises(SocketSpecError, msg=bad):
                normalise_socket(bad)
