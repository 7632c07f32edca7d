"""The shared timer queue: order, cancellation, one reactor call."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.schedule.timers import TimerQueue


class TimerQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = TimerQueue(self.clock)
        self.fired: list[tuple[float, str]] = []

    def note(self, name: str) -> None:
        self.fired.append((self.clock.seconds(), name))

    def test_fires_in_time_order_on_one_reactor_call(self) -> None:
        """Timers fire in order of time, whatever the order they were set; one reactor call is pending at a time."""
        self.queue.call_later(3, self.note, "c")
        self.queue.call_later(1, self.note, "a")
        self.queue.call_at(2, self.note, "b")
        self.assertEqual(len([c for c in self.clock.getDelayedCalls() if c.active()]), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.fired, [])
        self.clock.pump([0.5, 1, 1])
        self.assertEqual(self.fired, [(1, "a"), (2, "b"), (3, "c")])
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_cancelled_timer_never_fires(self) -> None:
        """A cancelled timer is inactive and its callback never runs; the others still do."""
        first = self.queue.call_later(1, self.note, "cancelled")
        self.queue.call_later(2, self.note, "kept")
        first.cancel()
        self.assertFalse(first.active())
        self.clock.pump([1, 1])
        self.assertEqual(self.fired, [(2, "kept")])

    def test_cancelled_head_does_not_wake_the_reactor(self) -> None:
        """After the earliest live timer fires, cancelled entries ahead of the next one do not arm a wake-up of their own."""
        self.queue.call_later(1, self.note, "a")
        self.queue.call_later(2, self.note, "b").cancel()
        self.queue.call_later(5, self.note, "c")
        self.clock.advance(1)
        pending = [c.getTime() for c in self.clock.getDelayedCalls() if c.active()]
        self.assertEqual(pending, [5])

    def test_fired_timer_is_inactive_and_keeps_its_time(self) -> None:
        timer = self.queue.call_later(1.5, self.note, "a")
        self.assertEqual(timer.getTime(), 1.5)
        self.clock.advance(1.5)
        self.assertFalse(timer.active())
        timer.cancel()  # harmless after firing
        self.assertEqual(self.fired, [(1.5, "a")])

    def test_earlier_timer_rearms(self) -> None:
        """A timer earlier than the armed one moves the reactor call forward."""
        self.queue.call_later(10, self.note, "late")
        self.queue.call_later(1, self.note, "early")
        self.clock.advance(1)
        self.assertEqual(self.fired, [(1, "early")])
        self.clock.advance(9)
        self.assertEqual(self.fired, [(1, "early"), (10, "late")])

    def test_failing_callback_does_not_stop_the_queue(self) -> None:
        """An exception from one callback is logged; later timers still fire."""

        def explode(_: object) -> None:
            raise RuntimeError("boom")

        self.queue.call_later(1, explode, None)
        self.queue.call_later(1, self.note, "after")
        self.queue.call_later(2, self.note, "later")
        self.clock.pump([1, 1])
        self.assertEqual(self.fired, [(1, "after"), (2, "later")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_callback_may_schedule_more(self) -> None:
        """A callback that schedules another timer gets it fired in turn."""

        def chain(count: int) -> None:
            self.note(str(count))
            if count < 3:
                self.queue.call_later(1, chain, count + 1)

        self.queue.call_later(1, chain, 1)
        self.clock.pump([1, 1, 1, 1])
        self.assertEqual(self.fired, [(1, "1"), (2, "2"), (3, "3")])

    def test_stop_cancels_everything(self) -> None:
        timer = self.queue.call_later(1, self.note, "a")
        self.queue.stop()
        self.assertFalse(timer.active())
        self.assertEqual(len(self.queue), 0)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
        self.clock.advance(2)
        self.assertEqual(self.fired, [])

    def test_callback_scheduling_later_keeps_earlier_timers(self) -> None:
        """A callback that schedules a far timer does not hide a nearer one set before it fired."""
        self.queue.call_later(1, lambda _: self.queue.call_later(100, self.note, "far"), None)
        self.queue.call_later(2, self.note, "near")
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.fired, [(2, "near")])

    def test_timers_due_close_together_share_one_wake_and_none_fires_early(self) -> None:
        """On the 10 ms grid: two timers due within one slot wake the reactor once, at the slot's end."""
        self.queue.call_at(1.001, self.note, "a")
        self.queue.call_at(1.004, self.note, "b")
        pending = [c.getTime() for c in self.clock.getDelayedCalls() if c.active()]
        self.assertEqual(len(pending), 1)
        self.assertAlmostEqual(pending[0], 1.01)
        self.clock.advance(1.0045)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.0055)
        self.assertEqual([name for _, name in self.fired], ["a", "b"])
