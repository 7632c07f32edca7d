"""Outage recovery: records that timed out at a silent address retry as soon as it answers again."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import TurnClock
from uacregistrant.agent.recovery import OutageRecovery
from uacregistrant.core.account import Account
from uacregistrant.core.counters import SipCounters
from uacregistrant.core.registrant import Policy, RegState, Registrant

A = ("192.0.2.10", 5060)
B = ("192.0.2.11", 5060)


class OutageRecoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = TurnClock()
        self.counters = SipCounters()
        self.rescheduled: list[Registrant] = []
        self.recovery = OutageRecovery(self.clock, self.counters, self.rescheduled.append, release_slice=2)
        self.policy = Policy(retry_base=100, retry_max=1000, rng=random.Random(4))
        self.count = 0

    def timed_out(self, sent: float = 0.0) -> Registrant:
        """A record whose REGISTER sent at C{sent} met Timer F 32 s later (waiting out its back-off)."""
        self.count += 1
        r = Registrant(
            Account(row_id=self.count, aor=f"sip:u{self.count}@example.com", registrar="sip:example.com",
                    binding_uri=f"sip:u{self.count}@192.0.2.1:5060", expiry=3600),
            self.policy,
        )
        r.start(sent)
        r.on_timeout(sent + 32)
        self.assertEqual(r.state, RegState.REGISTER_TIMEOUT_STATE)
        assert r.next_at is not None
        self.assertGreater(r.next_at, sent + 32 + 40)
        return r

    def test_timeout_at_a_silent_address_remembered(self) -> None:
        """A timeout while the address answered nobody is remembered; its answer brings the retry forward."""
        r = self.timed_out()
        self.recovery.timed_out(r, A, 0.0)
        self.assertEqual(len(self.recovery), 1)
        self.clock.advance(40)
        self.recovery.answered(A, 40.0)
        self.assertEqual(r.next_at, 40.0)
        self.assertEqual(self.counters.early_retries, 1)
        self.assertEqual(self.rescheduled, [r])
        self.assertEqual(len(self.recovery), 0)
        self.recovery.answered(A, 41.0)  # released once only
        self.assertEqual(self.counters.early_retries, 1)

    def test_answered_before_the_send_still_silent(self) -> None:
        """An answer older than the request timed out does not count: the address went silent after it."""
        self.recovery.answered(A, 3.0)
        r = self.timed_out(sent=5.0)
        self.recovery.timed_out(r, A, 5.0)
        self.assertEqual(len(self.recovery), 1)

    def test_timeout_while_the_address_answered_others_not_remembered(self) -> None:
        """A registrar that answered others after the request was sent is ignoring this record: it keeps its back-off."""
        r = self.timed_out(sent=5.0)
        self.recovery.answered(A, 10.0)
        self.recovery.timed_out(r, A, 5.0)
        self.assertEqual(len(self.recovery), 0)
        before = r.next_at
        self.recovery.answered(A, 50.0)
        self.assertEqual((r.next_at, self.counters.early_retries, self.rescheduled), (before, 0, []))

    def test_other_address_unaffected(self) -> None:
        """An answer from another address releases nothing."""
        r = self.timed_out()
        self.recovery.timed_out(r, A, 0.0)
        before = r.next_at
        self.recovery.answered(B, 40.0)
        self.assertEqual((r.next_at, len(self.recovery)), (before, 1))

    def test_only_waiting_timeouts_remembered(self) -> None:
        """A record not waiting out a timeout (another failure, or nothing scheduled) is not remembered."""
        r = self.timed_out()
        r.on_internal_error(40, "x")
        self.recovery.timed_out(r, A, 0.0)
        idle = self.timed_out()
        idle.next_at = None
        self.recovery.timed_out(idle, A, 0.0)
        self.assertEqual(len(self.recovery), 0)

    def test_released_in_slices(self) -> None:
        """Many records are released release_slice per reactor turn, each retried and rescheduled once."""
        records = [self.timed_out() for _ in range(5)]
        for r in records:
            self.recovery.timed_out(r, A, 0.0)
        self.clock.advance(40)
        self.recovery.answered(A, 40.0)
        self.assertEqual(self.counters.early_retries, 2)
        self.clock.turn()
        self.assertEqual(self.counters.early_retries, 4)
        self.clock.turn()
        self.assertEqual(self.counters.early_retries, 5)
        self.assertEqual(sorted(self.rescheduled, key=id), sorted(records, key=id))
        self.assertEqual({r.next_at for r in records}, {40.0})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_records_gone_or_retried_meanwhile_skipped(self) -> None:
        """A record removed, or already retrying, before its slice comes is neither counted nor rescheduled."""
        self.recovery.release_slice = 1
        records = [self.timed_out() for _ in range(3)]
        for r in records:
            self.recovery.timed_out(r, A, 0.0)
        self.clock.advance(40)
        self.recovery.answered(A, 40.0)
        (first,) = self.rescheduled
        rest = [r for r in records if r is not first]
        rest[0].mark_removed()
        rest[1].start(40.0)  # its retry came by itself
        self.clock.turn()
        self.clock.turn()
        self.assertEqual((self.counters.early_retries, self.rescheduled), (1, [first]))

    def test_forget(self) -> None:
        """A forgotten record is not released; an address with no record left is dropped."""
        r, other = self.timed_out(), self.timed_out()
        self.recovery.timed_out(r, A, 0.0)
        self.recovery.timed_out(other, B, 0.0)
        self.recovery.forget(r)
        self.assertEqual(len(self.recovery), 1)
        before = r.next_at
        self.recovery.answered(A, 40.0)
        self.assertEqual((r.next_at, self.rescheduled), (before, []))
        self.recovery.answered(B, 40.0)
        self.assertEqual(self.rescheduled, [other])
        self.recovery.forget(other)  # nothing remembered: harmless
        self.assertEqual(len(self.recovery), 0)
