# -*- test-case-name: tests.unit.app.test_simulation,tests.integration.test_daemon -*-
"""
The service that builds and owns one node's pieces, by constructor
arguments, from the store up to the wire:

    store -> loader -> sync -> registry -> walker -> pacer -> client
          -> transactions -> transports (UDP ports, child services)
                          -> stream pool (TCP/TLS connections; tcp:/tls:
                             listen sockets are child services)

plus the control endpoints (child services) and the GC policy.  The
walk starts as the first batch of the first load lands: records register
as their rows arrive, each at its bucket's visit (at once if the walk has
passed its bucket already).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, cast

from twisted.application.internet import UDPServer
from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import ILogObserver, Logger
from twisted.names import client as dns_client
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.components import Componentized

from uacregistrant.agent.changes import StateChanges
from uacregistrant.agent.client import RegistrationClient
from uacregistrant.agent.statelog import StateLog
from uacregistrant.app.cluster import ClusterNode
from uacregistrant.app.gcpolicy import FreezeSurvivors, freeze_loaded
from uacregistrant.app.logs import DaemonLog, daemon_log
from uacregistrant.app.operations import OperationsService
from uacregistrant.app.preflight import preflight
from uacregistrant.app.settings import ConfigError, Settings
from uacregistrant.control.admin import Admin
from uacregistrant.control.census import RecordCensus
from uacregistrant.control.commands import Commands
from uacregistrant.control.events import EventHub
from uacregistrant.control.listener import ControlListener
from uacregistrant.control.protocol import ControlFactory
from uacregistrant.core.counters import SipCounters
from uacregistrant.core.registrant import FAILURE_STATES, Policy, RegState, Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.incoming import RequestAnswerer
from uacregistrant.net.resolver import SipResolver
from uacregistrant.net.stream import IncomingFactory, StreamPool
from uacregistrant.net.tls import TlsError, TlsSettings, load_tls
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.net.transport import MAX_DATAGRAM, SipTransport
from uacregistrant.schedule.pacer import Pacer
from uacregistrant.schedule.timers import TimerQueue
from uacregistrant.schedule.walker import BucketWalker, WalkService
from uacregistrant.sip.sharing import SharedTables
from uacregistrant.store import IRegistrantStore
from uacregistrant.store.coordinator import ICoordinator, Member
from uacregistrant.store.loader import TableLoader
from uacregistrant.store.sqlite import SqliteStore, sqlite_path
from uacregistrant.store.sync import TableSync

if TYPE_CHECKING:
    from uacregistrant.control.metrics import MetricsPage

_log = Logger(namespace=__name__)


def open_store(settings: Settings, reactor: Any) -> IRegistrantStore:
    """The store named by C{db_url}, not yet connected (see L{preflight})."""
    url = settings.db_url
    store: IRegistrantStore
    if url.startswith("sqlite:"):
        store = SqliteStore(sqlite_path(url), settings.table, reactor)
    elif url.startswith(("postgres://", "postgresql://")):
        from uacregistrant.store.postgres import PostgresStore

        store = PostgresStore(url, settings.table, reactor, notify=settings.db_notify, poll=settings.db_poll)
    else:
        raise ConfigError("unsupported db_url: use sqlite:PATH or postgres://USER@HOST:PORT/DBNAME")
    return store


def open_coordinator(settings: Settings, reactor: Any) -> ICoordinator:
    """The cluster's coordinator on the registrant table's PostgreSQL database (not yet connected)."""
    from uacregistrant.store.pgcoordinator import PostgresCoordinator

    return cast(ICoordinator, PostgresCoordinator(settings.db_url, settings.cluster, reactor))


def node_name(settings: Settings) -> str:
    """This node's name: the configured one, else the host name and the first listen port."""
    return settings.node_name or f"{socket.gethostname()}:{settings.listen[0].port}"[:63]


