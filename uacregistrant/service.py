# -*- test-case-name: tests.integration.test_service -*-
"""
The service that owns and wires the pieces: store → registry → walker →
pacer → client → transactions → transports, and the control endpoints.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IReactorCore, IReactorTime, IResolver
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.names import client as dns_client

from .account import RowError, account_from_row
from .client import RegistrationClient
from .control.commands import Commands
from .control.protocol import ControlFactory
from .registrant import Policy, Registrant
from .registry import Registry
from .resolver import SipResolver
from .settings import ConfigError, Settings
from .stats import SipCounters
from .store import IRegistrantStore, Row, StoreError
from .store.sqlite import SqliteStore, sqlite_path
from .transaction import TransactionLayer
from .transport import SipTransport
from .walker import BucketWalker, Pacer

_log = Logger()


def open_store(settings: Settings) -> IRegistrantStore:
    """The store named by C{db_url}, opened and checked."""
    url = settings.db_url
    if url.startswith("sqlite:"):
        store = SqliteStore(sqlite_path(url), settings.table)
    else:
        raise ConfigError(f"unsupported db_url {url!r}: use sqlite:PATH")
    store.open()
    return store


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
        self.policy = policy or Policy(
            retry_base=settings.retry_interval,
            retry_max=settings.retry_max_interval,
            transaction_timeout=64 * settings.sip_t1 / 1000,
        )
        self.transactions = TransactionLayer(clock, self.counters, t1=settings.sip_t1 / 1000)
        self.transports = {
            spec.name: SipTransport(spec, self.transactions, self.counters) for spec in settings.listen
        }
        self._socket_names = list(self.transports)
        self.ports: list[Any] = []
        self.client = RegistrationClient(
            clock,
            self.transactions,
            SipResolver(resolver or dns_client.createResolver(), clock),
            self.transports,
        )
        self.pacer = Pacer(clock, settings.send_rate, self.client.send)
        self.walker = BucketWalker(self.registry, clock, settings.bucket_interval, self.pacer)
        self.client.reschedule = self.walker.poke
        self._loop = LoopingCall(self.walker.tick)
        self._loop.clock = clock
        self.commands = Commands(self.registry, self.counters)
        factory = ControlFactory(self.commands)
        for description in settings.control:
            endpoint = endpoints.serverFromString(reactor, description)
            control = StreamServerEndpointService(endpoint, factory)
            control._raiseSynchronously = True
            control.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """Bind the UDP sockets and the control endpoints (may need root)."""
        udp = self.reactor
        for transport in self.transports.values():
            spec = transport.spec
            self.ports.append(udp.listenUDP(spec.port, transport, interface=spec.host))
        super().privilegedStartService()

    def startService(self) -> None:
        """Load the table, then start walking the buckets."""
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        d = self.store.load()
        d.addCallback(self.load_rows)
        d.addCallback(self._start_walking)
        d.addErrback(lambda f: _log.failure("loading the table failed", f))

    def _start_walking(self, _: object) -> None:
        if self.running and not self._loop.running:
            self._loop.start(self.settings.bucket_interval, now=True)

    def load_rows(self, rows: list[Row], slice_size: int = 2000) -> defer.Deferred[int]:
        """
        Validate rows into records, C{slice_size} per reactor turn so a
        large table does not stall the reactor; log and skip bad rows.

        @return: fires with the number of records added.
        """
        done: defer.Deferred[int] = defer.Deferred()
        counts = [0, 0]  # added, seen

        def load_slice(start: int) -> None:
            for row in rows[start : start + slice_size]:
                counts[1] += 1
                if self._load_row(row):
                    counts[0] += 1
            if start + slice_size < len(rows):
                self._clock.callLater(0, load_slice, start + slice_size)
                return
            _log.info(
                "loaded {added} of {total} rows into {buckets} buckets",
                added=counts[0],
                total=counts[1],
                buckets=self.registry.bucket_count,
            )
            done.callback(counts[0])

        load_slice(0)
        return done

    def _load_row(self, row: Row) -> bool:
        try:
            account = account_from_row(
                row,
                default_expires=self.settings.default_expires,
                timer_interval=self.settings.timer_interval,
                sockets=self._socket_names,
            )
        except RowError as e:
            _log.error("skipping row id={row_id}: {reason}; fix: {hint}", row_id=row.get("id"), reason=e.reason, hint=e.hint)
            return False
        if self.registry.get(account.key) is not None:
            _log.error(
                "skipping row id={row_id}: duplicate of (aor, binding_URI, registrar) {key}",
                row_id=row.get("id"),
                key=account.key,
            )
            return False
        self.registry.add(Registrant(account, self.policy))
        return True

    def stopService(self) -> Any:
        """Stop walking, sending and listening."""
        if self._loop.running:
            self._loop.stop()
        self.pacer.stop()
        self.transactions.stop()
        for registrant in self.registry:
            self.walker.forget(registrant)
        for port in self.ports:
            port.stopListening()
        self.ports = []
        self.store.close()
        return super().stopService()


def build_service(settings: Settings, reactor: Any | None = None) -> RegistrantService:
    """
    The service for C{settings}.

    @raise ConfigError: if the store cannot be used.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        store = open_store(settings)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    return RegistrantService(settings, store, cast(IReactorCore, reactor))
