"""Tests for L{uacregistrant.net.transport}: what a hostile peer's datagrams cost."""

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.counters import SipCounters
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.net.transport import MAX_DATAGRAM, SipTransport

GARBAGE = b"SIP/2.0 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\n"


class GarbageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = SipCounters()
        self.transport = SipTransport(SocketSpec("127.0.0.1", 5060), TransactionLayer(self.clock, self.counters), self.counters, self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_counted_and_logged_once_a_minute_per_source(self) -> None:
        """50,000 bad datagrams from two sources: all counted, two short lines, no traceback."""
        for i in range(50000):
            self.transport.datagramReceived(GARBAGE, ("192.0.2.1" if i % 2 else "192.0.2.2", 5060))
        self.assertEqual(self.counters.dropped_malformed, 50000)
        self.assertEqual(len(self.events), 2)
        self.assertTrue(all("log_failure" not in e for e in self.events))
        self.assertTrue(all(e["log_level"].name == "info" for e in self.events))
        self.clock.advance(60)
        self.transport.datagramReceived(GARBAGE, ("192.0.2.1", 5060))
        self.assertEqual(len(self.events), 3)
        self.assertEqual(self.events[-1]["held"], 24999)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_oversized(self) -> None:
        """A datagram as large as a read returns is counted as oversized, not malformed."""
        self.transport.datagramReceived(b"x" * MAX_DATAGRAM, ("192.0.2.1", 5060))
        self.assertEqual((self.counters.dropped_oversized, self.counters.dropped_malformed), (1, 0))