def _member_state(member: Member) -> str:
    """A member's state in reg_cluster: running, stopping (and how), stopped, or lost (its lease ran out)."""
    if member.alive:
        return f"stopping ({member.stopping})" if member.stopping else "running"
    return "stopped" if member.stopping else "lost"


class StartRefused(Exception):
    """The service cannot start (a socket in use, an unusable database...): the reason, one line."""


def stuck_after(transaction_timeout: float) -> float:
    """
    Seconds after which a record still waiting in a transaction state can
    only be stuck: longer than every follow-up's Timer F and the slowest
    lookup together.
    """
    return max(300.0, 8 * transaction_timeout)


class StreamListener(Service):
    """A C{tcp:} or C{tls:} listen socket: a registrar may connect back to it."""

    def __init__(self, spec: SocketSpec, pool: StreamPool, reactor: Any) -> None:
        self.spec = spec
        self._pool = pool
        self._reactor = reactor
        self._port: Any = None

    def privilegedStartService(self) -> None:
        """Listen (a TLS socket only with a certificate to serve: else outgoing only)."""
        super().privilegedStartService()
        factory: Any = IncomingFactory(self._pool)
        spec = self.spec
        if spec.transport == "tls":
            server = self._pool.tls.server_options() if self._pool.tls is not None else None
            if server is None:
                _log.warn("{socket}: no --tls-cert to serve with: used for outgoing connections only, not listening", socket=spec.name)
                return
            factory = TLSMemoryBIOFactory(server, False, factory)
        self._port = self._reactor.listenTCP(spec.port, factory, interface=spec.host)
        self._pool.listen_ports[spec.name] = self._port.getHost().port

    def stopService(self) -> Any:
        """Stop listening."""
        super().stopService()
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None


