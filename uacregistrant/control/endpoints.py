# -*- test-case-name: tests.unit.app.test_settings,tests.unit.app.test_preflight -*-
"""
Control endpoints as operators write them (Twisted's endpoint syntax):
C{unix:PATH[:mode=600]}, C{tcp:PORT[:interface=IP]}; parsed once, made
safe by default, checked before the daemon starts.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

from uacregistrant.sip.numbers import parse_digits


class ControlEndpointError(ValueError):
    """A control endpoint that cannot be used (one line for the operator)."""


def split_description(description: str) -> list[str]:
    """Split an endpoint description at unescaped colons, unescaping C{\\x}."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for c in description:
        if escaped:
            current.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


@dataclass(frozen=True, slots=True)
class ControlEndpoint:
    """
    A control endpoint: a UNIX socket (C{path}, C{mode}) or a loopback TCP
    port (C{port}, C{interface}).
    """

    kind: str
    path: str = ""
    mode: str = "600"
    port: int = 0
    interface: str = "127.0.0.1"

    @property
    def description(self) -> str:
        """The endpoint in Twisted's syntax (what the daemon listens on)."""
        if self.kind == "unix":
            return f"unix:{_escape(self.path)}:mode={self.mode}"
        kind = "tcp6" if ":" in self.interface else "tcp"
        return f"{kind}:{self.port}:interface={_escape(self.interface)}"

    def check(self) -> None:
        """
        Before anything is created: a UNIX socket's directory must exist and
        be writable, a TCP port must be free.

        @raise ControlEndpointError: saying which and why.
        """
        if self.kind == "unix":
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(directory):
                raise ControlEndpointError(f"control socket {self.path}: directory {directory} does not exist")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise ControlEndpointError(f"control socket {self.path}: directory {directory} is not writable")
            if os.path.lexists(self.path) and not _is_socket(self.path):
                raise ControlEndpointError(f"control socket {self.path}: a file that is not a socket is in the way")
            return
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.interface, self.port))
            except OSError as e:
                raise ControlEndpointError(f"cannot listen on control tcp:{self.port} at {self.interface}: {e.strerror}") from None


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def parse_http(description: str, what: str) -> ControlEndpoint:
    """
    Parse an HTTP endpoint (C{what}: metrics, MI): C{tcp:PORT} on 127.0.0.1
    (C{tcp6}: ::1) unless C{interface=IP} names another address, which
    the operator then chose to expose.

    @raise ControlEndpointError: for another kind, a bad port, or an
        interface that is not an IP address.
    """
    parts = split_description(description.strip())
    kind = parts[0].lower()
    positional = [p for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind not in ("tcp", "tcp6"):
        raise ControlEndpointError(f"{what} endpoint {description!r} must be tcp:PORT[:interface=IP]")
    port = parse_digits(named.pop("port", "") or (positional[0] if positional else ""), 65535)
    if port is None:
        raise ControlEndpointError(f"{what} endpoint {description!r}: the port must be 0-65535 in ASCII digits")
    interface = named.pop("interface", "::1" if kind == "tcp6" else "127.0.0.1")
    named.pop("backlog", None)
    if named or len(positional) > 1:
        raise ControlEndpointError(f"{what} endpoint {description!r}: unknown part(s) {', '.join(list(named) or positional[1:])}")
    try:
        interface = str(ipaddress.ip_address(interface))
    except ValueError:
        raise ControlEndpointError(f"{what} endpoint {description!r}: interface must be an IP address") from None
    return ControlEndpoint("tcp", port=port, interface=interface)


def parse_control(description: str) -> ControlEndpoint:
    """
    Parse a control endpoint, safe by default: a UNIX socket gets mode 0600
    unless a mode is given; TCP listens on 127.0.0.1 (C{tcp6}: ::1) unless a
    loopback interface is given; any other interface is refused.

    @raise ControlEndpointError: for another kind, a bad port or mode, or a
        non-loopback interface.
    """
    parts = split_description(description.strip())
    kind = parts[0].lower()
    positional = [p for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind == "unix":
        path = named.pop("address", None) or (positional[0] if positional else "")
        mode = named.pop("mode", "600")
        named.pop("lockfile", None)
        if not path:
            raise ControlEndpointError(f"control endpoint {description!r} lacks a path")
        if len(mode) > 4 or not all(c in "01234567" for c in mode):
            raise ControlEndpointError(f"control endpoint {description!r}: mode must be octal, e.g. 600")
        if named or len(positional) > 1:
            raise ControlEndpointError(f"control endpoint {description!r}: unknown part(s) {', '.join(list(named) or positional[1:])}")
        return ControlEndpoint("unix", path=path, mode=mode)
    if kind in ("tcp", "tcp6"):
        port_text = named.pop("port", None) or (positional[0] if positional else "")
        port = parse_digits(port_text, 65535)
        if port is None:
            raise ControlEndpointError(f"control endpoint {description!r}: the port must be 0-65535 in ASCII digits")
        interface = named.pop("interface", "::1" if kind == "tcp6" else "127.0.0.1")
        named.pop("backlog", None)
        if named or len(positional) > 1:
            raise ControlEndpointError(f"control endpoint {description!r}: unknown part(s) {', '.join(list(named) or positional[1:])}")
        try:
            loopback = ipaddress.ip_address(interface).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ControlEndpointError(f"control endpoint {description!r} must listen on a loopback interface")
        return ControlEndpoint("tcp", port=port, interface=interface)
    raise ControlEndpointError(f"control endpoint {description!r} must be unix:PATH or tcp:PORT")
