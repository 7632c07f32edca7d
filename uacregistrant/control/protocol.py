# -*- test-case-name: tests.unit.test_control -*-
"""
The line-based control protocol: one command per line; the reply is a
status line, the body lines, then an empty line.  Usable with telnet or
socat; the connection stays open until C{quit}.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator, cast

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from .commands import Commands, Reply


class ControlProtocol(LineOnlyReceiver):
    """
    One admin connection.  Commands are answered in the order they came,
    even when one waits for the database.  After C{reg_events} the
    connection receives a line per state change until C{quit}.
    """

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, commands: Commands) -> None:
        self._commands = commands
        self._pending: deque[str] = deque()
        self._busy = False
        self._watching = False

    def lineReceived(self, line: bytes) -> None:
        """Queue a command; run it now unless one is still running."""
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            return
        self._pending.append(text)
        self._next()

    def _next(self) -> None:
        while self._pending and not self._busy and self.transport is not None:
            text = self._pending.popleft()
            if self._watching and text.lower() == "quit":
                self._stop_watching()
                self.transport.write(b"\n")
            result = self._commands.run(text)
            if isinstance(result, defer.Deferred):
                self._busy = True
                result.addCallback(self._finish)
                return
            self.sendReply(result)

    def _finish(self, reply: Reply) -> None:
        self._busy = False
        self.sendReply(reply)
        if not self._busy:
            self._next()

    def _finish_stream(self) -> None:
        if self.transport is not None:
            cast(IConsumer, self.transport).unregisterProducer()
            self.transport.write(b"\n")
        self._busy = False
        self._next()

    def sendReply(self, reply: Reply) -> None:
        """Write a reply; body lines never contain a newline."""
        if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
            return
        if reply.stream is not None:
            self.transport.write(reply.status_line.encode("utf-8") + b"\n")
            self._busy = True
            cast(IConsumer, self.transport).registerProducer(_BodyProducer(self, reply.stream), False)
            return
        lines = [reply.status_line, *(line.replace("\n", " ") for line in reply.body)]
        if reply.subscribe:
            self.transport.write(("\n".join(lines) + "\n").encode("utf-8"))
            if not self._watching:
                self._watching = True
                self._commands.events.subscribe(self._event)
            return
        self.transport.write(("\n".join(lines) + "\n\n").encode("utf-8"))
        if reply.close:
            self.transport.loseConnection()

    def _event(self, line: str) -> None:
        if self.transport is not None:
            self.transport.write(line.encode("utf-8") + b"\n")

    def _stop_watching(self) -> None:
        if self._watching:
            self._watching = False
            self._commands.events.unsubscribe(self._event)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop following events."""
        self._stop_watching()
        self._pending.clear()

    def lineLengthExceeded(self, line: bytes) -> None:
        """Refuse an over-long line and drop the connection."""
        self.sendReply(Reply(400, "Line too long", close=True))


@implementer(IPullProducer)
class _BodyProducer:
    """
    Writes a streamed body a slice at a time, each time the connection's
    buffer drains, so a listing of 100k records never stalls the reactor.
    """

    #: Bytes written per resumeProducing at most (roughly).
    SLICE = 256 * 1024

    def __init__(self, protocol: ControlProtocol, chunks: Iterator[str]) -> None:
        self._protocol = protocol
        self._chunks = chunks

    def resumeProducing(self) -> None:
        """Write the next slice; finish the reply at the end."""
        transport = self._protocol.transport
        if transport is None:
            return
        pieces: list[str] = []
        size = 0
        for chunk in self._chunks:
            pieces.append(chunk)
            size += len(chunk)
            if size >= self.SLICE:
                transport.write("".join(pieces).encode("utf-8"))
                return
        if pieces:
            transport.write("".join(pieces).encode("utf-8"))
        self._protocol._finish_stream()

    def stopProducing(self) -> None:
        """The connection went away: drop the rest."""
        self._chunks = iter(())


class ControlFactory(Factory):
    """Builds a L{ControlProtocol} per connection."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands

    def buildProtocol(self, addr: object) -> ControlProtocol:
        """A protocol bound to the shared command table."""
        protocol = ControlProtocol(self.commands)
        protocol.factory = self
        return protocol