class RegistrantService(MultiService):
    """
    One node's registrant daemon.

    @ivar registry: every loaded record.
    @ivar transports: the UDP sockets by configured C{udp:HOST:PORT} name.
    @ivar streams: the TCP/TLS connections.
    @param checks: the start-up checks run before binding (L{preflight}).
    """

    def __init__(
        self,
        settings: Settings,
        store: IRegistrantStore,
        reactor: Any,
        resolver: IResolver | None = None,
        policy: Policy | None = None,
        checks: Callable[[Settings, IRegistrantStore], None] = preflight,
        coordinator: ICoordinator | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        log: DaemonLog | None = None,
        signals: bool = False,
    ) -> None:
        """
        @param coordinator: the cluster's coordinator (with C{--cluster};
            by default PostgreSQL's, on the table's database).
        @param monotonic: the clock the cluster's lease deadlines are kept on.
        @param log: the log twistd is to use (L{daemon_log}).
        @param signals: this is the running daemon: install the signal
            handlers (SIGHUP, SIGUSR1).
        """
        super().__init__()
        self.settings = settings
        self.store = store
        self.reactor = reactor
        self._checks = checks
        self._clock = clock = cast(IReactorTime, reactor)
        self.counters = SipCounters()
        #: This service's interning tables and parse caches (none is process-wide).
        self.shared = shared = SharedTables()
        self.registry = Registry(settings.hash_size)
        self.policy = dataclasses.replace(
            policy
            or Policy(
                retry_base=settings.retry_interval,
                retry_max=settings.retry_max_interval,
                transaction_timeout=64 * settings.sip_t1 / 1000,
            ),
            expiry_guessed=self._expiry_guessed,
            shared=shared,
        )
        #: Transaction timers and refresh wake-ups, on one reactor call.
        self.timers = TimerQueue(clock)
        self.transactions = TransactionLayer(clock, self.counters, t1=settings.sip_t1 / 1000, timers=self.timers)
        #: Answers OPTIONS pings and other requests from peers.
        self.answerer = RequestAnswerer(clock, self.counters, settings.user_agent)
        self.transports = {
            spec.name: SipTransport(spec, self.transactions, self.counters, clock, shared.names, answerer=self.answerer)
            for spec in settings.listen
            if not spec.stream
        }
        #: Every TCP/TLS connection.
        self.streams = StreamPool(reactor, self.transactions, self.counters, shared.names, keepalive=settings.keepalive)
        self.streams.answerer = self.answerer
        for spec in settings.stream_listen:
            StreamListener(spec, self.streams, reactor).setServiceParent(self)
        for transport in self.transports.values():
            spec = transport.spec
            UDPServer(spec.port, transport, interface=spec.host, maxPacketSize=MAX_DATAGRAM, reactor=reactor).setServiceParent(self)
        self.state_log = StateLog(clock)
        self.events = EventHub()
        #: Every state change goes to the state log and the console's followers.
        self.changes = StateChanges([self.state_log, self.events])
        self.client = RegistrationClient(
            clock,
            self.transactions,
            SipResolver(
                resolver or self._make_resolver,
                clock,
                ipv4=any(":" not in spec.host for spec in settings.listen),
                ipv6=any(":" in spec.host for spec in settings.listen),
                # TCP and TLS connections can go from any socket's address; UDP needs a UDP socket.
                transports=frozenset({"tcp", "tls"} | ({"udp"} if self.transports else set())),
            ),
            self.transports,
            self.counters,
            changes=self.changes,
            reschedule=self._after_step,
            queue_follow_up=self._queue_follow_up,
            user_agent=settings.user_agent,
            streams=self.streams,
            stream_sockets=settings.stream_listen,
        )
        self.streams.on_lost = self.client.link_lost
        #: This node's part of the cluster (C{None}: the daemon runs alone).
        self.cluster: ClusterNode | None = None
        self.pacer = Pacer(
            clock,
            settings.send_rate,
            self.client.send,
            window=settings.max_in_flight,
            in_flight=self.transactions.__len__,
            send_follow_up=self.client.send_follow_up,
        )
        self.walker = BucketWalker(
            self.registry,
            clock,
            settings.bucket_interval,
            self.pacer,
            timers=self.timers,
            stuck_after=stuck_after(self.policy.transaction_timeout),
            on_stuck=self.client.recover_stuck,
        )
        self.sync = TableSync(
            self.registry,
            self.policy,
            clock,
            default_expires=settings.default_expires,
            timer_interval=settings.timer_interval,
            sockets=[spec.name for spec in settings.listen],
            poke=self.walker.poke,
            forget=self._forget,
            shared=shared,
            arrived=self.walker.arrived,
        )
        self.loader = TableLoader(
            store,
            self.sync,
            clock,
            poll_interval=settings.db_poll,
            loaded=self._loaded,
            first_batch=self._first_batch,
        )
        self.loader.setServiceParent(self)
        self.walk = WalkService(self.walker, clock)
        self.walk.setServiceParent(self)
        if settings.cluster and (coordinator is not None or settings.db_url.startswith(("postgres://", "postgresql://"))):
            self.cluster = ClusterNode(
                coordinator or open_coordinator(settings, reactor),
                self.registry,
                clock,
                node_name(settings),
                " ".join(spec.name for spec in settings.listen),
                settings.cluster_lease,
                wake=self.walker.poke,
                monotonic=monotonic,
            )
            self.cluster.setServiceParent(self)
            self.walker.eligible = self.client.may_send = self.cluster.eligible
            self.client.may_continue = self.cluster.may_continue
        self.admin = Admin(self.registry, store, self.sync, clock, self.loader.reload)
        cluster = self.cluster
        self.commands = Commands(
            self.registry,
            self.counters,
            self.admin,
            self.events,
            clock,
            self._transport_status,
            holds=cluster.holds if cluster is not None else None,
            cluster=self._cluster_nodes if cluster is not None else None,
        )
        for control in settings.control:
            # A factory (and a connection count) per endpoint: a TCP port every local user reaches never fills the operators' socket.
            factory = ControlFactory(self.commands, clock, token_file=settings.control_token_file)
            listener = ControlListener(endpoints.serverFromString(reactor, control.description), factory, on_listening=control.apply_ownership)
            listener.setServiceParent(self)
        #: Counts of the records by state, a slice per reactor turn (metrics, systemd's status).
        self.census = RecordCensus(self.registry, clock, holds=cluster.holds if cluster is not None else None,
                                   per_registrar=settings.metrics_per_registrar)
        self.metrics: MetricsPage | None = None
        if settings.metrics is not None:
            self._serve_metrics(settings.metrics.description)
        if settings.mi_http is not None:
            # Here, not at the top: twisted.web loads only with an HTTP endpoint (else ~40 ms of CPU at every start).
            from uacregistrant.control.mi import mi_site

            site = mi_site(self.commands, self.admin, clock, settings.mi_root, writes=settings.mi_http_writes)
            ControlListener(endpoints.serverFromString(reactor, settings.mi_http.description), site).setServiceParent(self)
        self.operations = OperationsService(
            clock, self.reload, self._status_line, log=log, call_from_thread=reactor.callFromThread if signals else None,
        )
        self.operations.setServiceParent(self)

    def _serve_metrics(self, description: str) -> None:
        """Prometheus's /metrics and /healthz on C{description}."""
        # Here, not at the top: twisted.web and prometheus_client load only with an HTTP endpoint (else ~40 ms of CPU at every start).
        from uacregistrant.control.metrics import HealthCheck, HealthPage, MetricsPage, RegistrantCollector, metrics_site

        settings, clock, census = self.settings, self._clock, self.census
        collector = RegistrantCollector(census, self.counters, db_up=lambda: bool(self.store.connected), last_load=lambda: self.loader.last_loaded)
        self.metrics = MetricsPage(census, collector)
        health = HealthPage(HealthCheck(clock, loaded=lambda: self.loader.loaded, walking=lambda: self.walk.walking,
                                        visits=lambda: self.walker.visits, bucket_interval=settings.bucket_interval))
        site = metrics_site(self.metrics, health, clock)
        ControlListener(endpoints.serverFromString(self.reactor, description), site).setServiceParent(self)
        self.metrics.lag_probe(clock).setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        """Join C{parent}; under twistd (an Application), hand it this daemon's log observer too."""
        log = self.operations.log
        if log is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, log.observer)
        super().setServiceParent(parent)

    def _status_line(self) -> str:
        """What systemd shows: the last count of the records by state (the next one is started if it is stale)."""
        self.census.current().addErrback(lambda f: _log.failure("counting the records failed", f))
        last = self.census.last
        counters = self.counters
        if last is None:
            counted = f"{len(self.registry)} records"
        else:
            failing = sum(last.states[state] for state in FAILURE_STATES)
            counted = (
                f"{sum(last.states)} records: {last.states[RegState.REGISTERED_STATE]} registered, {failing} failing, "
                f"{last.bindings_held} bindings held"
            )
        return f"{counted}; {counters.requests_sent} requests sent, {counters.timeouts} timeouts, {counters.lapsed_registrations} lapsed"

    def _make_resolver(self) -> IResolver:
        """The DNS resolver, made on the first lookup: --nameserver's, else the system's."""
        nameservers = self.settings.nameservers
        if nameservers:
            return cast(IResolver, dns_client.createResolver(servers=list(nameservers), resolvconf=os.devnull))
        return cast(IResolver, dns_client.createResolver())

    def _transport_status(self) -> dict[str, Any]:
        """What reg_stats shows of the transports (and of the cluster)."""
        status: dict[str, Any] = {
            "connections": len(self.streams),
            "incoming_connections": self.streams.incoming,
            "tls_verify": "off" if self.settings.tls_no_verify else "on",
        }
        cluster = self.cluster
        if cluster is not None:
            status.update(
                {
                    "cluster": self.settings.cluster,
                    "node": cluster.node_name,
                    "slots_held": len(cluster.member.held),
                    "records_held": cluster.records_held,
                    "fenced": "yes" if cluster.member.fenced else "no",
                }
            )
        return status

    def _cluster_nodes(self) -> defer.Deferred[list[dict[str, Any]]]:
        """reg_cluster's rows."""
        assert self.cluster is not None
        me = self.cluster.node_name

        def rows(members: list[Member]) -> list[dict[str, Any]]:
            return [
                {
                    "name": m.name,
                    "alive": "yes" if m.alive else "no",
                    "state": _member_state(m),
                    "last_heartbeat_s_ago": round(m.age, 1),
                    "slots": m.slots,
                    "records": m.records,
                    "listen": m.listen,
                    "this_node": "yes" if m.name == me else "no",
                }
                for m in members
            ]

        return defer.ensureDeferred(self.cluster.members()).addCallback(rows)

    def _load_tls(self) -> None:
        """Read the TLS files (a refusal if unusable); warn when certificates go unchecked."""
        settings = self.settings
        try:
            self.streams.tls = load_tls(TlsSettings(settings.tls_ca, settings.tls_cert, settings.tls_key, verify=not settings.tls_no_verify))
        except TlsError as e:
            raise ConfigError(str(e)) from None
        if settings.tls_no_verify:
            _log.warn("--tls-no-verify: registrars' TLS certificates are NOT checked (anyone on the path can pose as them)")

    def privilegedStartService(self) -> None:
        """
        Check what can refuse a start, load the TLS files, then bind the
        UDP and stream sockets and the control endpoints (may need root).
        A refusal is one line on stderr and exit 1.

        @raise StartRefused: an ordinary exception, so that a daemonizing
            twistd reports it through its status pipe to the parent (which
            prints it and exits 1) and removes its pid file; C{SystemExit}
            would leave the parent waiting.
        """
        try:
            self._checks(self.settings, self.store)
            self._load_tls()
            super().privilegedStartService()
        except (ConfigError, CannotListenError) as e:
            for child in list(self):
                if isinstance(child, (UDPServer, ControlListener, StreamListener)):
                    child.stopService()
            reason = _refusal(e)
            _log.error("cannot start: {reason}", reason=reason)
            # twistd has routed sys.stderr into the log by now: the one line
            # goes to the real stderr (the log has it too, for daemon mode).
            print(f"uacregistrant: cannot start: {reason}", file=sys.__stderr__)
            raise StartRefused(reason) from None

    def _first_batch(self) -> None:
        """A batch of the first load is in: the walk runs from the first one on (records register as their rows land)."""
        freeze_loaded()
        self.walk.release()

    def _loaded(self, counts: dict[str, int]) -> None:
        """A full pass finished (the walk runs already, unless the table is empty)."""
        self.walk.release()
        self.operations.loaded()
        _log.info(
            "table {table}: {added} added, {changed} changed, {unchanged} unchanged, "
            "{removed} removed, {skipped} skipped; {total} records in {buckets} buckets",
            table=self.settings.table.table,
            total=len(self.registry),
            buckets=self.registry.bucket_count,
            **counts,
        )

    def reload(self) -> defer.Deferred[dict[str, int]]:
        """A full pass over the table (one at a time): add, change, retire."""
        return self.loader.reload()

    def _forget(self, registrant: Registrant) -> None:
        """A retired record is removed: nothing may keep it."""
        if self.cluster is not None:
            self.cluster.forget(registrant)
        self.walker.forget(registrant)
        self.client.forget(registrant)
        self.state_log.forget(registrant)

    def _expiry_guessed(self) -> None:
        self.counters.expiry_guesses += 1

    def _after_step(self, registrant: Registrant) -> None:
        self.walker.poke(registrant)
        self.sync.check_finished(registrant)

    def _queue_follow_up(self, registrant: Registrant) -> None:
        self.pacer.push_follow_up(registrant)

    def unregister_all(self, timeout: float) -> defer.Deferred[int]:
        """
        Un-register every record holding a binding, paced, within
        C{timeout} seconds; fires with how many are still pending.
        """
        now = self._clock.seconds()
        mine = self.cluster.eligible if self.cluster is not None else (lambda r: True)
        targets = [r for r in self.registry if r.registered_until is not None and r.registered_until > now and mine(r)]
        for registrant in targets:
            self.walker.forget(registrant)
            registrant.retire(now)
            self.pacer.push(registrant)
        done: defer.Deferred[int] = defer.Deferred()
        deadline = now + timeout

        def settled(r: Registrant) -> bool:
            # Done, or its un-REGISTER failed outright (a refused connection):
            # waiting out the back-off would only delay the shutdown.
            sent = r.last_register_sent
            return r.finished or (not r.in_transaction and r.state in FAILURE_STATES and sent is not None and sent >= now)

        def check() -> None:
            pending = sum(1 for r in targets if not settled(r))
            if pending == 0 or self._clock.seconds() >= deadline:
                done.callback(pending)
            else:
                self._clock.callLater(0.05, check)

        check()
        return done

    def stopService(self) -> defer.Deferred[Any]:
        """Stop loading and walking, un-register (unless disabled), then stop sending and listening."""
        self.operations.stopping()
        self.loader.stopService()
        self.walk.stopService()
        bound = any(isinstance(child, (UDPServer, StreamListener)) and child.running for child in self)
        cluster = self.cluster
        if cluster is not None:
            handed = defer.ensureDeferred(cluster.stop())
        else:
            handed = defer.succeed(False)

        def unregister(hand_over: bool) -> defer.Deferred[Any]:
            if hand_over:
                _log.info("shutdown: the other nodes of cluster {cluster} take the records over (nothing un-registered)", cluster=self.settings.cluster)
                return defer.succeed(0)
            if self.settings.unregister_on_shutdown and bound:
                d = self.unregister_all(self.settings.shutdown_timeout)
                d.addCallback(self._log_unregistered)
            else:
                d = defer.succeed(0)
            if cluster is not None:
                d.addCallback(lambda _: defer.ensureDeferred(cluster.leave()))
            return d

        handed.addCallback(unregister)
        handed.addCallback(lambda _: self._close())
        return handed

    def _log_unregistered(self, pending: int) -> None:
        if pending:
            _log.warn("shutdown: {pending} un-REGISTERs unanswered after {timeout}s", pending=pending, timeout=self.settings.shutdown_timeout)
        else:
            _log.info("shutdown: every binding un-registered")

    def _close(self) -> defer.Deferred[None]:
        self.pacer.stop()
        self.streams.stop()
        self.transactions.stop()
        self.walker.stop()
        self.timers.stop()
        self.state_log.stop()
        d = defer.maybeDeferred(super().stopService)

        def close_store(result: object) -> object:
            self.store.close()
            return result

        return d.addBoth(close_store).addCallback(lambda _: None)


def build_service(settings: Settings, reactor: Any | None = None, twistd: Mapping[str, Any] | None = None) -> RegistrantService:
    """
    The daemon's service for C{settings}: nothing is opened or bound until
    it starts.

    @param twistd: twistd's options (its log file, user and group), when run by twistd.

    @raise ConfigError: if C{db_url} names no supported store.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    log = daemon_log(twistd, settings.log_format) if twistd is not None else None
    registrant = RegistrantService(settings, open_store(settings, reactor), reactor, log=log, signals=True)
    # The daemon owns its process: keep the cyclic GC's pauses short.
    FreezeSurvivors().setServiceParent(registrant)
    return registrant


def _refusal(error: Exception) -> str:
    if isinstance(error, CannotListenError):
        socket_error = error.socketError
        reason = str(getattr(socket_error, "strerror", None) or socket_error)
        if isinstance(error.port, bytes):  # a UNIX control socket: port is its path
            return f"cannot listen on unix:{error.port.decode('utf-8', 'replace')}: {reason}"
        return f"cannot listen on {error.interface or '*'}:{error.port}: {reason}"
    return str(error)
