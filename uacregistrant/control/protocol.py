# -*- test-case-name: tests.unit.control.test_control,tests.unit.control.test_access -*-
"""
The line-based control protocol: one command per line; the reply is a
status line, the body lines, then an empty line.  Usable with telnet or
socat; the connection stays open until C{quit}.

Every connection's memory is bounded, whatever the client does: the
protocol is the connection's push producer, so when replies back up (a
client pipelining commands without reading, a huge listing to a slow
reader) it stops reading commands until the client has read; commands
already read wait in a bounded queue; a C{reg_events} subscriber that
falls too far behind is dropped with a last line saying why; a connection
idle for L{IDLE_TIMEOUT} (not following events) is closed; a connection
told to close is aborted if the client does not read its last line.

A TCP connection must first give the token (C{auth TOKEN}, the first line
of C{--control-token-file}): until then every command is answered
C{401 Unauthorized}, and the connection is closed after L{MAX_AUTH_FAILURES}
wrong tokens, L{MAX_UNAUTHENTICATED} commands, or L{AUTH_TIMEOUT} seconds.
A UNIX socket needs no token: its file permissions guard it.
"""

from __future__ import annotations

import hmac
from collections import deque
from typing import Iterator, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from uacregistrant.control.commands import Commands, Reply
from uacregistrant.control.endpoints import read_token

#: Bytes written per reactor turn at most while streaming a body.
SLICE = 256 * 1024
#: Bytes of commands read but not yet run, at most per connection (each
#: command also counts L{PENDING_OVERHEAD} for its own bookkeeping).
MAX_PENDING = 1 << 20
PENDING_OVERHEAD = 100
#: Commands run per reactor turn at most (the rest on later turns).
COMMANDS_PER_TURN = 10
#: reg_events bytes written to a subscriber that is not reading, at most.
MAX_EVENTS_BEHIND = 4 << 20
#: Control connections at once, at most.
MAX_CONNECTIONS = 64
#: Seconds without a command before a connection (not following events) is closed.
IDLE_TIMEOUT = 600.0
#: Seconds a closing connection gets to read its last line before it is cut.
CLOSE_GRACE = 10.0
#: Wrong tokens a TCP connection may give before it is closed.
MAX_AUTH_FAILURES = 3
#: Lines a TCP connection may send before giving the token, at most.
MAX_UNAUTHENTICATED = 10
#: Seconds a TCP connection has to give the token.
AUTH_TIMEOUT = 5.0
#: TCP connections waiting to give the token, at most per endpoint (the
#: others are refused at once: a client without the token cannot use up
#: the connections of those who have it).
MAX_WAITING_FOR_AUTH = 4
_UNAUTHORIZED = b"401 Unauthorized\n\n"


