# -*- test-case-name: tests.unit.test_control -*-
"""
The line-based control protocol: one command per line; the reply is a
status line, the body lines, then an empty line.  Usable with telnet or
socat; the connection stays open until C{quit}.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from .commands import Commands, Reply


class ControlProtocol(LineOnlyReceiver):
    """One admin connection."""

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, commands: Commands) -> None:
        self._commands = commands

    def lineReceived(self, line: bytes) -> None:
        """Run a command and write its reply."""
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            return
        self.sendReply(self._commands.run(text))

    def sendReply(self, reply: Reply) -> None:
        """Write a reply; body lines never contain a newline."""
        assert self.transport is not None
        lines = [reply.status_line, *(line.replace("\n", " ") for line in reply.body), ""]
        self.transport.write(("\n".join(lines) + "\n").encode("utf-8"))
        if reply.close:
            self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        """Refuse an over-long line and drop the connection."""
        self.sendReply(Reply(400, "Line too long", close=True))


class ControlFactory(Factory):
    """Builds a L{ControlProtocol} per connection."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands

    def buildProtocol(self, addr: object) -> ControlProtocol:
        """A protocol bound to the shared command table."""
        protocol = ControlProtocol(self.commands)
        protocol.factory = self
        return protocol
