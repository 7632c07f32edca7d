# -*- test-case-name: tests.unit.control.test_http,tests.unit.control.test_metrics,tests.unit.control.test_mi -*-
"""
What the daemon's HTTP sites (C{/metrics} and C{/healthz}, OpenSIPS's
MI) share, so that no request from the network holds more than its
bound:

  - L{BoundedSite}: at most C{max_connections} connections at once (the
    next ones are answered 503 and closed at once), idle ones closed, no
    access log, no tracebacks shown;
  - L{BoundedRequest}: at most L{BoundedRequest.max_body} bytes of body
    kept, in memory (never a temporary file); a body over it is answered
    413 at once, without C{100 Continue}, and the connection closed, the
    rest never read;
  - plain-text answers (L{plain}, L{respond}, L{send}) and the resources
    L{Page} (405 for other methods), L{NotFound} and L{Root}.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

#: Seconds an HTTP connection may stay idle (waiting for a request, or reading one).
IDLE_TIMEOUT = 60.0
#: The content type of the plain-text answers.
PLAIN = b"text/plain; charset=utf-8"


def respond(request: Request, code: int, body: bytes, content_type: bytes | None = PLAIN) -> bytes:
    """Set the status and content type of an answer rendered at once; its body."""
    request.setResponseCode(code)
    if content_type is not None:
        request.setHeader(b"content-type", content_type)
    return body


def plain(request: Request, code: int, text: str) -> bytes:
    """A one-line plain-text answer rendered at once (never cached); its body."""
    request.setHeader(b"cache-control", b"no-store")
    return respond(request, code, (text + "\n").encode("utf-8"))


def send(request: Request, code: int, body: bytes, content_type: bytes) -> None:
    """Write a whole answer to a request answered later (C{NOT_DONE_YET}), and finish it."""
    respond(request, code, body, content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


class NotFound(Resource):
    """404 for every method and every path below, as one line of text."""

    isLeaf = True

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def render(self, request: Request) -> bytes:
        return plain(request, 404, self.text)


class Page(Resource):
    """
    A resource with nothing below it (L{not_found}) that answers its
    L{methods} only (405 with C{Allow} otherwise), each by its
    C{render_METHOD} (C{HEAD} by C{render_GET} when it has none).

    @cvar methods: the methods answered.
    @cvar not_allowed: the text of the 405.
    @cvar not_found: what answers any path below.
    """

    methods: tuple[bytes, ...] = (b"GET", b"HEAD")
    not_allowed = "method not allowed: GET or HEAD"
    not_found = NotFound("not found")

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self.not_found

    def render(self, request: Request) -> Any:
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            return plain(request, 405, self.not_allowed)
        return super().render(request)


class Root(Resource):
    """A site's root: its C{children} by name, C{not_found} for itself and everything else."""

    def __init__(self, children: Mapping[bytes, IResource], not_found: NotFound) -> None:
        super().__init__()
        self._not_found = not_found
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self._not_found

    def render(self, request: Request) -> bytes:
        return self._not_found.render(request)


class BoundedRequest(Request):
    """
    A request whose body is kept in memory up to L{max_body} bytes.  A
    longer one (by its declared length, or as a chunked body grows past
    it) is answered 413 at once, without C{100 Continue} even if asked
    for, and the connection closed: the rest is never read nor kept.

    @cvar max_body: the bytes of body accepted (0: no body at all).
    @ivar refused: the body was refused (the 413 is sent).
    """

    max_body = 0
    refused = False

    def too_large(self) -> tuple[bytes, bytes]:
        """The content type and body of the 413."""
        if self.max_body:
            return PLAIN, b"request body over %d bytes\n" % self.max_body
        return PLAIN, b"no request body accepted\n"

    def gotLength(self, length: int | None) -> None:
        """Keep the body in memory (never a temporary file); refuse a declared length over the bound."""
        self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a chunk, unless the body grows past the bound."""
        if self.refused:
            return
        content = self.content
        assert content is not None
        if content.tell() + len(data) > self.max_body:
            self._refuse()
            return
        content.write(data)

    def _refuse(self) -> None:
        self.refused = True
        # HTTPChannel sends "100 Continue" after gotLength when the client
        # asks for it: not for a body refused (nor on a closing connection).
        self.requestHeaders.removeHeader(b"expect")
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:
            return
        content_type, body = self.too_large()
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: " + content_type + b"\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        transport.loseConnection()

    def process(self) -> None:
        """Answer, unless the body was refused (answered already)."""
        if not self.refused:
            super().process()


class BoundedChannel(HTTPChannel):
    """An HTTP connection that its L{BoundedSite} counts while it lasts and that reads nothing once closing."""

    _counted: BoundedSite | None = None

    def connectionMade(self) -> None:
        """Count this connection in."""
        super().connectionMade()
        site = getattr(self, "site", None)
        if isinstance(site, BoundedSite):
            site.connections += 1
            self._counted = site

    def dataReceived(self, data: bytes) -> None:
        """Read, unless the connection is closing (a body refused, a timeout): what comes then is dropped."""
        if getattr(self.transport, "disconnecting", False):
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Count this connection out."""
        super().connectionLost(reason)
        site, self._counted = self._counted, None
        if site is not None:
            site.connections -= 1


class _Busy(Protocol):
    """Says the site is busy and hangs up (too many connections at once)."""

    BODY = b"busy: too many connections at once\n"

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: " + PLAIN + b"\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(self.BODY) + self.BODY
        )
        self.transport.loseConnection()


class BoundedSite(Site):
    """
    An HTTP site holding at most C{max_connections} connections (the next
    ones are answered 503 and closed), each closed after C{timeout}
    seconds idle, its requests' bodies bounded by C{request}; no access
    log (nor its once-a-second clock), no tracebacks shown.

    @param request: the request class (a L{BoundedRequest} with its bound).
    @ivar connections: the connections open now.
    """

    noisy = False
    displayTracebacks = False
    protocol = BoundedChannel  # type: ignore[assignment]

    def __init__(
        self, resource: IResource, clock: IReactorTime, request: type[BoundedRequest], max_connections: int, timeout: float = IDLE_TIMEOUT
    ) -> None:
        super().__init__(resource, requestFactory=request, timeout=timeout, reactor=clock)
        self.max_connections = max_connections
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        """An HTTP channel, or a 503 when too many are open."""
        if self.connections >= self.max_connections:
            return _Busy()
        return super().buildProtocol(addr)

    def startFactory(self) -> None:
        """No access log to open."""

    def stopFactory(self) -> None:
        """Nothing to close."""

    def log(self, request: Any) -> None:
        """No access log."""
