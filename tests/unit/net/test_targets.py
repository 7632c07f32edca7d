"""TargetHealth: which of a hop's targets to try, and how long a failing one is avoided."""

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.net.targets import AVOID_FIRST, AVOID_MAX, TargetHealth

A, B, C = ("192.0.2.1", 5060), ("192.0.2.2", 5060), ("192.0.2.3", 5060)


class TargetHealthTests(SynchronousTestCase):
    def test_first_healthy_in_dns_order(self) -> None:
        """The first target is used until it fails; then the next, until the first's avoidance ends."""
        health = TargetHealth()
        self.assertEqual(health.choose([A, B, C], 0), A)
        self.assertEqual(health.failed(A, 10), 10 + AVOID_FIRST)
        self.assertEqual(health.choose([A, B, C], 11), B)
        self.assertEqual(health.alternative([A, B, C], A, 11), B)
        self.assertEqual(health.choose([A, B, C], 10 + AVOID_FIRST), A)

    def test_avoidance_doubles_and_is_capped(self) -> None:
        """Failures in a row (each after the last avoidance ended) double the avoidance up to AVOID_MAX; an answer resets it."""
        health = TargetHealth()
        now, spans = 0.0, []
        for _ in range(8):
            until = health.failed(A, now)
            spans.append(until - now)
            now = until
        self.assertEqual(spans[:3], [AVOID_FIRST, 2 * AVOID_FIRST, 4 * AVOID_FIRST])
        self.assertEqual(spans[-1], AVOID_MAX)
        health.answered(A)
        self.assertFalse(health.avoided(A, now))
        self.assertEqual(health.failed(A, now), now + AVOID_FIRST)

    def test_failures_of_one_attempt_count_once(self) -> None:
        """Many records failing at once on one target (one attempt, many waiters) avoid it 30 s, not 10 min."""
        health = TargetHealth()
        for _ in range(20):
            self.assertEqual(health.failed(A, 5), 5 + AVOID_FIRST)
        self.assertEqual(health.failed(A, 5 + AVOID_FIRST), 5 + 3 * AVOID_FIRST)

    def test_all_failing_still_tried(self) -> None:
        """With every target avoided, the one whose avoidance ends first is tried, and there is no alternative."""
        health = TargetHealth()
        health.failed(A, 0)
        health.failed(A, 30)  # avoided until 90
        health.failed(B, 35)  # until 65
        self.assertEqual(health.choose([A, B], 36), B)
        self.assertIsNone(health.alternative([A, B], B, 36))

    def test_bounded(self) -> None:
        """At most `limit` failing targets are remembered; expired ones make room."""
        health = TargetHealth(limit=2)
        health.failed(A, 0)
        health.failed(B, 0)
        health.failed(C, 1)
        self.assertEqual(len(health), 2)
        self.assertFalse(health.avoided(C, 1))
        health.failed(C, 100)  # A and B expired at 30: room again
        self.assertTrue(health.avoided(C, 100))
        self.assertLessEqual(len(health), 2)
