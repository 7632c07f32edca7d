"""
The floor under a registration's CPU cost in this process model: a Twisted
DatagramProtocol on the epoll reactor sends REGISTER-sized datagrams to an
echo peer on loopback (a separate process, so its CPU is not counted) and
receives the echoes, keeping a window in flight, with no SIP work at all.
A cold-start registration is two such round trips (REGISTER/401,
REGISTER/200) plus the SIP work; this prints the sender's CPU per round
trip and per two, to set against the daemon's CPU per registration.

    python bench/io_floor.py --datagrams 200000 --window 200

Bounded by --datagrams and --timeout; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import report  # noqa: E402

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), 8 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(float(sys.argv[1]))
try:
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)
except socket.timeout:
    pass
"""

PAYLOAD = (
    b"REGISTER sip:127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bK0123456789abcdef0123\r\n"
    b"Max-Forwards: 70\r\nTo: <sip:u1@bench.invalid>\r\nFrom: <sip:u1@bench.invalid>;tag=0123456789\r\n"
    b"Call-ID: 0123456789abcdef0123456789abcdef\r\nCSeq: 1 REGISTER\r\nContact: <sip:u1@127.0.0.1:5999>;expires=3600\r\n"
    b"User-Agent: uacregistrant\r\nContent-Length: 0\r\n\r\n"
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datagrams", type=int, default=200000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=60)
    options = parser.parse_args()

    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    echo = subprocess.Popen([sys.executable, "-c", ECHO, "5"], stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None
    peer = ("127.0.0.1", int(echo.stdout.readline()))
    result: dict[str, float] = {}

    class Sender(DatagramProtocol):
        sent = received = 0

        def startProtocol(self) -> None:
            assert self.transport is not None
            self.sendto = self.transport.getHandle().sendto
            self.start = time.monotonic()
            self.cpu = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(options.window):
                self.send()

        def send(self) -> None:
            if self.sent < options.datagrams:
                self.sent += 1
                self.sendto(PAYLOAD, peer)

        def datagramReceived(self, data: bytes, addr: object) -> None:
            self.received += 1
            if self.received == options.datagrams:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                result["wall"] = time.monotonic() - self.start
                result["cpu"] = usage.ru_utime + usage.ru_stime - self.cpu.ru_utime - self.cpu.ru_stime
                result["system"] = usage.ru_stime - self.cpu.ru_stime
                reactor.stop()  # type: ignore[attr-defined]
            else:
                self.send()

    sender = Sender()
    port = reactor.listenUDP(0, sender, interface="127.0.0.1")  # type: ignore[attr-defined]
    handle = port.getHandle()
    handle.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), 8 << 20)
    reactor.callLater(options.timeout, reactor.stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    echo.kill()
    echo.wait()
    if not result:
        print(f"only {sender.received} of {options.datagrams} echoes within {options.timeout}s", file=sys.stderr)
        return 1
    per_trip = 1e6 * result["cpu"] / options.datagrams
    report([{
        "round_trips": options.datagrams,
        "window": options.window,
        "wall_s": round(result["wall"], 2),
        "sender_cpu_s": round(result["cpu"], 2),
        "of_which_system_s": round(result["system"], 2),
        "cpu_us_per_round_trip": round(per_trip, 1),
        "cpu_us_per_two_round_trips": round(2 * per_trip, 1),
    }])
    return 0


if __name__ == "__main__":
    sys.exit(main())