@implementer(IPushProducer)
class ControlProtocol(LineOnlyReceiver):
    """
    One admin connection.  Commands are answered in the order they came,
    even when one waits for the database.  After C{reg_events} the
    connection receives a line per state change until C{quit}.

    @param authenticate: whether the connection must give C{token} first
        (C{auth TOKEN}); with no token, no command is ever run.
    """

    delimiter = b"\n"
    #: The longest command line (a reg_upsert with every column is well under it).
    MAX_LENGTH = 8192

    def __init__(self, commands: Commands, clock: IReactorTime, authenticate: bool = False, token: bytes | None = None) -> None:
        self._commands = commands
        self._clock = clock
        self._token = token
        #: Whether commands may run (always on a UNIX socket).
        self.authenticated = not authenticate
        #: Counted among its factory's connections waiting for the token.
        self.waiting_for_auth = False
        self._auth_failures = 0
        self._unauthenticated_lines = 0
        self._auth_deadline: IDelayedCall | None = None
        self._pending: deque[tuple[str, int]] = deque()
        self._pending_bytes = 0
        self._busy = False
        self._stream: Iterator[str] | None = None
        self._paused = False
        self._closing = False
        self._watching = False
        self._behind = 0
        self._next_turn: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self._working = False
        self._ran = 0

    @property
    def idle(self) -> bool:
        """Whether nothing is waiting to be run or written."""
        return not (self._pending or self._busy or self._stream is not None)

    def connectionMade(self) -> None:
        """Be told when the client stops reading (the transport's buffer is full)."""
        assert self.transport is not None
        cast(IConsumer, self.transport).registerProducer(self, True)
        self._touch()
        if not self.authenticated:
            self._auth_deadline = self._clock.callLater(AUTH_TIMEOUT, self._auth_timed_out)

    def _touch(self) -> None:
        """A command came (or the connection opened): restart the idle clock."""
        if self._closing:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)
        else:
            self._idle = self._clock.callLater(IDLE_TIMEOUT, self._idled)

    def _idled(self) -> None:
        self._idle = None
        if self._paused:
            # The client has read nothing for that long: it keeps a slot
            # and memory for nothing.
            self._hang_up()
            self._cut()
            return
        if self._watching or not self.idle:
            self._touch()  # following events, or still answering: not idle
            return
        self._close_with(f"408 Idle for {IDLE_TIMEOUT:.0f} s: closing\n\n")

    # IPushProducer: called by the transport as its write buffer fills and drains.

    def pauseProducing(self) -> None:
        """The client is not reading: stop reading its commands too."""
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """The client has read what was written: carry on."""
        self._paused = False
        self._behind = 0
        self._touch()  # the client reads: it is not idle
        if self.transport is not None and not self._closing:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._work()

    def stopProducing(self) -> None:
        """The connection is going away."""
        self._stream = None
        self._pending.clear()

    # Commands.

    def lineReceived(self, line: bytes) -> None:
        """Queue a command (bounded); run it now unless the connection is busy or backed up."""
        if self._closing:
            return
        self._touch()
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            return
        if not self.authenticated:
            self._before_auth(text)
            return
        size = len(line) + 1 + PENDING_OVERHEAD
        if self._pending_bytes + size > MAX_PENDING:
            self._close_with(f"503 Too many commands waiting: read the replies before sending more (over {MAX_PENDING} bytes queued)\n\n")
            return
        self._pending.append((text, size))
        self._pending_bytes += size
        self._work()

    # Authentication (TCP).

    def _before_auth(self, text: str) -> None:
        """
        A line before the token: C{auth TOKEN} (compared in constant time),
        C{quit}, or a command answered C{401}.  Nothing is queued before
        authentication, so these replies keep the order of the lines.
        """
        assert self.transport is not None
        self._unauthenticated_lines += 1
        word, rest = _first_word(text)
        if word == "quit":
            self.sendReply(Reply(200, "Bye", close=True))
            return
        if word == "auth":
            if self._token is not None and hmac.compare_digest(rest.strip().encode("utf-8"), self._token):
                self.authenticated = True
                self._cancel_auth_deadline()
                self._stop_waiting_for_auth()
                self.transport.write(b"200 OK\n\n")
                return
            self._auth_failures += 1
        self.transport.write(_UNAUTHORIZED)
        if self._auth_failures >= MAX_AUTH_FAILURES or self._unauthenticated_lines >= MAX_UNAUTHENTICATED:
            self._hang_up()

    def _stop_waiting_for_auth(self) -> None:
        """This connection no longer waits for its token (it gave it, or it is gone)."""
        factory = self.factory
        if self.waiting_for_auth and isinstance(factory, ControlFactory):
            self.waiting_for_auth = False
            factory.waiting_for_auth -= 1

    def _auth_timed_out(self) -> None:
        self._auth_deadline = None
        if not self.authenticated:
            self._close_with(f"408 No token within {AUTH_TIMEOUT:.0f} s: closing\n\n")

    def _cancel_auth_deadline(self) -> None:
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._auth_deadline = None

    def _continue(self) -> None:
        self._next_turn = None
        self._ran = 0
        self._work()

    def _work(self) -> None:
        """
        Run queued commands and write streamed bodies while the client keeps
        up: at most L{COMMANDS_PER_TURN} commands before the reactor gets a
        turn, however they arrived.  Never re-entered: a command answered
        at once (a Deferred already fired) is followed by the loop, not by
        a nested call.
        """
        if self._working or self._next_turn is not None:
            return  # already running, or the next slice or batch waits for its turn
        self._working = True
        try:
            self._run_queue()
        finally:
            self._working = False

    def _run_queue(self) -> None:
        while not self._paused and not self._closing and self.transport is not None:
            if self._stream is not None:
                if not self._write_slice():
                    return
                continue
            if self._busy or not self._pending:
                return
            if self._ran >= COMMANDS_PER_TURN:
                self._next_turn = self._clock.callLater(0, self._continue)
                return
            self._ran += 1
            text, size = self._pending.popleft()
            self._pending_bytes -= size
            if self._watching and text.lower() == "quit":
                self._stop_watching()
                self.transport.write(b"\n")
            if _first_word(text)[0] == "auth":
                # Already authorised (again, or on a UNIX socket): the token
                # is never handed to the commands, nor logged.
                self.sendReply(Reply(200, "OK"))
                continue
            result = self._commands.run(text)
            if isinstance(result, defer.Deferred):
                self._busy = True
                result.addCallback(self._finish)
                if self._busy:
                    return  # waits for the database: _finish carries on
                continue
            self.sendReply(result)

    def _finish(self, reply: Reply) -> None:
        self._busy = False
        self.sendReply(reply)
        self._work()

    def _write_slice(self) -> bool:
        """
        Write up to L{SLICE} bytes of the streamed body; C{True} if the body
        is done (and the loop may go on), C{False} to wait for a later turn.
        """
        assert self._stream is not None and self.transport is not None
        pieces: list[str] = []
        size = 0
        for chunk in self._stream:
            pieces.append(chunk)
            size += len(chunk)
            if size >= SLICE:
                self.transport.write("".join(pieces).encode("utf-8"))
                if not self._paused and self._next_turn is None:
                    # Give the reactor a turn before the next slice.
                    self._next_turn = self._clock.callLater(0, self._continue)
                return False
        if pieces:
            self.transport.write("".join(pieces).encode("utf-8"))
        self.transport.write(b"\n")
        self._stream = None
        return True

    def sendReply(self, reply: Reply) -> None:
        """Write a reply; body lines never contain a newline."""
        if self.transport is None or self._closing:
            return
        if reply.stream is not None:
            self.transport.write(reply.status_line.encode("utf-8") + b"\n")
            self._stream = reply.stream
            return
        lines = [reply.status_line, *(line.replace("\n", " ") for line in reply.body)]
        if reply.subscribe:
            self.transport.write(("\n".join(lines) + "\n").encode("utf-8"))
            if not self._watching:
                self._watching = True
                self._behind = 0
                self._commands.events.subscribe(self._event, as_json=reply.events_json)
            return
        self.transport.write(("\n".join(lines) + "\n\n").encode("utf-8"))
        if reply.close:
            self._hang_up()

    # Events.

    def _event(self, line: str) -> None:
        if self.transport is None or self._closing:
            return
        data = line.encode("utf-8") + b"\n"
        if self._paused:
            self._behind += len(data)
            if self._behind > MAX_EVENTS_BEHIND:
                self._stop_watching()
                self._close_with(f"dropped: more than {MAX_EVENTS_BEHIND} bytes of events behind (read faster, or poll reg_list)\n")
                return
        self.transport.write(data)

    def _stop_watching(self) -> None:
        if self._watching:
            self._watching = False
            self._commands.events.unsubscribe(self._event)

    def _close_with(self, text: str) -> None:
        """Write a last line and close: the client broke a bound."""
        self._pending.clear()
        self._pending_bytes = 0
        self._stream = None
        if self.transport is not None and not self._closing:
            self.transport.write(text.encode("utf-8"))
            self._hang_up()

    def _hang_up(self) -> None:
        """
        Close after what was written; a client that does not read it within
        L{CLOSE_GRACE} seconds is cut off.  The protocol stops being the
        transport's producer first: a transport with a paused producer
        would wait for it rather than close.
        """
        if self.transport is None or self._closing:
            return
        self._closing = True
        cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()
        self._abort = self._clock.callLater(CLOSE_GRACE, self._cut)

    def _cut(self) -> None:
        self._abort = None
        if self.transport is not None:
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop following events; drop what was queued."""
        self._closing = True
        self._stop_watching()
        self._pending.clear()
        self._stream = None
        for call in (self._next_turn, self._idle, self._abort, self._auth_deadline):
            if call is not None and call.active():
                call.cancel()
        self._stop_waiting_for_auth()
        factory = self.factory
        if isinstance(factory, ControlFactory):
            factory.connections -= 1

    def lineLengthExceeded(self, line: bytes) -> None:
        """Refuse an over-long line and drop the connection."""
        self.sendReply(Reply(400, "Line too long", close=True))


def _first_word(text: str) -> tuple[str, str]:
    """A command line's first word (lower case) and the rest."""
    parts = text.split(None, 1)
    return parts[0].lower(), parts[1] if len(parts) > 1 else ""


