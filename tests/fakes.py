"""
An in-memory UDP network on a fake clock, so the whole daemon can run
for hours of simulated time in a unit test.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

#: How many of its latest datagrams a L{FakeUDPPort} keeps in C{sent}: a
#: simulation of hours and thousands of accounts must not hold every
#: datagram it ever wrote.
SENT_KEPT = 1000


class TurnClock(Clock):
    """A clock whose L{turn} runs, like one reactor iteration, only the calls already due when it starts."""

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class FakeUDPPort:
    """
    A bound UDP socket on the fake network.

    @ivar sent: the last L{SENT_KEPT} datagrams written, oldest first, as
        C{(data, addr)}; older ones are forgotten.
    @ivar sent_count: how many datagrams were written in all.
    """

    def __init__(self, network: "FakeNetwork", protocol: DatagramProtocol, host: str, port: int) -> None:
        self.network = network
        self.protocol = protocol
        self.host = host
        self.port = port
        self.sent: deque[tuple[bytes, tuple[str, int]]] = deque(maxlen=SENT_KEPT)
        self.sent_count = 0

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))
        self.sent_count += 1
        self.network.deliver(data, (self.host, self.port), addr)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        self.network.ports.pop((self.host, self.port), None)
        self.protocol.doStop()

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError()


class FakeNetwork:
    """
    Delivers datagrams between fake ports after C{latency} seconds.

    @ivar drop: return C{True} to lose a datagram C{(data, src, dst)}.
    """

    def __init__(self, clock: Clock, latency: float = 0.001) -> None:
        self.clock = clock
        self.latency = latency
        self.ports: dict[tuple[str, int], FakeUDPPort] = {}
        self.drop: Callable[[bytes, tuple[str, int], tuple[str, int]], bool] = lambda d, s, t: False
        self._next_port = 40000

    def deliver(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        if self.drop(data, src, dst):
            return
        self.clock.callLater(self.latency, self._arrive, data, src, dst)

    def _arrive(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        port = self.ports.get((dst[0], dst[1]))
        if port is not None:
            port.protocol.datagramReceived(data, src)

    def free_port(self) -> int:
        self._next_port += 1
        return self._next_port


class FakeReactor(Clock):
    """A L{Clock} that can also listen on the fake network."""

    def __init__(self) -> None:
        super().__init__()
        self.network = FakeNetwork(self)

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192) -> Any:
        host = interface or "0.0.0.0"
        if port == 0:
            port = self.network.free_port()
        udp = FakeUDPPort(self.network, protocol, host, port)
        self.network.ports[(host, port)] = udp
        protocol.makeConnection(udp)  # type: ignore[arg-type]
        return udp
