"""
The TCP/TLS connection pool on a memory reactor: links open on demand and
are shared, frame what they receive, ping and expect pongs, close when
idle, back off after failures, and bound what waits on them.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.counters import SipCounters
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net import stream
from uacregistrant.net.incoming import RequestAnswerer
from uacregistrant.net.stream import IDLE_CLOSE, PONG_TIMEOUT, IncomingFactory, LinkFailed, StreamLink, StreamPool
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.sip.message import Response, parse_message

REMOTE = ("192.0.2.10", 5060)
LOCAL = SocketSpec("192.0.2.1", 5070, "tcp")

OPTIONS = (
    b"OPTIONS sip:u@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKo1\r\n"
    b"From: <sip:ping@192.0.2.10>;tag=p\r\nTo: <sip:u@192.0.2.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


class PoolCase(SynchronousTestCase):
    """A pool on a memory reactor, and ways to open its links."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.counters = SipCounters()
        self.transactions = TransactionLayer(self.reactor, self.counters)
        self.lost: list[tuple[str, str]] = []
        self.pool = StreamPool(self.reactor, self.transactions, self.counters, keepalive=30,
                               on_lost=lambda link, why: self.lost.append((link.name, why)))
        self.pool.answerer = RequestAnswerer(self.reactor, self.counters)
        self.pool.listen_ports[LOCAL.name] = LOCAL.port
        self.opened: list[StreamLink] = []
        self.failures: list[str] = []

    def link(self, remote: tuple[str, int] = REMOTE, local: SocketSpec | None = LOCAL) -> StreamLink:
        link = self.pool.link("tcp", remote, local, "registrar.test")
        link.when_open(self.opened.append, self.failures.append)
        return link

    def connect(self, index: int = -1) -> StringTransport:
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(None)
        wire = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 40000), peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(wire)
        self.protocol = protocol
        return wire