class _Refuse(Protocol):
    """Says why and hangs up (too many connections)."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(f"503 {self._reason}\n\n".encode())
        self.transport.loseConnection()


class ControlFactory(Factory):
    """
    Builds a L{ControlProtocol} per connection, at most L{MAX_CONNECTIONS}
    at once, of which at most L{MAX_WAITING_FOR_AUTH} TCP connections that
    have not given the token yet.  One factory per endpoint: connections to
    one (a TCP port any local user reaches) never crowd out another's (the
    operators' UNIX socket).  TCP connections must authenticate with the token of
    C{token_file} (read when the first endpoint starts listening; without
    one, no TCP connection can run a command); UNIX socket connections
    need not.
    """

    def __init__(self, commands: Commands, clock: IReactorTime, token_file: str = "") -> None:
        self.commands = commands
        self.clock = clock
        self.connections = 0
        #: TCP connections that have not given the token yet.
        self.waiting_for_auth = 0
        self._token_file = token_file
        self._token: bytes | None = None

    def startFactory(self) -> None:
        """Read the token (checked by the start-up checks already)."""
        if self._token_file:
            self._token = read_token(self._token_file)

    def buildProtocol(self, addr: object) -> Protocol:
        """A protocol bound to the shared command table, or a refusal."""
        if self.connections >= MAX_CONNECTIONS:
            return _Refuse(f"Too many control connections (at most {MAX_CONNECTIONS})")
        authenticate = isinstance(addr, (IPv4Address, IPv6Address))
        if authenticate and self.waiting_for_auth >= MAX_WAITING_FOR_AUTH:
            return _Refuse(f"Too many connections waiting to authenticate (at most {MAX_WAITING_FOR_AUTH})")
        self.connections += 1
        protocol = ControlProtocol(self.commands, self.clock, authenticate=authenticate, token=self._token)
        protocol.factory = self
        if authenticate:
            protocol.waiting_for_auth = True
            self.waiting_for_auth += 1
        return protocol
