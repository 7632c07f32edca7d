# -*- test-case-name: tests.unit.schedule.test_walker,tests.unit.net.test_transaction_layer -*-
"""
The bucket walk.

Every C{timer_interval / 2^hash_size} seconds the walker visits the next
bucket.  A record due now goes to the pacer; a record due before the
bucket's next visit (a refresh or a retry) gets a precise wake-up, so no
registration lapses between visits whatever the registrar granted.  Large
buckets are scanned in slices, one reactor turn each; due records go to
the pacer (L{uacregistrant.schedule.pacer}).
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from uacregistrant.core.registrant import Registrant
from uacregistrant.core.registry import Registry, bucket_of
from uacregistrant.schedule.pacer import Pacer
from uacregistrant.schedule.timers import Timer, TimerQueue

_log = Logger(namespace=__name__)


class BucketWalker:
    """
    Visits one bucket per L{tick}, in order, and feeds due records to the
    pacer.

    @param bucket_interval: seconds between two ticks.
    @param slice_size: records examined per reactor turn.
    """

    def __init__(
        self,
        registry: Registry,
        clock: IReactorTime,
        bucket_interval: float,
        pacer: Pacer,
        slice_size: int = 2000,
        timers: TimerQueue | None = None,
        stuck_after: float = float("inf"),
        on_stuck: Callable[[Registrant, float], None] = lambda registrant, waited: None,
        eligible: Callable[[Registrant], bool] | None = None,
    ) -> None:
        self._registry = registry
        #: Whether a record may send from this node (a cluster node holds only some).
        self.eligible = eligible
        self._stuck_after = stuck_after
        self._on_stuck = on_stuck
        self._clock = clock
        self._timers = timers if timers is not None else TimerQueue(clock)
        self._pacer = pacer
        self._slice = slice_size
        self.bucket_interval = bucket_interval
        self.cycle = bucket_interval * registry.bucket_count
        self.next_bucket = 0
        self.visits = 0
        # Buckets visited at least once (the walk starts while the first
        # load still adds records: one arriving in a visited bucket missed
        # its visit).
        self._visited = bytearray(registry.bucket_count)
        # Each record's pending wake-up (only records due before their
        # bucket's next visit have one).
        self._wakes: dict[Registrant, Timer] = {}

    def tick(self) -> None:
        """Visit the next bucket (never raises: the loop must not stop)."""
        index = self.next_bucket
        self.next_bucket = (index + 1) % self._registry.bucket_count
        self.visits += 1
        self._visited[index] = 1
        try:
            self._scan(self._registry.bucket(index), 0)
        except Exception:
            _log.failure("walking bucket {bucket} failed", bucket=index)

    def _scan(self, records: list[Registrant], start: int) -> None:
        now = self._clock.seconds()
        horizon = now + self.cycle
        end = min(start + self._slice, len(records))
        for i in range(start, end):
            self.consider(records[i], now, horizon)
        if end < len(records):
            self._clock.callLater(0, self._scan, records, end)

    def consider(self, registrant: Registrant, now: float, horizon: float | None = None) -> None:
        """
        Queue the record if due, or wake it when it will be due before
        C{horizon}.

        The last resort against a record with no pending work: one waiting
        in a transaction state for longer than any response, timeout or
        lookup could take is handed to C{on_stuck}.
        """
        at = registrant.next_at
        if at is None:
            sent = registrant.last_register_sent
            if sent is not None and now - sent > self._stuck_after and registrant.in_transaction and not registrant.removed:
                self._on_stuck(registrant, now - sent)
            return
        if registrant.removed or (self.eligible is not None and not self.eligible(registrant)):
            return
        if at <= now:
            self._pacer.push(registrant)
        elif at < (horizon if horizon is not None else now + self.cycle):
            wakes = self._wakes
            wake = wakes.get(registrant)
            if wake is not None:
                if wake.active() and wake.time <= at:
                    return
                wake.cancel()
            wakes[registrant] = self._timers.call_at(at, self._wake, registrant)

    def arrived(self, registrant: Registrant) -> None:
        """
        A record the first load added while the walk runs: queued now if
        the walk has visited its bucket already (it would have been sent
        at that visit had it been loaded), else it waits for its visit, as
        the seed's bucket timing has it.
        """
        if self.visits and self._visited[bucket_of(registrant.account.aor, self._registry.bucket_count)]:
            self.consider(registrant, self._clock.seconds())

    def poke(self, registrant: Registrant) -> None:
        """Re-examine a record whose schedule just changed."""
        now = self._clock.seconds()
        self.consider(registrant, now)

    def _wake(self, registrant: Registrant) -> None:
        self._wakes.pop(registrant, None)
        self.consider(registrant, self._clock.seconds())

    def forget(self, registrant: Registrant) -> None:
        """Cancel a record's wake-up (it is being removed)."""
        wake = self._wakes.pop(registrant, None)
        if wake is not None:
            wake.cancel()

    def stop(self) -> None:
        """Cancel every wake-up (the service stops)."""
        for wake in self._wakes.values():
            wake.cancel()
        self._wakes.clear()

    def wake_time(self, registrant: Registrant) -> float | None:
        """When the record's pending wake-up fires, or C{None}."""
        wake = self._wakes.get(registrant)
        return None if wake is None else wake.time


class WalkService(Service):
    """
    Runs the walk: one L{BucketWalker.tick} every C{bucket_interval}
    seconds, from the moment it is both running and L{release}d (the
    service releases it as the first batch of the first load lands).
    """

    def __init__(self, walker: BucketWalker, clock: IReactorTime) -> None:
        self._walker = walker
        self._loop = LoopingCall(walker.tick)
        self._loop.clock = clock
        self._released = False

    def release(self) -> None:
        """Start walking (at once if running)."""
        self._released = True
        self._start()

    @property
    def walking(self) -> bool:
        """Whether the walk runs."""
        return bool(self._loop.running)

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _start(self) -> None:
        if self.running and self._released and not self._loop.running:
            self._loop.start(self._walker.bucket_interval, now=True)
