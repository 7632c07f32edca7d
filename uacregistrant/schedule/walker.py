# -*- test-case-name: tests.unit.test_walker -*-
"""
The bucket walk and the send pacer.

Every C{timer_interval / 2^hash_size} seconds the walker visits the next
bucket.  A record due now goes to the pacer; a record due before the
bucket's next visit (a refresh or a retry) gets a precise wake-up, so no
registration lapses between visits whatever the registrar granted.  Large
buckets are scanned in slices, one reactor turn each, and the pacer
releases at most C{rate} first requests per second.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from uacregistrant.core.registrant import Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.schedule.timers import TimerQueue

_log = Logger()


#: A token, less a rounding error: (now - last) * rate for an exact wait
#: can come out a hair below 1, which would cost a whole extra quantum
#: (at 50 requests/s the rate fell to 33).
_WHOLE = 1 - 1e-6


class Pacer:
    """
    A token bucket that releases queued registrants at C{rate} requests
    per second, and starts no new attempt while C{window} transactions are
    already outstanding (so a slow registrar, or a daemon busier than the
    rate allows, slows the sending instead of drowning in retransmissions).

    Follow-up requests (digest answers, 423 retries) wait in a lane of
    their own that is served first and is not held by the window (each
    replaces a transaction that just ended), but they take tokens like any
    request: a registrar answering every REGISTER with a challenge or a
    423 cannot make the daemon exceed the rate.

    @param send: called with each released registrant that is still due.
    @param send_follow_up: called with each registrant released from the
        follow-up lane.
    @param in_flight: how many transactions are outstanding.
    """

    def __init__(
        self,
        clock: IReactorTime,
        rate: float,
        send: Callable[[Registrant], None],
        quantum: float = 0.01,
        window: int | None = None,
        in_flight: Callable[[], int] = lambda: 0,
        send_follow_up: Callable[[Registrant], None] | None = None,
    ) -> None:
        self._clock = clock
        self._rate = rate
        self._send = send
        self._send_follow_up = send_follow_up or send
        self._window = window
        self._in_flight = in_flight
        self._quantum = quantum
        self._burst = max(1.0, rate * quantum * 2)
        self._tokens = self._burst
        self._last = clock.seconds()
        self._queue: deque[Registrant] = deque()
        self._follow_ups: deque[Registrant] = deque()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._queue) + len(self._follow_ups)

    def push(self, registrant: Registrant) -> None:
        """Queue a registrant unless it is queued already."""
        if registrant.queued:
            return
        registrant.queued = True
        self._queue.append(registrant)
        self._wake()

    def push_follow_up(self, registrant: Registrant) -> None:
        """Queue a registrant whose follow-up request is ready (served first)."""
        self._follow_ups.append(registrant)
        self._wake()

    def _wake(self) -> None:
        if self._call is None:
            self._call = self._clock.callLater(0, self._drain)

    def stop(self) -> None:
        """Cancel the pending drain; queued records stay queued."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _drain(self) -> None:
        self._call = None
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        follow_ups = self._follow_ups
        while follow_ups and self._tokens >= _WHOLE:
            self._tokens -= 1
            self._release(self._send_follow_up, follow_ups.popleft())
        queue = self._queue
        window = self._window
        while queue and self._tokens >= _WHOLE:
            if window is not None and self._in_flight() >= window:
                break  # congestion: wait for answers before starting more
            registrant = queue.popleft()
            registrant.queued = False
            if registrant.removed or not registrant.due(now):
                continue
            self._tokens -= 1
            self._release(self._send, registrant)
        if queue or follow_ups:
            wait = max(self._quantum, (1 - self._tokens) / self._rate)
            self._call = self._clock.callLater(wait, self._drain)

    def _release(self, send: Callable[[Registrant], None], registrant: Registrant) -> None:
        try:
            send(registrant)
        except Exception:
            _log.failure("sending for {aor} failed", aor=registrant.account.aor)


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
    ) -> None:
        self._registry = registry
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

    def tick(self) -> None:
        """Visit the next bucket (never raises: the loop must not stop)."""
        index = self.next_bucket
        self.next_bucket = (index + 1) % self._registry.bucket_count
        self.visits += 1
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
        if registrant.removed:
            return
        if at <= now:
            self._pacer.push(registrant)
        elif at < (horizon if horizon is not None else now + self.cycle):
            wake = registrant.wake
            if wake is not None:
                if wake.active() and wake.getTime() <= at:
                    return
                if wake.active():
                    wake.cancel()
            registrant.wake = self._timers.call_at(at, self._wake, registrant)

    def poke(self, registrant: Registrant) -> None:
        """Re-examine a record whose schedule just changed."""
        now = self._clock.seconds()
        self.consider(registrant, now)

    def _wake(self, registrant: Registrant) -> None:
        registrant.wake = None
        self.consider(registrant, self._clock.seconds())

    def forget(self, registrant: Registrant) -> None:
        """Cancel a record's wake-up (it is being removed)."""
        wake, registrant.wake = registrant.wake, None
        if wake is not None and wake.active():
            wake.cancel()
