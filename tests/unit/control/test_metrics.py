"""
Tests for the metrics and health pages: scraped over a real HTTP channel
from the real service (fake clock and network, real SQLite table, real
test registrar), parsed with prometheus_client's own parser and compared
with what reg_stats counts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import TurnClock
from tests.simulation import REGISTRAR, Simulation
from uacregistrant import __version__
from uacregistrant.app.service import RegistrantService
from uacregistrant.control.commands import Reply
from uacregistrant.control.metrics import (
    DROP_REASONS,
    MAX_CONNECTIONS,
    OTHER_REGISTRARS,
    HealthCheck,
    HealthPage,
    MetricsPage,
    MetricsSite,
    RecordCensus,
    RegistrantCollector,
    metrics_site,
    registrar_host,
)
from uacregistrant.core.account import Account
from uacregistrant.core.counters import SipCounters
from uacregistrant.core.registrant import Policy, RegState, Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.sip.message import Response, parse_message
from uacregistrant.testing.registrar import UserPolicy

ROOT = Path(__file__).resolve().parents[3]
REG = f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}"
#: A registrar nobody answers on the fake network: its records time out.
SILENT_REG = "sip:127.0.0.2:5080"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http(site: MetricsSite, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request through a real HTTP channel: status, headers (lower-case names), body."""
    channel = site.buildProtocol(None)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    channel.connectionLost(None)  # type: ignore[arg-type]
    return int(lines[0].split(" ")[1]), headers, body


def get(site: MetricsSite, path: str, method: str = "GET", extra: str = "") -> tuple[int, dict[str, str], bytes]:
    return http(site, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())


def parse(body: bytes) -> Samples:
    """Every sample of a text exposition, by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def named(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of one metric by the value of one label."""
    return {dict(labels)[label]: value for (n, labels), value in samples.items() if n == name}


