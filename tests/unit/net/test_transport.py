"""Tests for L{uacregistrant.net.transport}: what a hostile peer's datagrams cost, and the answers to requests."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.counters import SipCounters
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.incoming import RequestAnswerer
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.net.transport import MAX_DATAGRAM, SipTransport
from uacregistrant.sip.message import Response, parse_message

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


OPTIONS = (
    b"OPTIONS sip:alice@192.0.2.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKping\r\n"
    b"To: <sip:alice@192.0.2.1:5060>\r\nFrom: <sip:ping@registrar.invalid>;tag=f\r\n"
    b"Call-ID: ping-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)
SOURCE = ("192.0.2.7", 5060)


class WrittenPort:
    """A port's C{write}: notes what was sent where, or raises C{error}."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.error: Exception | None = None

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((data, addr))


class RequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = SipCounters()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def transport(self, answerer: RequestAnswerer | None) -> tuple[SipTransport, WrittenPort]:
        transport = SipTransport(
            SocketSpec("127.0.0.1", 5060), TransactionLayer(self.clock, self.counters), self.counters, self.clock, answerer=answerer
        )
        port = WrittenPort()
        transport.transport = port  # type: ignore[assignment]
        return transport, port

    def test_options_answered_to_the_source(self) -> None:
        """An OPTIONS datagram gets its 200 sent back to the source address and port."""
        transport, port = self.transport(RequestAnswerer(self.clock, self.counters))
        transport.datagramReceived(OPTIONS, SOURCE)
        self.assertEqual([addr for _, addr in port.sent], [SOURCE])
        response = parse_message(port.sent[0][0])
        assert isinstance(response, Response)
        self.assertEqual((response.status, response.top_via.branch, response.cseq), (200, "z9hG4bKping", (1, "OPTIONS")))
        self.assertEqual((self.counters.requests_answered, self.counters.dropped_requests, self.counters.requests_sent), (1, 0, 0))

    def test_not_answered_sends_nothing(self) -> None:
        """An ACK gets nothing; it is counted as dropped."""
        transport, port = self.transport(RequestAnswerer(self.clock, self.counters))
        transport.datagramReceived(OPTIONS.replace(b"OPTIONS", b"ACK"), SOURCE)
        self.assertEqual((port.sent, self.counters.dropped_requests), ([], 1))

    def test_without_answerer_dropped(self) -> None:
        """Without an answerer, requests are counted as dropped and nothing is sent."""
        transport, port = self.transport(None)
        transport.datagramReceived(OPTIONS, SOURCE)
        self.assertEqual((port.sent, self.counters.dropped_requests, self.counters.requests_answered), ([], 1, 0))

    def test_send_error_counted(self) -> None:
        """A failing send is counted and logged once a minute per source; nothing escapes."""
        transport, port = self.transport(RequestAnswerer(self.clock, self.counters))
        port.error = OSError("No buffer space available")
        transport.datagramReceived(OPTIONS, SOURCE)
        port.error = OverflowError("port out of range")
        transport.datagramReceived(OPTIONS, SOURCE)
        self.assertEqual((self.counters.send_errors, self.counters.requests_answered), (2, 2))
        self.assertEqual(len(self.events), 1)
        self.assertIn("No buffer space available", self.events[0]["what"])

    def test_send_after_stop(self) -> None:
        """Answering on a closed socket is a counted send error."""
        transport, _ = self.transport(RequestAnswerer(self.clock, self.counters))
        transport.transport = None
        transport.datagramReceived(OPTIONS, SOURCE)
        self.assertEqual(self.counters.send_errors, 1)

    def test_answerer_failure_contained(self) -> None:
        """An answerer that fails is counted as a dropped request and logged; nothing escapes."""
        answerer = RequestAnswerer(self.clock, self.counters)

        def fail(request: object, source: object) -> bytes:
            raise RuntimeError("boom")

        self.patch(answerer, "answer", fail)
        transport, port = self.transport(answerer)
        transport.datagramReceived(OPTIONS, SOURCE)
        self.assertEqual((port.sent, self.counters.dropped_requests), ([], 1))
        self.assertIn("RuntimeError: boom", self.events[0]["what"])
