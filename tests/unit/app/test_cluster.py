"""
The cluster's slot and lease logic, simulated on a fake clock with the
coordinating database in memory: joins, crashes, partitions and leaves,
checked at every half second against the guarantees in docs/CLUSTER.md:
never two nodes sending for one slot, no slot without a sender for more
than twice the lease while a node is alive, balance within one slot.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.cluster_sim import MemoryCoordinator, SharedState
from uacregistrant.app.membership import STEP, ClusterMember, quota
from uacregistrant.store.coordinator import SLOTS

LEASE = 10.0


class Node:
    """A simulated daemon: its membership and the slots it sends for."""

    def __init__(self, state: SharedState, clock: Clock, name: str, drift: float = 1.0) -> None:
        self.name = name
        self.active: set[int] = set()
        self.released = 0
        self.crashed = False
        start = clock.seconds()
        self.member = ClusterMember(
            MemoryCoordinator(state, name), clock, name, f"udp:127.0.0.1:{5060 + len(name)}", LEASE,
            on_claimed=self.active.update, on_released=self.release,
            monotonic=lambda: start + (clock.seconds() - start) * drift,
        )
        self.member.start()

    def release(self, slots: list[int]) -> None:
        self.released += len(slots)
        self.active.difference_update(slots)

    def sends_for(self) -> set[int]:
        if self.crashed or not self.member.may_send():
            return set()
        return self.active


class ClusterSimulationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.state = SharedState(self.clock)
        self.nodes: dict[str, Node] = {}
        #: Since when each slot has had no sender (absent: it has one).
        self.orphaned_since: dict[int, float] = {}
        self.longest_orphan = 0.0

    def add(self, name: str, drift: float = 1.0) -> Node:
        node = self.nodes[name] = Node(self.state, self.clock, name, drift)
        return node

    def crash(self, name: str) -> None:
        """kill -9: the process is gone; the database learns it only when its lease expires."""
        node = self.nodes[name]
        node.crashed = True
        self.state.cut.add(name)
        node.member._stopped = True  # its timers die with the process
        for timer in (node.member._timer, node.member._fence_timer):
            if timer is not None and timer.active():
                timer.cancel()

    def advance(self, seconds: float, check: Callable[[], None] | None = None) -> None:
        """Advance in half seconds, checking the invariants at every step."""
        for _ in range(int(seconds * 2)):
            self.clock.advance(0.5)
            self.check_invariants()
            if check is not None:
                check()

    def check_invariants(self) -> None:
        now = self.clock.seconds()
        senders: dict[int, list[str]] = {}
        for node in self.nodes.values():
            for slot in node.sends_for():
                senders.setdefault(slot, []).append(node.name)
        doubled = {slot: names for slot, names in senders.items() if len(names) > 1}
        self.assertEqual(doubled, {}, f"two senders at {now}")
        reachable = [n for n in self.nodes.values() if not n.crashed and n.name not in self.state.cut]
        if not reachable:
            self.orphaned_since.clear()
            return
        for slot in range(SLOTS):
            if slot in senders:
                self.orphaned_since.pop(slot, None)
            else:
                since = self.orphaned_since.setdefault(slot, now)
                self.longest_orphan = max(self.longest_orphan, now - since)

    def counts(self) -> dict[str, int]:
        return {name: len(node.sends_for()) for name, node in self.nodes.items() if not node.crashed}

    def assertBalanced(self, names: list[str]) -> None:
        counts = self.counts()
        self.assertEqual(sum(counts[n] for n in names), SLOTS, counts)
        self.assertLessEqual(max(counts[n] for n in names) - min(counts[n] for n in names), 1, counts)

    def test_quota(self) -> None:
        """Sorted by name, the first SLOTS % n members hold one more."""
        self.assertEqual([quota(n, ["a", "b", "c"]) for n in "abc"], [342, 341, 341])
        self.assertEqual(quota("z", []), SLOTS)

    def test_three_nodes_settle_balanced(self) -> None:
        """Three nodes starting together: every slot on exactly one node, 342/341/341."""
        for name in "abc":
            self.add(name)
        self.advance(60)
        self.assertBalanced(["a", "b", "c"])

    def test_nodes_started_together_move_nothing(self) -> None:
        """Nodes started within a second of each other see each other before claiming: nothing is handed back and forth."""
        self.add("a")
        self.advance(0.5)
        self.add("b")
        self.advance(0.5)
        self.add("c")
        self.advance(30)
        self.assertBalanced(["a", "b", "c"])
        self.assertEqual([n.released for n in self.nodes.values()], [0, 0, 0])

    def test_crash_is_taken_over_within_two_leases(self) -> None:
        """A node killed: its slots have no sender for at most 2 x lease, then the others split them."""
        for name in "abc":
            self.add(name)
        self.advance(60)
        self.longest_orphan = 0.0
        self.crash("b")
        self.advance(60)
        self.assertBalanced(["a", "c"])
        self.assertLessEqual(self.longest_orphan, 2 * LEASE)
        self.assertGreater(self.longest_orphan, LEASE / 2)  # the dead node's lease had to run out first

    def test_partitioned_node_fences_itself_first(self) -> None:
        """A node cut off from the database stops sending before the others may take its slots; it rejoins when healed."""
        for name in "abc":
            self.add(name)
        self.advance(60)
        self.longest_orphan = 0.0
        self.state.cut.add("a")
        self.advance(40)
        self.assertTrue(self.nodes["a"].member.fenced)
        self.assertEqual(self.counts()["a"], 0)
        self.assertBalanced(["b", "c"])
        self.assertLessEqual(self.longest_orphan, 2 * LEASE)
        self.state.cut.discard("a")
        self.advance(120)
        self.assertFalse(self.nodes["a"].member.fenced)
        self.assertBalanced(["a", "b", "c"])

    def test_join_moves_slots_gradually(self) -> None:
        """A node joining two settled ones gets its share from them, at most STEP slots a round from each."""
        for name in "ab":
            self.add(name)
        self.advance(60)
        self.assertBalanced(["a", "b"])
        self.add("c")
        gained: list[int] = []
        before = [0]

        def watch() -> None:
            now = self.counts()["c"]
            gained.append(now - before[0])
            before[0] = now

        self.advance(90, watch)
        self.assertBalanced(["a", "b", "c"])
        self.assertLessEqual(max(gained), 2 * STEP)

    def test_graceful_leave_hands_over_at_once(self) -> None:
        """A node that stops releases its slots: the others take them within a round, not a lease."""
        for name in "abc":
            self.add(name)
        self.advance(60)
        self.longest_orphan = 0.0
        node = self.nodes.pop("c")
        self.successResultOf(defer.ensureDeferred(node.member.stop(hand_over=True)))
        self.advance(30)
        self.assertBalanced(["a", "b"])
        self.assertLessEqual(self.longest_orphan, LEASE / 3 + 1)

    def test_lost_answers_are_reconciled(self) -> None:
        """
        A release that failed (the slots stay ours in the database) and a
        claim that took effect but lost its answer: each node's view is
        set right from the database the next round; no slot stays without
        a sender beyond 2 x lease, none gets two.
        """
        for name in "ab":
            self.add(name)
        self.advance(60)
        self.state.fail_once.add(("a", "release"))
        self.state.fail_once.add(("b", "release"))
        self.state.lose_answer_once.add(("c", "claim"))
        self.longest_orphan = 0.0
        self.add("c")
        self.advance(120)
        self.assertBalanced(["a", "b", "c"])
        self.assertLessEqual(self.longest_orphan, 2 * LEASE)

    def test_a_second_process_with_the_same_name_is_refused(self) -> None:
        """Two live nodes never share a name (they would share slots): the second cannot join while the first is alive."""
        self.add("a")
        self.advance(10)
        twin = Node(self.state, self.clock, "a")
        self.advance(10)
        self.assertIsNone(twin.member.epoch)
        self.assertEqual(twin.sends_for(), set())

    def test_drifting_clocks_never_double(self) -> None:
        """
        Node clocks running fast or slow against the server's (20 % slow is
        far worse than any real clock): the safety margin still keeps two
        senders apart.
        """
        self.add("a", drift=1.01)
        self.add("b", drift=0.8)
        self.add("c")
        self.advance(60)
        self.state.cut.add("b")
        self.advance(40)
        self.state.cut.discard("b")
        self.crash("a")
        self.advance(60)
        self.assertBalanced(["b", "c"])
