"""
The daemon's own Python work per registration, without sockets or noise
from other processes: the real service (SQLite table, registry, walker,
pacer, client, transactions, transport, parser, digest) on a fake clock;
its datagrams are captured and answered in-process by a templated
registrar (401 with a nonce, then 200; credentials up front get 200 at
once).  The registrar's own time is measured and taken out.  Also
reports the resident set's growth per account once all are registered
(what a registered account costs: the row, its record, the kept
challenge, its refresh wake-up).

    python bench/core_cycle.py --accounts 20000            # cold start: load + 2 transactions each
    python bench/core_cycle.py --accounts 20000 --profile  # and the top functions (cProfile, slower)
    python bench/core_cycle.py --accounts 100000 --no-gc-policy  # without the daemon's GC policy

Bounded by --accounts; nothing touches the network.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import os
import pstats
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import report, write_accounts  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.names.resolve import ResolverChain  # noqa: E402

from uacregistrant.app.gcpolicy import FreezeSurvivors  # noqa: E402
from uacregistrant.app.service import RegistrantService  # noqa: E402
from uacregistrant.app.settings import build_settings  # noqa: E402
from uacregistrant.core.registrant import RegState  # noqa: E402
from uacregistrant.store.sqlite import SqliteStore, run_synchronously  # noqa: E402

REGISTRAR = ("127.0.0.1", 5080)
_FIELDS = re.compile(
    rb"Via: ([^\r]+)\r\n.*?From: ([^\r]+)\r\n.*?Call-ID: ([^\r]+)\r\nCSeq: (\d+) REGISTER\r\nContact: ([^\r]+)\r\n(Authorization)?",
    re.DOTALL,
)


class CapturePort:
    """A UDP port that keeps what is written to it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.outbox: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.outbox.append((data, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.host, self.port)

    def stopListening(self) -> None:
        pass


class Reactor(Clock):
    """A clock that can listen (capturing) on UDP."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[CapturePort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> CapturePort:
        captured = CapturePort(interface or "0.0.0.0", port or 40000)
        self.ports.append(captured)
        protocol.makeConnection(captured)
        return captured


def respond(request: bytes, nonce: int) -> bytes:
    """The registrar's answer: 401 without credentials, 200 with them."""
    match = _FIELDS.search(request)
    assert match is not None, request[:200]
    via, sender, call_id, cseq, contact, authorized = match.groups()
    head = (
        b"Via: " + via + b"\r\nFrom: " + sender + b"\r\nTo: " + sender.split(b";")[0] + b";tag=r1\r\nCall-ID: "
        + call_id + b"\r\nCSeq: " + cseq + b" REGISTER\r\n"
    )
    if authorized:
        return b"SIP/2.0 200 OK\r\n" + head + b"Contact: " + contact + b"\r\nContent-Length: 0\r\n\r\n"
    return (
        b"SIP/2.0 401 Unauthorized\r\n" + head
        + b'WWW-Authenticate: Digest realm="bench.invalid", nonce="n%d", qop="auth", algorithm=MD5\r\nContent-Length: 0\r\n\r\n' % nonce
    )


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(accounts: int, profile: bool, gc_policy: bool = True) -> dict[str, object]:
    directory = tempfile.mkdtemp(prefix="uacreg-core-")
    db = os.path.join(directory, "r.db")
    write_accounts(db, accounts, [f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}"], 5060)
    gc.collect()
    rss_before = rss_bytes()
    reactor = Reactor()
    values = {"db_url": f"sqlite:{db}", "listen": ["udp:127.0.0.1:5060"], "control": ["unix:unused"],
              "hash_size": 0, "timer_interval": 1800, "send_rate": 1_000_000, "max_in_flight": 1000}
    settings = dataclasses.replace(build_settings(values), control=())
    store = SqliteStore(db, settings.table, reactor, run_in_thread=run_synchronously)
    service = RegistrantService(settings, store, reactor, resolver=ResolverChain([]))
    if gc_policy:  # as build_service gives the daemon
        FreezeSurvivors().setServiceParent(service)
    pauses: list[float] = []

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            pauses.append(time.perf_counter())
        else:
            pauses[-1] = time.perf_counter() - pauses[-1]

    gc.callbacks.insert(0, timed)
    transport = next(iter(service.transports.values()))
    profiler = cProfile.Profile() if profile else None
    registrar_time = 0.0
    nonce = 0
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    service.startService()
    port = reactor.ports[0]
    while True:
        reactor.advance(0)
        if not port.outbox:
            if service.counters.responses_accepted >= 2 * accounts:
                break
            if not reactor.getDelayedCalls():
                raise RuntimeError("nothing left to do before every account registered")
            reactor.advance(0.001)
            continue
        outbox, port.outbox = port.outbox, []
        for data, _ in outbox:
            t = time.perf_counter()
            nonce += 1
            answer = respond(data, nonce)
            registrar_time += time.perf_counter() - t
            transport.datagramReceived(answer, REGISTRAR)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start - registrar_time
    gc.callbacks.remove(timed)
    registered = sum(1 for r in service.registry if r.state == RegState.REGISTERED_STATE)
    outbox = []  # the harness's last batch is not the daemon's memory
    # Let finished transactions go as they would: their timers and Timer K
    # (T4, 5 s) expire.
    for _ in range(14):
        reactor.advance(0.5)
    service.transactions.sweep()
    gc.collect()
    rss_growth = rss_bytes() - rss_before
    service.stopService()
    if profiler:
        stats = pstats.Stats(profiler)
        stats.strip_dirs().sort_stats("tottime").print_stats(25)
    return {
        "accounts": accounts,
        "daemon_s": round(elapsed, 2),
        "registrar_s_excluded": round(registrar_time, 2),
        "us_per_registration": round(1e6 * elapsed / accounts, 1),
        "registered": registered,
        "requests": service.counters.requests_sent,
        "rss_bytes_per_registered_account": round(rss_growth / accounts),
        "gc_s": round(sum(pauses), 2),
        "longest_gc_pause_ms": round(1000 * max(pauses, default=0), 1),
        "profiled": profile,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-gc-policy", action="store_true", help="without the daemon's FreezeSurvivors (for comparison)")
    options = parser.parse_args()
    report([run(options.accounts, options.profile, not options.no_gc_policy)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
