"""
store.pgcoordinator against a real PostgreSQL server: leases on the
server's clock, slots claimed without double ownership, CSeq blocks that
carry a registration over to another node, fencing by epoch, and an
outage of the server.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from uacregistrant.store.coordinator import (
    HAND_OVER,
    RUNNING,
    SLOTS,
    UNREGISTER,
    CoordinatorError,
    ICoordinator,
    Member,
    Reservation,
    slot_of,
)
from uacregistrant.store.pgcoordinator import CSEQ_MAX, PostgresCoordinator

from .postgres import PostgresServer

CLUSTER = "c1"


def sleep(seconds: float) -> Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def record(n: int) -> tuple[str, str, str]:
    return (f"sip:u{n}@test.invalid", f"sip:u{n}@127.0.0.1:5060", "sip:127.0.0.1:5070")


def records_in(slots: set[int], count: int, start: int = 0) -> list[tuple[str, str, str]]:
    """C{count} record keys whose AORs fall in C{slots}."""
    found: list[tuple[str, str, str]] = []
    n = start
    while len(found) < count:
        if slot_of(record(n)[0]) in slots:
            found.append(record(n))
        n += 1
    return found


class CoordinatorTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.server = PostgresServer()
        self.addCleanup(self.server.destroy)
        self.server.start()

    def coordinator(self, cluster: str = CLUSTER, url: str | None = None, **kw: Any) -> PostgresCoordinator:
        coordinator = PostgresCoordinator(url or self.server.url, cluster, reactor, **kw)
        self.addCleanup(coordinator.close)
        return coordinator

    @inlineCallbacks
    def node(self, name: str, ttl: float = 30.0, cluster: str = CLUSTER) -> Any:
        """A started coordinator (its own connection, as a node has) and the epoch C{name} joined with."""
        coordinator = self.coordinator(cluster)
        yield coordinator.start()
        epoch = yield coordinator.join(name, f"udp:127.0.0.1:{5060 + len(name)}", ttl)
        return coordinator, epoch

    @inlineCallbacks
    def expire(self, coordinator: PostgresCoordinator, name: str, epoch: int) -> Any:
        """
        Let C{name}'s lease run out on the server's clock: renewed (while
        surely alive) for 0.3 s only, then 0.5 s of waiting.  (Every
        lease that must still be alive in a test is 30 s long.)
        """
        self.assertTrue((yield coordinator.renew(name, epoch, 0.3, 0, 0)))
        yield sleep(0.5)

    @inlineCallbacks
    def test_start_twice(self) -> Any:
        """start() twice (and from two nodes at once) is harmless; each cluster has its own 1024 slots."""
        a, b = self.coordinator(), self.coordinator()
        self.assertTrue(verifyObject(ICoordinator, a))
        yield gatherResults([a.start(), b.start()])
        yield a.start()
        yield self.coordinator("c2").start()
        counts = self.server.execute("SELECT cluster, count(*), count(owner) FROM uacregistrant_slots GROUP BY 1 ORDER BY 1")
        self.assertEqual(counts, [("c1", SLOTS, 0), ("c2", SLOTS, 0)])
        names = self.server.execute(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'uacregistrant:%%' ORDER BY 1"
        )
        self.assertEqual(names, [("uacregistrant:c1",), ("uacregistrant:c1",), ("uacregistrant:c2",)])

    @inlineCallbacks
    def test_session_settings(self) -> Any:
        """
        The session asks the server to notice a dead client quickly and
        never to time an idle session out (here through a host name,
        looked up off the reactor).
        """
        url = self.server.url.replace("@127.0.0.1:", "@localhost:")
        coordinator = PostgresCoordinator(url, CLUSTER, reactor)
        self.addCleanup(coordinator.close)
        yield coordinator.start()
        names = ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout",
                 "idle_session_timeout", "idle_in_transaction_session_timeout"]
        shown = yield coordinator._call("show", lambda c: c.runQuery(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s) ORDER BY name", (names,)))
        self.assertEqual(dict(shown), {
            "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "3", "tcp_keepalives_count": "3",
            "tcp_user_timeout": "15000", "idle_session_timeout": "0", "idle_in_transaction_session_timeout": "0",
        })

    @inlineCallbacks
    def test_join_epochs(self) -> Any:
        """Each join of a name is a new, greater epoch; names and clusters count apart; a live name cannot join twice."""
        a, first = yield self.node("a")
        failure = yield self.assertFailure(a.join("a", "udp:127.0.0.1:5060", 30), CoordinatorError)
        self.assertIn("already named a", str(failure))
        yield a.leave("a", first)
        second = yield a.join("a", "udp:127.0.0.1:5060", 30)
        yield self.expire(a, "a", second)
        third = yield a.join("a", "udp:127.0.0.1:5060", 30)
        other = yield a.join("b", "udp:127.0.0.1:5061", 30)
        _, elsewhere = yield self.node("a", cluster="c2")
        self.assertEqual((first, second, third, other, elsewhere), (1, 2, 3, 1, 1))

    @inlineCallbacks
    def test_renew(self) -> Any:
        """Renewing works while the lease lasts; not after it expired, nor for an epoch joined over."""
        a, epoch = yield self.node("a")
        self.assertTrue((yield a.renew("a", epoch, 30, 0, 0)))
        yield self.expire(a, "a", epoch)
        self.assertFalse((yield a.renew("a", epoch, 30, 0, 0)))  # expired: join again
        self.assertFalse((yield a.claim("a", epoch, 10)))
        epoch2 = yield a.join("a", "udp:127.0.0.1:5060", 30)
        self.assertEqual(epoch2, epoch + 1)
        self.assertTrue((yield a.renew("a", epoch2, 30, 0, 0)))
        yield a.leave("a", epoch2)
        epoch3 = yield a.join("a", "udp:127.0.0.1:5060", 30)
        self.assertFalse((yield a.renew("a", epoch2, 30, 0, 0)))
        self.assertTrue((yield a.renew("a", epoch3, 30, 0, 0)))
        self.assertFalse((yield a.renew("nobody", 1, 30, 0, 0)))

    @inlineCallbacks
    def test_concurrent_claims(self) -> Any:
        """Two nodes claiming at once, in small steps: never the same slot, all 1024 between them."""
        (a, ea), (b, eb) = yield gatherResults([self.node("a"), self.node("b")])

        @inlineCallbacks
        def claim_all(coordinator: PostgresCoordinator, name: str, epoch: int) -> Any:
            got: list[int] = []
            while True:
                slots = yield coordinator.claim(name, epoch, 10)
                if not slots:
                    return got
                got.extend(slots)

        got_a, got_b = yield gatherResults([claim_all(a, "a", ea), claim_all(b, "b", eb)])
        self.assertFalse(set(got_a) & set(got_b))
        self.assertEqual(len(got_a) + len(got_b), SLOTS)
        self.assertEqual(set(got_a) | set(got_b), set(range(SLOTS)))
        # (Which node got how many depends on timing: on a loaded machine one
        # may finish before the other's first claim. Disjoint and complete is
        # the guarantee.)
        self.assertEqual((yield a.held("a", ea)), sorted(got_a))
        self.assertEqual((yield b.held("b", eb)), sorted(got_b))

        # Claiming everything at once from both sides: the same outcome.
        yield gatherResults([a.leave("a", ea), b.leave("b", eb)])
        yield a.join("a", "", 30)
        yield b.join("b", "", 30)
        ea, eb = ea + 1, eb + 1
        big = yield gatherResults([a.claim("a", ea, SLOTS), b.claim("b", eb, SLOTS)])
        rest = yield gatherResults([a.claim("a", ea, SLOTS), b.claim("b", eb, SLOTS)])
        got_a, got_b = big[0] + rest[0], big[1] + rest[1]
        self.assertFalse(set(got_a) & set(got_b))
        self.assertEqual(sorted(got_a + got_b), list(range(SLOTS)))

    @inlineCallbacks
    def test_dead_member_slots(self) -> Any:
        """The slots of a member whose lease expired go to the next claimer; a live member's never do."""
        a, ea = yield self.node("a")
        b, eb = yield self.node("b")
        mine = yield a.claim("a", ea, 10)
        self.assertEqual(mine, list(range(10)))
        theirs = yield b.claim("b", eb, SLOTS)
        self.assertEqual(theirs, list(range(10, SLOTS)))
        self.assertEqual((yield b.claim("b", eb, SLOTS)), [])
        yield self.expire(a, "a", ea)
        self.assertEqual((yield b.claim("b", eb, SLOTS)), mine)
        self.assertEqual((yield a.held("a", ea)), [])
        self.assertEqual((yield b.held("b", eb)), list(range(SLOTS)))
        self.assertFalse((yield a.renew("a", ea, 30, 10, 0)))

    @inlineCallbacks
    def test_release_and_held(self) -> Any:
        """Released slots are free for anyone; releasing what one does not hold does nothing."""
        a, ea = yield self.node("a")
        b, eb = yield self.node("b")
        self.assertEqual((yield a.held("a", ea)), [])
        self.assertEqual((yield a.claim("a", ea, 5)), [0, 1, 2, 3, 4])
        self.assertEqual((yield b.claim("b", eb, 3)), [5, 6, 7])
        yield a.release("a", ea, [1, 3, 6, 900])
        yield a.release("a", ea, [])
        self.assertEqual((yield a.held("a", ea)), [0, 2, 4])
        self.assertEqual((yield b.held("b", eb)), [5, 6, 7])
        self.assertEqual((yield b.claim("b", eb, 3)), [1, 3, 8])
        self.assertEqual((yield a.claim("a", ea, 0)), [])

    @inlineCallbacks
    def test_leave(self) -> Any:
        """Leaving frees every slot and ends the lease at once; the epoch is over."""
        a, ea = yield self.node("a")
        b, eb = yield self.node("b")
        yield a.claim("a", ea, 100)
        yield a.leave("a", ea)
        self.assertEqual((yield a.held("a", ea)), [])
        self.assertFalse((yield a.renew("a", ea, 30, 0, 0)))
        self.assertEqual((yield a.claim("a", ea, 1)), [])
        members = yield b.members()
        self.assertEqual([(m.name, m.alive) for m in members], [("a", False), ("b", True)])
        self.assertEqual(len((yield b.claim("b", eb, SLOTS))), SLOTS)
        yield a.leave("a", ea)  # twice: nothing more
        self.assertEqual(len((yield b.held("b", eb))), SLOTS)
        ea2 = yield a.join("a", "", 30)
        self.assertEqual(ea2, ea + 1)

    @inlineCallbacks
    def test_reserve_take_over(self) -> Any:
        """
        The first reservation stores the proposed Call-ID; the node that
        takes the record over gets that Call-ID and the next block.
        Records of slots not held are left out.
        """
        a, ea = yield self.node("a")
        b, eb = yield self.node("b")
        self.assertEqual(len((yield a.claim("a", ea, SLOTS))), SLOTS)
        r1, r2 = record(1), record(2)
        self.assertNotEqual(slot_of(r1[0]), slot_of(r2[0]))
        got = yield a.reserve("a", ea, [(r1, "callid-a1"), (r2, "callid-a2")], 100)
        self.assertEqual(got, [Reservation(r1, "callid-a1", 1, 100), Reservation(r2, "callid-a2", 1, 100)])
        self.assertEqual((yield b.reserve("b", eb, [(r1, "callid-b1")], 100)), [])

        # a dies; b takes r1's slot only.
        yield a.release("a", ea, [s for s in range(SLOTS) if s != slot_of(r1[0])])
        yield self.expire(a, "a", ea)
        self.assertEqual((yield b.claim("b", eb, SLOTS)), list(range(SLOTS)))
        yield b.release("b", eb, [slot_of(r2[0])])
        got = yield b.reserve("b", eb, [(r1, "callid-b1"), (r2, "callid-b2")], 100)
        self.assertEqual(got, [Reservation(r1, "callid-a1", 101, 200)])
        got = yield b.reserve("b", eb, [(r1, "callid-b1")], 5)
        self.assertEqual(got, [Reservation(r1, "callid-a1", 201, 205)])
        stored = self.server.execute("SELECT aor, call_id, cseq_reserved FROM uacregistrant_records ORDER BY aor")
        self.assertEqual(stored, [(r1[0], "callid-a1", 205), (r2[0], "callid-a2", 100)])
        self.assertEqual((yield b.reserve("b", eb, [], 5)), [])

    @inlineCallbacks
    def test_reserve_many(self) -> Any:
        """More records than one statement takes: all reserved, in the order given, a repeated key once."""
        a, ea = yield self.node("a")
        yield a.claim("a", ea, SLOTS)
        keys = [record(n) for n in range(2500)]
        pairs = [(key, f"id-{n}") for n, key in enumerate(keys)] + [(keys[7], "id-again")]
        got = yield a.reserve("a", ea, pairs, 10)
        self.assertEqual(got, [Reservation(key, f"id-{n}", 1, 10) for n, key in enumerate(keys)])
        got = yield a.reserve("a", ea, list(reversed(pairs)), 10)
        self.assertEqual(got[0], Reservation(keys[7], "id-7", 11, 20))
        expected = {Reservation(key, f"id-{n}", 11, 20) for n, key in enumerate(keys)}
        self.assertEqual((len(got), set(got)), (len(keys), expected))

    @inlineCallbacks
    def test_reserve_cseq_limit(self) -> Any:
        """A block that would pass CSeq 2**31-1 starts over: CSeq 1 on a new Call-ID."""
        a, ea = yield self.node("a")
        yield a.claim("a", ea, SLOTS)
        r1, r2 = record(1), record(2)
        yield a.reserve("a", ea, [(r1, "old-1"), (r2, "old-2")], 10)
        self.server.execute("UPDATE uacregistrant_records SET cseq_reserved = %s WHERE aor = %s", (CSEQ_MAX - 100, r1[0]))
        self.server.execute("UPDATE uacregistrant_records SET cseq_reserved = %s WHERE aor = %s", (CSEQ_MAX - 101, r2[0]))
        first, second = yield a.reserve("a", ea, [(r1, "old-1"), (r2, "old-2")], 101)
        self.assertEqual(second, Reservation(r2, "old-2", CSEQ_MAX - 100, CSEQ_MAX))
        self.assertEqual((first.first, first.last), (1, 101))
        self.assertRegex(first.call_id, "^[0-9a-f]{32}$")
        again = yield a.reserve("a", ea, [(r1, "old-1")], 1)
        self.assertEqual(again, [Reservation(r1, first.call_id, 102, 102)])
        yield self.assertFailure(a.reserve("a", ea, [(r1, "x")], 0), ValueError)
        yield self.assertFailure(a.reserve("a", ea, [(r1, "x")], CSEQ_MAX + 1), ValueError)

    @inlineCallbacks
    def test_stale_epoch_changes_nothing(self) -> Any:
        """After a re-join, the old epoch's claim, release and reserve change nothing."""
        a, old = yield self.node("a")
        b, eb = yield self.node("b")
        mine = yield a.claim("a", old, 10)
        keys = records_in(set(mine), 3)
        yield a.reserve("a", old, [(k, "id-a") for k in keys], 10)
        yield self.expire(a, "a", old)
        new = yield a.join("a", "", 30)
        # The old epoch is over even before anyone took its slots.
        self.assertEqual((yield a.reserve("a", old, [(k, "id-a") for k in keys], 10)), [])
        self.assertEqual((yield a.claim("a", old, SLOTS)), [])
        self.assertEqual((yield b.claim("b", eb, 10)), mine)
        self.assertEqual((yield a.claim("a", new, 20)), list(range(10, 30)))
        yield a.release("a", old, mine)
        yield a.leave("a", old)
        self.assertEqual((yield b.held("b", eb)), mine)
        self.assertEqual(len((yield a.held("a", new))), 20)
        self.assertTrue((yield a.renew("a", new, 30, 20, 0)))
        self.assertEqual((yield a.reserve("a", old, [(k, "id-a") for k in keys], 10)), [])
        self.assertEqual((yield a.reserve("a", new, [(k, "id-a") for k in keys], 10)), [])
        got = yield b.reserve("b", eb, [(k, "id-b") for k in keys], 10)
        self.assertEqual(got, [Reservation(k, "id-a", 11, 20) for k in keys])

    @inlineCallbacks
    def test_members(self) -> Any:
        """members() shows every member of this cluster by name, alive or not, as last renewed."""
        a, ea = yield self.node("a")
        b, eb = yield self.node("b")
        yield self.node("a", cluster="c2")
        yield b.leave("b", eb)
        yield b.join("b", "udp:10.0.0.2:5060,tls:10.0.0.2:5061", 30)
        self.assertTrue((yield b.renew("b", eb + 1, 30, 512, 40000)))
        yield self.expire(a, "a", ea)
        members = yield b.members()
        self.assertEqual([m.name for m in members], ["a", "b"])
        self.assertTrue(all(isinstance(m, Member) for m in members))
        dead, alive = members
        self.assertEqual((dead.epoch, dead.alive, dead.slots, dead.records, dead.listen), (1, False, 0, 0, "udp:127.0.0.1:5061"))
        self.assertEqual(
            (alive.epoch, alive.alive, alive.slots, alive.records, alive.listen),
            (2, True, 512, 40000, "udp:10.0.0.2:5060,tls:10.0.0.2:5061"),
        )
        self.assertGreaterEqual(dead.age, 0.5)
        self.assertLess(dead.age, alive.age)
        self.assertGreaterEqual(alive.age, 0.5)
        self.assertEqual([m.name for m in (yield self.coordinator("nowhere").members())], [])

    @inlineCallbacks
    def test_begin_stop_in_turn(self) -> Any:
        """
        Members stopping at once decide one after the other: of three
        asked together, exactly one un-registers (the last to decide), and
        a member that joins again runs.  An expired member does not count
        as running; a membership that is over hands over (it holds nothing).
        """
        nodes = []
        for name in "abc":
            nodes.append((yield self.node(name)))
        decisions = yield gatherResults([c.begin_stop(name, epoch) for (c, epoch), name in zip(nodes, "abc")])
        self.assertEqual(sorted(decisions), [False, True, True])
        members = yield nodes[0][0].members()
        stopping = {m.name: m.stopping for m in members}
        self.assertEqual(sorted(stopping.values()), [HAND_OVER, HAND_OVER, UNREGISTER])
        self.assertEqual([m.name for m in members if m.stopping == UNREGISTER], [n for n, d in zip("abc", decisions) if not d])

        (a, ea), (b, eb), _ = nodes
        yield a.leave("a", ea)
        ea = yield a.join("a", "udp:127.0.0.1:5061", 30)
        self.assertEqual([m.stopping for m in (yield a.members()) if m.name == "a"], [RUNNING])
        self.assertTrue((yield b.begin_stop("b", eb)))  # a runs again
        yield self.expire(a, "a", ea)
        self.assertFalse((yield b.begin_stop("b", eb)))  # a's lease ran out: b is the last
        self.assertTrue((yield a.begin_stop("a", ea)))  # a's membership is over

    @inlineCallbacks
    def test_least_privilege_role(self) -> Any:
        """
        A role without DDL rights: refused with what the DBA must do while
        the tables are missing; once they exist (and DML is granted) it
        starts and coordinates without creating anything.
        """
        self.server.execute("CREATE ROLE uac_dml LOGIN PASSWORD 'dml-secret'")
        self.server.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        url = self.server.url.replace("postgres:secret-pg@", "uac_dml:dml-secret@")
        limited = self.coordinator(url=url)
        with self.assertRaises(CoordinatorError) as caught:
            yield limited.start()
        message = str(caught.exception)
        self.assertIn("cluster-postgres.sql", message)
        self.assertIn("uacregistrant_members", message)
        self.assertNotIn("dml-secret", message)
        # The DBA runs the script and grants DML; the role starts, joins and claims.
        yield self.coordinator().start()
        self.server.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON uacregistrant_members, uacregistrant_slots, uacregistrant_records TO uac_dml")
        yield limited.start()
        epoch = yield limited.join("a", "udp:127.0.0.1:5060", 30)
        self.assertEqual(len((yield limited.claim("a", epoch, 8))), 8)
        other = self.coordinator("c2", url=url)
        yield other.start()  # another cluster's slot rows: DML only

    @inlineCallbacks
    def test_quoted_names(self) -> Any:
        """Names are parameters: quotes and backslashes are just characters."""
        weird = "it's \"c\" \\ %s %(x)s; DROP TABLE uacregistrant_slots"
        a = self.coordinator(weird)
        yield a.start()
        epoch = yield a.join(weird, weird, 30)
        self.assertEqual((yield a.claim(weird, epoch, 2)), [0, 1])
        key = (weird, weird, weird)
        target = slot_of(weird)
        yield a.claim(weird, epoch, SLOTS)
        self.assertIn(target, (yield a.held(weird, epoch)))
        self.assertEqual((yield a.reserve(weird, epoch, [(key, weird)], 3)), [Reservation(key, weird, 1, 3)])
        self.assertEqual([m.listen for m in (yield a.members())], [weird])

    @inlineCallbacks
    def test_database_outage(self) -> Any:
        """
        With the server gone every call fails with one line (password
        hidden); once it is back, the next call works, whether or not a call
        failed in between.
        """
        a, ea = yield self.node("a", ttl=60)
        yield a.claim("a", ea, 4)
        self.server.stop()
        calls = [
            a.start(), a.join("a", "", 30), a.renew("a", ea, 30, 0, 0), a.claim("a", ea, 1), a.release("a", ea, [0]),
            a.held("a", ea), a.members(), a.reserve("a", ea, [(record(1), "x")], 1), a.leave("a", ea),
        ]
        for call in calls:
            e = yield self.assertFailure(call, CoordinatorError)
            message = str(e)
            self.assertNotIn("\n", message)
            self.assertNotIn("secret-pg", message)
            self.assertIn("postgresql://postgres:***@127.0.0.1", message)
        self.server.start()
        self.assertEqual((yield a.held("a", ea)), [0, 1, 2, 3])

        # Restarted while the coordinator was idle: the next call still works.
        self.server.stop()
        self.server.start()
        yield sleep(0.2)
        self.assertTrue((yield a.renew("a", ea, 60, 4, 0)))
        self.assertEqual(len(self.server.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'uacregistrant:c1'")), 1)

    @inlineCallbacks
    def test_no_answer(self) -> Any:
        """A server that accepts the connection but never answers: calls fail after the timeout."""
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        url = f"postgresql://postgres:secret-pg@127.0.0.1:{silent.getsockname()[1]}/postgres"
        coordinator = PostgresCoordinator(url, CLUSTER, reactor, timeout=0.3)
        self.addCleanup(coordinator.close)
        for _ in range(2):
            e = yield self.assertFailure(coordinator.members(), CoordinatorError)
            self.assertIn("no answer within 0.3s", str(e))
            self.assertNotIn("secret-pg", str(e))
        coordinator.close()
        e = yield self.assertFailure(coordinator.members(), CoordinatorError)
        self.assertIn("closed", str(e))
