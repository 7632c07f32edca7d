# -*- test-case-name: tests.integration.test_service -*-
"""
The service that owns and wires the pieces: store → registry → walker →
pacer → client → transactions → transports, and the control endpoints.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
from typing import Any, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime, IResolver
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.names import client as dns_client
from twisted.python.failure import Failure

from uacregistrant.control.admin import Admin
from uacregistrant.agent.client import RegistrationClient
from uacregistrant.control.commands import Commands
from uacregistrant.control.events import EventHub
from uacregistrant.control.protocol import ControlFactory
from uacregistrant.app.gcpolicy import FreezeSurvivors
from uacregistrant.app.preflight import preflight
from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.net.resolver import SipResolver
from uacregistrant.app.settings import ConfigError, Settings
from uacregistrant.core.counters import SipCounters
from uacregistrant.store import IRegistrantStore, Row, StoreError
from uacregistrant.store.sqlite import SqliteStore, sqlite_path
from uacregistrant.store.sync import TableSync
from uacregistrant.schedule.timers import TimerQueue
from uacregistrant.net.transaction import TransactionLayer
from uacregistrant.net.transport import MAX_DATAGRAM, SipTransport
from uacregistrant.schedule.walker import BucketWalker, Pacer

_log = Logger()


#: Delays (seconds) between attempts to start the store and load the
#: table, doubling up to the last.
START_RETRY = (1.0, 60.0)


def open_store(settings: Settings, reactor: Any) -> IRegistrantStore:
    """The store named by C{db_url}, not yet connected (see L{preflight})."""
    url = settings.db_url
    store: IRegistrantStore
    if url.startswith("sqlite:"):
        store = SqliteStore(sqlite_path(url), settings.table, reactor)
    elif url.startswith(("postgres://", "postgresql://")):
        from uacregistrant.store.postgres import PostgresStore

        store = PostgresStore(url, settings.table, reactor, notify=settings.db_notify)
    else:
        raise ConfigError("unsupported db_url: use sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DBNAME")
    return store


def stuck_after(transaction_timeout: float) -> float:
    """
    Seconds after which a record still waiting in a transaction state can
    only be stuck: longer than every follow-up's Timer F and the slowest
    lookup together.
    """
    return max(300.0, 8 * transaction_timeout)


class RegistrantService(MultiService):
    """
    One node's registrant daemon.

    @ivar registry: every loaded record.
    @ivar transports: the UDP sockets by configured C{udp:HOST:PORT} name.
    """

    def __init__(
        self,
        settings: Settings,
        store: IRegistrantStore,
        reactor: Any,
        resolver: IResolver | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.reactor = reactor
        self._clock = clock = cast(IReactorTime, reactor)
        self.counters = SipCounters()
        self.registry = Registry(settings.hash_size)
        self.policy = dataclasses.replace(
            policy
            or Policy(
                retry_base=settings.retry_interval,
                retry_max=settings.retry_max_interval,
                transaction_timeout=64 * settings.sip_t1 / 1000,
            ),
            expiry_guessed=self._expiry_guessed,
        )
        #: Transaction timers and refresh wake-ups, on one reactor call.
        self.timers = TimerQueue(clock)
        self.transactions = TransactionLayer(clock, self.counters, t1=settings.sip_t1 / 1000, timers=self.timers)
        self.transports = {
            spec.name: SipTransport(spec, self.transactions, self.counters, clock) for spec in settings.listen
        }
        self.ports: list[Any] = []
        self.client = RegistrationClient(
            clock,
            self.transactions,
            SipResolver(resolver or dns_client.createResolver(), clock),
            self.transports,
            self.counters,
        )
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
        self.client.queue_follow_up = self.pacer.push_follow_up
        self.sync = TableSync(
            self.registry,
            self.policy,
            clock,
            default_expires=settings.default_expires,
            timer_interval=settings.timer_interval,
            sockets=list(self.transports),
            poke=self.walker.poke,
            forget=self._forget,
        )
        self.client.reschedule = self._after_step
        self.events = EventHub()
        self.client.observers.append(self.events.publish)
        self._loop = LoopingCall(self.walker.tick)
        self._loop.clock = clock
        self._poll = LoopingCall(self._poll_table)
        self._poll.clock = clock
        self._reload_lock = defer.DeferredLock()
        self.admin = Admin(self.registry, store, self.sync, clock, self.reload)
        self.commands = Commands(self.registry, self.counters, self.admin, self.events, clock)
        factory = ControlFactory(self.commands, clock)
        self._loaded = False
        self._store_started = False
        self._start_delay = START_RETRY[0]
        self._start_retry: IDelayedCall | None = None
        for control in settings.control:
            endpoint = endpoints.serverFromString(reactor, control.description)
            listening = StreamServerEndpointService(endpoint, factory)
            listening._raiseSynchronously = True
            listening.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Bind the UDP sockets and the control endpoints (may need root).  A
        socket taken since the start-up checks is one line and exit 1.
        """
        udp = self.reactor
        try:
            for transport in self.transports.values():
                spec = transport.spec
                self.ports.append(udp.listenUDP(spec.port, transport, interface=spec.host, maxPacketSize=MAX_DATAGRAM))
            super().privilegedStartService()
        except CannotListenError as e:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            print(f"uacregistrant: cannot start: cannot listen on {e.interface or '*'}:{e.port}: {_reason(e)}", file=sys.stderr)
            raise SystemExit(1) from None

    def startService(self) -> None:
        """Open the store and load the table (retried until it works), then walk the buckets."""
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        self._start_attempt()

    def _start_attempt(self) -> None:
        self._start_retry = None
        if not self.running or self._loaded:
            return
        if self._store_started:
            d: defer.Deferred[Any] = defer.succeed(None)
        else:
            d = self.store.start().addCallback(self._store_ready)
        d.addCallback(lambda _: self._reload_lock.run(self._reload, True))
        d.addErrback(self._start_failed)

    def _store_ready(self, _: object) -> None:
        self._store_started = True
        self.store.watch(self._on_table_change, self._on_resync)

    def _start_failed(self, failure: Failure) -> None:
        if not self.running or self._loaded:
            return
        delay = self._start_delay
        self._start_delay = min(START_RETRY[1], delay * 2)
        _pass_failed(failure, "loading the table", f"retrying in {delay:.0f}s")
        self._start_retry = self._clock.callLater(delay, self._start_attempt)

    def _start_walking(self, _: object) -> None:
        if self.running and not self._loop.running:
            self._loop.start(self.settings.bucket_interval, now=True)
        if self.running and self.settings.db_poll > 0 and not self._poll.running:
            self._poll.start(self.settings.db_poll, now=False)

    def _forget(self, registrant: Registrant) -> None:
        """A retired record is removed: nothing may keep it."""
        self.walker.forget(registrant)
        self.client.forget(registrant)

    def _expiry_guessed(self) -> None:
        self.counters.expiry_guesses += 1

    def _after_step(self, registrant: Registrant) -> None:
        self.walker.poke(registrant)
        self.sync.check_finished(registrant)

    def reload(self) -> defer.Deferred[dict[str, int]]:
        """A full pass over the table (one at a time): add, change, retire."""
        return self._reload_lock.run(self._reload)

    def _reload(self, initial: bool = False) -> defer.Deferred[dict[str, int]]:
        full = self.sync.full(initial)

        def feed(rows: list[Row]) -> None:
            full.feed(rows)
            if initial:
                # The first load's records live as long as the daemon: move
                # them out of the cyclic GC's reach so that full collections
                # stay short however large the table (100k records: 260 ms
                # pauses without this). Later reloads add few objects.
                gc.collect(1)
                gc.freeze()

        d = self.store.load(feed)

        def finished(_: object) -> defer.Deferred[dict[str, int]]:
            return full.finish(self._clock).addCallback(report)

        def abandoned(failure: Failure) -> Failure:
            full.abandon()
            return failure

        def report(counts: dict[str, int]) -> dict[str, int]:
            # The walk starts after the first complete pass, whichever it is
            # (the initial load may have failed with the database away).
            self._loaded = True
            self._start_walking(None)
            _log.info(
                "table {table}: {added} added, {changed} changed, {unchanged} unchanged, "
                "{removed} removed, {skipped} skipped; {total} records in {buckets} buckets",
                table=self.settings.table.table,
                total=len(self.registry),
                buckets=self.registry.bucket_count,
                **counts,
            )
            return counts

        return d.addCallbacks(finished, abandoned)

    def _poll_table(self) -> defer.Deferred[None] | None:
        """
        One poll; the loop waits for it (polls never pile up behind a locked
        database), and a poll due while another full pass runs is skipped.
        """
        if self._reload_lock.locked:
            return None
        d = self.reload()
        return d.addCallbacks(lambda _: None, lambda f: _pass_failed(f, "polling the table", _FROM_MEMORY))

    def _on_table_change(self, key: tuple[str, str, str] | None, old_key: tuple[str, str, str] | None) -> defer.Deferred[None]:
        """A NOTIFY: re-read one record (C{key}), retire C{old_key} if it changed or went."""
        for changed in (key, old_key):
            if changed is not None:
                self.sync.touch(changed)  # a full pass under way keeps out of it
        if old_key is not None and old_key != key:
            self.sync.retire(old_key)
        if key is None:
            return defer.succeed(None)
        d = self.store.load_key(key)

        def loaded(row: Row | None) -> None:
            if row is None:
                self.sync.retire(key)
                return
            account = self.sync.account(row)
            if account is not None and account.key == key:
                self.sync.apply(account)

        return d.addCallback(loaded)

    def _on_resync(self) -> None:
        """The store reconnected: a full pass catches whatever changed meanwhile."""
        d = self.reload()
        d.addErrback(lambda f: _pass_failed(f, "resynchronising after reconnecting", _FROM_MEMORY))

    def unregister_all(self, timeout: float) -> defer.Deferred[int]:
        """
        Un-register every record holding a binding, paced, within
        C{timeout} seconds; fires with how many are still pending.
        """
        now = self._clock.seconds()
        targets = [r for r in self.registry if r.registered_until is not None and r.registered_until > now]
        for registrant in targets:
            self.walker.forget(registrant)
            registrant.retire(now)
            self.pacer.push(registrant)
        done: defer.Deferred[int] = defer.Deferred()
        deadline = now + timeout

        def check() -> None:
            pending = sum(1 for r in targets if not r.finished)
            if pending == 0 or self._clock.seconds() >= deadline:
                done.callback(pending)
            else:
                self._clock.callLater(0.05, check)

        check()
        return done

    def stopService(self) -> defer.Deferred[Any]:
        """Un-register (unless disabled), then stop walking, sending and listening."""
        for loop in (self._loop, self._poll):
            if loop.running:
                loop.stop()
        if self._start_retry is not None and self._start_retry.active():
            self._start_retry.cancel()
        self._start_retry = None
        if self.settings.unregister_on_shutdown and self.ports:
            d = self.unregister_all(self.settings.shutdown_timeout)
            d.addCallback(self._log_unregistered)
        else:
            d = defer.succeed(0)
        d.addCallback(lambda _: self._close())
        return d

    def _log_unregistered(self, pending: int) -> None:
        if pending:
            _log.warn("shutdown: {pending} un-REGISTERs unanswered after {timeout}s", pending=pending, timeout=self.settings.shutdown_timeout)
        else:
            _log.info("shutdown: every binding un-registered")

    def _close(self) -> defer.Deferred[None]:
        self.pacer.stop()
        self.transactions.stop()
        for registrant in self.registry:
            self.walker.forget(registrant)
        self.timers.stop()
        self.client.state_log.stop()
        for port in self.ports:
            port.stopListening()
        self.ports = []
        self.store.close()
        return defer.maybeDeferred(super().stopService).addCallback(lambda _: None)


def build_service(settings: Settings, reactor: Any | None = None) -> RegistrantService:
    """
    The service for C{settings}.

    @raise ConfigError: if the store cannot be used.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    store = open_store(settings, reactor)
    preflight(settings, store)
    registrant = RegistrantService(settings, store, cast(IReactorCore, reactor))
    # The daemon owns its process: keep the cyclic GC's pauses short.
    FreezeSurvivors().setServiceParent(registrant)
    return registrant


_FROM_MEMORY = "registrations continue from memory"


def _pass_failed(failure: Failure, what: str, then: str) -> None:
    """A full pass failed: one line for the database's own errors, a traceback for anything else."""
    if failure.check(StoreError):
        _log.error("{what} failed: {error}; {then}", what=what, error=failure.getErrorMessage(), then=then)
    else:
        _log.failure("{what} failed; {then}", failure, what=what, then=then)


def _reason(error: CannotListenError) -> str:
    socket_error = error.socketError
    return str(getattr(socket_error, "strerror", None) or socket_error)
