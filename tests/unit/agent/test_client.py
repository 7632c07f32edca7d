"""
Tests for L{uacregistrant.agent.client}: the one guarded place where records
meet the network, on the real service (fake clock and network, real
SQLite table, real test registrar); and where a request goes once its
next hop is (or is not) resolved, on a fake resolver and sender.
"""

from __future__ import annotations

import dataclasses
import random

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.build import CLIENT_COMPILED, PURE_ONLY
from tests.simulation import REGISTRAR, Simulation
from uacregistrant.agent.changes import StateChange, StateChanges
from uacregistrant.agent.client import RegistrationClient
from uacregistrant.app.service import stuck_after
from uacregistrant.core.account import Account
from uacregistrant.core.counters import SipCounters
from uacregistrant.core.registrant import IN_TRANSACTION, Policy, RegState, Registrant
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.resolver import Address, ResolutionError, SipResolver, Target
from uacregistrant.net.stream import StreamPool
from uacregistrant.net.tls import TlsSettings, load_tls
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.net.transport import SipTransport
from uacregistrant.sip.message import Request, Response, parse_message
from uacregistrant.sip.uri import SipUri, parse_uri
from uacregistrant.testing.registrar import UserPolicy


def boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom")


class GuardTests(SynchronousTestCase):
    """An exception in any step leaves the record INTERNAL_ERROR with a retry, never silent."""

    def simulation(self, users: dict[str, UserPolicy], **settings: object) -> Simulation:
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=100, sip_t1=100,
                         retry_interval=10, retry_max_interval=40, **settings)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        for user in users:
            sim.add(user, password="p")
        return sim

    def assertRetrying(self, sim: Simulation, what: str) -> None:
        assert sim.service is not None
        now = sim.reactor.seconds()
        for r in sim.service.registry:
            self.assertEqual(r.state, RegState.INTERNAL_ERROR_STATE, r)
            self.assertIn(what, r.last_error)
            self.assertIn("RuntimeError: boom", r.last_error)
            assert r.next_at is not None
            self.assertGreater(r.next_at, now)

    def check_step(self, owner: type, name: str, what: str, users: dict[str, UserPolicy] | None = None) -> None:
        if CLIENT_COMPILED and owner in (Registrant, RegistrationClient):
            # The compiled client calls compiled methods directly, not through the class.
            raise SkipTest(PURE_ONLY)
        users = users or {f"u{i}": UserPolicy(password="p") for i in range(5)}
        sim = self.simulation(users)
        patched = self.patch(owner, name, boom)
        service = sim.start()
        # Until every record has failed (a timeout's step fails at Timer F,
        # 6.4 s); stepping finely, so that no record is caught in the middle
        # of a retry (the back-off's jitter can put one at any instant).
        while sim.reactor.seconds() < 20 and any(r.state != RegState.INTERNAL_ERROR_STATE for r in service.registry):
            sim.run(0.05)
        self.assertRetrying(sim, what)
        self.assertGreaterEqual(service.counters.internal_errors, len(users))
        # One traceback per kind of failure a minute, not one per record.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        patched.restore()
        for policy in users.values():
            policy.silent = False
        sim.run(60)
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})

    def test_response_handling(self) -> None:
        """The state machine raising on a response."""
        self.check_step(Registrant, "on_response", "handling a response")

    def test_timeout_handling(self) -> None:
        """The state machine raising on Timer F."""
        users = {f"u{i}": UserPolicy(password="p", silent=True) for i in range(3)}
        self.check_step(Registrant, "on_timeout", "handling a timeout", users)

    def test_starting_an_attempt(self) -> None:
        """The state machine raising when an attempt starts."""
        self.check_step(Registrant, "start", "starting an attempt")

    def test_sending(self) -> None:
        """Sending raising (something else than the socket's OSError)."""
        self.check_step(SipTransport, "send", "starting an attempt")

    def test_transmitting(self) -> None:
        """Choosing the socket or rendering raising."""
        self.check_step(RegistrationClient, "_transmit", "starting an attempt")

    def test_lookup_result(self) -> None:
        """A lookup that answers later, and handling its answer raising."""
        sim = self.simulation({"a": UserPolicy(password="p")})
        sim.db.execute("UPDATE registrant SET registrar = 'sip:registrar.test.invalid'")
        sim.db.commit()
        answers: list[defer.Deferred[tuple[str, int]]] = []

        def resolve(resolver: SipResolver, uri: object, *how: object) -> defer.Deferred[list[Target]]:
            answers.append(defer.Deferred())
            return answers[-1].addCallback(lambda address: [("udp", *address)])

        self.patch(SipResolver, "resolve_targets", resolve)
        transmit = self.patch(RegistrationClient, "_transmit", boom)
        sim.start()
        sim.run(1)
        (r,) = sim.service.registry if sim.service else []
        self.assertEqual(r.state, RegState.REGISTERING_STATE)
        answers[0].callback(REGISTRAR)
        self.assertRetrying(sim, "sending after a lookup")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        transmit.restore()
        for _ in range(30):
            sim.run(1)
            for answer in answers:
                if not answer.called:
                    answer.callback(REGISTRAR)
        self.assertEqual(sim.states(), {"a": "REGISTERED_STATE"})

    def test_late_callbacks_are_ignored(self) -> None:
        """A lookup answering after its attempt ended (or for an older CSeq) sends nothing."""
        sim = self.simulation({"a": UserPolicy(password="p")})
        sim.db.execute("UPDATE registrant SET registrar = 'sip:registrar.test.invalid'")
        sim.db.commit()
        answers: list[defer.Deferred[tuple[str, int]]] = []
        self.patch(SipResolver, "resolve_targets", lambda resolver, uri, *how: answers.append(defer.Deferred()) or answers[-1].addCallback(lambda a: [("udp", *a)]))
        service = sim.start()
        sim.run(1)
        (r,) = service.registry
        r.on_internal_error(sim.reactor.seconds(), "test")
        answers[0].callback(REGISTRAR)
        sim.run(0.5)
        self.assertEqual(sim.registrar.received, [])

    def test_stuck_record_recovered(self) -> None:
        """
        A record left in a transaction state with nothing pending (a bug's
        result) is found by the bucket walk and retried.
        """
        sim = self.simulation({"a": UserPolicy(password="p")})
        service = sim.start()
        sim.run(2)
        (r,) = service.registry
        r.start(sim.reactor.seconds())  # as if a send had been lost without a trace
        self.assertIn(r.state, IN_TRANSACTION)
        limit = stuck_after(service.policy.transaction_timeout)
        sim.run(limit + 100 + 1)  # found at the next bucket visit after the limit
        self.assertIn(r.state, (RegState.INTERNAL_ERROR_STATE, RegState.REGISTERED_STATE))
        self.assertEqual(service.counters.internal_errors, 1)
        sim.run(60)
        self.assertEqual(r.state, RegState.REGISTERED_STATE)


