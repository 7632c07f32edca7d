# -*- test-case-name: tests.unit.schedule.test_slices -*-
"""Work over a large list a slice per reactor turn, so no turn runs long."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

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
    done: defer.Deferred[None] = defer.Deferred()

    def step(start: int) -> None:
        try:
            work(items[start : start + size])
        except Exception:
            done.errback()
            return
        if start + size < len(items):
            clock.callLater(0, step, start + size)
        else:
            done.callback(None)

    step(0)
    return done
