# -*- test-case-name: tests.unit.app.test_gcpolicy -*-
"""
Short pauses from Python's cyclic garbage collector.

A full collection scans every tracked object that is not frozen.  The
table's records are frozen after the first load, but registering them
creates more long-lived objects (kept challenges, refresh wake-ups): at
100,000 registered accounts a full collection paused the reactor 140-170
ms and the collector took a sixth of the daemon's CPU, while finding
almost nothing to free (69 objects in a 20,000-account cold start: the
daemon's long-lived objects do not form garbage cycles).

L{FreezeSurvivors} moves the objects that survived a generation-1
collection out of the collector's reach (C{gc.freeze()}, a constant-time
list splice), so full collections only ever see young objects.  Cycles
that are still alive at that point and die later are no longer collected;
refcounting still frees everything that is not in a cycle.

It also collects generation 0 after 20,000 net allocations instead of
700: almost every young object (a parsed response, a transaction) is
freed by refcounting within a few milliseconds, but one still alive at a
collection is scanned again in generation 1 and then frozen for good.
Measured with C{bench/core_cycle.py --accounts 100000}: 38.8-40.3 ->
37.5-37.7 µs per registration, collector time 0.12 -> 0.04 s, the
longest pause 0.9 -> 1.9-4.7 ms.  The cost: garbage in reference cycles
waits up to 20,000 allocations (not 700) to be freed.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

from twisted.application.service import Service


class FreezeSurvivors(Service):
    """
    While running, freeze what survives each generation-1 or -2
    collection, and collect generation 0 every C{young} net allocations.
    """

    def __init__(self, freeze: Callable[[], None] = gc.freeze, young: int = 20_000) -> None:
        self._freeze = freeze
        self._young = young
        self._thresholds: tuple[int, int, int] | None = None
        self.freezes = 0

    def startService(self) -> None:
        self.running = True
        if self._after_collection not in gc.callbacks:
            gc.callbacks.append(self._after_collection)
        if self._thresholds is None:  # (started twice: the thresholds before the first start are the ones to restore)
            self._thresholds = gc.get_threshold()
            gc.set_threshold(self._young, *self._thresholds[1:])

    def stopService(self) -> None:
        if self._after_collection in gc.callbacks:
            gc.callbacks.remove(self._after_collection)
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        self.running = False

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation", 0) >= 1:
            self._freeze()
            self.freezes += 1


def freeze_loaded() -> None:
    """
    Move what the first load created out of the cyclic GC's reach: those
    records live as long as the daemon, and full collections stay short
    however large the table (100k records: 260 ms pauses without this).
    """
    gc.collect(1)
    gc.freeze()
