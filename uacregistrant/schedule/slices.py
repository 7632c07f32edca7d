# -*- test-case-name: tests.unit.schedule.test_slices -*-
"""Work over a large list a slice per reactor turn, so no turn runs long."""

from __future__ import annotations

from typing import Callable, Generic, Sequence, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

_T = TypeVar("_T")


def in_slices(
    clock: IReactorTime, items: Sequence[_T], size: int, work: Callable[[Sequence[_T]], None]
) -> defer.Deferred[None]:
    """
    Call C{work} with consecutive slices of C{items}: the first now, each
    next one on a later reactor turn.

    @return: fires after the last slice (at once when there is only one),
        or fails with the exception C{work} raised (no slice runs after it).
    """
    return _Slices(clock, items, size, work).done


class _Slices(Generic[_T]):
    """
    The slices' progress.  An object whose method is the next turn's call,
    not a closure that schedules itself: that would be a reference cycle,
    holding C{items} until the cyclic collector ran, and never once the
    daemon's GC policy had frozen it (app/gcpolicy.py).
    """

    __slots__ = ("_clock", "_items", "_size", "_work", "done")

    def __init__(self, clock: IReactorTime, items: Sequence[_T], size: int, work: Callable[[Sequence[_T]], None]) -> None:
        self._clock = clock
        self._items = items
        self._size = size
        self._work = work
        self.done: defer.Deferred[None] = defer.Deferred()
        self._step(0)

    def _step(self, start: int) -> None:
        size = self._size
        try:
            self._work(self._items[start : start + size])
        except Exception:
            self.done.errback()
            return
        if start + size < len(self._items):
            self._clock.callLater(0, self._step, start + size)
        else:
            self.done.callback(None)
