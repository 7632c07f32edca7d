# -*- test-case-name: tests.unit.app.test_preflight,tests.unit.app.test_secrets -*-
"""
Every check that can refuse a start, run by the service's
C{privilegedStartService} before it binds or creates anything (no table,
no socket file): the store is readable, every UDP, TCP and TLS socket and control
endpoint can be bound (a UNIX socket's owner and group can be given), the
control token file is private and holds a token.  A refusal is one line
for the operator.
"""

from __future__ import annotations

import errno
import socket

from uacregistrant.app.settings import ConfigError, Settings
from uacregistrant.control.endpoints import ControlEndpointError, read_token
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.store import IRegistrantStore, StoreError


def check_udp(spec: SocketSpec) -> None:
    """
    Bind C{spec} for a moment: the port is free and the address is one of
    this host's (TCP and TLS sockets as Twisted will: with SO_REUSEADDR,
    and listening).

    @raise ConfigError: naming the socket and the reason.
    """
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM if spec.stream else socket.SOCK_DGRAM) as probe:
        try:
            if spec.stream:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((spec.host, spec.port))
            if spec.stream:
                probe.listen(1)
        except OSError as e:
            reason = e.strerror or str(e)
            if e.errno == errno.EADDRNOTAVAIL:
                reason += " (not an address of this host)"
            raise ConfigError(f"cannot listen on {spec.name}: {reason}") from None


def preflight(settings: Settings, store: IRegistrantStore) -> None:
    """
    Run every start-up check, creating nothing.

    @raise ConfigError: with one line saying what is wrong.
    """
    if settings.cluster and not settings.db_url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("--cluster needs PostgreSQL (--db-url postgres://...): SQLite cannot coordinate several nodes")
    try:
        store.check()
    except StoreError as e:
        raise ConfigError(str(e)) from None
    for spec in settings.listen:
        check_udp(spec)
    try:
        for control in settings.control:
            control.check()
        if settings.control_token_file:
            read_token(settings.control_token_file)
    except ControlEndpointError as e:
        raise ConfigError(str(e)) from None
