"""The send pacer: rate, burst, in-flight window, the follow-up lane, skipping, stop."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.account import Account
from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.schedule.pacer import Pacer

POLICY = Policy(rng=random.Random(1))


def registrant(i: int) -> Registrant:
    """A new enabled record (due at once)."""
    return Registrant(
        Account(row_id=i, aor=f"sip:u{i}@example.com", registrar="sip:example.com",
                binding_uri=f"sip:u{i}@192.0.2.1:5060", expiry=3600),
        POLICY,
    )


class PacerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: list[tuple[float, str, Registrant]] = []

    def pacer(self, rate: float, **kw: object) -> Pacer:
        def send(r: Registrant) -> None:
            self.sent.append((self.clock.seconds(), "first", r))

        def send_follow_up(r: Registrant) -> None:
            self.sent.append((self.clock.seconds(), "follow-up", r))

        return Pacer(self.clock, rate, send, send_follow_up=send_follow_up, **kw)  # type: ignore[arg-type]

    def go(self, seconds: float) -> None:
        """Advance from one scheduled call to the next, up to C{seconds} from now."""
        end = self.clock.seconds() + seconds
        while True:
            calls = [c for c in self.clock.getDelayedCalls() if c.active()]
            upcoming = min((c.getTime() for c in calls), default=end + 1)
            if upcoming > end:
                break
            self.clock.advance(max(0.0, upcoming - self.clock.seconds()))
        self.clock.advance(end - self.clock.seconds())

    def times(self) -> list[float]:
        return [round(t, 6) for t, _, _ in self.sent]

    def test_rate(self) -> None:
        """At 10 requests/s (a burst of one) due records go one every 0.1 s, in the order queued."""
        pacer = self.pacer(10)
        records = [registrant(i) for i in range(20)]
        for r in records:
            pacer.push(r)
        self.assertEqual(self.sent, [])  # released on a later reactor turn, not inside push()
        self.go(1.05)
        self.assertEqual(self.times(), [round(0.1 * i, 6) for i in range(11)])
        self.assertEqual([r for _, _, r in self.sent], records[:11])
        self.assertEqual(len(pacer), 9)
        self.go(1.0)
        self.assertEqual(len(self.sent), 20)
        self.assertEqual(len(pacer), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing queued: no drain scheduled

    def test_burst(self) -> None:
        """The bucket holds rate × quantum × 2 tokens: that many go at once, then rate × quantum per quantum."""
        pacer = self.pacer(1000, quantum=0.01)
        for i in range(50):
            pacer.push(registrant(i))
        self.clock.advance(0)
        self.assertEqual(len(self.sent), 20)
        self.clock.advance(0.01)
        self.assertEqual(len(self.sent), 30)
        self.clock.advance(0.01)
        self.assertEqual(len(self.sent), 40)

    def test_burst_is_at_least_one(self) -> None:
        """A rate below one per quantum still sends a whole request, then waits for the next token."""
        pacer = self.pacer(2, quantum=0.01)
        for i in range(3):
            pacer.push(registrant(i))
        self.go(1.0)
        self.assertEqual(self.times(), [0.0, 0.5, 1.0])

    def test_window(self) -> None:
        """No new attempt starts while `window` transactions are outstanding; answers let more go."""
        in_flight = [0]

        def send(r: Registrant) -> None:
            in_flight[0] += 1
            self.sent.append((self.clock.seconds(), "first", r))

        pacer = Pacer(self.clock, 1000, send, window=2, in_flight=lambda: in_flight[0])
        for i in range(5):
            pacer.push(registrant(i))
        self.go(1.0)
        self.assertEqual(len(self.sent), 2)
        self.assertEqual(len(pacer), 3)
        in_flight[0] = 1  # one answered
        self.go(0.02)
        self.assertEqual(len(self.sent), 3)
        in_flight[0] = 0
        self.go(0.02)
        self.assertEqual(len(self.sent), 5)

    def test_follow_ups_first(self) -> None:
        """The follow-up lane is served before first requests queued earlier."""
        pacer = self.pacer(10)
        first, follow = registrant(1), registrant(2)
        pacer.push(first)
        pacer.push_follow_up(follow)
        self.clock.advance(0)
        self.assertEqual([(kind, r) for _, kind, r in self.sent], [("follow-up", follow)])
        self.go(0.1)
        self.assertEqual([(kind, r) for _, kind, r in self.sent], [("follow-up", follow), ("first", first)])

    def test_follow_ups_take_tokens(self) -> None:
        """Follow-ups are paced like any request: at 10/s three go at 0, 0.1 and 0.2 s."""
        pacer = self.pacer(10)
        for i in range(3):
            pacer.push_follow_up(registrant(i))
        self.go(1.0)
        self.assertEqual(self.times(), [0.0, 0.1, 0.2])
        self.assertEqual({kind for _, kind, _ in self.sent}, {"follow-up"})

    def test_follow_ups_not_held_by_the_window(self) -> None:
        """A full window holds first requests, not follow-ups (each replaces a transaction that just ended)."""
        pacer = self.pacer(1000, window=1, in_flight=lambda: 5)
        first, follow = registrant(1), registrant(2)
        pacer.push(first)
        pacer.push_follow_up(follow)
        self.go(0.5)
        self.assertEqual([(kind, r) for _, kind, r in self.sent], [("follow-up", follow)])
        self.assertTrue(pacer.queued(first))

    def test_queued(self) -> None:
        """queued() is true from push() until release; a record pushed twice is sent once."""
        pacer = self.pacer(1000)
        r = registrant(1)
        self.assertFalse(pacer.queued(r))
        pacer.push(r)
        pacer.push(r)
        self.assertTrue(pacer.queued(r))
        self.assertEqual(len(pacer), 1)
        self.clock.advance(0)
        self.assertFalse(pacer.queued(r))
        self.assertEqual([x for _, _, x in self.sent], [r])
        follow = registrant(2)
        pacer.push_follow_up(follow)
        self.assertFalse(pacer.queued(follow))  # the follow-up lane is not the queue queued() asks about

    def test_removed_or_not_due_skipped(self) -> None:
        """A record removed, or no longer due, when its turn comes is dropped without taking a token."""
        pacer = self.pacer(10)
        removed, later, due = registrant(1), registrant(2), registrant(3)
        for r in (removed, later, due):
            pacer.push(r)
        removed.mark_removed()
        later.next_at = 100.0
        self.clock.advance(0)
        self.assertEqual([(t, r) for t, _, r in self.sent], [(0, due)])  # the one token went to the due record
        self.assertFalse(pacer.queued(removed))
        self.assertFalse(pacer.queued(later))
        self.assertEqual(len(pacer), 0)
        self.go(200)
        self.assertEqual(len(self.sent), 1)

    def test_send_failure_does_not_stop_the_others(self) -> None:
        """A send that raises is logged; the records after it still go."""
        def send(r: Registrant) -> None:
            self.sent.append((self.clock.seconds(), "first", r))
            if len(self.sent) == 1:
                raise RuntimeError("boom")

        pacer = Pacer(self.clock, 1000, send)
        for i in range(3):
            pacer.push(registrant(i))
        self.clock.advance(0)
        self.assertEqual(len(self.sent), 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop(self) -> None:
        """stop() cancels the pending drain; queued records stay queued and go after the next push."""
        pacer = self.pacer(1000)
        r = registrant(1)
        pacer.push(r)
        pacer.stop()
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
        self.go(10)
        self.assertEqual(self.sent, [])
        self.assertTrue(pacer.queued(r))
        self.assertEqual(len(pacer), 1)
        pacer.stop()  # twice is harmless
        other = registrant(2)
        pacer.push(other)
        self.clock.advance(0)
        self.assertEqual([x for _, _, x in self.sent], [r, other])

    def test_stop_while_waiting_for_tokens(self) -> None:
        """Stopping between drains (records still queued) sends nothing more."""
        pacer = self.pacer(10)
        for i in range(5):
            pacer.push(registrant(i))
        self.clock.advance(0)
        self.assertEqual(len(self.sent), 1)
        pacer.stop()
        self.go(10)
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(len(pacer), 4)
