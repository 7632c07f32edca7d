"""
Tests for the HTTP base the metrics and MI sites share: raw HTTP through
a real L{BoundedSite} (fake clock, string transports) serving a small
page that echoes the body it was given.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from uacregistrant.control.http import IDLE_TIMEOUT, BoundedRequest, BoundedSite, NotFound, Page, Root, plain

BOUND = 1000


class Reply:
    """One HTTP response read off the wire."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def replies(raw: bytes) -> list[Reply]:
    """Every response in C{raw}, in order (bodies by Content-Length; a 1xx has none)."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        found.append(Reply(int(lines[0].split()[1]), headers, rest[:size]))
        raw = rest[size:]
    return found


class Echo(Page):
    """GET: "hello"; POST: the length of the body received."""

    methods = (b"GET", b"HEAD", b"POST")
    not_allowed = "method not allowed: GET, HEAD or POST"
    not_found = NotFound("not found: try /echo")

    def render_GET(self, request: Request) -> bytes:
        return plain(request, 200, "hello")

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        return plain(request, 200, f"got {len(request.content.read())}")


class EchoRequest(BoundedRequest):
    max_body = BOUND


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.made: list[BoundedRequest] = []
        self.site = BoundedSite(Root({b"echo": Echo()}, NotFound("not found: try /echo")), self.clock, self.recorded, max_connections=3)

    def recorded(self, *args: Any, **kwargs: Any) -> BoundedRequest:
        """An L{EchoRequest} the test can look into afterwards."""
        request = EchoRequest(*args, **kwargs)
        self.made.append(request)
        return request

    def connect(self) -> tuple[Any, StringTransport]:
        transport = StringTransport()
        channel = self.site.buildProtocol(None)
        channel.makeConnection(transport)
        return channel, transport

    def exchange(self, raw: bytes) -> tuple[list[Reply], StringTransport]:
        """Send C{raw} on a new connection, read what came back, close it."""
        channel, transport = self.connect()
        channel.dataReceived(raw)
        channel.connectionLost(Failure(ConnectionError("done")))
        return replies(transport.value()), transport


def post(body: bytes, extra: str = "") -> bytes:
    return f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


class ConnectionTests(Base):
    """At most max_connections at once; idle ones closed; no log, no tracebacks, no timers."""

    def test_cap(self) -> None:
        """The N+1th connection gets 503 and is closed; once one closes, a new one is served."""
        kept = [self.connect() for _ in range(3)]
        self.assertEqual(self.site.connections, 3)
        (busy,), refused = self.exchange(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((busy.status, busy.headers["connection"], busy.body), (503, "close", b"busy: too many connections at once\n"))
        self.assertTrue(refused.disconnecting)
        self.assertEqual(self.site.connections, 3)
        kept[0][0].connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.site.connections, 2)
        (reply,), transport = self.exchange(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((reply.status, reply.body), (200, b"hello\n"))
        self.assertEqual(self.site.connections, 2)  # that one is closed again

    def test_counted_out_when_closed_by_the_site(self) -> None:
        """A connection the site closes (Connection: close) is counted out when it is gone."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.site.connections, 0)

    def test_idle_timeout(self) -> None:
        """A connection that sends nothing more for IDLE_TIMEOUT is closed, mid-request or between requests."""
        first, half = self.connect()
        first.dataReceived(b"GET /echo HTTP/1.1\r\n")
        second, idle = self.connect()
        second.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(half.disconnecting or idle.disconnecting)
        self.clock.advance(2)
        self.assertTrue(half.disconnecting and idle.disconnecting)

    def test_quiet(self) -> None:
        """No tracebacks shown, no access log, no timer of its own."""
        self.assertFalse(self.site.displayTracebacks)
        self.site.doStart()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.exchange(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.site.doStop()


class BodyTests(Base):
    """Bodies kept in memory up to the bound; past it 413, no 100 Continue, closed, the rest never read."""

    def test_at_the_bound(self) -> None:
        """A body of exactly max_body bytes is read (in memory) and answered."""
        (reply,), _ = self.exchange(post(b"x" * BOUND))
        self.assertEqual((reply.status, reply.body), (200, b"got 1000\n"))

    def test_declared_over_the_bound(self) -> None:
        """A Content-Length over the bound: 413 at once, closed; what follows is neither kept nor parsed."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        (reply,) = replies(transport.value())
        self.assertEqual((reply.status, reply.headers["connection"], reply.body), (413, "close", b"request body over 1000 bytes\n"))
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"x" * 100000 + b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual([r.status for r in replies(transport.value())], [413])
        self.assertEqual(self.made[0].content.getvalue(), b"")  # type: ignore[union-attr]

    def test_chunked_over_the_bound(self) -> None:
        """A chunked body growing past the bound: 413 once it does, nothing kept beyond the bound."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(BOUND // 100):
            channel.dataReceived(b"64\r\n" + b"y" * 100 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"1\r\nz\r\n")
        self.assertEqual([r.status for r in replies(transport.value())], [413])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.made[0].content.getvalue(), b"y" * BOUND)  # type: ignore[union-attr]

    def test_no_100_continue_when_refused(self) -> None:
        """Expect: 100-continue with a body over the bound: only the 413 (twisted.web would send a 100 after it)."""
        (reply,), transport = self.exchange(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n")
        self.assertEqual(reply.status, 413)
        self.assertNotIn(b"100 Continue", transport.value())

    def test_100_continue_when_accepted(self) -> None:
        """Expect: 100-continue with a body within the bound: 100, then the body is read and answered."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"abc")
        self.assertEqual([(r.status, r.body) for r in replies(transport.value())], [(100, b""), (200, b"got 3\n")])

    def test_never_a_temporary_file(self) -> None:
        """Whatever the declared length, the body is kept in memory (twisted.web spools 100 kB and more to a file)."""
        channel, _ = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nxyz")
        self.exchange(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        self.assertEqual([type(r.content).__name__ for r in self.made], ["BytesIO", "BytesIO"])

    def test_no_body_accepted(self) -> None:
        """max_body 0: any body is 413 (the default text), none is fine (GET, or Content-Length: 0)."""
        self.site.requestFactory = BoundedRequest
        (reply,), _ = self.exchange(b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual((reply.status, reply.body), (413, b"no request body accepted\n"))
        (reply,), _ = self.exchange(b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(reply.status, 200)


class ResourceTests(Base):
    """Page, NotFound, Root: 404 and 405 as plain text."""

    def test_paths(self) -> None:
        """Only the root's children answer; below them and elsewhere 404, as one line of text, never cached."""
        for path in ("/", "/other", "/echo/", "/echo/x"):
            (reply,), _ = self.exchange(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            self.assertEqual((reply.status, reply.body), (404, b"not found: try /echo\n"), path)
            self.assertEqual((reply.headers["content-type"], reply.headers["cache-control"]), ("text/plain; charset=utf-8", "no-store"))

    def test_methods(self) -> None:
        """A method the page does not answer: 405 with Allow; HEAD by GET, without the body."""
        (reply,), _ = self.exchange(b"DELETE /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((reply.status, reply.headers["allow"], reply.body), (405, "GET, HEAD, POST", b"method not allowed: GET, HEAD or POST\n"))
        channel, transport = self.connect()
        channel.dataReceived(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))
