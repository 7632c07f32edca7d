# -*- test-case-name: tests.unit.net.test_transport,tests.unit.net.test_incoming,tests.unit.sip.test_fuzz -*-
"""
One UDP socket: a L{DatagramProtocol} that sends requests, hands parsed
responses to the transaction layer, and sends back the stateless answers
of a L{RequestAnswerer} to the requests peers send (OPTIONS pings).

Whatever arrives, nothing escapes C{datagramReceived}: garbage, requests
not answered, oversized or truncated datagrams are counted and dropped,
and logged at most once a minute per source, in one line.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from uacregistrant.core.counters import SipCounters
from uacregistrant.core.loglimit import LogLimit
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.incoming import RequestAnswerer
from uacregistrant.net.transaction_layer import Address, TransactionLayer
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import Request, Response, parse_message
from uacregistrant.sip.sharing import Names

#: The largest datagram read (the UDP maximum): the port is opened with
#: this C{maxPacketSize}, so nothing is cut short by the socket read.
MAX_DATAGRAM = 65535

_log = Logger(namespace=__name__)


#: Socket buffer size asked for: a burst of answers must not overflow it
#: while the daemon is busy (the kernel default, about 200 KiB, holds
#: some 500 responses).
SOCKET_BUFFER = 8 * 2**20


def enlarge_buffers(sock: socket.socket) -> None:
    """Ask for big send/receive buffers; beyond rmem_max only root may."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        for option in (force, plain):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
                break
            except OSError:
                continue


class SipTransport(DatagramProtocol):
    """
    A listening UDP socket shared by every record that sends from it.

    @ivar spec: the configured socket (port 0 is replaced once bound).
    @ivar answerer: what answers the requests received; without one they
        are dropped (and counted in C{dropped_requests}).
    """

    def __init__(
        self,
        spec: SocketSpec,
        transactions: TransactionLayer,
        counters: SipCounters,
        clock: IReactorTime,
        names: Names | None = None,
        *,
        answerer: RequestAnswerer | None = None,
    ) -> None:
        self.spec = spec
        self.answerer = answerer
        self._names = names
        self.configured_name = spec.name
        self._transactions = transactions
        self._counters = counters
        self._clock = clock
        self._local_ips: dict[str, str] = {}
        self._sendto: Any = None
        self._noise: LogLimit[str] = LogLimit()

    def startProtocol(self) -> None:
        """Learn the bound port (for port 0); enlarge the socket's buffers."""
        assert self.transport is not None
        host = self.transport.getHost()
        self.spec = SocketSpec(self.spec.host, host.port)
        handle = getattr(self.transport, "getHandle", None)
        if handle is not None:
            sock = handle()
            enlarge_buffers(sock)
            if isinstance(sock, socket.socket):
                self._sendto = sock.sendto

    def stopProtocol(self) -> None:
        """The socket is closed: sends fail from now on."""
        self._sendto = None

    def send(self, data: bytes, dest: Address) -> None:
        """
        Send a datagram; raises L{OSError} when the socket refuses.

        Straight to the socket when there is one: the port's C{write}
        re-validates the address text on every call, and ours is always a
        resolved IP literal (a bad one fails in C{sendto} all the same).
        """
        sendto = self._sendto
        if sendto is None:
            if self.transport is None:
                raise OSError("socket is not listening")
            self.transport.write(data, dest)
            return
        try:
            sendto(data, dest)
        except InterruptedError:
            sendto(data, dest)
        except ConnectionRefusedError:
            pass  # an ICMP error from an earlier datagram: UDP goes on

    def via_host(self, dest_ip: str) -> str:
        """
        The address to put in Via for a request to C{dest_ip}: the bound
        address, or for a wildcard socket the source address the kernel
        would pick (found with an unsent, connected UDP socket; cached).
        """
        host = self.spec.host
        if host not in ("0.0.0.0", "::"):
            return host
        cached = self._local_ips.get(dest_ip)
        if cached is None:
            family = socket.AF_INET6 if ":" in dest_ip else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((dest_ip, 9))
                    cached = str(probe.getsockname()[0])
                except OSError:
                    cached = "127.0.0.1" if family == socket.AF_INET else "::1"
            self._local_ips[dest_ip] = cached
        return cached

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Parse, filter and dispatch one datagram."""
        counters = self._counters
        counters.datagrams_received += 1
        if len(datagram) >= MAX_DATAGRAM:
            # As large as a read can return: it may have been cut short.
            counters.dropped_oversized += 1
            self._noisy(addr, f"dropped a datagram of {len(datagram)} bytes or more")
            return
        if not datagram.strip():
            return  # keep-alive (RFC 5626 CRLF)
        try:
            message = parse_message(datagram, self._names)
        except SipParseError as e:
            counters.dropped_malformed += 1
            self._noisy(addr, f"dropped a malformed datagram ({len(datagram)} bytes): {str(e)[:120]}")
            return
        except Exception as e:
            counters.dropped_malformed += 1
            self._noisy(addr, f"the parser failed on a datagram ({len(datagram)} bytes): {type(e).__name__}: {str(e)[:120]}")
            return
        if not isinstance(message, Response):
            self._answer(message, addr)
            return
        try:
            self._transactions.receive(message, (addr[0], addr[1]), self)
        except Exception as e:
            self._noisy(addr, f"handling a response failed: {type(e).__name__}: {str(e)[:120]}")

    def _answer(self, request: Request, addr: Any) -> None:
        """Send back the answer to a request, if there is one to send."""
        answerer = self.answerer
        if answerer is None:
            self._counters.dropped_requests += 1
            return
        source = (addr[0], addr[1])
        try:
            data = answerer.answer(request, source)
        except Exception as e:
            self._counters.dropped_requests += 1
            self._noisy(addr, f"answering a {request.method[:20]} failed: {type(e).__name__}: {str(e)[:120]}")
            return
        if data is None:
            return
        try:
            self.send(data, source)
        except Exception as e:
            self._counters.send_errors += 1
            self._noisy(addr, f"sending the answer to a {request.method[:20]} failed: {type(e).__name__}: {str(e)[:120]}")

    def _noisy(self, addr: Any, what: str) -> None:
        """Log what a source sent, once a minute per source at most."""
        source = f"{addr[0]}:{addr[1]}"
        held = self._noise.allow(str(addr[0]), self._clock.seconds())
        if held is not None:
            _log.info("{source}: {what} ({held} more from this address in the last minute not logged)", source=source, what=what, held=held)
