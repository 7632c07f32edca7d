# -*- test-case-name: tests.unit.sip.test_framing -*-
"""
SIP over a byte stream (RFC 3261 §18.3): cutting TCP/TLS bytes into
messages by their Content-Length, and the RFC 5626 §4.4.1 keep-alives
between them (a double CRLF ping, a single CRLF pong).

Pure: bytes in, messages out.  Every buffer is bounded: a header section
or a message larger than the cap, a missing or malformed Content-Length,
are a L{FramingError}, after which the stream cannot be trusted and the
connection must be closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.numbers import is_digits

#: Largest message accepted (header section and body), as for datagrams.
MAX_MESSAGE: Final = 65535

_CONTENT_LENGTH: Final = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


class FramingError(SipParseError):
    """The stream cannot be cut into messages any more: close the connection."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """
    A keep-alive between messages: C{ping} is a double CRLF (answer it with
    a single CRLF), otherwise a single CRLF (the pong to our ping).
    """

    ping: bool


PING: Final = KeepAlive(ping=True)
PONG: Final = KeepAlive(ping=False)


class StreamFramer:
    """
    Feed it the bytes of one connection as they arrive; it returns each
    complete message (header section and body, as one C{bytes} for
    L{uacregistrant.sip.message.parse_message}) and each keep-alive.
    """

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = b""
        self._max = max_message

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished message."""
        return len(self._buffer)

    def take_pong(self) -> bool:
        """
        Whether all that is held is one CRLF, which is then taken as the
        peer's pong (a ping cut after its first CRLF would be taken so too:
        a client is rarely pinged, and a pong must not wait for more bytes).
        """
        if self._buffer == b"\r\n":
            self._buffer = b""
            return True
        return False

    def feed(self, data: bytes) -> list[bytes | KeepAlive]:
        """
        The messages and keep-alives that C{data} completes, in order.

        @raise FramingError: the stream is broken (oversized, no usable
            Content-Length); nothing more may be read from it.
        """
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes | KeepAlive] = []
        while buffer:
            if buffer[:1] in (b"\r", b"\n"):
                if buffer.startswith(b"\r\n\r\n"):
                    out.append(PING)
                    buffer = buffer[4:]
                    continue
                if buffer.startswith(b"\r\n"):
                    if len(buffer) < 4 and b"\r\n\r\n".startswith(buffer):
                        break  # maybe a ping cut in two: wait for the rest
                    out.append(PONG)
                    buffer = buffer[2:]
                    continue
                if buffer == b"\r":
                    break
                raise FramingError("a bare CR or LF between messages")
            end = buffer.find(b"\r\n\r\n")
            if end == -1:
                if len(buffer) > self._max:
                    raise FramingError(f"a header section longer than {self._max} bytes")
                break
            head = buffer[: end + 4]
            length = _content_length(head)
            total = len(head) + length
            if total > self._max:
                raise FramingError(f"a message of {total} bytes (at most {self._max})")
            if len(buffer) < total:
                break
            out.append(buffer[:total])
            buffer = buffer[total:]
        self._buffer = buffer
        return out


def _content_length(head: bytes) -> int:
    """The one Content-Length of a header section (required on streams)."""
    values = _CONTENT_LENGTH.findall(head)
    if not values:
        raise FramingError("no Content-Length (required over TCP and TLS)")
    if len(values) > 1 and len(set(values)) > 1:
        raise FramingError("conflicting Content-Length headers")
    text = values[0].decode("ascii", "replace")
    if not is_digits(text) or len(text) > 9:
        raise FramingError(f"invalid Content-Length {text[:20]!r}")
    return int(text)
