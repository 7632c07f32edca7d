# -*- test-case-name: tests.unit.agent.test_changes,tests.unit.agent.test_client,tests.unit.control.test_control -*-
"""State changes and the observers that hear of them (the state log, the console's followers)."""

from __future__ import annotations

from typing import Callable, NamedTuple

from twisted.logger import Logger

from uacregistrant.core.registrant import FAILURE_STATES, RegState, Registrant

_log = Logger()


class StateChange(NamedTuple):
    """
    One record moved from C{old} to C{new} at C{time}.

    (A named tuple: made three times per registration, it costs a tuple,
    where a frozen dataclass set each field through C{object.__setattr__}.)
    """

    registrant: Registrant
    old: RegState
    new: RegState
    time: float


class StateChanges:
    """
    Fans each state change out to its observers.  A failure again counts
    as a change (a retry failing differently is news to the state log); an
    unchanged healthy state does not.
    """

    def __init__(self, observers: list[Callable[[StateChange], None]] | None = None) -> None:
        self._observers = list(observers or ())

    def observe(self, observer: Callable[[StateChange], None]) -> None:
        """Call C{observer} with every later change."""
        self._observers.append(observer)

    def publish(self, registrant: Registrant, before: RegState, time: float) -> None:
        """Tell every observer that C{registrant} left C{before} (if it is news)."""
        after = registrant.state
        if after == before and after not in FAILURE_STATES:
            return
        change = StateChange(registrant, before, after, time)
        for observer in self._observers:
            try:
                observer(change)
            except Exception:
                _log.failure("state observer {observer!r} failed", observer=observer)
