"""
What a Prometheus scrape of C{/metrics} costs the reactor with many
records: a registry of --records records (states spread over the ones a
daemon sees, a binding held by a share of them, --registrars registrar
hosts) is counted by the real L{RecordCensus} a slice per reactor turn,
and the real page is rendered through a real HTTP channel.

Reports, per configuration (plain, then per registrar): the scrape's
total time (the census's slices and the exposition), its longest reactor
turn, the last turn (the census's last slice and the exposition:
prometheus_client formats every sample in one turn), the body's size,
how long the count is then served to later scrapes (its cost over the
census's 0.5 % budget), and what such a later scrape costs.

    python bench/metrics_scrape.py                        # 1,000,000 records, 100 registrar hosts
    python bench/metrics_scrape.py --records 200000 --registrars 1000

Bounded by --records; nothing touches the network.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import report  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from uacregistrant.control.metrics import (  # noqa: E402
    CENSUS_SLICE,
    HealthCheck,
    HealthPage,
    MetricsPage,
    RecordCensus,
    RegistrantCollector,
    metrics_site,
)
from uacregistrant.core.account import Account  # noqa: E402
from uacregistrant.core.counters import SipCounters  # noqa: E402
from uacregistrant.core.registrant import Policy, Registrant  # noqa: E402
from uacregistrant.core.registry import Registry  # noqa: E402
from uacregistrant.sip.uri import parse_uri_uncached  # noqa: E402


def build(records: int, registrars: int, hash_size: int, now: float) -> Registry:
    """A registry with records in several states; a third hold a binding."""
    registry = Registry(hash_size)
    policy = Policy()
    hops = [f"sip:registrar{n}.example.net" for n in range(registrars)]
    parsed = [parse_uri_uncached(hop) for hop in hops]
    for n in range(records):
        i = n % registrars
        account = Account(n, f"sip:user{n}@example.com", hops[i], f"sip:user{n}@192.0.2.1:5060", 3600, next_hop=parsed[i])
        r = Registrant(account, policy)
        kind = n % 6
        if kind in (1, 2):
            r.assume_bound(now)  # a binding held (REGISTERED after a restart looks like this)
        if kind in (2, 3, 4):
            r.start(now)  # REGISTERING
        if kind == 4:
            r.on_timeout(now)  # REGISTER_TIMEOUT
        registry.add(r)
    return registry


class TurnClock(Clock):
    """A clock whose L{turn} runs only the calls already due, like one reactor iteration."""

    def turn(self) -> float:
        """Run one turn; return its duration (seconds of CPU-bound wall time)."""
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        start = time.perf_counter()
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
        return time.perf_counter() - start


def scrape(registry: Registry, per_registrar: bool, clock: TurnClock) -> dict[str, Any]:
    census = RecordCensus(registry, clock, per_registrar=per_registrar)
    page = MetricsPage(census, RegistrantCollector(census, SipCounters(), lambda: True, lambda: 1.0))
    site = metrics_site(page, HealthPage(HealthCheck(clock, lambda: True, lambda: True, lambda: 0, 1.0)), clock)
    channel = site.buildProtocol(None)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    start = time.perf_counter()
    channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    turns = [time.perf_counter() - start]  # the request's turn: the first slice (and all, if one)
    while not transport.value():
        turns.append(clock.turn())
    total = time.perf_counter() - start
    body = transport.value().partition(b"\r\n\r\n")[2]
    # A scrape while the count is still served: the exposition only.
    transport.clear()
    start = time.perf_counter()
    channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    served = time.perf_counter() - start
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    channel.connectionLost(None)  # type: ignore[arg-type]
    return {
        "per_registrar": per_registrar,
        "turns": len(turns),
        "scrape_ms": round(total * 1000, 1),
        "longest_turn_ms": round(max(turns) * 1000, 2),
        "last_turn_ms (census's last slice + exposition)": round(turns[-1] * 1000, 2),
        "body_bytes": len(body),
        "count_served_s": round(census.fresh_for, 1),
        "scrape_meanwhile_ms": round(served * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--registrars", type=int, default=100)
    parser.add_argument("--hash-size", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    clock = TurnClock()
    clock.advance(1_700_000_000)
    start = time.perf_counter()
    registry = build(args.records, args.registrars, args.hash_size, clock.seconds())
    gc.freeze()  # as the daemon's GC policy does after the first load
    print(f"built {len(registry)} records in {time.perf_counter() - start:.1f}s; slice {CENSUS_SLICE}; python {sys.version.split()[0]}")
    results = []
    for per_registrar in (False, True):
        runs = [scrape(registry, per_registrar, clock) for _ in range(args.repeat)]
        results.append(min(runs, key=lambda r: r["scrape_ms"]))
    report(results)


if __name__ == "__main__":
    main()
