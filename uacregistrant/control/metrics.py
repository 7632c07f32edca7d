# -*- test-case-name: tests.unit.control.test_metrics -*-
"""
Prometheus metrics and a health check over HTTP: C{GET /metrics} and
C{GET /healthz}.

Everything is collected on scrape from live sources handed in as
callables, into a L{CollectorRegistry} of the page's own (never the
process-wide one).  The records are counted by L{RecordCensus} (in
L{uacregistrant.control.census}, re-exported here) a slice per reactor
turn, as C{reg_stats} counts them, and a count is served again until
counting anew would take more than 0.5 % of the time: a scrape of a
million records never holds the reactor for more than one slice, and
frequent scrapes do not make it count more often.

The pages are often reached from off the host (Prometheus): the site
(L{uacregistrant.control.http}) holds at most L{MAX_CONNECTIONS}
connections, takes no request body (413, the connection closed) and
closes idle connections.

The integrator builds, over one service: a L{RecordCensus}, a
L{RegistrantCollector} and a L{MetricsPage} around it, a L{HealthCheck}
and its L{HealthPage}, then L{metrics_site} to listen with, and
L{MetricsPage.lag_probe} as a child service.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request

from uacregistrant import __version__
from uacregistrant.control.census import (
    CENSUS_SLICE,
    HOSTS_KEPT,
    MAX_REGISTRARS,
    OTHER_REGISTRARS,
    _STATES,
    Census,
    RecordCensus,
    registrar_host,
)
from uacregistrant.control.http import IDLE_TIMEOUT, PLAIN, BoundedRequest, BoundedSite, NotFound, Page, Root, plain, send
from uacregistrant.core.counters import SipCounters

__all__ = [
    "CENSUS_SLICE",
    "HOSTS_KEPT",
    "MAX_REGISTRARS",
    "OTHER_REGISTRARS",
    "Census",
    "RecordCensus",
    "registrar_host",
    "LAG_BUCKETS",
    "DROP_REASONS",
    "RESPONSE_CLASSES",
    "MAX_CONNECTIONS",
    "RegistrantCollector",
    "ReactorLagProbe",
    "HealthCheck",
    "default_stall_after",
    "MetricsPage",
    "HealthPage",
    "MetricsRequest",
    "MetricsSite",
    "metrics_site",
]

_log = Logger(namespace=__name__)

#: Buckets of C{uacregistrant_reactor_lag_seconds}.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The reasons of C{uacregistrant_datagrams_dropped_total}: L{SipCounters}' C{dropped_*} fields.
DROP_REASONS = tuple(f.name.removeprefix("dropped_") for f in dataclasses.fields(SipCounters) if f.name.startswith("dropped_"))
#: The classes of C{uacregistrant_responses_total}.
RESPONSE_CLASSES = tuple(f"{n}xx" for n in range(1, 7))


class RegistrantCollector:
    """
    The daemon's metrics, read from their sources on each collection (a
    prometheus_client custom collector).

    @param census: the records' counts (its last one is reported).
    @param counters: the SIP layer's counters.
    @param db_up: whether the database answers.
    @param last_load: when the last full pass over the table completed
        (seconds since the epoch), or C{None}.
    """

    def __init__(
        self,
        census: RecordCensus,
        counters: SipCounters,
        db_up: Callable[[], bool],
        last_load: Callable[[], float | None],
        version: str = __version__,
    ) -> None:
        self._census = census
        self._counters = counters
        self._db_up = db_up
        self._last_load = last_load
        self._version = version

    def collect(self) -> Iterable[Metric]:
        """Every metric but the reactor lag (a histogram of the page's registry)."""
        yield InfoMetricFamily("uacregistrant", "The daemon's version.", value={"version": self._version})
        census = self._census.last
        if census is not None:
            records = GaugeMetricFamily("uacregistrant_records", "Records by registration state.", labels=["state"])
            for state in _STATES:
                records.add_metric([state.name], census.states[state])
            yield records
            yield GaugeMetricFamily(
                "uacregistrant_bindings_held", "Records whose binding the registrar still holds.", value=census.bindings_held
            )
            yield GaugeMetricFamily(
                "uacregistrant_records_counted_timestamp_seconds",
                "When the record counts were taken (reused while counting again would take over 0.5 % of the time).",
                value=census.taken_at,
            )
            if self._census.per_registrar:
                per_registrar = GaugeMetricFamily(
                    "uacregistrant_registrar_records",
                    f"Records by registrar host and state, states with records only "
                    f"(the {self._census.max_registrars} hosts with the most records; the rest as {OTHER_REGISTRARS}).",
                    labels=["registrar", "state"],
                )
                # Only the states a host has records in: a thousand hosts
                # make a few thousand series, not ten thousand zeros.
                for host, counts in census.registrars.items():
                    for state in _STATES:
                        if counts[state]:
                            per_registrar.add_metric([host, state.name], counts[state])
                yield per_registrar
        c = self._counters
        yield _counter("uacregistrant_requests_sent_total", "Requests sent (retransmissions not included).", c.requests_sent)
        yield _counter("uacregistrant_retransmissions_total", "Retransmissions (UDP Timer E).", c.retransmissions)
        yield _counter("uacregistrant_timeouts_total", "Transactions that timed out (Timer F).", c.timeouts)
        responses = CounterMetricFamily("uacregistrant_responses_total", "Responses accepted for a transaction, by class.", labels=["class"])
        for name in RESPONSE_CLASSES:
            responses.add_metric([name], getattr(c, f"responses_{name}"))
        yield responses
        yield _counter(
            "uacregistrant_lapsed_registrations_total", "Registrations renewed only after their binding had expired.", c.lapsed_registrations
        )
        dropped = CounterMetricFamily("uacregistrant_datagrams_dropped_total", "Messages received and dropped, by reason.", labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], getattr(c, f"dropped_{reason}"))
        yield dropped
        yield GaugeMetricFamily("uacregistrant_db_up", "1 if the database answers, else 0.", value=1 if self._db_up() else 0)
        loaded = self._last_load()
        yield GaugeMetricFamily(
            "uacregistrant_last_table_load_timestamp_seconds",
            "When the last full pass over the table completed (0: none yet).",
            value=loaded if loaded is not None else 0,
        )


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class ReactorLagProbe(Service):
    """
    How late the reactor runs a call: every C{interval} seconds a call is
    scheduled and, when it runs, its lateness is observed.  (Not a
    LoopingCall: it keeps to its start time's grid, skipping the intervals
    a stall swallowed, which hides how long the stall was.)

    @param observe: takes each lateness in seconds (a histogram's C{observe}).
    """

    def __init__(self, clock: IReactorTime, observe: Callable[[float], None], interval: float = 0.5) -> None:
        self._clock = clock
        self._observe = observe
        self._interval = interval
        self._due = 0.0
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Start measuring (nothing if already started)."""
        if self._call is None:
            self._schedule()

    def stop(self) -> None:
        """Stop measuring."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> None:
        super().stopService()
        self.stop()

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        try:
            self._observe(max(0.0, self._clock.seconds() - self._due))
        except Exception:
            _log.failure("observing the reactor's lag failed")
        self._schedule()


