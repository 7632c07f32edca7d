# -*- test-case-name: tests.unit.agent.test_recovery -*-
"""
Recovery from an outage: records that timed out at an address retry as soon
as that address answers again, instead of sitting out their back-off.

Only timeouts while the address answered nobody count: a registrar that
ignores one account keeps that one backing off.
"""

from __future__ import annotations

from typing import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from uacregistrant.core.counters import SipCounters
from uacregistrant.core.registrant import RegState, Registrant
from uacregistrant.net.resolver import Address
from uacregistrant.schedule.slices import in_slices

_log = Logger(namespace=__name__)


class OutageRecovery:
    """
    Remembers which records timed out where, and releases them when that
    address answers again.

    @param reschedule: called with each record whose send time moved.
    @param release_slice: records released per reactor turn (the pacer
        then holds the send rate and the in-flight window).
    """

    def __init__(
        self,
        clock: IReactorTime,
        counters: SipCounters,
        reschedule: Callable[[Registrant], None],
        release_slice: int = 2000,
    ) -> None:
        self._clock = clock
        self._counters = counters
        self._reschedule = reschedule
        self.release_slice = release_slice
        self._stalled: dict[Address, set[Registrant]] = {}
        self._last_answer: dict[Address, float] = {}

    def __len__(self) -> int:
        """Addresses with records waiting for them."""
        return len(self._stalled)

    def answered(self, address: Address, now: float) -> None:
        """C{address} sent a response."""
        self._last_answer[address] = now
        if self._stalled and address in self._stalled:
            self._release(address)

    def answered_since(self, address: Address, since: float) -> bool:
        """Whether C{address} has sent any response since C{since}."""
        return self._last_answer.get(address, -1.0) >= since

    def timed_out(self, registrant: Registrant, address: Address, sent: float) -> None:
        """C{registrant}'s request sent to C{address} at C{sent} timed out."""
        if not self.answered_since(address, sent) and registrant.state == RegState.REGISTER_TIMEOUT_STATE and registrant.next_at is not None:
            self._stalled.setdefault(address, set()).add(registrant)

    def forget(self, registrant: Registrant) -> None:
        """A record is gone."""
        for address in [a for a, waiting in self._stalled.items() if registrant in waiting]:
            waiting = self._stalled[address]
            waiting.discard(registrant)
            if not waiting:
                del self._stalled[address]

    def _release(self, address: Address) -> None:
        waiting = self._stalled.pop(address)
        _log.info(
            "{host}:{port} answers again: {count} record(s) that timed out there retry now",
            host=address[0],
            port=address[1],
            count=len(waiting),
        )
        d = in_slices(self._clock, list(waiting), self.release_slice, self._retry_now)
        d.addErrback(lambda f: _log.failure("retrying after {host}:{port} answered failed", f, host=address[0], port=address[1]))

    def _retry_now(self, records: Sequence[Registrant]) -> None:
        now = self._clock.seconds()
        for registrant in records:
            # Records gone, already retrying, or retried meanwhile stay as they are.
            if registrant.retry_early(now):
                self._counters.early_retries += 1
                self._reschedule(registrant)
