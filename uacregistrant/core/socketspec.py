# -*- test-case-name: tests.unit.core.test_socketspec,tests.unit.agent.test_client,tests.unit.app.test_preflight -*-
"""
Socket specifications: C{udp:HOST:PORT}, C{tcp:HOST:PORT} and
C{tls:HOST:PORT} as written in --listen and in the table's forced_socket
column.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from uacregistrant.sip.numbers import parse_digits


class SocketSpecError(ValueError):
    """A socket specification that cannot be understood."""


#: The transports a socket can be, in the order they are documented.
TRANSPORTS: Final = ("udp", "tcp", "tls")
#: Transports carried over a byte stream (connections, framing, keep-alives).
STREAM_TRANSPORTS: Final = frozenset({"tcp", "tls"})


@dataclass(frozen=True, slots=True)
class SocketSpec:
    """
    A local socket: host (IPv6 without brackets), port and transport.  A
    C{tcp:} or C{tls:} socket listens, and its address is the local end
    of outgoing connections.
    """

    host: str
    port: int
    transport: str = "udp"

    @property
    def name(self) -> str:
        """The canonical C{TRANSPORT:HOST:PORT} form."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"

    @property
    def stream(self) -> bool:
        """Whether this is a TCP or TLS socket."""
        return self.transport in STREAM_TRANSPORTS

    @property
    def ipv6(self) -> bool:
        """Whether the socket is of the IPv6 family."""
        return ":" in self.host


def parse_socket(text: str, default_port: int | None = None) -> SocketSpec:
    """
    Parse C{[udp:|tcp:|tls:]HOST[:PORT]}; IPv6 hosts in brackets.  The
    port defaults to 5060 (5061 for tls).

    @raise SocketSpecError: for another protocol, a bad host or a bad port.
    """
    rest = text.strip()
    transport = "udp"
    proto, sep, tail = rest.partition(":")
    if sep and proto.lower() in ("udp", "tcp", "tls", "sctp", "ws", "wss"):
        transport = proto.lower()
        if transport not in TRANSPORTS:
            raise SocketSpecError(f"{proto!r} sockets are not supported: use udp, tcp or tls")
        rest = tail
    port = default_port if default_port is not None else (5061 if transport == "tls" else 5060)
    if rest.startswith("["):
        end = rest.find("]")
        if end == -1:
            raise SocketSpecError(f"unterminated IPv6 address in {text!r}")
        host, tail = rest[1:end], rest[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise SocketSpecError(f"junk after the address in {text!r}")
            port = _port(tail[1:], text)
    else:
        if rest.count(":") > 1:
            raise SocketSpecError(f"write IPv6 addresses in brackets: {text!r}")
        host, colon, porttext = rest.partition(":")
        if colon:
            port = _port(porttext, text)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise SocketSpecError(f"not an IP address: {host!r} in {text!r}") from None
    return SocketSpec(host, port, transport)


def _port(text: str, original: str) -> int:
    port = parse_digits(text, 65535)
    if port is None:
        raise SocketSpecError(f"invalid port in {original[:200]!r}: write 0-65535 in ASCII digits")
    return port


def normalise_socket(text: str) -> str:
    """The canonical C{TRANSPORT:HOST:PORT} name of a socket specification."""
    return parse_socket(text).name