class PoolTests(PoolCase):
    def test_one_link_per_key(self) -> None:
        """Records to the same remote from the same socket share one connection; another socket gets its own."""
        first = self.link()
        self.assertIs(self.link(), first)
        other = self.link(local=SocketSpec("192.0.2.2", 5070, "tcp"))
        self.assertIsNot(other, first)
        self.assertEqual([(c[0], c[1], c[4]) for c in self.reactor.tcpClients],
                         [("192.0.2.10", 5060, ("192.0.2.1", 0)), ("192.0.2.10", 5060, ("192.0.2.2", 0))])

    def test_waiters_told_when_open(self) -> None:
        """Those waiting hear once it is open; the Via is the local address with the stream socket's listen port."""
        link = self.link()
        self.assertEqual(self.opened, [])
        self.connect()
        self.assertEqual(self.opened, [link])
        self.assertEqual(link.via(), ("192.0.2.1", 5070))
        self.assertEqual((self.counters.connections_opened, len(self.pool)), (1, 1))

    def test_without_a_stream_socket_via_is_the_connection_port(self) -> None:
        """From a UDP socket's address the connection's own port goes in Via."""
        link = self.link(local=SocketSpec("192.0.2.1", 5060))
        self.connect()
        self.assertEqual(link.via(), ("192.0.2.1", 40000))

    def test_refused_then_back_off(self) -> None:
        """A refused connection tells its waiters; a new link is refused for 1 s, then 2 s after a second failure."""
        self.link()
        self.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.failures, ["connection refused"])
        with self.assertRaises(LinkFailed) as caught:
            self.link()
        self.assertIn("connection to tcp:192.0.2.10:5060 failed: connection refused (next attempt in 1s)", str(caught.exception))
        self.reactor.advance(1)
        self.link()
        self.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.reactor.advance(1.5)
        self.assertRaises(LinkFailed, self.link)
        self.reactor.advance(0.5)
        self.link()
        self.assertEqual(self.counters.connection_failures, 2)

    def test_connect_timeout(self) -> None:
        """A connection that never opens fails after the connect timeout."""
        self.link()
        self.reactor.advance(stream.CONNECT_TIMEOUT + 1)
        self.assertEqual(self.failures, ["connect timed out"])
        self.assertEqual(len(self.pool), 0)

    def test_responses_go_to_the_transactions(self) -> None:
        """A framed response, even cut in pieces, reaches its transaction with the link's remote address as source."""
        link = self.link()
        self.connect()
        outcomes: list[int] = []
        request = b"REGISTER sip:r SIP/2.0\r\nContent-Length: 0\r\n\r\n"
        self.transactions.start(link, REMOTE, request, "z9hG4bKa", 1, lambda r: outcomes.append(r.status), lambda why: None, reliable=True)
        answer = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bKa\r\nFrom: <sip:a@r>;tag=1\r\n"
                  b"To: <sip:a@r>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
        self.protocol.dataReceived(answer[:30])
        self.protocol.dataReceived(answer[30:])
        self.assertEqual(outcomes, [200])

    def test_requests_answered_on_the_connection(self) -> None:
        """An OPTIONS from the registrar is answered 200 over the same connection; a ping gets a pong."""
        self.link()
        wire = self.connect()
        self.protocol.dataReceived(OPTIONS + b"\r\n\r\n")
        answer = wire.value()
        self.assertTrue(answer.startswith(b"SIP/2.0 200 OK\r\n"))
        self.assertTrue(answer.endswith(b"\r\n\r\n\r\n"))  # the pong after the answer
        self.assertIsInstance(parse_message(answer[:-2]), Response)

    def test_broken_framing_closes_and_fails_transactions(self) -> None:
        """A message without Content-Length breaks the stream: closed, its transactions end now with the reason."""
        link = self.link()
        wire = self.connect()
        reasons: list[str | None] = []
        self.transactions.start(link, REMOTE, b"R", "z9hG4bKb", 1, lambda r: None, reasons.append, reliable=True)
        self.protocol.dataReceived(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n")
        self.assertTrue(wire.disconnecting or wire.disconnected)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(reasons, ["connection to tcp:192.0.2.10:5060 lost: broken stream: no Content-Length (required over TCP and TLS)"])
        self.assertEqual(self.lost, [("tcp:192.0.2.10:5060", "broken stream: no Content-Length (required over TCP and TLS)")])
        self.assertEqual((self.counters.dropped_malformed, self.counters.connections_lost, len(self.pool)), (1, 1, 0))

    def test_keepalive_pings_and_missing_pong(self) -> None:
        """A ping every 30 s; once the peer has ponged, a ping without pong within 10 s closes the link."""
        self.link()
        wire = self.connect()
        self.reactor.advance(30)
        self.assertEqual(wire.value(), b"\r\n\r\n")
        self.protocol.dataReceived(b"\r\n")
        wire.clear()
        self.reactor.advance(30)
        self.assertEqual(wire.value(), b"\r\n\r\n")
        self.reactor.advance(PONG_TIMEOUT)
        self.assertEqual(self.counters.keepalive_failures, 1)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.lost, [("tcp:192.0.2.10:5060", f"no keep-alive pong within {PONG_TIMEOUT:g}s")])

    def test_peer_that_never_pongs_is_not_dropped(self) -> None:
        """Outside RFC 5626 outbound nothing obliges a pong: a peer that never sent one keeps its link."""
        self.link()
        wire = self.connect()
        self.reactor.advance(300)
        self.assertFalse(wire.disconnecting)
        self.assertEqual(self.counters.keepalive_failures, 0)

    def test_idle_link_closed_quietly(self) -> None:
        """A link no request used for IDLE_CLOSE seconds is closed; its records are not told to re-register."""
        link = self.link()
        wire = self.connect()
        link.send(b"REGISTER", REMOTE)
        self.reactor.advance(IDLE_CLOSE + 30)
        self.assertTrue(wire.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.lost, self.counters.connections_lost, len(self.pool)), ([], 0, 0))

    def test_congested_link_bounds_what_it_takes(self) -> None:
        """
        A paused transport (its buffer past 64 KiB, as any burst makes it)
        still takes requests, up to CONGESTED_MAX bytes more; beyond, sends
        fail until it drains.
        """
        self.patch(stream, "CONGESTED_MAX", 10)
        link = self.link()
        wire = self.connect()
        wire.producer.pauseProducing()
        link.send(b"12345", REMOTE)
        link.send(b"67890", REMOTE)
        self.assertRaises(OSError, link.send, b"X", REMOTE)
        wire.producer.resumeProducing()
        link.send(b"X", REMOTE)
        self.assertEqual(wire.value(), b"1234567890X")

    def test_waiters_bounded(self) -> None:
        """At most WAITING_MAX requests wait for one connection; the next fails at once."""
        self.patch(stream, "WAITING_MAX", 2)
        link = self.link()
        link.when_open(self.opened.append, self.failures.append)
        link.when_open(self.opened.append, self.failures.append)
        self.assertEqual(len(self.failures), 1)
        self.assertIn("2 requests already wait", self.failures[0])

    def test_incoming_connections_answered_and_bounded(self) -> None:
        """A registrar connecting back is answered on its connection; past INCOMING_MAX connections are refused."""
        self.patch(stream, "INCOMING_MAX", 1)
        factory = IncomingFactory(self.pool)
        first = factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 41000))
        wire = StringTransport()
        first.makeConnection(wire)
        first.dataReceived(OPTIONS)
        self.assertTrue(wire.value().startswith(b"SIP/2.0 200 OK"))
        second = factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 41001))
        other = StringTransport()
        second.makeConnection(other)
        self.assertTrue(other.disconnecting)
        self.assertEqual(self.pool.incoming, 1)

    def test_stop_closes_everything_quietly(self) -> None:
        """At shutdown every connection is closed and nobody is told to re-register."""
        self.link()
        wire = self.connect()
        self.pool.stop()
        self.assertTrue(wire.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.lost, [])