class PacingTests(SynchronousTestCase):
    def test_follow_ups_go_through_the_pacer(self) -> None:
        """Digest answers count against --send-rate like first requests."""
        users = {f"u{i}": UserPolicy(password="p") for i in range(300)}
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=100, send_rate=50)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        for user in users:
            sim.add(user, password="p")
        sim.start()
        sim.run(15)
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})
        times = [r.time for r in sim.registrar.received]
        self.assertEqual(len(times), 600)
        busiest = max(len([t for t in times if start <= t < start + 1]) for start in times)
        self.assertLessEqual(busiest, 50 + 1)

    def test_escalating_min_expires(self) -> None:
        """
        A registrar answering every REGISTER with 423 and a higher
        Min-Expires gets two follow-ups per attempt, then the back-off: a
        handful of requests a minute, not thousands a second.
        """
        users = {"a": UserPolicy(escalate_min_expires=True)}
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=100, retry_interval=30, retry_max_interval=600)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        sim.add("a")
        service = sim.start()
        sim.run(60)
        self.assertEqual(sim.states(), {"a": "REGISTRAR_ERROR_STATE"})
        self.assertLessEqual(len(sim.registrar.received), 3 * 3)
        (r,) = service.registry
        self.assertIn("423 again", r.last_error)
        assert r.next_at is not None
        self.assertGreater(r.next_at, sim.reactor.seconds())

    def test_rewritten_contact(self) -> None:
        """
        A registrar that rewrites the Contact and grants less than asked:
        the daemon refreshes before the grant runs out (guess counted), so
        the binding never lapses.
        """
        users = {"a": UserPolicy(max_expires=60, rewrite_contact=";transport=udp")}
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=10)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        sim.add("a", expiry=3600)
        service = sim.start()
        sim.run(1)
        (r,) = service.registry
        self.assertEqual((r.state, r.expires), (RegState.REGISTERED_STATE, 60))
        for _ in range(600):
            sim.run(1)
            for binding in sim.registrar.bindings.values():
                self.assertGreater(binding.expires_at, sim.reactor.seconds())
        self.assertGreater(service.counters.expiry_guesses, 10)
        self.assertEqual(service.counters.lapsed_registrations, 0)


