# -*- test-case-name: tests.unit.test_sharing -*-
"""
One object for values many records repeat (realms, status lines, granted
expiries), so 100,000 records hold one copy each instead of 100,000.
"""

from __future__ import annotations

from typing import Generic, Hashable, TypeVar

_V = TypeVar("_V", bound=Hashable)


class SharedValues(Generic[_V]):
    """
    Hands out the first object seen for each equal value.

    Bounded: values from the network (a registrar inventing realms or
    reasons) cannot grow it without end; past C{limit} distinct values,
    new ones are returned as they are.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._values: dict[_V, _V] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._values)

    def share(self, value: _V) -> _V:
        """The kept object equal to C{value} (C{value} itself the first time)."""
        kept = self._values.get(value)
        if kept is None:
            if len(self._values) >= self._limit:
                return value
            self._values[value] = kept = value
        return kept
