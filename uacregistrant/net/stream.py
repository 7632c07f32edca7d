# -*- test-case-name: tests.unit.net.test_stream -*-
"""
SIP over TCP and TLS: one connection per (transport, remote address,
local socket, TLS domain), shared by every record that sends there.

A L{StreamLink} is opened on demand and tells those waiting for it when
it is open (TLS: handshake and identity check done) or why it failed.  It
frames what it receives (L{StreamFramer}), hands responses to the
transaction layer, answers requests from the peer, pongs pings and sends
its own (RFC 5626 §4.4.1).  When it breaks, its transactions end at once
with the reason and the pool tells the transaction user, whose records
re-register over a new connection.  A failed connection is not retried
before a back-off (1 s doubling to 60 s); a link unused for long is closed.

Every queue is bounded: records waiting for a link to open, bytes
written while the peer does not read (the link pauses, and sends fail
until it drains), incoming connections.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import endpoints
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from uacregistrant.core.counters import SipCounters
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.tls import TlsPeerError
from uacregistrant.net.transaction_layer import Address, TransactionLayer
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.framing import FramingError, KeepAlive, StreamFramer
from uacregistrant.sip.message import Request, Response, parse_message
from uacregistrant.sip.sharing import Names

_log = Logger(namespace=__name__)

#: Seconds to wait for a connection (and its TLS handshake) to open.
CONNECT_TIMEOUT = 10.0
#: Back-off after a failed connection: first, and cap (seconds).
RECONNECT_FIRST = 1.0
RECONNECT_MAX = 60.0
#: A link over which no request went for this long is closed (seconds).
IDLE_CLOSE = 900.0
#: Seconds a ping waits for its pong (RFC 5626 §4.4.1).
PONG_TIMEOUT = 10.0
#: A link lost within this many seconds of opening backs off like a failed attempt.
QUICK_LOSS = 5.0
#: Records waiting at most for one link to open.
WAITING_MAX = 20000
#: Bytes a link accepts while its transport is paused (its buffer past
#: Twisted's 64 KiB mark, as a burst of requests in one reactor turn
#: makes it) before it refuses requests: the peer is not reading.
CONGESTED_MAX = 4 * 2**20
#: Incoming connections (a registrar connecting back) kept at most.
INCOMING_MAX = 256
#: Connections remembered as failed, for their back-off.
FAILURES_MAX = 4096

#: A link's key: C{(transport, ip, port, local socket name, TLS domain)}.
LinkKey = tuple[str, str, int, str, str]


class LinkFailed(Exception):
    """A connection could not be opened or broke; the message says why."""


def describe_failure(reason: Failure) -> str:
    """A short reason for a failed or broken connection, for C{last_error} (never raises)."""
    try:
        return _describe(reason.value)
    except Exception:
        return f"connection error ({type(reason.value).__name__})"


def _describe(error: BaseException | None) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return f"no connection within {CONNECT_TIMEOUT:g}s"
    if isinstance(error, ConnectionDone):
        return "closed by the peer"
    if isinstance(error, (LinkFailed, TlsPeerError)):
        return str(error)[:200]
    if type(error).__module__.startswith("OpenSSL"):
        args = getattr(error, "args", ())
        parts = args[0] if args and isinstance(args[0], list) else []
        detail = ", ".join(str(part[2]) for part in parts if isinstance(part, tuple) and len(part) > 2)
        return f"TLS failure: {detail or error or type(error).__name__}"[:200]
    if isinstance(error, ConnectionLost):
        return "connection reset or cut by the peer"
    if isinstance(error, ConnectError):
        os_error = getattr(error, "osError", None)
        return (str(os_error) if os_error else error.__class__.__doc__ or "connection error").strip()[:200]
    return f"{type(error).__name__}: {error}"[:200]


@implementer(IHandshakeListener, IPushProducer)
class _LinkProtocol(Protocol):
    """The bytes of one connection, for its L{StreamLink} (or an incoming one)."""

    def __init__(self, owner: "StreamLink | IncomingStream") -> None:
        self.owner = owner

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self.owner.made(self)

    def handshakeCompleted(self) -> None:
        self.owner.handshake_done()

    def dataReceived(self, data: bytes) -> None:
        self.owner.received(data)

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # type: ignore[assignment]
        self.owner.lost(reason)

    # The transport pauses us when its write buffer passes 64 KiB: the
    # owner bounds what it adds until the buffer drains.
    def pauseProducing(self) -> None:
        self.owner.congested = True

    def resumeProducing(self) -> None:
        self.owner.congested = False
        self.owner.written_while_congested = 0

    def stopProducing(self) -> None:
        pass


class _Endpoint(Factory):
    """Builds the protocol of one outgoing connection."""

    noisy = False

    def __init__(self, link: "StreamLink") -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _LinkProtocol:
        return _LinkProtocol(self.link)


class _Conversation:
    """What both outgoing and incoming connections do with what they receive."""

    congested = False
    written_while_congested = 0
    protocol: _LinkProtocol | None = None

    def __init__(self, pool: "StreamPool", remote: Address) -> None:
        self.pool = pool
        self.remote = remote
        self._framer = StreamFramer()
        self.last_received = pool.clock.seconds()

    def write(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None or protocol.transport is None:
            raise OSError("connection is not open")
        protocol.transport.write(data)

    def received(self, data: bytes) -> None:
        """Frame and dispatch; a broken stream closes the connection."""
        pool = self.pool
        self.last_received = pool.clock.seconds()
        try:
            items = self._framer.feed(data)
        except FramingError as e:
            pool.counters.dropped_malformed += 1
            self.close(f"broken stream: {e}")
            return
        if self._framer.take_pong():
            self.ponged()
        for item in items:
            if isinstance(item, KeepAlive):
                if item.ping:
                    self._try_write(b"\r\n")
                else:
                    self.ponged()
                continue
            try:
                message = parse_message(item, pool.names)
            except SipParseError:
                pool.counters.dropped_malformed += 1
                continue
            except Exception:
                pool.counters.dropped_malformed += 1
                continue
            if isinstance(message, Response):
                self.response(message)
            else:
                self.request(message)

    def request(self, request: Request) -> None:
        answerer = self.pool.answerer
        if answerer is None:
            self.pool.counters.dropped_requests += 1
            return
        try:
            answer = answerer.answer(request, self.remote)
        except Exception:
            self.pool.counters.dropped_requests += 1
            _log.failure("answering a request from {peer} failed", peer=self.remote)
            return
        if answer is not None:
            self._try_write(answer)

    def response(self, response: Response) -> None:
        self.pool.counters.dropped_no_transaction += 1

    def ponged(self) -> None:
        pass

    def _try_write(self, data: bytes) -> None:
        """Write a reply (pong, answer); while the peer does not read, drop it, and close past the bound."""
        if self.congested:
            self.written_while_congested += len(data)
            self.pool.counters.send_errors += 1
            if self.written_while_congested > CONGESTED_MAX:
                self.close("the peer does not read what it asks for")
            return
        try:
            self.write(data)
        except OSError:
            self.pool.counters.send_errors += 1

    def close(self, why: str) -> None:
        raise NotImplementedError

    def handshake_done(self) -> None:
        pass


class StreamLink(_Conversation):
    """
    One outgoing TCP or TLS connection (a L{DatagramSender} for the
    transaction layer: C{send} writes to the connection).

    @ivar key: the pool's key for it.
    @ivar open: whether requests can be written (TLS: verified).
    """

    #: No retransmissions over a stream.
    reliable = True

    def __init__(self, pool: "StreamPool", key: LinkKey, local: SocketSpec | None, via_port: int | None) -> None:
        super().__init__(pool, (key[1], key[2]))
        self.key = key
        self.transport_name = key[0]
        self.local = local
        self._via_port = via_port
        self.open = False
        self.closed = False
        self.last_used = pool.clock.seconds()
        self._waiting: list[tuple[Callable[[StreamLink], None], Callable[[str], None]]] = []
        self._ping_timer: IDelayedCall | None = None
        self._pong_due: float | None = None
        self._next_ping = 0.0
        #: Whether the peer has answered a ping (only then is a missing pong a failure).
        self.pongs = False
        self._closing_reason: str | None = None
        self._connecting: Any = None
        self._handshake_timer: IDelayedCall | None = None
        self.opened_at: float | None = None

    @property
    def name(self) -> str:
        """C{tcp:IP:PORT} or C{tls:IP:PORT} of the remote end."""
        host = f"[{self.remote[0]}]" if ":" in self.remote[0] else self.remote[0]
        return f"{self.transport_name}:{host}:{self.remote[1]}"

    def when_open(self, ready: Callable[["StreamLink"], None], failed: Callable[[str], None]) -> None:
        """Call C{ready(link)} once open (now, if it is), or C{failed(reason)}."""
        if self.open:
            ready(self)
            return
        if self.closed:
            failed(self._closing_reason or "connection closed")
            return
        if len(self._waiting) >= WAITING_MAX:
            failed(f"{WAITING_MAX} requests already wait for the connection to {self.name}")
            return
        self._waiting.append((ready, failed))

    def via(self) -> tuple[str, int]:
        """The Via sent-by: the connection's local address; the listen port of a stream socket."""
        protocol = self.protocol
        assert protocol is not None and protocol.transport is not None
        host: Any = protocol.transport.getHost()
        return str(host.host), self._via_port if self._via_port else int(host.port)

    def send(self, data: bytes, dest: Address) -> None:
        """Write a request; raises L{OSError} when the link cannot take it."""
        if not self.open:
            raise OSError(f"connection to {self.name} is not open")
        if self.congested:
            if self.written_while_congested + len(data) > CONGESTED_MAX:
                raise OSError(f"connection to {self.name} is congested ({CONGESTED_MAX // 2**20} MiB unsent: the peer does not read)")
            self.written_while_congested += len(data)
        self.last_used = self.pool.clock.seconds()
        self.write(data)

    def connect(self) -> None:
        """Open the connection (the pool calls this once)."""
        pool = self.pool
        ip, port = self.remote
        bind = None
        if self.local is not None and self.local.host not in ("0.0.0.0", "::"):
            bind = (self.local.host, 0)
        endpoint_type = endpoints.TCP6ClientEndpoint if ":" in ip else endpoints.TCP4ClientEndpoint
        endpoint: Any = endpoint_type(pool.reactor, ip, port, timeout=CONNECT_TIMEOUT, bindAddress=bind)
        if self.transport_name == "tls":
            context = pool.tls
            if context is None:
                self.failed("TLS is not configured")
                return
            endpoint = endpoints.wrapClientTLS(context.client_creator(self.key[4]), endpoint)
        d = endpoint.connect(_Endpoint(self))
        self._connecting = d
        # The TLS handshake must finish within the connect timeout too.
        self._handshake_timer = pool.clock.callLater(CONNECT_TIMEOUT + 1, self._handshake_timeout)
        d.addErrback(lambda reason: self.failed(self._closing_reason or describe_failure(reason)))

    def _cancel_handshake_timer(self) -> None:
        timer = self._handshake_timer
        self._handshake_timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def _handshake_timeout(self) -> None:
        self._handshake_timer = None
        if not self.open and not self.closed:
            self.close(f"no TLS handshake within {CONNECT_TIMEOUT:g}s" if self.transport_name == "tls" else "connect timed out")

    def made(self, protocol: _LinkProtocol) -> None:
        self.protocol = protocol
        if self.transport_name == "tcp":
            self._opened()

    def handshake_done(self) -> None:
        if self.transport_name == "tls" and not self.closed:
            self._opened()

    def _opened(self) -> None:
        self._cancel_handshake_timer()
        self.open = True
        self.opened_at = self.pool.clock.seconds()
        self.pool.opened(self)
        self._schedule_ping()
        waiting, self._waiting = self._waiting, []
        for ready, _ in waiting:
            try:
                ready(self)
            except Exception:
                _log.failure("a request waiting for {link} failed", link=self.name)

    def failed(self, reason: str) -> None:
        """The connection never opened (or could not even be attempted): its waiters hear why."""
        if self.closed:
            return
        self.closed = True
        self._closing_reason = reason
        self._cancel_handshake_timer()
        self.pool.failed(self, reason)
        waiting, self._waiting = self._waiting, []
        for _, failed in waiting:
            try:
                failed(reason)
            except Exception:
                _log.failure("a request waiting for {link} failed", link=self.name)

    def lost(self, reason: Failure) -> None:
        """The connection closed (after opening, or during a TLS handshake)."""
        self._cancel_ping()
        was_open, self.open = self.open, False
        why = self._closing_reason or describe_failure(reason)
        if not was_open:
            self.failed(why)
            return
        self.closed = True
        self._closing_reason = why
        self.pool.lost(self, why)

    def close(self, why: str) -> None:
        """Close the connection; C{why} becomes the reason its records hear."""
        if self._closing_reason is None:
            self._closing_reason = why
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        elif self._connecting is not None:
            self._connecting.cancel()

    def response(self, response: Response) -> None:
        self.pool.transactions.receive(response, self.remote, self)

    def ponged(self) -> None:
        self.pongs = True
        self._pong_due = None

    def _schedule_ping(self) -> None:
        pool = self.pool
        interval = pool.keepalive or 60.0
        self._next_ping = pool.clock.seconds() + interval
        self._ping_timer = pool.clock.callLater(interval, self._on_ping_timer)

    def _cancel_ping(self) -> None:
        timer = self._ping_timer
        self._ping_timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def _on_ping_timer(self) -> None:
        self._ping_timer = None
        if not self.open:
            return
        pool = self.pool
        now = pool.clock.seconds()
        if self._pong_due is not None and now >= self._pong_due:
            pool.counters.keepalive_failures += 1
            self.close(f"no keep-alive pong within {PONG_TIMEOUT:g}s")
            return
        # Longer than any transaction lives (64*T1, T1 at most 10 s): none is open.
        if now - self.last_used >= IDLE_CLOSE:
            pool.idle(self)
            self.close("closed when idle")
            return
        interval = pool.keepalive or 60.0
        if pool.keepalive and self._pong_due is None and now >= self._next_ping:
            self._try_write(b"\r\n\r\n")
            self._next_ping = now + interval
            if self.pongs:
                # Check for the pong, then wait out the rest of the interval.
                self._pong_due = now + PONG_TIMEOUT
                self._ping_timer = pool.clock.callLater(min(PONG_TIMEOUT, interval), self._on_ping_timer)
                return
        self._ping_timer = pool.clock.callLater(max(0.0, self._next_ping - now) or interval, self._on_ping_timer)