class FakeResolver:
    """Answers from C{known} at once; anything else waits for a Deferred the test fires."""

    def __init__(self, known: dict[str, Address] | None = None) -> None:
        self.known = known or {}
        self.lookups: list[tuple[str, defer.Deferred[Address]]] = []

    def cached_targets(self, uri: SipUri, transport: str | None = None, secure: bool = False) -> list[Target] | None:
        known = self.known.get(uri.host)
        return None if known is None else [(transport or ("tls" if secure else "udp"), *known)]

    def resolve_targets(self, uri: SipUri, transport: str | None = None, secure: bool = False) -> defer.Deferred[list[Target]]:
        d: defer.Deferred[Address] = defer.Deferred()
        self.lookups.append((uri.host, d))
        return d.addCallback(lambda address: [(transport or ("tls" if secure else "udp"), *address)])


class FakeSender:
    """A transport that keeps what is sent."""

    def __init__(self, host: str = "192.0.2.1") -> None:
        self.spec = SocketSpec(host, 5060)
        self.sent: list[tuple[bytes, Address]] = []

    def via_host(self, dest_ip: str) -> str:
        return self.spec.host

    def send(self, data: bytes, dest: Address) -> None:
        self.sent.append((data, dest))


class DispatchTests(SynchronousTestCase):
    """Where RegistrationClient._dispatch sends: cached hops at once, others after the lookup, if still current."""

    HOP = "registrar.test.invalid"

    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = SipCounters()
        self.transactions = TransactionLayer(self.clock, self.counters)
        self.resolver = FakeResolver()
        self.sender = FakeSender()
        self.rescheduled: list[Registrant] = []
        self.changes: list[StateChange] = []
        self.client = RegistrationClient(
            self.clock, self.transactions, self.resolver, {self.sender.spec.name: self.sender},  # type: ignore[arg-type, dict-item]
            self.counters, changes=StateChanges([self.changes.append]),
            reschedule=self.rescheduled.append, queue_follow_up=lambda r: None,
        )
        self.registrant = Registrant(
            Account(row_id=1, aor="sip:alice@example.com", registrar=f"sip:{self.HOP}",
                    binding_uri="sip:alice@192.0.2.1:5060", expiry=3600, username="alice", password="secret"),
            Policy(retry_base=10, retry_max=100, rng=random.Random(2)),
        )

    def sent(self) -> list[tuple[int, Address]]:
        """(CSeq, destination) of each REGISTER sent."""
        result = []
        for data, dest in self.sender.sent:
            message = parse_message(data)
            assert isinstance(message, Request)
            self.assertEqual(message.method, "REGISTER")
            result.append((message.cseq[0], dest))
        return result

    def test_cached_hop_sent_at_once(self) -> None:
        """A hop whose address is cached is sent to at once, without a lookup."""
        self.resolver.known[self.HOP] = ("192.0.2.10", 5060)
        self.client.send(self.registrant)
        self.assertEqual(self.sent(), [(1, ("192.0.2.10", 5060))])
        self.assertEqual(self.resolver.lookups, [])
        self.assertEqual((self.registrant.state, len(self.transactions)), (RegState.REGISTERING_STATE, 1))
        self.assertEqual(self.counters.requests_sent, 1)

    def test_one_address_tuple_per_target(self) -> None:
        """The transactions to one target hold one (IP, port) tuple between them (a completed one keeps it until Timer K)."""
        self.resolver.known[self.HOP] = ("192.0.2.10", 5060)
        dests: list[Address] = []
        start = self.transactions.start

        def recording(sender: object, dest: Address, *args: object, **kwargs: object) -> None:
            dests.append(dest)
            start(sender, dest, *args, **kwargs)  # type: ignore[arg-type]

        self.patch(self.transactions, "start", recording)
        other = Registrant(dataclasses.replace(self.registrant.account, aor="sip:bob@example.com"), self.registrant.policy)
        self.client.send(self.registrant)
        self.client.send(other)
        self.assertEqual(dests, [("192.0.2.10", 5060)] * 2)
        self.assertIs(dests[0], dests[1])

    def test_uncached_hop_waits_for_the_lookup(self) -> None:
        """An uncached hop is looked up; the REGISTER goes to the address found, once it is found."""
        self.client.send(self.registrant)
        self.assertEqual([host for host, _ in self.resolver.lookups], [self.HOP])
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.registrant.state, RegState.REGISTERING_STATE)
        self.resolver.lookups[0][1].callback(("192.0.2.20", 5070))
        self.assertEqual(self.sent(), [(1, ("192.0.2.20", 5070))])
        self.assertEqual(len(self.transactions), 1)
        self.assertEqual(self.registrant.state, RegState.REGISTERING_STATE)

    def test_failed_lookup(self) -> None:
        """A failed lookup ends the attempt in INTERNAL_ERROR naming the host, with a retry scheduled."""
        self.client.send(self.registrant)
        self.resolver.lookups[0][1].errback(ResolutionError("no A or AAAA record"))
        r = self.registrant
        self.assertEqual(r.state, RegState.INTERNAL_ERROR_STATE)
        self.assertIn(f"cannot resolve {self.HOP}", r.last_error)
        self.assertIn("no A or AAAA record", r.last_error)
        assert r.next_at is not None
        self.assertGreater(r.next_at, self.clock.seconds())
        self.assertEqual(self.rescheduled, [r])
        self.assertEqual([(c.old, c.new) for c in self.changes],
                         [(RegState.NOT_REGISTERED_STATE, RegState.REGISTERING_STATE),
                          (RegState.REGISTERING_STATE, RegState.INTERNAL_ERROR_STATE)])
        self.assertEqual((self.sender.sent, self.counters.internal_errors), ([], 0))

    def test_result_for_an_older_cseq_ignored(self) -> None:
        """Lookups answering or failing for requests the record has replaced (new CSeq) send nothing and fail nothing."""
        r = self.registrant
        for _ in range(3):
            self.client.send(r)
            if r.cseq < 3:
                r.on_internal_error(self.clock.seconds(), "test")
        self.assertEqual((r.cseq, r.state, len(self.resolver.lookups)), (3, RegState.REGISTERING_STATE, 3))
        self.resolver.lookups[0][1].callback(("192.0.2.20", 5060))
        self.resolver.lookups[1][1].errback(ResolutionError("late"))
        self.assertEqual(self.sender.sent, [])
        self.assertEqual((r.state, r.last_error), (RegState.REGISTERING_STATE, "test"))
        self.resolver.lookups[2][1].callback(("192.0.2.21", 5060))
        self.assertEqual(self.sent(), [(3, ("192.0.2.21", 5060))])

    def test_result_after_removal_ignored(self) -> None:
        """A lookup answering (or failing) after the record was removed changes nothing."""
        for outcome in ("answer", "failure"):
            r = Registrant(self.registrant.account, self.registrant.policy)
            self.client.send(r)
            r.mark_removed()
            d = self.resolver.lookups[-1][1]
            if outcome == "answer":
                d.callback(("192.0.2.20", 5060))
            else:
                d.errback(ResolutionError("gone"))
            self.assertEqual((r.state, r.last_error), (RegState.REGISTERING_STATE, ""), outcome)
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.rescheduled, [])

    def test_result_after_the_transaction_state_ignored(self) -> None:
        """A lookup answering once the record is no longer in a transaction (same CSeq) sends nothing."""
        r = self.registrant
        self.client.send(r)
        r.on_internal_error(self.clock.seconds(), "test")
        self.assertEqual(r.cseq, 1)
        self.resolver.lookups[0][1].callback(("192.0.2.20", 5060))
        self.assertEqual(self.sender.sent, [])
        self.assertEqual((r.state, r.last_error), (RegState.INTERNAL_ERROR_STATE, "test"))
        self.assertEqual(len(self.transactions), 0)


