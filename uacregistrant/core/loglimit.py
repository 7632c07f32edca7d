# -*- test-case-name: tests.unit.core.test_loglimit -*-
"""
At most one log line per key (a peer's address, a kind of failure) per
interval, so that garbage arriving 50,000 times a second writes a line a
minute, not 50,000.
"""

from __future__ import annotations

from typing import Generic, Hashable, TypeVar

_K = TypeVar("_K", bound=Hashable)


class LogLimit(Generic[_K]):
    """
    Says whether a line about C{key} may be written now, and how many were
    held back since the last one.

    Bounded: past C{max_keys} keys seen within one interval, lines about
    new keys are held back (and counted under no key).
    """

    def __init__(self, interval: float = 60.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self._max_keys = max_keys
        self._last: dict[_K, float] = {}
        self._held: dict[_K, int] = {}
        #: Lines held back because too many keys were active.
        self.overflow = 0

    def allow(self, key: _K, now: float) -> int | None:
        """
        C{None} if a line about C{key} must be held back now; otherwise how
        many lines about it were held back since the last one (0 or more).
        """
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= self._max_keys:
            self._prune(now)
            if len(self._last) >= self._max_keys:
                self.overflow += 1
                return None
        # Re-inserted at the end: the dict stays in time order, oldest first.
        self._last.pop(key, None)
        self._last[key] = now
        return self._held.pop(key, 0)

    def _prune(self, now: float) -> None:
        """Drop expired keys from the front (oldest first): O(1) per key dropped."""
        expired = []
        for key, last in self._last.items():
            if now - last < self.interval:
                break
            expired.append(key)
        for key in expired:
            del self._last[key]
            self._held.pop(key, None)
