"""in_slices: a slice per reactor turn, the result after the last."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.schedule.slices import in_slices


class InSlicesTests(SynchronousTestCase):
    def test_one_slice_per_turn(self) -> None:
        clock = Clock()
        seen: list[list[int]] = []
        d = in_slices(clock, list(range(7)), 3, lambda part: seen.append(list(part)))
        self.assertEqual(seen, [[0, 1, 2]])
        self.assertNoResult(d)
        clock.advance(0)
        clock.advance(0)
        self.assertEqual(seen, [[0, 1, 2], [3, 4, 5], [6]])
        self.assertIsNone(self.successResultOf(d))

    def test_single_slice_fires_at_once(self) -> None:
        seen: list[list[int]] = []
        d = in_slices(Clock(), [1, 2], 3, lambda part: seen.append(list(part)))
        self.assertEqual(seen, [[1, 2]])
        self.assertIsNone(self.successResultOf(d))

    def test_failure_stops_and_fails(self) -> None:
        clock = Clock()
        seen: list[int] = []

        def work(part: object) -> None:
            seen.append(1)
            if len(seen) == 2:
                raise ValueError("bad slice")

        d = in_slices(clock, list(range(9)), 3, work)
        clock.advance(0)
        clock.advance(0)
        self.failureResultOf(d, ValueError)
        self.assertEqual(seen, [1, 1])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_reference_cycle(self) -> None:
        """
        Done, nothing is left for the cyclic collector: the items are freed
        by reference counting (a cycle would keep them once the daemon's GC
        policy froze it).
        """
        import gc

        clock = Clock()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        d = in_slices(clock, list(range(7)), 3, lambda part: None)
        clock.advance(0)
        clock.advance(0)
        self.successResultOf(d)
        del d
        self.assertEqual(gc.collect(), 0)