class StreamRouteTests(SynchronousTestCase):
    """
    A row that asks for TCP or TLS goes over a connection of that
    transport, never over UDP or in clear; what cannot be done fails,
    saying why.
    """

    HOP = DispatchTests.HOP

    def setUp(self) -> None:
        DispatchTests.setUp(self)  # type: ignore[arg-type]
        self.reactor = MemoryReactorClock()
        self.clock = self.reactor  # type: ignore[assignment]
        self.transactions = TransactionLayer(self.reactor, self.counters)
        self.streams = StreamPool(self.reactor, self.transactions, self.counters, keepalive=0)
        self.streams.tls = load_tls(TlsSettings(verify=False))
        self.streams.listen_ports["tcp:192.0.2.1:5070"] = 5070
        self.client = RegistrationClient(
            self.reactor, self.transactions, self.resolver, {self.sender.spec.name: self.sender},  # type: ignore[arg-type, dict-item]
            self.counters, changes=StateChanges([self.changes.append]),
            reschedule=self.rescheduled.append, queue_follow_up=lambda r: None,
            streams=self.streams, stream_sockets=(SocketSpec("192.0.2.1", 5070, "tcp"),),
        )
        self.streams.on_lost = self.client.link_lost
        self.resolver.known[self.HOP] = ("192.0.2.10", 5060)

    def with_account(self, **columns: object) -> Registrant:
        account = dataclasses.replace(self.registrant.account, **columns)  # type: ignore[arg-type]
        account = dataclasses.replace(account, next_hop=parse_uri(account.proxy or account.registrar))
        return Registrant(account, self.registrant.policy)

    def connect(self, index: int = -1) -> StringTransport:
        """Complete the connection attempt C{index}: the link opens."""
        host, port, factory, _, _ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(None)
        wire = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 40000), peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(wire)
        self.protocol = protocol
        return wire

    def test_transport_from_the_hop(self) -> None:
        """transport=tcp/tls, sips: on the registrar or the proxy: a connection of that transport; nothing over UDP."""
        cases = [
            ({"registrar": f"sip:{self.HOP};transport=tcp"}, "tcp", 5060),
            ({"registrar": f"sip:{self.HOP};transport=TLS"}, "tls", 5060),
            ({"registrar": f"sips:{self.HOP}"}, "tls", 5060),
            ({"proxy": f"sip:{self.HOP};transport=tls"}, "tls", 5060),
            ({"proxy": f"sip:{self.HOP}", "registrar": "sips:example.com"}, "tls", 5060),
            ({"registrar": f"sips:{self.HOP};transport=udp"}, "tls", 5060),
        ]
        for columns, transport, port in cases:
            r = self.with_account(**columns)
            self.client.send(r)
            self.assertEqual(self.sender.sent, [], columns)
            self.assertEqual(r.state, RegState.REGISTERING_STATE, columns)
            self.assertEqual(r.target, f"{transport}:192.0.2.10:{port}", columns)
        # One connection per transport (the TLS ones share theirs), from the tcp socket's address.
        self.assertEqual([(c[0], c[1], c[4]) for c in self.reactor.tcpClients], [("192.0.2.10", 5060, ("192.0.2.1", 0))] * 2)

    def test_request_waits_for_the_connection(self) -> None:
        """The REGISTER is written once the connection opens, with a TCP Via naming the listen port; never retransmitted."""
        r = self.with_account(registrar=f"sip:{self.HOP};transport=tcp")
        self.client.send(r)
        wire = self.connect()
        message = parse_message(wire.value())
        assert isinstance(message, Request)
        self.assertTrue(message.get_all("via")[0].startswith("SIP/2.0/TCP 192.0.2.1:5070;"))
        self.reactor.pump([1] * 10)
        self.assertEqual(wire.value().count(b"REGISTER sip:"), 1)

    def test_forced_socket_of_another_transport(self) -> None:
        """A hop asking for TLS and a forced UDP socket: nothing sent, the record says why."""
        r = self.with_account(registrar=f"sips:{self.HOP}", forced_socket=self.sender.spec.name)
        self.client.send(r)
        self.assertEqual((self.sender.sent, self.reactor.tcpClients), ([], []))
        self.assertIn("needs TLS but the forced socket udp:192.0.2.1:5060 is UDP", r.last_error)
        self.assertIsNotNone(r.next_at)

    def test_forced_stream_socket_decides_the_transport(self) -> None:
        """A plain sip: hop with a forced tcp: socket goes over TCP."""
        r = self.with_account(forced_socket="tcp:192.0.2.1:5070")
        self.client.send(r)
        self.assertEqual(r.target, "tcp:192.0.2.10:5060")
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_refused_connection_fails_over_and_backs_off(self) -> None:
        """A refused connection is a failed target (REGISTER_TIMEOUT, reason given); a new attempt waits for the back-off."""
        r = self.with_account(registrar=f"sip:{self.HOP};transport=tcp")
        self.client.send(r)
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(r.state, RegState.REGISTER_TIMEOUT_STATE)
        self.assertIn("connection to tcp:192.0.2.10:5060 failed: connection refused", r.last_error)
        self.assertTrue(self.client.health.avoided(("tcp", "192.0.2.10", 5060), self.reactor.seconds()))
        self.assertEqual(self.counters.connection_failures, 1)
        again = self.with_account(registrar=f"sip:{self.HOP};transport=tcp")
        self.client.send(again)
        self.assertIn("next attempt in 1s", again.last_error)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_broken_connection_ends_the_transaction_at_once(self) -> None:
        """A connection that breaks under a transaction ends it now (no Timer F wait), naming the reason."""
        r = self.with_account(registrar=f"sip:{self.HOP};transport=tcp")
        self.client.send(r)
        self.connect()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(r.state, RegState.REGISTER_TIMEOUT_STATE)
        self.assertIn("connection to tcp:192.0.2.10:5060 lost: closed by the peer", r.last_error)
        self.assertEqual((len(self.transactions), self.counters.connections_lost), (0, 1))


    def answer_ok(self, wire: StringTransport) -> None:
        """Answer the last REGISTER written on C{wire} with a 200 granting its Contact."""
        request = parse_message(wire.value().split(b"\r\n\r\n")[-2] + b"\r\n\r\n")
        assert isinstance(request, Request)
        wire.clear()
        lines = ["SIP/2.0 200 OK", f"Via: {request.get('via')}", f"From: {request.get('from')}", f"To: {request.get('to')};tag=r",
                 f"Call-ID: {request.call_id}", f"CSeq: {request.get('cseq')}", f"Contact: {request.get('contact')}",
                 "Content-Length: 0", "", ""]
        self.protocol.dataReceived("\r\n".join(lines).encode())

    def test_lost_connection_registers_its_records_again_once(self) -> None:
        """A registered record re-registers at once when its connection breaks; a second break soon after leaves it be."""
        r = self.with_account(registrar=f"sip:{self.HOP};transport=tcp")
        self.client.send(r)
        self.answer_ok(self.connect())
        self.assertEqual(r.state, RegState.REGISTERED_STATE)
        assert r.next_at is not None
        self.assertGreater(r.next_at, self.reactor.seconds() + 60)
        self.rescheduled.clear()
        self.reactor.advance(10)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((r.next_at, self.rescheduled), (self.reactor.seconds(), [r]))
        self.client.send(r)
        self.answer_ok(self.connect())
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        refresh_at = r.next_at
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(r.next_at, refresh_at)