class HostileStreamTests(SynchronousTestCase):
    """Whatever a peer writes, in whatever pieces, nothing escapes the protocol and nothing grows without bound."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from([
        b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\x00\xff", b"SIP/2.0 200 OK\r\n", b"Content-Length: 5\r\n", b"l: 99999999\r\n",
        b"Via: SIP/2.0/TCP h;branch=z9hG4bKa\r\n", b"CSeq: 1 REGISTER\r\n", b"\r\n\r\nhello", OPTIONS, b"x" * 7000,
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n",
    ]), max_size=40), st.integers(1, 97))
    def test_any_bytes_in_any_cut(self, pieces: list[bytes], cut: int) -> None:
        reactor = MemoryReactorClock()
        counters = SipCounters()
        pool = StreamPool(reactor, TransactionLayer(reactor, counters), counters, keepalive=30)
        pool.answerer = RequestAnswerer(reactor, counters)
        link = pool.link("tcp", REMOTE, LOCAL, "")
        protocol = reactor.tcpClients[-1][2].buildProtocol(None)
        wire = StringTransport()
        protocol.makeConnection(wire)
        data = b"".join(pieces)
        for start in range(0, len(data), cut):
            protocol.dataReceived(data[start : start + cut])
            self.assertLessEqual(link._framer.pending, 65535 + cut)
            if wire.disconnecting:
                break
        reactor.advance(120)


class DescribeFailureTests(SynchronousTestCase):
    def test_reasons_read_well(self) -> None:
        """Each kind of connection failure becomes a short reason for last_error."""
        from OpenSSL import SSL

        from uacregistrant.net.stream import describe_failure
        from uacregistrant.net.tls import TlsIdentityError

        cases = [
            (ConnectionRefusedError(), "connection refused"),
            (ConnectionDone(), "closed by the peer"),
            (TlsIdentityError("certificate of 127.0.0.1:5061 is for DNS:other.test; not for registrar.test"),
             "certificate of 127.0.0.1:5061 is for DNS:other.test; not for registrar.test"),
            (SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]), "TLS failure: tlsv13 alert certificate required"),
        ]
        for error, expected in cases:
            self.assertEqual(describe_failure(Failure(error)), expected)


class ReviewFindingsTests(PoolCase):
    """What the review of the stream code found, each kept fixed."""

    def test_pongs_in_separate_reads_keep_the_link(self) -> None:
        """A peer answering each ping with a CRLF, each in its own read, is never taken for dead; pings keep their interval."""
        self.link()
        wire = self.connect()
        pings = []
        for _ in range(10):
            self.reactor.advance(10)
            if wire.value():
                pings.append(self.reactor.seconds())
                wire.clear()
                self.protocol.dataReceived(b"\r\n")
        self.assertEqual(pings, [30, 60, 90])
        self.assertFalse(wire.disconnecting)
        self.assertEqual(self.counters.keepalive_failures, 0)

    def test_replies_to_a_peer_that_does_not_read_are_bounded(self) -> None:
        """Pings from a peer that never reads our pongs: once paused, replies are dropped, and past the bound the link closes."""
        self.patch(stream, "CONGESTED_MAX", 100)
        self.link()
        wire = self.connect()
        wire.producer.pauseProducing()
        self.protocol.dataReceived(b"\r\n\r\n" * 60)
        self.assertEqual(wire.value(), b"")
        self.assertTrue(wire.disconnecting)

    def test_a_failure_that_cannot_be_described_still_closes_the_link(self) -> None:
        """An OpenSSL error of an unexpected shape: the link is still closed and its records told."""
        from OpenSSL import SSL

        link = self.link()
        self.connect()
        self.reactor.advance(10)
        self.protocol.connectionLost(Failure(SSL.SysCallError(104, "ECONNRESET")))
        self.assertFalse(link.open)
        self.assertEqual(len(self.pool), 0)
        self.assertEqual(len(self.lost), 1)

    def test_connect_raising_fails_the_waiters(self) -> None:
        """An exception while starting the connection fails its waiters at once (nothing waits for the walker)."""
        self.patch(StreamLink, "connect", lambda link: 1 / 0)
        self.link()
        self.assertEqual(len(self.failures), 1)
        self.assertIn("cannot open a connection: ZeroDivisionError", self.failures[0])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_quick_loss_backs_off(self) -> None:
        """A connection accepted and dropped at once (a TLS peer refusing our certificate) backs off like a refusal."""
        self.link()
        self.connect()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertRaises(LinkFailed, self.link)

    def test_shutdown_is_quiet(self) -> None:
        """Links still connecting at shutdown are not counted as failures."""
        self.link()
        self.pool.stop()
        self.assertEqual(self.counters.connection_failures, 0)