class ServiceMetricsTests(SynchronousTestCase):
    """The pages on the real service, records in several states."""

    def setUp(self) -> None:
        users = {
            "alice": UserPolicy(password="TopSecret!"),
            "bob": UserPolicy(password="TopSecret!"),
            "carol": UserPolicy(password="TopSecret!"),
            "dan": UserPolicy(password="TopSecret!", reply=500),
            "erin": UserPolicy(password="TopSecret!"),
        }
        self.sim = Simulation(self.mktemp(), users, hash_size=2, timer_interval=10)
        self.sim.add("alice", password="TopSecret!")
        self.sim.add("alice", password="TopSecret!", binding_URI="sip:alice@127.0.0.1:5070")
        self.sim.add("bob", password="TopSecret!", state=1)
        self.sim.add("carol", password="wrong")
        self.sim.add("dan", password="TopSecret!")
        self.sim.add("erin", password="TopSecret!", registrar=SILENT_REG)
        self.service = RegistrantService(self.sim.settings, self.sim.store, self.sim.reactor)
        self.sim.service = self.service

    def site(self, **census: Any) -> MetricsSite:
        service = self.service
        clock = self.sim.reactor
        page = self.page(**census)
        health = HealthPage(
            HealthCheck(clock, lambda: service.loader.loaded, lambda: service.walk.walking, lambda: service.walker.visits, service.walker.bucket_interval)
        )
        return metrics_site(page, health, clock)

    def page(self, db_up: Callable[[], bool] = lambda: True, **census: Any) -> MetricsPage:
        service = self.service
        records = RecordCensus(service.registry, self.sim.reactor, **census)
        return MetricsPage(records, RegistrantCollector(records, service.counters, db_up, lambda: service.loader.last_loaded))

    def start(self) -> None:
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.sim.run(40)  # erin's REGISTER times out (Timer F, 32 s)

    def reg_stats(self) -> dict[str, Any]:
        reply = self.service.commands.reg_stats(["json"])
        if not isinstance(reply, Reply):
            reply = self.successResultOf(reply)
        return json.loads(reply.body[0])  # type: ignore[no-any-return]

    def test_records_match_reg_stats(self) -> None:
        """uacregistrant_records (every state, zeros too) and bindings_held are what reg_stats counts."""
        self.start()
        status, headers, body = get(self.site(), "/metrics")
        self.assertEqual((status, headers["content-type"]), (200, "text/plain; version=0.0.4; charset=utf-8"))
        self.assertEqual(int(headers["content-length"]), len(body))
        samples = parse(body)
        stats = self.reg_stats()
        records = named(samples, "uacregistrant_records", "state")
        self.assertEqual(records, {name: float(count) for name, count in stats["states"].items()})
        self.assertEqual(set(records), {state.name for state in RegState})
        # The states this table was built to reach, so the comparison is not all zeros.
        self.assertEqual(
            {name: count for name, count in records.items() if count},
            {"REGISTERED_STATE": 2, "NOT_REGISTERED_STATE": 1, "WRONG_CREDENTIALS_STATE": 1, "REGISTRAR_ERROR_STATE": 1, "REGISTER_TIMEOUT_STATE": 1},
        )
        self.assertEqual(samples["uacregistrant_bindings_held", ()], stats["bindings_held"])
        self.assertEqual(samples["uacregistrant_bindings_held", ()], 2)
        self.assertEqual(samples["uacregistrant_info", (("version", __version__),)], 1)

    def test_counters(self) -> None:
        """The SIP counters, responses by class, drops by reason, db_up, the last load's time."""
        self.start()
        counters = self.service.counters
        counters.dropped_malformed += 3
        samples = parse(get(self.site(), "/metrics")[2])
        self.assertEqual(samples["uacregistrant_requests_sent_total", ()], counters.requests_sent)
        self.assertEqual(samples["uacregistrant_retransmissions_total", ()], counters.retransmissions)
        self.assertEqual(samples["uacregistrant_timeouts_total", ()], counters.timeouts)
        self.assertEqual(samples["uacregistrant_lapsed_registrations_total", ()], counters.lapsed_registrations)
        self.assertGreater(counters.retransmissions, 0)  # erin's, to the silent registrar
        self.assertEqual(counters.timeouts, 1)
        responses = named(samples, "uacregistrant_responses_total", "class")
        self.assertEqual(set(responses), {"1xx", "2xx", "3xx", "4xx", "5xx", "6xx"})
        # alice x2: 401 then 200; carol: 401 and 401 again (and again at her retry); dan: 500 (and at his retry).
        self.assertEqual(responses["2xx"], 2)
        self.assertGreaterEqual((responses["4xx"], responses["5xx"]), (4, 1))
        self.assertEqual(sum(responses.values()), counters.responses_accepted)
        dropped = named(samples, "uacregistrant_datagrams_dropped_total", "reason")
        self.assertEqual(set(dropped), set(DROP_REASONS))
        self.assertEqual(dropped["malformed"], 3)
        self.assertIn("no_transaction", dropped)
        self.assertEqual(samples["uacregistrant_db_up", ()], 1)
        loaded = self.service.loader.last_loaded
        assert loaded is not None
        self.assertEqual(samples["uacregistrant_last_table_load_timestamp_seconds", ()], loaded)

    def test_db_down(self) -> None:
        """uacregistrant_db_up is 0 while the callable says the database does not answer."""
        self.start()
        up = [False]
        page = self.page(db_up=lambda: up[0])
        site = metrics_site(page, HealthPage(HealthCheck(self.sim.reactor, lambda: True, lambda: True, lambda: 0, 1.0)), self.sim.reactor)
        self.assertEqual(parse(get(site, "/metrics")[2])["uacregistrant_db_up", ()], 0)
        up[0] = True
        self.assertEqual(parse(get(site, "/metrics")[2])["uacregistrant_db_up", ()], 1)

    def test_before_the_first_load(self) -> None:
        """Before the first load: no load time (0), and /healthz says why it is not ready."""
        site = self.site()
        samples = parse(get(site, "/metrics")[2])
        self.assertEqual(samples["uacregistrant_last_table_load_timestamp_seconds", ()], 0)
        self.assertEqual(get(site, "/healthz")[0::2], (503, b"table not loaded yet\n"))
        self.start()
        status, headers, body = get(site, "/healthz")
        self.assertEqual((status, body, headers["content-type"]), (200, b"ok\n", "text/plain; charset=utf-8"))
        self.service.walk.stopService()
        self.assertEqual(get(site, "/healthz")[0::2], (503, b"bucket walk not running\n"))

    def test_per_registrar(self) -> None:
        """With per_registrar, records by registrar host and state; their sum is the total."""
        self.start()
        samples = parse(get(self.site(per_registrar=True), "/metrics")[2])
        per: dict[tuple[str, str], float] = {}
        for (name, labels), value in samples.items():
            if name == "uacregistrant_registrar_records":
                d = dict(labels)
                per[d["registrar"], d["state"]] = value
        self.assertEqual({host for host, _ in per}, {"127.0.0.1", "127.0.0.2"})
        # Only the states with records: no zeros.
        self.assertEqual(
            per,
            {
                ("127.0.0.2", "REGISTER_TIMEOUT_STATE"): 1,
                ("127.0.0.1", "REGISTERED_STATE"): 2,
                ("127.0.0.1", "NOT_REGISTERED_STATE"): 1,
                ("127.0.0.1", "WRONG_CREDENTIALS_STATE"): 1,
                ("127.0.0.1", "REGISTRAR_ERROR_STATE"): 1,
            },
        )
        self.assertEqual(sum(per.values()), len(self.service.registry))
        plain = parse(get(self.site(), "/metrics")[2])
        self.assertNotIn("uacregistrant_registrar_records", {name for name, _ in plain})

    def test_registrar_labels_bounded(self) -> None:
        """Past max_registrars hosts, the rest count as registrar="other"."""
        self.start()
        samples = parse(get(self.site(per_registrar=True, max_registrars=1), "/metrics")[2])
        hosts: dict[str, float] = {}
        for (name, labels), value in samples.items():
            if name == "uacregistrant_registrar_records":
                host = dict(labels)["registrar"]
                hosts[host] = hosts.get(host, 0) + value
        self.assertEqual(len(hosts), 2)
        self.assertIn(OTHER_REGISTRARS, hosts)
        self.assertEqual(sum(hosts.values()), len(self.service.registry))

    def test_cluster_counts_held_records(self) -> None:
        """With holds, only the records this node holds are counted (as reg_stats does in a cluster)."""
        self.start()
        samples = parse(get(self.site(holds=lambda r: r.account.aor.startswith("sip:alice")), "/metrics")[2])
        records = named(samples, "uacregistrant_records", "state")
        self.assertEqual({k: v for k, v in records.items() if v}, {"REGISTERED_STATE": 2})


