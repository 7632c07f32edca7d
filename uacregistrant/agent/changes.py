# -*- test-case-name: tests.unit.agent.test_changes,tests.unit.agent.test_client,tests.unit.control.test_control -*-
"""State changes and the observers that hear of them (the state log, the console's followers)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Protocol, runtime_checkable

from twisted.logger import Logger

from uacregistrant.core.registrant import FAILURE_STATES, RegState, Registrant

_log = Logger(namespace=__name__)


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


@runtime_checkable
class QuietObserver(Protocol):
    """
    An observer that can say it has no use, for now, for a change into a
    healthy state (the state log while nothing fails, the event hub while
    no one watches): the common change then costs one look at each.
    """

    @property
    def quiet(self) -> bool:
        """True while changes into healthy states are of no interest."""

    def __call__(self, change: StateChange) -> None: ...


class StateChanges:
    """
    Fans each state change out to its observers.  A failure again counts
    as a change (a retry failing differently is news to the state log); an
    unchanged healthy state does not.  A change into a healthy state that
    every observer is L{quiet <QuietObserver>} about is not made at all.
    """

    def __init__(self, observers: list[Callable[[StateChange], None]] | None = None) -> None:
        self._observers: list[Callable[[StateChange], None]] = []
        self._quiet: list[QuietObserver] = []
        #: Observers that always want healthy changes (plain callables).
        self._eager = 0
        for observer in observers or ():
            self.observe(observer)

    def observe(self, observer: Callable[[StateChange], None]) -> None:
        """Call C{observer} with every later change (that it is not L{quiet <QuietObserver>} about)."""
        self._observers.append(observer)
        if isinstance(observer, QuietObserver):
            self._quiet.append(observer)
        else:
            self._eager += 1

    def publish(self, registrant: Registrant, before: RegState, time: float) -> None:
        """Tell every observer that C{registrant} left C{before} (if it is news)."""
        after = registrant.state
        if after not in FAILURE_STATES:
            if after == before:
                return
            if not self._eager:
                for quiet in self._quiet:
                    if not quiet.quiet:
                        break
                else:
                    return  # healthy, and no one listening for that
        change = StateChange(registrant, before, after, time)
        for observer in self._observers:
            try:
                observer(change)
            except Exception:
                _log.failure("state observer {observer!r} failed", observer=observer)
