# -*- test-case-name: tests.unit.net.test_targets -*-
"""
Which of a next hop's targets to send to (RFC 3263 §4.3): the first in
DNS order that is not being avoided.  A target that timed out, or answered
503 without Retry-After, is avoided for a while (30 s, doubling with each
failure in a row, that is each failure after the previous avoidance ended,
up to 10 min); any other answer from it ends that.

Pure: it is given the time.
"""

from __future__ import annotations

from typing import Final, Generic, Hashable, Sequence, TypeVar

#: A target: C{(transport, ip, port)} in the daemon; anything hashable here.
_Target = TypeVar("_Target", bound=Hashable)

#: Seconds a target is avoided after its first failure in a row; doubles
#: with each further failure, up to L{AVOID_MAX}.
AVOID_FIRST: Final = 30.0
AVOID_MAX: Final = 600.0
#: Targets remembered at most (a registrar's failures are few; a bound all the same).
REMEMBERED_MAX: Final = 4096


class TargetHealth(Generic[_Target]):
    """Failing targets and until when each is avoided."""

    def __init__(self, avoid_first: float = AVOID_FIRST, avoid_max: float = AVOID_MAX, limit: int = REMEMBERED_MAX) -> None:
        self._avoid_first = avoid_first
        self._avoid_max = avoid_max
        self._limit = limit
        # address -> (avoided until, failures in a row)
        self._failing: dict[_Target, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._failing)

    def failed(self, address: _Target, now: float) -> float:
        """
        C{address} timed out or refused service: avoid it; return until
        when.  Failures reported while it is already avoided (every record
        that waited on the same attempt) do not lengthen the avoidance: only
        a failure after it ended counts as the next in a row.
        """
        failing = self._failing
        until, count = failing.get(address, (0.0, 0))
        if until > now:
            return until
        until = now + min(self._avoid_max, self._avoid_first * (1 << min(count, 32)))
        if address not in failing and len(failing) >= self._limit:
            self._forget_expired(now)
            if len(failing) >= self._limit:
                return now  # full of live entries: this one is not remembered
        failing[address] = (until, count + 1)
        return until

    def answered(self, address: _Target) -> None:
        """C{address} answered: it is healthy again."""
        if self._failing:
            self._failing.pop(address, None)

    def avoided(self, address: _Target, now: float) -> bool:
        """Whether C{address} is being avoided at C{now}."""
        entry = self._failing.get(address)
        return entry is not None and entry[0] > now

    def choose(self, targets: Sequence[_Target], now: float) -> _Target:
        """
        The first target not avoided; if all are, the one whose avoidance
        ends first (a hop with every target failing is still tried).
        """
        failing = self._failing
        if not failing:
            return targets[0]
        best: _Target | None = None
        best_until = float("inf")
        for target in targets:
            entry = failing.get(target)
            if entry is None or entry[0] <= now:
                return target
            if entry[0] < best_until:
                best, best_until = target, entry[0]
        assert best is not None
        return best

    def alternative(self, targets: Sequence[_Target], failed: _Target, now: float) -> _Target | None:
        """A target other than C{failed} that is not avoided, if any."""
        for target in targets:
            if target != failed and not self.avoided(target, now):
                return target
        return None

    def _forget_expired(self, now: float) -> None:
        for address in [a for a, (until, _) in self._failing.items() if until <= now]:
            del self._failing[address]
