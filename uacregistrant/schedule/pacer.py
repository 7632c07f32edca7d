# -*- test-case-name: tests.unit.schedule.test_pacer -*-
"""
The send pacer: a token bucket in front of the transaction layer.

Due records wait in a queue and are released at most C{rate} per second,
and no new attempt starts while C{window} transactions are outstanding.
Follow-up requests have a lane of their own, served first.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from uacregistrant.core.registrant import Registrant

_log = Logger(namespace=__name__)


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
        # Each record in it has its paced flag set, which push() asks.
        self._queue: deque[Registrant] = deque()
        self._follow_ups: deque[Registrant] = deque()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._queue) + len(self._follow_ups)

    def push(self, registrant: Registrant) -> None:
        """Queue a registrant unless it is queued already."""
        if registrant.paced:
            return
        registrant.paced = True
        self._queue.append(registrant)
        self._wake()

    def queued(self, registrant: Registrant) -> bool:
        """Whether a registrant waits in the first-request queue."""
        return registrant.paced

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
            registrant.paced = False
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
