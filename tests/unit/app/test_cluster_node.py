"""
Two real services as one cluster on the fake network and clock, sharing
one table, one registrar and the coordinating database in memory: each
record registered by one node only, a crashed node's records taken over
with the same Call-ID and a higher CSeq, a planned stop that hands over
without un-registering, and the last node that does un-register.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from twisted.internet import defer
from twisted.names.resolve import ResolverChain
from twisted.trial.unittest import SynchronousTestCase

from tests.cluster_sim import MemoryCoordinator, SharedState
from tests.simulation import Simulation
from uacregistrant.app.service import RegistrantService
from uacregistrant.app.settings import build_settings
from uacregistrant.testing.registrar import UserPolicy

LEASE = 6.0
USERS = [f"u{i}" for i in range(40)]


class ClusterNodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = Simulation(self.mktemp(), {u: UserPolicy(password="p") for u in USERS}, hash_size=0, timer_interval=100)
        for user in USERS:
            self.sim.add(user, password="p", expiry=600)
        self.state = SharedState(self.sim.reactor)
        self.nodes: dict[str, RegistrantService] = {}
        self.crashed: set[str] = set()

    def node(self, name: str, host: str) -> RegistrantService:
        values: dict[str, Any] = {
            "db_url": self.sim.settings.db_url, "listen": [f"udp:{host}:5060"], "control": ["unix:unused"],
            "hash_size": 0, "timer_interval": 100, "cluster": "test", "node_name": name, "cluster_lease": LEASE,
        }
        settings = dataclasses.replace(build_settings(values), control=())
        service = RegistrantService(
            settings, self.sim.store, self.sim.reactor, resolver=ResolverChain([]),
            coordinator=MemoryCoordinator(self.state, name), monotonic=self.sim.reactor.seconds,
        )
        service.startService()
        self.nodes[name] = service
        self.addCleanup(lambda: service.running and name not in self.crashed and service.stopService())
        return service

    def sources(self) -> dict[str, set[tuple[str, int]]]:
        """Which addresses each user's REGISTERs came from."""
        seen: dict[str, set[tuple[str, int]]] = {}
        for received in self.sim.registrar.received:
            seen.setdefault(received.user, set()).add(received.source)
        return seen

    def states(self, node: RegistrantService) -> dict[str, str]:
        """Each member's state, as reg_cluster json on C{node} shows it."""
        reply = self.successResultOf(defer.maybeDeferred(node.commands.run, "reg_cluster json"))
        self.assertEqual(reply.code, 200)
        return {row["name"]: row["state"] for row in json.loads("\n".join(reply.body))["Nodes"]}

    def test_each_record_from_one_node_and_take_over(self) -> None:
        """Settled: every user registered from one node; a crash: the other continues each Call-ID, CSeq above."""
        a = self.node("a", "127.0.0.1")
        b = self.node("b", "127.0.0.2")
        self.sim.run(30)
        # b's joining moved half of a's records to b: one Call-ID each all the same (one binding per user).
        self.assertEqual(len(self.sim.registrar.bindings), len(USERS))
        self.assertEqual({r.call_id for r in self.sim.registrar.received if r.user == "u1"}.__len__(), 1)
        self.sim.registrar.received.clear()
        self.sim.run(600)  # every record refreshed once: from one node only
        self.assertEqual(set(self.sources()), set(USERS))
        self.assertEqual({len(s) for s in self.sources().values()}, {1})
        self.assertEqual(len(self.sim.registrar.bindings), len(USERS))
        held_a = {r.account.aor for r in a.registry if a.cluster and a.cluster.holds(r)}
        held_b = {r.account.aor for r in b.registry if b.cluster and b.cluster.holds(r)}
        self.assertEqual(held_a & held_b, set())
        self.assertEqual(len(held_a | held_b), len(USERS))
        self.assertTrue(held_a and held_b)

        # kill -9 of a: it neither un-registers nor releases; the database stops hearing from it.
        before = {user: (b.call_id, b.cseq) for (aor, _), b in self.sim.registrar.bindings.items() for user in [aor.split(":")[1].split("@")[0]]}
        self.state.cut.add("a")
        self.crashed.add("a")
        for port in list(self.sim.reactor.network.ports.values()):
            if port.host == "127.0.0.1" and port.port == 5060:
                port.stopListening()
        assert a.cluster is not None
        a.cluster.member._stopped = True
        a.walker.stop()
        a.pacer.stop()
        self.sim.registrar.received.clear()
        self.sim.run(2 * LEASE + 5)
        taken = {r.user for r in self.sim.registrar.received}
        self.assertEqual(taken, {aor.split(":")[1].split("@")[0] for aor in held_a})
        for received in self.sim.registrar.received:
            call_id, cseq = before[received.user]
            self.assertEqual(received.call_id, call_id, received.user)
            self.assertGreater(received.cseq, cseq, received.user)
            self.assertEqual(received.source, ("127.0.0.2", 5060))
        self.assertEqual({r.expires for r in self.sim.registrar.received} - {600}, set())
        self.assertEqual(len(self.sim.registrar.bindings), len(USERS))
        self.assertFalse(any(r.authorized is False and r.cseq == 1 for r in self.sim.registrar.received))
        self.assertEqual(self.states(b), {"a": "lost", "b": "running"})

    def test_planned_stop_hands_over_and_last_node_unregisters(self) -> None:
        """SIGTERM with another node alive: nothing un-registered, the other takes over; the last node un-registers."""
        a = self.node("a", "127.0.0.1")
        self.node("b", "127.0.0.2")
        self.sim.run(30)
        self.sim.registrar.received.clear()
        stopped = a.stopService()
        self.sim.run(LEASE)
        self.successResultOf(stopped)
        self.assertEqual([r for r in self.sim.registrar.received if r.expires == 0], [])
        self.sim.run(2 * LEASE)
        self.assertEqual(len(self.sim.registrar.bindings), len(USERS))
        self.assertEqual({r.source for r in self.sim.registrar.received}, {("127.0.0.2", 5060)})
        self.assertEqual(self.states(self.nodes["b"]), {"a": "stopped", "b": "running"})
        last = self.nodes["b"].stopService()
        self.sim.run(5)
        self.successResultOf(last)
        self.assertEqual(self.sim.registrar.bindings, {})

    def test_whole_cluster_stopped_unregisters_everything(self) -> None:
        """Two nodes stopped one right after the other: the last un-registers every record, its own and those just handed to it."""
        a = self.node("a", "127.0.0.1")
        b = self.node("b", "127.0.0.2")
        self.sim.run(30)
        self.assertEqual(len(self.sim.registrar.bindings), len(USERS))
        first = a.stopService()
        self.sim.run(0.1)
        self.successResultOf(first)
        last = b.stopService()
        self.sim.run(5)
        self.successResultOf(last)
        self.assertEqual(self.sim.registrar.bindings, {})
        unregistered = {r.source for r in self.sim.registrar.received if r.expires == 0}
        self.assertEqual(unregistered, {("127.0.0.2", 5060)})

    def test_nodes_stopped_at_the_same_instant_unregister_everything(self) -> None:
        """
        Three nodes stopped in one instant, every database answer 50 ms
        late: they decide in turn, the last to decide waits for the others'
        slots and un-registers every record (before, each saw the others
        alive and all handed over: nothing was un-registered).
        """
        nodes = [self.node(name, f"127.0.0.{i}") for i, name in enumerate("abc", 1)]
        self.sim.run(30)
        self.assertEqual(len(self.sim.registrar.bindings), len(USERS))
        self.state.latency = 0.05
        stopping = [node.stopService() for node in nodes]
        self.sim.run(10)
        for d in stopping:
            self.successResultOf(d)
        self.assertEqual(self.sim.registrar.bindings, {})
        decided = sorted(row.stopping for row in self.state.members.values())
        self.assertEqual(decided, ["hand over", "hand over", "unregister"])
        self.assertEqual({r.user for r in self.sim.registrar.received if r.expires == 0}, set(USERS))

    def test_reg_list_shows_own_records_and_reg_cluster_the_nodes(self) -> None:
        """Each node lists the records it holds; reg_cluster shows both nodes alive; reg_stats the slots held."""
        a = self.node("a", "127.0.0.1")
        b = self.node("b", "127.0.0.2")
        self.sim.run(30)
        listed = [len(list(node.commands._select([]))) for node in (a, b)]  # type: ignore[arg-type]
        self.assertEqual(sum(listed), len(USERS))
        reply = self.successResultOf(defer.maybeDeferred(a.commands.run, "reg_cluster"))
        self.assertEqual(reply.code, 200)
        text = "\n".join(reply.body)
        self.assertIn("node: a", text)
        self.assertIn("node: b", text)
        self.assertEqual(text.count("alive: yes"), 2)
        stats = a._transport_status()
        self.assertEqual(stats["slots_held"] + b._transport_status()["slots_held"], 1024)
        totals = []
        for node in (a, b):
            reply = self.successResultOf(defer.maybeDeferred(node.commands.run, "reg_stats"))
            totals.append(int(dict(line.split(": ", 1) for line in reply.body)["total"]))
        self.assertEqual(totals, listed)


