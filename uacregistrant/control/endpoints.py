# -*- test-case-name: tests.unit.app.test_settings,tests.unit.app.test_preflight,tests.unit.control.test_access -*-
"""
Control endpoints as operators write them (Twisted's endpoint syntax):
C{unix:PATH[:mode=600][:owner=USER][:group=GROUP]}, C{tcp:PORT[:interface=IP]};
parsed once, made safe by default, checked before the daemon starts.  And
the token a TCP control connection must give first (L{read_token}).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from typing import Callable

from uacregistrant.sip.numbers import parse_digits

#: The shortest token accepted, in characters.
MIN_TOKEN = 16
#: The longest token accepted, in characters (the file's first line).
MAX_TOKEN = 1024


class ControlEndpointError(ValueError):
    """A control endpoint that cannot be used (one line for the operator)."""


class ControlTokenError(ControlEndpointError):
    """The control token file cannot be used (one line, never the token)."""


def read_token(path: str) -> bytes:
    """
    The token in C{path}: its first line, stripped.  The file must be a
    regular file that neither its group nor others may read or write
    (C{chmod 600}), and the token at least L{MIN_TOKEN} visible ASCII
    characters.  The checks are made on the file opened, not on its name.

    @raise ControlTokenError: saying what is wrong, without the token.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ControlTokenError(f"control token file {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ControlTokenError(f"control token file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ControlTokenError(
                f"control token file {path} may be read or written by other users (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            first = f.readline(MAX_TOKEN + 2)
    except OSError as e:
        raise ControlTokenError(f"control token file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    token = first.strip()
    if not all(0x21 <= c <= 0x7E for c in token):
        raise ControlTokenError(f"control token file {path}: the token (its first line) must be visible ASCII characters, no spaces")
    if not MIN_TOKEN <= len(token) <= MAX_TOKEN:
        raise ControlTokenError(
            f"control token file {path}: the token (its first line) must be {MIN_TOKEN} to {MAX_TOKEN} characters "
            f"(e.g. openssl rand -hex 32 > {path})"
        )
    return token


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
    A control endpoint: a UNIX socket (C{path}, C{mode}, and the C{owner}
    and C{group} given to it once bound, -1 for unchanged) or a loopback
    TCP port (C{port}, C{interface}).
    """

    kind: str
    path: str = ""
    mode: str = "600"
    port: int = 0
    interface: str = "127.0.0.1"
    owner: int = -1
    group: int = -1

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
            self._check_ownership()
            return
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.interface, self.port))
            except OSError as e:
                raise ControlEndpointError(f"cannot listen on control tcp:{self.port} at {self.interface}: {e.strerror}") from None


    def _check_ownership(self) -> None:
        """Only root may give the socket to another user, or to a group it is not in."""
        if os.geteuid() == 0:
            return
        if self.owner not in (-1, os.geteuid()):
            raise ControlEndpointError(f"control socket {self.path}: owner={self.owner} needs root (the daemon runs as uid {os.geteuid()})")
        if self.group not in (-1, os.getegid(), *os.getgroups()):
            raise ControlEndpointError(f"control socket {self.path}: group={self.group} needs root, or a daemon user in that group")

    def apply_ownership(self) -> None:
        """
        Give a UNIX socket its C{owner} and C{group} (right after it is
        bound, before the reactor accepts a connection on it).

        @raise OSError: if the socket cannot be changed.
        """
        if self.kind == "unix" and (self.owner != -1 or self.group != -1):
            os.chown(self.path, self.owner, self.group)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def _split(description: str) -> tuple[str, list[str], dict[str, str]]:
    """An endpoint's kind (lower case), positional parts and named parts."""
    parts = split_description(description.strip())
    positional = [p for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return parts[0].lower(), positional, named


def _tcp(kind: str, positional: list[str], named: dict[str, str], what: str, description: str, loopback: bool = False) -> ControlEndpoint:
    """
    C{tcp:PORT[:interface=IP]} (C{tcp6}: ::1 by default, else 127.0.0.1);
    the interface an IP address, a loopback one if C{loopback}.
    """
    port = parse_digits(named.pop("port", "") or (positional[0] if positional else ""), 65535)
    if port is None:
        raise ControlEndpointError(f"{what} endpoint {description!r}: the port must be 0-65535 in ASCII digits")
    interface = named.pop("interface", "::1" if kind == "tcp6" else "127.0.0.1")
    named.pop("backlog", None)
    if named or len(positional) > 1:
        raise ControlEndpointError(f"{what} endpoint {description!r}: unknown part(s) {', '.join(list(named) or positional[1:])}")
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        address = None
    if loopback and (address is None or not address.is_loopback):
        raise ControlEndpointError(f"{what} endpoint {description!r} must listen on a loopback interface")
    if address is None:
        raise ControlEndpointError(f"{what} endpoint {description!r}: interface must be an IP address")
    return ControlEndpoint("tcp", port=port, interface=str(address))


def parse_http(description: str, what: str) -> ControlEndpoint:
    """
    Parse an HTTP endpoint (C{what}: metrics, MI): C{tcp:PORT} on 127.0.0.1
    (C{tcp6}: ::1) unless C{interface=IP} names another address, which
    the operator then chose to expose.

    @raise ControlEndpointError: for another kind, a bad port, or an
        interface that is not an IP address.
    """
    kind, positional, named = _split(description)
    if kind not in ("tcp", "tcp6"):
        raise ControlEndpointError(f"{what} endpoint {description!r} must be tcp:PORT[:interface=IP]")
    return _tcp(kind, positional, named, what, description)


def parse_control(description: str) -> ControlEndpoint:
    """
    Parse a control endpoint, safe by default: a UNIX socket gets mode 0600
    unless a mode is given, and the C{owner} and C{group} named (user and
    group names or numeric ids, looked up now); TCP listens on 127.0.0.1
    (C{tcp6}: ::1) unless a loopback interface is given; any other
    interface is refused.

    @raise ControlEndpointError: for another kind, a bad port or mode, an
        unknown user or group, or a non-loopback interface.
    """
    kind, positional, named = _split(description)
    if kind == "unix":
        path = named.pop("address", None) or (positional[0] if positional else "")
        mode = named.pop("mode", "600")
        named.pop("lockfile", None)
        owner = _user(named.pop("owner", None), description)
        group = _group(named.pop("group", None), description)
        if not path:
            raise ControlEndpointError(f"control endpoint {description!r} lacks a path")
        if not mode or len(mode) > 4 or not all(c in "01234567" for c in mode):
            raise ControlEndpointError(f"control endpoint {description!r}: mode must be octal, e.g. 600")
        if named or len(positional) > 1:
            raise ControlEndpointError(f"control endpoint {description!r}: unknown part(s) {', '.join(list(named) or positional[1:])}")
        return ControlEndpoint("unix", path=path, mode=mode, owner=owner, group=group)
    if kind in ("tcp", "tcp6"):
        return _tcp(kind, positional, named, "control", description, loopback=True)
    raise ControlEndpointError(f"control endpoint {description!r} must be unix:PATH or tcp:PORT")


#: The largest user or group id (2^32 - 1 is chown's "unchanged").
_MAX_ID = 2**32 - 2


def _user(name: str | None, description: str) -> int:
    """C{owner=}: a user name or a numeric uid (-1: not given)."""
    return _account_id(name, description, "owner", "user", lambda n: pwd.getpwnam(n).pw_uid)


def _group(name: str | None, description: str) -> int:
    """C{group=}: a group name or a numeric gid (-1: not given)."""
    return _account_id(name, description, "group", "group", lambda n: grp.getgrnam(n).gr_gid)


def _account_id(name: str | None, description: str, part: str, what: str, lookup: Callable[[str], int]) -> int:
    """A numeric id as given, or the id C{lookup} finds for a name (-1: not given)."""
    if name is None:
        return -1
    number = parse_digits(name, _MAX_ID)
    if number is not None:
        return number
    try:
        return lookup(name)
    except (KeyError, ValueError):
        raise ControlEndpointError(f"control endpoint {description!r}: no {what} named {name[:40]!r} ({part}=)") from None
