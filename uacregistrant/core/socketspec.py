# -*- test-case-name: tests.unit.core.test_socketspec,tests.unit.agent.test_client,tests.unit.app.test_preflight -*-
"""
Socket specifications: C{udp:HOST:PORT} as written in --listen and in the
table's forced_socket column.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from uacregistrant.sip.numbers import parse_digits


class SocketSpecError(ValueError):
    """A socket specification that cannot be understood."""


@dataclass(frozen=True, slots=True)
class SocketSpec:
    """A local UDP socket: host (IPv6 without brackets) and port."""

    host: str
    port: int

    @property
    def name(self) -> str:
        """The canonical C{udp:HOST:PORT} form."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp:{host}:{self.port}"


def parse_socket(text: str, default_port: int = 5060) -> SocketSpec:
    """
    Parse C{[udp:]HOST[:PORT]}; IPv6 hosts in brackets.

    @raise SocketSpecError: for another protocol, a bad host or a bad port.
    """
    rest = text.strip()
    proto, sep, tail = rest.partition(":")
    if sep and proto.lower() in ("udp", "tcp", "tls", "sctp", "ws", "wss"):
        if proto.lower() != "udp":
            raise SocketSpecError(f"only udp sockets are supported, not {proto!r}")
        rest = tail
    port = default_port
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
    return SocketSpec(host, port)


def _port(text: str, original: str) -> int:
    port = parse_digits(text, 65535)
    if port is None:
        raise SocketSpecError(f"invalid port in {original[:200]!r}: write 0-65535 in ASCII digits")
    return port


def normalise_socket(text: str) -> str:
    """The canonical C{udp:HOST:PORT} name of a socket specification."""
    return parse_socket(text).name
