"""Tests for L{uacregistrant.core.loglimit}."""

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.loglimit import LogLimit


class LogLimitTests(SynchronousTestCase):
    def test_once_per_interval_per_key(self) -> None:
        """A line per key per interval; the next says how many were held back."""
        limit: LogLimit[str] = LogLimit(interval=60)
        self.assertEqual(limit.allow("a", 0), 0)
        self.assertEqual([limit.allow("a", t) for t in range(1, 60)], [None] * 59)
        self.assertEqual(limit.allow("b", 30), 0)
        self.assertEqual(limit.allow("a", 60), 59)
        self.assertIsNone(limit.allow("a", 61))

    def test_bounded(self) -> None:
        """Past max_keys active keys, new keys are held back; old ones age out."""
        limit: LogLimit[int] = LogLimit(interval=60, max_keys=10)
        self.assertEqual([limit.allow(k, 0) for k in range(10)], [0] * 10)
        self.assertIsNone(limit.allow(99, 1))
        self.assertEqual(limit.overflow, 1)
        self.assertEqual(limit.allow(99, 61), 0)
        self.assertLessEqual(len(limit._last), 10)