class HttpTests(SynchronousTestCase):
    """The HTTP side: methods, paths, negotiation, bodies."""

    def setUp(self) -> None:
        self.clock = Clock()
        registry = Registry(0)
        census = RecordCensus(registry, self.clock)
        self.page = MetricsPage(census, RegistrantCollector(census, SipCounters(), lambda: True, lambda: None))
        self.site = metrics_site(self.page, HealthPage(HealthCheck(self.clock, lambda: True, lambda: True, lambda: 0, 1.0)), self.clock)

    def test_get_only(self) -> None:
        """POST, PUT, DELETE: 405 with Allow; HEAD: the headers without the body."""
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            for path in ("/metrics", "/healthz"):
                status, headers, _ = get(self.site, path, method, "Content-Length: 0\r\n")
                self.assertEqual((status, headers["allow"]), (405, "GET, HEAD"), (method, path))
        status, headers, body = get(self.site, "/metrics", "HEAD")
        self.assertEqual((status, body), (200, b""))
        self.assertTrue(headers["content-type"].startswith("text/plain"))

    def test_unknown_paths(self) -> None:
        """Everything but /metrics and /healthz is 404 (no listing of /); a query string is ignored."""
        for path in ("/", "/metricsx", "/metrics/", "/metrics/x", "/healthz/", "/../etc/passwd", "/favicon.ico"):
            self.assertEqual(get(self.site, path)[0], 404, path)
        self.assertEqual(get(self.site, "/metrics?name[]=x")[0], 200)

    def test_body_refused(self) -> None:
        """Any request body: 413 at once and the connection closed; nothing of it kept, the rest never parsed."""
        made: list[Any] = []
        factory = self.site.requestFactory
        self.site.requestFactory = lambda *a, **k: made.append(factory(*a, **k)) or made[-1]
        for method, path in (("POST", "/metrics"), ("GET", "/metrics"), ("GET", "/healthz"), ("PUT", "/nowhere")):
            channel = self.site.buildProtocol(None)
            transport = StringTransport()
            channel.makeConnection(transport)
            channel.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n".encode())
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), (method, path))
            self.assertTrue(transport.disconnecting)
            channel.dataReceived(b"x" * 65536 + b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)
            self.assertEqual(made[-1].content.getvalue(), b"")
            channel.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.site.connections, 0)

    def test_chunked_body_refused(self) -> None:
        """A chunked body: 413 at its first byte."""
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"1\r\nx\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)

    def test_no_100_continue_for_a_body(self) -> None:
        """Expect: 100-continue with a body: the 413 only, no 100 Continue on the closing connection."""
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /metrics HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b" 100 ", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_connections_bounded(self) -> None:
        """Past MAX_CONNECTIONS (16) at once a connection gets 503 and is closed; one closing frees a place."""
        self.assertEqual(MAX_CONNECTIONS, 16)
        kept = []
        for _ in range(MAX_CONNECTIONS):
            channel = self.site.buildProtocol(None)
            channel.makeConnection(StringTransport())
            kept.append(channel)
        refused = StringTransport()
        self.site.buildProtocol(None).makeConnection(refused)
        self.assertTrue(refused.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(refused.disconnecting)
        kept[0].connectionLost(None)
        self.assertEqual(get(self.site, "/healthz")[0::2], (200, b"ok\n"))

    def test_idle_connection_closed(self) -> None:
        """A connection that sends nothing for a minute is closed."""
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\n")
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_negotiation(self) -> None:
        """OpenMetrics when asked for; a malformed Accept (prometheus_client raises on it) gets the 0.0.4 text format."""
        status, headers, body = get(self.site, "/metrics", extra="Accept: application/openmetrics-text; version=1.0.0\r\n")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("application/openmetrics-text; version=1.0.0"))
        self.assertTrue(body.endswith(b"# EOF\n"))
        for accept in ("text/plain;version=abc", "application/openmetrics-text;version=x.y", "\xff\xfe"):
            status, headers, body = http(self.site, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: " + accept.encode("latin-1") + b"\r\n\r\n")
            self.assertEqual((status, headers["content-type"]), (200, "text/plain; version=0.0.4; charset=utf-8"), accept)
            self.assertIn(("uacregistrant_db_up", ()), parse(body))

    def test_own_registry(self) -> None:
        """Nothing goes to prometheus_client's global registry; two pages live side by side."""
        from prometheus_client import REGISTRY

        names = {family.name for family in REGISTRY.collect()}
        self.assertFalse([name for name in names if name.startswith("uacregistrant")])
        other = MetricsPage(RecordCensus(Registry(0), self.clock), RegistrantCollector(RecordCensus(Registry(0), self.clock), SipCounters(), lambda: True, lambda: None))
        self.assertIsNot(other.registry, self.page.registry)

    def test_site(self) -> None:
        """No tracebacks shown, no access log, and no timer of its own on the clock."""
        self.assertIsInstance(self.site, MetricsSite)
        self.assertFalse(self.site.displayTracebacks)
        self.site.doStart()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.site.doStop()


class CensusTests(SynchronousTestCase):
    """Counting a registry a slice per reactor turn."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry(2)
        policy = Policy()
        for n in range(25):
            account = Account(None, f"sip:u{n}@example.com", f"sip:r{n % 3}.example.com", f"sip:u{n}@192.0.2.1", 3600)
            self.registry.add(Registrant(account, policy))

    def test_slices(self) -> None:
        """No turn counts more than a slice; every caller meanwhile shares the count; it is then reused for max_age."""
        clock = self.clock = TurnClock()
        counted: list[Registrant] = []
        ticks = iter(range(1000))
        census = RecordCensus(
            self.registry, clock, holds=lambda r: counted.append(r) is None, slice_size=4, max_age=5.0, timer=lambda: next(ticks) / 1000
        )
        first, second = census.current(), census.current()
        got: list[Any] = []
        first.addCallback(got.append)
        second.addCallback(got.append)
        per_turn = [len(counted)]
        while not got:
            clock.turn()
            per_turn.append(len(counted) - sum(per_turn))
        self.assertEqual(len(got), 2)
        self.assertIs(got[0], got[1])
        self.assertEqual(per_turn, [4, 4, 4, 4, 4, 4, 1])
        # 7 turns of 1 ms each (the fake timer): 7 ms of counting, well within 0.5 % of max_age.
        self.assertEqual(census.fresh_for, 5.0)
        self.assertEqual(got[0].total, 25)
        self.assertEqual(got[0].by_state()["NOT_REGISTERED_STATE"], 25)
        self.clock.advance(4)
        self.assertIs(self.successResultOf(census.current()), got[0])
        self.clock.advance(2)
        fresh = census.current()
        self.assertNoResult(fresh)
        for _ in range(20):
            self.clock.advance(0)
        self.assertEqual(self.successResultOf(fresh).taken_at, 6)

    def test_budget(self) -> None:
        """An expensive count is served longer: its cost over the budget (0.5 % of the time by default)."""
        ticks = iter(range(1000))
        census = RecordCensus(self.registry, self.clock, slice_size=10, timer=lambda: next(ticks) / 100)
        first = census.current()
        for _ in range(10):
            self.clock.advance(0)
        self.successResultOf(first)
        self.assertAlmostEqual(census.fresh_for, 0.03 / 0.005)  # three turns of 10 ms
        self.clock.advance(5.9)
        self.assertIs(self.successResultOf(census.current()), census.last)
        self.clock.advance(0.2)
        self.assertNoResult(census.current())

    def test_records_change_meanwhile(self) -> None:
        """Records added or removed while a count is under way do not break it."""
        census = RecordCensus(self.registry, self.clock, slice_size=3)
        d = census.current()
        for registrant in list(self.registry)[:10]:
            self.registry.remove(registrant)
        for _ in range(30):
            self.clock.advance(0)
        self.assertLessEqual(self.successResultOf(d).total, 25)

    def test_failure(self) -> None:
        """A count that fails fails its callers (500 on the page), and the next scrape counts again."""
        broken = [True]

        def holds(registrant: Registrant) -> bool:
            if broken[0]:
                raise RuntimeError("boom")
            return True

        census = RecordCensus(self.registry, self.clock, holds=holds)
        page = MetricsPage(census, RegistrantCollector(census, SipCounters(), lambda: True, lambda: None))
        site = metrics_site(page, HealthPage(HealthCheck(self.clock, lambda: True, lambda: True, lambda: 0, 1.0)), self.clock)
        status, _, body = get(site, "/metrics")
        self.assertEqual((status, body), (500, b"collecting metrics failed\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        broken[0] = False
        self.assertEqual(get(site, "/metrics")[0], 200)

    def test_registrar_host(self) -> None:
        """The registrar URI's host, lower-case, without port or parameters."""
        self.assertEqual(registrar_host("sip:Reg.Example.COM:5061;transport=tcp"), "reg.example.com")
        self.assertEqual(registrar_host("sips:[2001:db8::1]"), "2001:db8::1")
        self.assertEqual(registrar_host("not a uri"), OTHER_REGISTRARS)


class HealthTests(SynchronousTestCase):
    def test_stall(self) -> None:
        """The walk's visit count unchanged for longer than stall_after: 503 with the reason; advancing again: 200."""
        clock = Clock()
        visits = [0]
        check = HealthCheck(clock, lambda: True, lambda: True, lambda: visits[0], bucket_interval=0.5)
        self.assertEqual(check.stall_after, 10.0)
        self.assertEqual(check.status(), (True, "ok"))
        clock.advance(9)
        self.assertEqual(check.status(), (True, "ok"))
        clock.advance(2)
        self.assertEqual(check.status(), (False, "bucket walk stalled: no bucket visited for 11s"))
        visits[0] += 1
        self.assertEqual(check.status(), (True, "ok"))
        self.assertEqual(HealthCheck(clock, lambda: True, lambda: True, lambda: 0, bucket_interval=60).stall_after, 600)


class ReactorLagTests(SynchronousTestCase):
    def test_late_tick(self) -> None:
        """A tick run 1.5 s late is observed as 1.5 s; stopping leaves no call behind."""
        clock = Clock()
        census = RecordCensus(Registry(0), clock)
        page = MetricsPage(census, RegistrantCollector(census, SipCounters(), lambda: True, lambda: None))
        probe = page.lag_probe(clock)
        probe.startService()
        clock.advance(0.5)  # on time
        clock.advance(2.0)  # due at 1.0, runs at 2.5
        site = metrics_site(page, HealthPage(HealthCheck(clock, lambda: True, lambda: True, lambda: 0, 1.0)), clock)
        samples = parse(get(site, "/metrics")[2])
        self.assertEqual(samples["uacregistrant_reactor_lag_seconds_count", ()], 2)
        self.assertEqual(samples["uacregistrant_reactor_lag_seconds_sum", ()], 1.5)
        buckets = named(samples, "uacregistrant_reactor_lag_seconds_bucket", "le")
        self.assertEqual((buckets["0.001"], buckets["1.0"], buckets["2.5"], buckets["+Inf"]), (1, 1, 2, 2))
        probe.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


def _response(status: int, branch: str) -> Response:
    message = parse_message(
        f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP h;branch={branch}\r\nCSeq: 1 REGISTER\r\n"
        "To: <sip:a@h>;tag=t\r\nFrom: <sip:a@h>;tag=f\r\nCall-ID: c\r\n\r\n".encode()
    )
    assert isinstance(message, Response)
    return message


class ResponseClassTests(SynchronousTestCase):
    def test_counted_where_accepted(self) -> None:
        """The transaction layer counts each accepted response in its class; a stray one is not counted."""
        clock = Clock()
        counters = SipCounters()
        layer = TransactionLayer(clock, counters, t1=0.5)

        class Sender:
            def send(self, data: bytes, dest: tuple[str, int]) -> None:
                pass

        dest = ("127.0.0.1", 5060)
        layer.start(Sender(), dest, b"REQ", "z9hG4bKa", 1, lambda r: None, lambda reason: None)
        layer.receive(_response(100, "z9hG4bKa"), dest)
        layer.receive(_response(401, "z9hG4bKa"), dest)
        layer.receive(_response(200, "z9hG4bKstray"), dest)
        self.assertEqual(
            [counters.responses_1xx, counters.responses_2xx, counters.responses_4xx, counters.responses_accepted, counters.dropped_no_transaction],
            [1, 0, 1, 2, 1],
        )
        counters.count_response_class(700)  # never from the parser: ignored
        self.assertEqual(sum(counters.as_dict()[f"responses_{n}xx"] for n in range(1, 7)), 2)
        layer.stop()


class ContribTests(SynchronousTestCase):
    """The Grafana dashboard and the alerting rules name only metrics a real scrape has."""

    def scraped(self) -> set[str]:
        clock = Clock()
        registry = Registry(0)
        registry.add(Registrant(Account(None, "sip:a@example.com", "sip:example.com", "sip:a@192.0.2.1", 3600), Policy()))
        census = RecordCensus(registry, clock, per_registrar=True)
        page = MetricsPage(census, RegistrantCollector(census, SipCounters(), lambda: True, lambda: None))
        page.reactor_lag.observe(0.01)
        site = metrics_site(page, HealthPage(HealthCheck(clock, lambda: True, lambda: True, lambda: 0, 1.0)), clock)
        return {name for name, _ in parse(get(site, "/metrics")[2])}

    def test_dashboard(self) -> None:
        """A Grafana dashboard on a ${DS_PROMETHEUS} data source, every panel with a query of scraped metrics."""
        dashboard = json.loads((ROOT / "contrib/grafana/uacregistrant.json").read_text(encoding="utf-8"))
        self.assertEqual([i["name"] for i in dashboard["__inputs"]], ["DS_PROMETHEUS"])
        self.assertTrue(dashboard["title"])
        panels = dashboard["panels"]
        self.assertGreaterEqual(len(panels), 9)
        exprs = []
        for panel in panels:
            self.assertEqual(panel["datasource"]["uid"], "${DS_PROMETHEUS}", panel["title"])
            self.assertTrue(panel["targets"], panel["title"])
            exprs += [target["expr"] for target in panel["targets"]]
        names = set(re.findall(r"uacregistrant_\w+", " ".join(exprs)))
        self.assertEqual(names - self.scraped(), set())
        for wanted in ("uacregistrant_records", "uacregistrant_bindings_held", "uacregistrant_reactor_lag_seconds_bucket",
                       "uacregistrant_last_table_load_timestamp_seconds", "uacregistrant_datagrams_dropped_total", "uacregistrant_db_up"):
            self.assertIn(wanted, names)

    def test_alerts(self) -> None:
        """Prometheus rules (groups: rules: alert/expr/for/labels/annotations) on scraped metrics, checked line by line (no YAML parser here)."""
        text = (ROOT / "contrib/prometheus/alerts.yml").read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        self.assertEqual(lines[0], "groups:")
        self.assertNotIn("\t", text)
        alerts = re.findall(r"^\s+- alert: (\w+)$", text, re.MULTILINE)
        exprs = re.findall(r"^\s+expr: (.+)$", text, re.MULTILINE)
        self.assertEqual(len(alerts), len(exprs))
        self.assertEqual(len(alerts), len(set(alerts)))
        self.assertEqual(len(re.findall(r"^\s+annotations:$", text, re.MULTILINE)), len(alerts))
        names = set(re.findall(r"uacregistrant_\w+", " ".join(exprs)))
        self.assertEqual(names - self.scraped(), set())
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:  # not a dependency: the line checks above stand alone
            pass
        else:
            rules = [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]
            self.assertEqual([rule["alert"] for rule in rules], alerts)
            self.assertEqual([rule["expr"] for rule in rules], exprs)
        joined = "\n".join(exprs)
        for wanted in ('state="WRONG_CREDENTIALS_STATE"', 'state="REGISTRAR_ERROR_STATE"', "uacregistrant_lapsed_registrations_total",
                       "uacregistrant_db_up == 0", "up{", "uacregistrant_reactor_lag_seconds_bucket"):
            self.assertIn(wanted, joined)