class AddressFamilyTests(SynchronousTestCase):
    """A record sends from a listen socket of its next hop's address family, or fails saying why."""

    def client(self, *senders: FakeSender) -> RegistrationClient:
        clock = Clock()
        self.counters = SipCounters()
        self.transactions = TransactionLayer(clock, self.counters)
        return RegistrationClient(
            clock, self.transactions, FakeResolver({"2001:db8::10": ("2001:db8::10", 5060), "192.0.2.10": ("192.0.2.10", 5060)}),
            {s.spec.name: s for s in senders},  # type: ignore[arg-type, misc]
            self.counters, changes=StateChanges(), reschedule=lambda r: None, queue_follow_up=lambda r: None,
        )

    def registrant(self, registrar: str, forced_socket: str | None = None) -> Registrant:
        account = Account(row_id=1, aor="sip:alice@example.com", registrar=registrar, binding_uri="sip:alice@192.0.2.1:5060",
                          expiry=3600, forced_socket=forced_socket)
        return Registrant(dataclasses.replace(account, next_hop=parse_uri(registrar)), Policy(rng=random.Random(1)))

    def test_each_family_from_its_socket(self) -> None:
        """An IPv6 registrar is sent from the IPv6 socket, an IPv4 one from the IPv4 socket, whichever is listed first."""
        v6, v4 = FakeSender("2001:db8::1"), FakeSender("192.0.2.1")
        client = self.client(v6, v4)
        client.send(self.registrant("sip:[2001:db8::10]:5060"))
        client.send(self.registrant("sip:192.0.2.10:5060"))
        self.assertEqual([dest for _, dest in v6.sent], [("2001:db8::10", 5060)])
        self.assertEqual([dest for _, dest in v4.sent], [("192.0.2.10", 5060)])
        self.assertIn(b"Via: SIP/2.0/UDP [2001:db8::1]:5060;", v6.sent[0][0])

    def test_no_socket_of_the_family(self) -> None:
        """Only IPv4 sockets and an IPv6 registrar: nothing sent, INTERNAL_ERROR saying so (not an OS error)."""
        v4 = FakeSender("192.0.2.1")
        client = self.client(v4)
        r = self.registrant("sip:[2001:db8::10]:5060")
        client.send(r)
        self.assertEqual(v4.sent, [])
        self.assertEqual(r.state, RegState.INTERNAL_ERROR_STATE)
        self.assertIn("IPv6 address 2001:db8::10 but no UDP --listen socket is IPv6", r.last_error)
        self.assertEqual(len(self.transactions), 0)

    def test_forced_socket_of_the_other_family(self) -> None:
        """A forced IPv4 socket and an IPv6 registrar: the record fails naming its socket."""
        v4, v6 = FakeSender("192.0.2.1"), FakeSender("2001:db8::1")
        client = self.client(v4, v6)
        r = self.registrant("sip:[2001:db8::10]:5060", forced_socket="udp:192.0.2.1:5060")
        client.send(r)
        self.assertEqual((v4.sent, v6.sent), ([], []))
        self.assertIn("its forced socket udp:192.0.2.1:5060 is not IPv6", r.last_error)



