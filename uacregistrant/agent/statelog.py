# -*- test-case-name: tests.unit.agent.test_statelog -*-
"""
State changes in the log, as an operator wants them: a record is logged
when it starts failing, when its failure changes kind, and when it
recovers; not on every retry.  At most C{budget} such lines per
C{interval}: during an outage of 100,000 accounts the rest are counted and
summarised in one line per interval.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from uacregistrant.agent.changes import StateChange
from uacregistrant.core.registrant import FAILURE_STATES, RegState, Registrant

_log = Logger(namespace=__name__)

class StateLog:
    """A state-change observer that logs failures and recoveries, bounded."""

    def __init__(self, clock: IReactorTime, budget: int = 100, interval: float = 60.0) -> None:
        self._clock = clock
        self.budget = budget
        self.interval = interval
        #: Failing records and the failure last logged (or counted) for each.
        self._failing: dict[Registrant, RegState] = {}
        self._window_start = clock.seconds()
        self._lines = 0
        self._held: Counter[str] = Counter()
        self._summary: IDelayedCall | None = None

    def __call__(self, change: StateChange) -> None:
        """Log (or count) one state change if it is news."""
        registrant, new = change.registrant, change.new
        if new in FAILURE_STATES:
            if self._failing.get(registrant) == new:
                return  # the same failure again: a retry, not news
            self._failing[registrant] = new
            if self._take():
                _log_failure(change)
            else:
                self._hold(new.name)
        elif not self._failing:
            return  # the common case: nothing was failing
        elif new == RegState.REGISTERED_STATE:
            if self._failing.pop(registrant, None) is None:
                return
            if self._take():
                _log_recovery(change)
            else:
                self._hold("recovered")
        elif new == RegState.NOT_REGISTERED_STATE:
            self._failing.pop(registrant, None)

    def forget(self, registrant: Registrant) -> None:
        """A record is gone."""
        self._failing.pop(registrant, None)

    @property
    def quiet(self) -> bool:
        """Nothing failing: a change into a healthy state is not news (L{QuietObserver})."""
        return not self._failing

    @property
    def failing(self) -> int:
        """Records whose last logged state is a failure."""
        return len(self._failing)

    def stop(self) -> None:
        """Write the pending summary now and stop."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
            self._summarise()

    def _take(self) -> bool:
        now = self._clock.seconds()
        if now - self._window_start >= self.interval:
            self._window_start = now
            self._lines = 0
        if self._lines < self.budget:
            self._lines += 1
            return True
        return False

    def _hold(self, what: str) -> None:
        self._held[what] += 1
        if self._summary is None:
            self._summary = self._clock.callLater(self.interval, self._summarise)

    def _summarise(self) -> None:
        self._summary = None
        held, self._held = self._held, Counter()
        for registrant in [r for r in self._failing if r.removed]:
            del self._failing[registrant]
        if not held:
            return
        _log.warn(
            "{count} more state change(s) not logged one by one: {detail}; {failing} record(s) failing now",
            count=sum(held.values()),
            detail=", ".join(f"{n} {what}" for what, n in held.most_common()),
            failing=len(self._failing),
        )


def _record(change: StateChange) -> dict[str, object]:
    """The fields naming a record in a log line (never its password)."""
    account = change.registrant.account
    return {"aor": account.aor, "binding": account.binding_uri, "registrar": account.registrar, "row_id": account.row_id}


def _log_failure(change: StateChange) -> None:
    registrant = change.registrant
    _log.warn(
        "{aor} ({binding} at {registrar}, id {row_id}): {state}: {error}; retry in {retry:.0f}s",
        state=change.new.name,
        error=registrant.last_error,
        # A retry due at once (a fail-over) may be due a moment before the change was stamped: 0, not "-0".
        retry=max(0.0, (registrant.next_at or change.time) - change.time),
        **_record(change),
    )


def _log_recovery(change: StateChange) -> None:
    registrant = change.registrant
    _log.info(
        "{aor} ({binding} at {registrar}, id {row_id}): registered again after {failures} failure(s), for {expires}s",
        failures=registrant.recovered_after,
        expires=registrant.expires,
        **_record(change),
    )