class HealthCheck:
    """
    Whether the daemon works: the first table load is done and the bucket
    walk runs and advances.

    The walk is seen to advance by its visit count, sampled at each check:
    a count unchanged for longer than C{stall_after} seconds is a stall.

    @param loaded: whether the first full pass over the table completed.
    @param walking: whether the bucket walk runs.
    @param visits: buckets visited so far.
    @param stall_after: seconds without a bucket visit that mean a stall;
        by default L{stall_after} of C{bucket_interval}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        loaded: Callable[[], bool],
        walking: Callable[[], bool],
        visits: Callable[[], int],
        bucket_interval: float,
        stall_after: float | None = None,
    ) -> None:
        self._clock = clock
        self._loaded = loaded
        self._walking = walking
        self._visits = visits
        self.stall_after = stall_after if stall_after is not None else default_stall_after(bucket_interval)
        self._seen: int | None = None
        self._seen_at = 0.0

    def status(self) -> tuple[bool, str]:
        """C{(True, "ok")}, or C{(False, reason)} (one line)."""
        if not self._loaded():
            return False, "table not loaded yet"
        if not self._walking():
            return False, "bucket walk not running"
        now = self._clock.seconds()
        visits = self._visits()
        if visits != self._seen:
            self._seen, self._seen_at = visits, now
        elif now - self._seen_at > self.stall_after:
            return False, f"bucket walk stalled: no bucket visited for {now - self._seen_at:.0f}s"
        return True, "ok"


def default_stall_after(bucket_interval: float) -> float:
    """Seconds without a bucket visit that mean a stall: ten intervals, at least 10 s (a busy reactor runs late)."""
    return max(10 * bucket_interval, 10.0)


#: HTTP connections at once, at most (more are answered 503 and closed): scrapers and probes are few.
MAX_CONNECTIONS = 16

_NOT_FOUND = NotFound("not found: GET /metrics or /healthz")


class _GetOnly(Page):
    """A page answering GET and HEAD only (405 otherwise) and having no children (404)."""

    not_found = _NOT_FOUND


def _encoder(accept: bytes | None) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """The exposition the scraper asked for (prometheus_client's negotiation), else the 0.0.4 text format."""
    try:
        return choose_encoder(accept.decode("latin-1") if accept else "")
    except Exception:  # choose_encoder raises on a malformed version (version=abc)
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4


class MetricsPage(_GetOnly):
    """
    C{GET /metrics}: waits for a fresh enough census, then renders every
    metric of its own registry.

    @ivar registry: this page's L{CollectorRegistry} (the collector and the
        reactor lag histogram).
    @ivar reactor_lag: the histogram a L{ReactorLagProbe} feeds.
    """

    def __init__(self, census: RecordCensus, collector: RegistrantCollector) -> None:
        super().__init__()
        self._census = census
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.reactor_lag = Histogram(
            "uacregistrant_reactor_lag_seconds",
            "How late the reactor ran a call due every half second.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def lag_probe(self, clock: IReactorTime, interval: float = 0.5) -> ReactorLagProbe:
        """A probe feeding L{reactor_lag} (start it, or make it a child service)."""
        return ReactorLagProbe(clock, self.reactor_lag.observe, interval)

    def render_GET(self, request: Request) -> int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(_: Census) -> None:
            if gone:
                return
            encoder, content_type = _encoder(request.getHeader(b"accept"))
            send(request, 200, encoder(self.registry), content_type.encode("ascii"))

        def failed(failure: Failure) -> None:
            _log.failure("collecting metrics failed", failure)
            if not gone:
                request.setHeader(b"cache-control", b"no-store")
                send(request, 500, b"collecting metrics failed\n", PLAIN)

        self._census.current().addCallback(write).addErrback(failed)
        return NOT_DONE_YET


class HealthPage(_GetOnly):
    """C{GET /healthz}: 200 C{ok}, or 503 and the reason, one line of text."""

    def __init__(self, check: HealthCheck) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Request) -> bytes:
        healthy, reason = self._check.status()
        return plain(request, 200 if healthy else 503, reason)


class MetricsRequest(BoundedRequest):
    """A scrape: GET or HEAD, no body (any body is answered 413 and the connection closed, the body never read)."""

    max_body = 0


class MetricsSite(BoundedSite):
    """
    The HTTP side: at most C{max_connections} connections, no request
    bodies, idle connections closed after a minute, no tracebacks shown,
    no access log (scrapes are not news).
    """

    def __init__(self, root: IResource, clock: IReactorTime, timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(root, clock, MetricsRequest, max_connections, timeout)


def metrics_site(metrics: MetricsPage, health: HealthPage, clock: IReactorTime) -> MetricsSite:
    """The site serving C{/metrics} and C{/healthz} (anything else is 404)."""
    return MetricsSite(Root({b"metrics": metrics, b"healthz": health}, _NOT_FOUND), clock)