class ReservationRaceTests(SynchronousTestCase):
    """What the review of the cluster code found, kept fixed."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from uacregistrant.app.cluster import ClusterNode
        from uacregistrant.core.account import Account
        from uacregistrant.core.registrant import Policy, Registrant
        from uacregistrant.core.registry import Registry
        from uacregistrant.store.coordinator import slot_of

        self.clock = Clock()
        self.state = SharedState(self.clock)
        self.coordinator = MemoryCoordinator(self.state, "a")
        self.registry = Registry(0)
        account = Account(row_id=1, aor="sip:race@test.invalid", registrar="sip:127.0.0.1", binding_uri="sip:race@127.0.0.1", expiry=600)
        self.registrant = Registrant(account, Policy())
        self.registry.add(self.registrant)
        self.slot = slot_of(account.aor)
        self.woken: list[Any] = []
        self.node = ClusterNode(self.coordinator, self.registry, self.clock, "a", "udp:127.0.0.1:5060", LEASE,
                                wake=self.woken.append, monotonic=self.clock.seconds)
        self.node.startService()
        self.clock.advance(0)
        self.clock.advance(1)
        self.clock.advance(1)

    def test_settled(self) -> None:
        """Alone, the node holds every slot and the record may send, within its block."""
        self.assertTrue(self.node.eligible(self.registrant))
        self.assertTrue(self.node.may_continue(self.registrant, 1000))
        self.assertFalse(self.node.may_continue(self.registrant, 1001))

    def test_follow_up_near_the_end_of_the_block(self) -> None:
        """A follow-up within the block goes even when a new attempt would need a new block first."""
        self.registrant.cseq = 995
        self.assertFalse(self.node.eligible(self.registrant))
        self.assertTrue(self.node.may_continue(self.registrant, 996))

    def test_reservation_answered_after_the_slot_was_given_up(self) -> None:
        """A reservation completing after its slot was released does not let the record send again."""
        answers: list[tuple[defer.Deferred[Any], Any]] = []
        real = self.coordinator.reserve

        def slow(*args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            real(*args).addCallback(lambda result: answers.append((d, result)))
            return d

        self.registrant.cseq = 995
        self.coordinator.reserve = slow  # type: ignore[method-assign]
        self.assertFalse(self.node.eligible(self.registrant))
        self.clock.advance(0.2)  # the reservation ran in the database; its answer is late
        self.assertEqual(len(answers), 1)
        self.node.member.held.discard(self.slot)
        self.node._released([self.slot])
        for d, result in answers:
            d.callback(result)
        self.assertFalse(self.node.eligible(self.registrant))
        self.assertFalse(self.node.may_continue(self.registrant, 996))
        self.assertNotIn(self.registrant, self.node._limits)

    def test_no_cseq_change_under_a_request_in_flight(self) -> None:
        """A reservation answered while the record's request is in flight leaves its CSeq alone (its answer must still count)."""
        self.registrant.cseq = 995
        self.assertFalse(self.node.eligible(self.registrant))  # asks for a new block
        self.registrant.start(self.clock.seconds())  # a request goes out meanwhile (CSeq 996)
        self.clock.advance(0.2)
        self.assertEqual(self.registrant.cseq, 996)
        self.assertTrue(self.node.may_continue(self.registrant, 996))  # the old block still covers it
        self.assertFalse(self.node.eligible(self.registrant))
