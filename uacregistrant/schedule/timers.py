# -*- test-case-name: tests.unit.schedule.test_timers,tests.unit.net.test_transaction_layer,tests.unit.schedule.test_walker -*-
"""
Many cheap timers on one reactor call.

Twisted keeps its delayed calls in a heap ordered by a Python-level
comparison, and re-heapifies after many cancellations: with 100,000
refresh wake-ups and thousands of transaction timers that cost shows on
every scheduling.  L{TimerQueue} keeps its own heap of C{(time, sequence,
timer)} tuples (compared in C), cancels lazily, and arms a single reactor
call for the earliest live timer.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, Callable, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger(namespace=__name__)
_T = TypeVar("_T")


class Timer:
    """One scheduled call; C{cancel()} before it fires to stop it."""

    __slots__ = ("time", "function", "argument")

    def __init__(self, time: float, function: Callable[[Any], None] | None, argument: object) -> None:
        self.time = time
        self.function = function
        self.argument = argument

    def active(self) -> bool:
        """Whether the timer has neither fired nor been cancelled."""
        return self.function is not None

    def getTime(self) -> float:
        """When the timer fires (seconds, the clock's time base)."""
        return self.time

    def cancel(self) -> None:
        """Stop the timer (no-op if it already fired or was cancelled)."""
        self.function = None
        self.argument = None


class TimerQueue:
    """
    Timers sharing one reactor delayed call, fired at most C{resolution}
    seconds late.

    A cancelled timer's entry stays in the heap until its time comes, so
    the heap holds at most what was scheduled over the longest delay in
    use (transaction timers: seconds; refresh wake-ups: one per record).
    """

    def __init__(self, clock: IReactorTime, resolution: float = 0.01) -> None:
        self._clock = clock
        self._resolution = resolution
        self._heap: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._call: IDelayedCall | None = None
        self._armed_at = float("inf")

    def __len__(self) -> int:
        """Entries held (cancelled ones included until they are due)."""
        return len(self._heap)

    def call_later(self, delay: float, function: Callable[[_T], None], argument: _T) -> Timer:
        """Call C{function(argument)} after C{delay} seconds."""
        return self.call_at(self._clock.seconds() + max(0.0, delay), function, argument)

    def call_at(self, when: float, function: Callable[[_T], None], argument: _T) -> Timer:
        """Call C{function(argument)} once the clock reads C{when} or later."""
        timer = Timer(when, function, argument)
        heapq.heappush(self._heap, (when, next(self._sequence), timer))
        if when < self._armed_at:
            self._arm(when)
        return timer

    def stop(self) -> None:
        """Cancel every timer and the reactor call."""
        for _, _, timer in self._heap:
            timer.cancel()
        self._heap.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._armed_at = float("inf")

    def _arm(self, when: float) -> None:
        # Wake on the next multiple of the resolution: timers due close
        # together share one reactor call (none fires early).
        slot = max(when, math.ceil(when / self._resolution) * self._resolution)
        if slot >= self._armed_at:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._armed_at = slot
        self._call = self._clock.callLater(max(0.0, slot - self._clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        self._armed_at = float("inf")
        heap = self._heap
        now = self._clock.seconds()
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            function, argument = timer.function, timer.argument
            if function is None:
                continue
            timer.function = timer.argument = None
            try:
                function(argument)
            except Exception:
                _log.failure("timer callback {function!r} failed", function=function)
        # Drop cancelled entries at the head so they do not arm a wake-up.
        while heap and heap[0][2].function is None:
            heapq.heappop(heap)
        # A callback may have armed the reactor for a later timer than the
        # earliest one left: arm for the earliest.
        if heap and heap[0][0] < self._armed_at:
            self._arm(heap[0][0])