class FailOverTests(SynchronousTestCase):
    """RFC 3263 §4.3: a target that times out, or answers 503 without Retry-After, gives way to the next."""

    HOP = DispatchTests.HOP
    setUp = DispatchTests.setUp
    PRIMARY, BACKUP = ("192.0.2.10", 5060), ("192.0.2.11", 5060)

    def targets(self) -> None:
        self.patch(self.resolver, "cached_targets", lambda uri, *how: [("udp", *self.PRIMARY), ("udp", *self.BACKUP)])

    def respond(self, status: int, *headers: str) -> None:
        data, dest = self.sender.sent[-1]
        request = parse_message(data)
        assert isinstance(request, Request)
        lines = [f"SIP/2.0 {status} Whatever", f"Via: {request.get('via')}", f"From: {request.get('from')}",
                 f"To: {request.get('to')};tag=r", f"Call-ID: {request.call_id}", f"CSeq: {request.get('cseq')}", *headers,
                 "Content-Length: 0", "", ""]
        response = parse_message("\r\n".join(lines).encode())
        assert isinstance(response, Response)
        self.transactions.receive(response, dest)

    def test_timeout_moves_the_retry_to_the_next_target(self) -> None:
        """Timer F at the primary: last_error names it, the retry is at once and goes to the backup; the primary is avoided."""
        self.targets()
        r = self.registrant
        self.client.send(r)
        self.assertEqual(self.sender.sent[-1][1], self.PRIMARY)
        self.clock.advance(33)
        self.assertEqual(r.state, RegState.REGISTER_TIMEOUT_STATE)
        self.assertIn("no final response from udp:192.0.2.10:5060 before Timer F", r.last_error)
        self.assertEqual(r.next_at, self.clock.seconds())
        self.assertEqual(self.counters.fail_overs, 1)
        self.assertTrue(self.client.health.avoided(("udp", *self.PRIMARY), self.clock.seconds()))
        self.client.send(r)
        self.assertEqual(self.sender.sent[-1][1], self.BACKUP)

    def test_503_without_retry_after_fails_over_once(self) -> None:
        """A 503 without Retry-After fails over; when every target is avoided the back-off holds (no retry storm)."""
        self.targets()
        r = self.registrant
        self.client.send(r)
        self.respond(503)
        self.assertEqual((r.state, r.next_at), (RegState.REGISTRAR_ERROR_STATE, self.clock.seconds()))
        self.client.send(r)
        self.assertEqual(self.sender.sent[-1][1], self.BACKUP)
        self.respond(503)
        self.assertEqual(r.state, RegState.REGISTRAR_ERROR_STATE)
        assert r.next_at is not None
        self.assertGreater(r.next_at, self.clock.seconds())
        self.assertEqual(self.counters.fail_overs, 1)

    def test_503_with_retry_after_is_not_a_dead_target(self) -> None:
        """A 503 with Retry-After is the registrar asking to wait: no fail-over, the target stays in use."""
        self.targets()
        r = self.registrant
        self.client.send(r)
        self.respond(503, "Retry-After: 60")
        self.assertFalse(self.client.health.avoided(("udp", *self.PRIMARY), self.clock.seconds()))
        self.assertEqual(self.counters.fail_overs, 0)