class IncomingStream(_Conversation):
    """A connection a peer opened to one of our stream sockets: requests are answered on it."""

    def __init__(self, pool: "StreamPool", remote: Address) -> None:
        super().__init__(pool, remote)
        self._idle_timer: IDelayedCall | None = None

    def made(self, protocol: _LinkProtocol) -> None:
        self.protocol = protocol
        if not self.pool.incoming_opened(self):
            self.close("too many incoming connections")
            return
        self._idle_timer = self.pool.clock.callLater(IDLE_CLOSE, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        idle = self.pool.clock.seconds() - self.last_received
        if idle >= IDLE_CLOSE:
            self.close("idle")
        else:
            self._idle_timer = self.pool.clock.callLater(IDLE_CLOSE - idle, self._check_idle)

    def lost(self, reason: Failure) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        self.pool.incoming_closed(self)

    def close(self, why: str) -> None:
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]


class IncomingFactory(Factory):
    """Accepts connections on a C{tcp:} or C{tls:} listen socket."""

    noisy = False

    def __init__(self, pool: "StreamPool") -> None:
        self.pool = pool

    def buildProtocol(self, addr: Any) -> _LinkProtocol:
        return _LinkProtocol(IncomingStream(self.pool, (str(addr.host), int(addr.port))))


class StreamPool:
    """
    Every TCP/TLS connection of the daemon.

    @ivar tls: the TLS context (set once loaded at start; C{None}: TLS
        links fail saying so).
    @ivar answerer: answers requests from peers (C{None}: they are dropped).
    @ivar keepalive: seconds between pings (0: none).
    @param on_lost: told of an open link that broke, with the reason (its
        records re-register).
    """

    def __init__(
        self,
        reactor: Any,
        transactions: TransactionLayer,
        counters: SipCounters,
        names: Names | None = None,
        keepalive: float = 30.0,
        on_lost: Callable[[StreamLink, str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.transactions = transactions
        self.counters = counters
        self.names = names
        self.keepalive = keepalive
        self.tls: Any = None
        self.answerer: Any = None
        self.on_lost = on_lost
        self._links: dict[LinkKey, StreamLink] = {}
        # key -> (no new attempt before, failures in a row, reason)
        self._failures: dict[LinkKey, tuple[float, int, str]] = {}
        self._incoming: set[IncomingStream] = set()
        self._stopping = False
        #: Listen port of each stream socket by name (known once bound; port 0 resolved).
        self.listen_ports: dict[str, int] = {}

    def __len__(self) -> int:
        """Outgoing links (connecting or open)."""
        return len(self._links)

    @property
    def incoming(self) -> int:
        """Incoming connections open."""
        return len(self._incoming)

    def link(self, transport: str, remote: Address, local: SocketSpec | None, domain: str) -> StreamLink:
        """
        The link to C{remote}, opening it if needed.

        @param local: the socket whose address the connection goes from
            (a stream socket: its listen port goes in Via), or C{None}.
        @param domain: the TLS reference identity (ignored for TCP).
        @raise LinkFailed: within the back-off after a failed attempt.
        """
        name = local.name if local is not None else ""
        key: LinkKey = (transport, remote[0], remote[1], name, domain if transport == "tls" else "")
        link = self._links.get(key)
        if link is not None:
            return link
        failure = self._failures.get(key)
        now = self.clock.seconds()
        if failure is not None and failure[0] > now:
            raise LinkFailed(f"{failure[2]} (next attempt in {failure[0] - now:.0f}s)")
        via_port = None
        if local is not None and local.stream and local.transport == transport:
            via_port = self.listen_ports.get(local.name)  # only where it listens
        link = self._links[key] = StreamLink(self, key, local, via_port)
        try:
            link.connect()
        except Exception as e:
            _log.failure("opening {link} failed", link=link.name)
            link.failed(f"cannot open a connection: {type(e).__name__}: {e}"[:200])
        return link

    def opened(self, link: StreamLink) -> None:
        self.counters.connections_opened += 1
        host, port = link.via()
        _log.info("connected to {link} from {local}", link=link.name, local=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def failed(self, link: StreamLink, reason: str) -> None:
        """A link never opened: back off before the next attempt."""
        if self._links.get(link.key) is link:
            del self._links[link.key]
        if self._stopping:
            return
        self.counters.connection_failures += 1
        self._back_off(link, reason)
        _log.warn("cannot connect to {link}: {reason}", link=link.name, reason=reason)

    def _back_off(self, link: StreamLink, reason: str) -> None:
        """No new attempt at C{link}'s key for a while (1 s doubling to 60 s)."""
        now = self.clock.seconds()
        _, count, _ = self._failures.get(link.key, (0.0, 0, ""))
        if link.key not in self._failures and len(self._failures) >= FAILURES_MAX:
            for key in [k for k, v in self._failures.items() if v[0] <= now]:
                del self._failures[key]
        if len(self._failures) < FAILURES_MAX or link.key in self._failures:
            delay = min(RECONNECT_MAX, RECONNECT_FIRST * (1 << min(count, 16)))
            self._failures[link.key] = (now + delay, count + 1, f"connection to {link.name} failed: {reason}")

    def lost(self, link: StreamLink, reason: str) -> None:
        """An open link broke: its transactions end now; its records hear of it."""
        if self._links.get(link.key) is link:
            del self._links[link.key]
        idle = self._stopping or reason == "closed when idle"
        if not idle and link.opened_at is not None and self.clock.seconds() - link.opened_at < QUICK_LOSS:
            # Accepted, then dropped at once (a TLS peer refusing our
            # certificate, a peer closing every connection): back off as
            # for a failed attempt.
            self._back_off(link, reason)
        else:
            self._failures.pop(link.key, None)  # it worked for a while: the next failure starts the back-off anew
        if not idle:
            self.counters.connections_lost += 1
            _log.warn("connection to {link} lost: {reason}", link=link.name, reason=reason)
        self.transactions.abort(link, f"connection to {link.name} lost: {reason}")
        if not idle and self.on_lost is not None:
            try:
                self.on_lost(link, reason)
            except Exception:
                _log.failure("handling the loss of {link} failed", link=link.name)

    def idle(self, link: StreamLink) -> None:
        _log.info("closing {link}: no request for {idle:g}s", link=link.name, idle=IDLE_CLOSE)

    def incoming_opened(self, stream: IncomingStream) -> bool:
        if len(self._incoming) >= INCOMING_MAX:
            return False
        self._incoming.add(stream)
        return True

    def incoming_closed(self, stream: IncomingStream) -> None:
        self._incoming.discard(stream)

    def stop(self) -> None:
        """Close every connection (service shutdown); nobody is told."""
        self._stopping = True
        self.on_lost = None
        for link in list(self._links.values()):
            link.close("shutting down")
        for stream in list(self._incoming):
            stream.close("shutting down")
