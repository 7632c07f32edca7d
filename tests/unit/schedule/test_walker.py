"""The bucket walk: order, slices, precise wake-ups, stuck records, and the service that runs it."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import TurnClock
from uacregistrant.core.account import Account
from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.core.registry import Registry, bucket_of
from uacregistrant.schedule.pacer import Pacer
from uacregistrant.schedule.timers import TimerQueue
from uacregistrant.schedule.walker import BucketWalker, WalkService

POLICY = Policy(rng=random.Random(1))


class FakePacer:
    """Keeps what the walker pushes, with the time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pushed: list[tuple[float, Registrant]] = []

    def push(self, registrant: Registrant) -> None:
        self.pushed.append((self.clock.seconds(), registrant))


def registrant(name: str) -> Registrant:
    return Registrant(
        Account(row_id=None, aor=f"sip:{name}@example.com", registrar="sip:example.com",
                binding_uri=f"sip:{name}@192.0.2.1:5060", expiry=3600),
        POLICY,
    )


def in_bucket(index: int, bucket_count: int, taken: set[str]) -> Registrant:
    """A new record whose AOR falls in bucket C{index}."""
    for i in range(10000):
        name = f"b{index}n{i}"
        if name not in taken and bucket_of(f"sip:{name}@example.com", bucket_count) == index:
            taken.add(name)
            return registrant(name)
    raise AssertionError("no AOR found")


class BucketWalkerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = TurnClock()
        self.registry = Registry(2)  # 4 buckets
        self.pacer = FakePacer(self.clock)
        self.stuck: list[tuple[Registrant, float]] = []
        self.taken: set[str] = set()

    def walker(self, **kw: object) -> BucketWalker:
        kw.setdefault("on_stuck", lambda r, waited: self.stuck.append((r, waited)))
        return BucketWalker(self.registry, self.clock, 10.0, self.pacer, timers=TimerQueue(self.clock), **kw)  # type: ignore[arg-type]

    def add(self, bucket: int, next_at: float | None = 0.0) -> Registrant:
        r = in_bucket(bucket, self.registry.bucket_count, self.taken)
        r.next_at = next_at
        self.registry.add(r)
        return r

    def pushed(self) -> list[Registrant]:
        return [r for _, r in self.pacer.pushed]

    def test_buckets_in_order(self) -> None:
        """Each tick visits the next bucket, wrapping round; only that bucket's due records are pushed."""
        records = [self.add(b) for b in (2, 0, 3, 1)]
        walker = self.walker()
        self.assertEqual(walker.cycle, 40.0)
        for expected in (0, 1, 2, 3):
            walker.tick()
            self.assertEqual(self.pushed()[-1], records[(2, 0, 3, 1).index(expected)])
            self.assertEqual(len(self.pacer.pushed), expected + 1)
        self.assertEqual((walker.next_bucket, walker.visits), (0, 4))
        walker.tick()
        self.assertEqual(self.pushed()[-1], records[1])  # bucket 0 again
        self.assertEqual(walker.next_bucket, 1)

    def test_not_due_nor_removed_not_pushed(self) -> None:
        """A record with nothing to send, one due later than the cycle, and a removed one are not pushed."""
        self.add(0, None)
        self.add(0, 1000.0)
        gone, gone_later = self.add(0), self.add(0, 5.0)
        self.registry.remove(gone)
        self.registry.remove(gone_later)
        walker = self.walker()
        walker.tick()
        # A removed record still held by a scan or a wake-up under way is left alone.
        walker.consider(gone, 0.0)
        walker.poke(gone_later)
        self.assertEqual(self.pacer.pushed, [])
        self.assertIsNone(walker.wake_time(gone_later))

    def test_slices_per_reactor_turn(self) -> None:
        """A bucket larger than the slice is scanned a slice per reactor turn."""
        records = [self.add(0) for _ in range(7)]
        walker = self.walker(slice_size=3)
        walker.tick()
        self.assertEqual(len(self.pacer.pushed), 3)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.turn()
        self.assertEqual(len(self.pacer.pushed), 6)
        self.clock.turn()
        self.assertEqual(sorted(self.pushed(), key=id), sorted(records, key=id))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.clock.seconds(), 0)

    def test_wake_up_before_next_visit(self) -> None:
        """A record due before its bucket's next visit is pushed at its own time, not at the visit."""
        r = self.add(0, 25.0)
        far = self.add(0, 45.0)  # after the next visit (cycle 40 s): that visit will see it
        walker = self.walker()
        walker.tick()
        self.assertEqual(self.pacer.pushed, [])
        self.assertEqual(walker.wake_time(r), 25.0)
        self.assertIsNone(walker.wake_time(far))
        self.clock.advance(24.99)
        self.assertEqual(self.pacer.pushed, [])
        self.clock.advance(0.01)
        self.assertEqual(self.pacer.pushed, [(25.0, r)])
        self.assertIsNone(walker.wake_time(r))

    def test_one_wake_up_per_record_the_earlier_kept(self) -> None:
        """A later time keeps the earlier wake-up; an earlier one replaces it; the record is pushed once."""
        r = self.add(0, 30.0)
        walker = self.walker()
        walker.poke(r)
        self.assertEqual(walker.wake_time(r), 30.0)
        r.next_at = 35.0
        walker.poke(r)
        self.assertEqual(walker.wake_time(r), 30.0)
        r.next_at = 20.0
        walker.poke(r)
        self.assertEqual(walker.wake_time(r), 20.0)
        self.clock.advance(20)
        self.assertEqual(self.pacer.pushed, [(20.0, r)])
        self.clock.advance(20)
        self.assertEqual(self.pacer.pushed, [(20.0, r)])  # the cancelled 30 s wake-up never fires

    def test_wake_up_not_yet_due_rearms(self) -> None:
        """A wake-up that finds the record moved later waits again for the new time."""
        r = self.add(0, 10.0)
        walker = self.walker()
        walker.poke(r)
        r.next_at = 15.0  # the earlier wake-up is kept
        self.clock.advance(10)
        self.assertEqual(self.pacer.pushed, [])
        self.assertEqual(walker.wake_time(r), 15.0)
        self.clock.advance(5)
        self.assertEqual(self.pacer.pushed, [(15.0, r)])

    def test_forget_cancels(self) -> None:
        """forget() cancels a record's wake-up."""
        r = self.add(0, 5.0)
        other = self.add(1, 5.0)
        walker = self.walker()
        walker.poke(r)
        walker.poke(other)
        walker.forget(r)
        walker.forget(registrant("unknown"))  # no wake-up: nothing to do
        self.assertIsNone(walker.wake_time(r))
        self.clock.advance(10)
        self.assertEqual(self.pushed(), [other])

    def test_stop_cancels_all(self) -> None:
        """stop() cancels every wake-up."""
        records = [self.add(b, 5.0 + b) for b in range(4)]
        walker = self.walker()
        for r in records:
            walker.poke(r)
        self.assertEqual([walker.wake_time(r) for r in records], [5.0, 6.0, 7.0, 8.0])
        walker.stop()
        self.assertEqual([walker.wake_time(r) for r in records], [None] * 4)
        self.clock.advance(100)
        self.assertEqual(self.pacer.pushed, [])

    def test_stuck_record_recovered(self) -> None:
        """A record in a transaction for longer than stuck_after is handed to on_stuck with how long it waited."""
        r = self.add(0)
        r.start(0)  # REGISTERING, next_at None, nothing will ever end it
        walker = self.walker(stuck_after=100.0)
        self.clock.advance(100)
        walker.consider(r, self.clock.seconds())
        self.assertEqual(self.stuck, [])  # not longer than the limit yet
        self.clock.advance(50)
        walker.tick()
        self.assertEqual(self.stuck, [(r, 150.0)])
        self.assertEqual(self.pacer.pushed, [])

    def test_stuck_check_spares_the_others(self) -> None:
        """Records at rest with nothing to send, and removed records, are never reported stuck."""
        resting = self.add(0, None)
        resting.last_register_sent = 0.0
        gone = self.add(0)
        gone.start(0)
        walker = self.walker(stuck_after=10.0)
        self.clock.advance(1000)
        walker.consider(resting, 1000.0)
        gone.mark_removed()
        walker.consider(gone, 1000.0)
        self.assertEqual(self.stuck, [])

    def test_failing_scan_does_not_stop_the_walk(self) -> None:
        """A bucket whose scan raises is logged; the next tick still moves on."""
        self.add(0)
        r1 = self.add(1)
        registry = self.registry

        class FailingRegistry:
            """The registry, but bucket 0 cannot be read (a compiled Registry cannot be patched)."""

            bucket_count = registry.bucket_count

            def bucket(self, index: int) -> list[Registrant]:
                return [1 / 0] if index == 0 else registry.bucket(index)  # type: ignore[list-item]

        walker = BucketWalker(FailingRegistry(), self.clock, 10.0, self.pacer, timers=TimerQueue(self.clock))  # type: ignore[arg-type]
        walker.tick()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        walker.tick()
        self.assertEqual(self.pushed(), [r1])


    def test_record_arriving_during_the_first_load(self) -> None:
        """
        A record the first load adds while the walk runs: sent at once if
        its bucket was visited already (it missed that visit), else at its
        bucket's visit, as the seed's timing has it.
        """
        walker = self.walker()
        early = in_bucket(0, 4, self.taken)
        self.registry.add(early)
        walker.arrived(early)  # before any visit: waits
        self.assertEqual(self.pacer.pushed, [])
        walker.tick()  # bucket 0
        self.assertEqual(self.pacer.pushed, [(0, early)])
        late_visited, late_waiting = in_bucket(0, 4, self.taken), in_bucket(2, 4, self.taken)
        self.clock.advance(1)
        for record in (late_visited, late_waiting):
            self.registry.add(record)
            walker.arrived(record)
        self.assertEqual(self.pacer.pushed[1:], [(1, late_visited)])
        self.clock.advance(9)
        walker.tick()  # bucket 1
        self.clock.advance(10)
        walker.tick()  # bucket 2: the record that waited for it
        self.assertEqual(self.pacer.pushed[2:], [(20, late_waiting)])

class WalkServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.walker = BucketWalker(Registry(1), self.clock, 5.0, FakePacer(self.clock))  # type: ignore[arg-type]
        self.service = WalkService(self.walker, self.clock)

    def test_needs_running_and_released(self) -> None:
        """Running without release does not walk; release then ticks at once and every bucket_interval."""
        self.service.startService()
        self.clock.advance(60)
        self.assertEqual((self.walker.visits, self.service.walking), (0, False))
        self.service.release()
        self.assertEqual((self.walker.visits, self.service.walking), (1, True))
        self.clock.advance(5)
        self.assertEqual(self.walker.visits, 2)
        self.clock.advance(4.9)
        self.assertEqual(self.walker.visits, 2)
        self.clock.advance(0.1)
        self.assertEqual(self.walker.visits, 3)
        self.service.release()  # again: no second loop
        self.clock.advance(5)
        self.assertEqual(self.walker.visits, 4)

    def test_released_before_running(self) -> None:
        """Released before the service runs: the walk starts with the service."""
        self.service.release()
        self.clock.advance(60)
        self.assertEqual((self.walker.visits, self.service.walking), (0, False))
        self.service.startService()
        self.assertEqual((self.walker.visits, self.service.walking), (1, True))

    def test_stop(self) -> None:
        """stopService stops the ticks; stopping an idle service is harmless."""
        self.service.startService()
        self.service.stopService()
        self.assertFalse(self.service.walking)
        self.service.startService()
        self.service.release()
        self.clock.advance(5)
        self.assertEqual(self.walker.visits, 2)
        self.service.stopService()
        self.assertFalse(self.service.walking)
        self.clock.advance(100)
        self.assertEqual(self.walker.visits, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WalkAndPaceTests(SynchronousTestCase):
    def test_slices_and_pacing(self) -> None:
        """A 5000-record bucket is scanned in slices and sent at the paced rate."""
        clock = Clock()
        registry = Registry(0)
        policy = Policy(rng=random.Random(3))
        for i in range(5000):
            registry.add(Registrant(Account(row_id=i, aor=f"sip:u{i}@x", registrar="sip:x", binding_uri=f"sip:u{i}@h", expiry=600), policy))
        sent: list[float] = []
        pacer = Pacer(clock, 1000, lambda r: sent.append(clock.seconds()) or r.start(clock.seconds()))
        walker = BucketWalker(registry, clock, 100, pacer, slice_size=2000)
        walker.tick()
        self.assertEqual(len(pacer), 2000)
        clock.advance(0)
        self.assertGreaterEqual(len(pacer) + len(sent), 4000)
        for _ in range(600):
            clock.advance(0.01)
        self.assertEqual(len(sent), 5000)
        per_second = [sum(1 for t in sent if s <= t < s + 1) for s in range(5)]
        self.assertTrue(all(950 <= n <= 1030 for n in per_second), per_second)

    def test_precise_wake_before_next_visit(self) -> None:
        """A record due between visits is woken at its time, not at the next visit."""
        clock = Clock()
        registry = Registry(0)
        registrant = Registrant(Account(row_id=1, aor="sip:a@x", registrar="sip:x", binding_uri="sip:a@h", expiry=600), Policy())
        registry.add(registrant)
        registrant.next_at = 37.0
        sent: list[float] = []
        pacer = Pacer(clock, 10, lambda r: sent.append(clock.seconds()) or r.start(clock.seconds()))
        walker = BucketWalker(registry, clock, 100, pacer)
        walker.tick()
        clock.pump([1] * 40)
        self.assertEqual(sent, [37.0])
