# -*- test-case-name: tests.unit.sip.test_sharing,tests.unit.core.test_account,tests.unit.sip.test_digest -*-
"""
Bounded tables one service keeps: values many records repeat (realms,
status lines, granted expiries), kept once, and results worth not
computing twice (parsed URIs, header and parameter names).

Nothing here is process-wide: each table belongs to whoever made it (one
L{SharedTables} per service), so two services in one process (tests,
several cluster nodes in one test) share nothing by accident, and one
filling a table to its limit never stops another from using its own.

Two kinds of table, both bounded by a documented limit, both keeping
what they hold first (no eviction: nothing to churn, nothing to tune):

  - B{Semantic interning} (L{SharedValues}): equal values become one
    object, so 100,000 records hold one copy each instead of 100,000.
    Past the limit values are returned as they are: more memory, the
    same answers.
  - B{Pure memoization} (L{Memo}, L{Names}): results of a pure function
    by argument.  Past the limit results are computed each time: more
    time, the same answers.  (The URI memo also shares: accounts whose
    next hop parsed from the memo hold one L{SipUri} between them.)

Standard library only: the modules that use these tables (C{uri},
C{message}, C{digest}, C{core.account}, the resolver, the listing's
formatting) import this one, never the reverse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Generic, Hashable, TypeVar

if TYPE_CHECKING:  # for the annotations only: uri.py and digest.py import this module
    from uacregistrant.sip.digest import ChallengeLayout, ChallengeTemplate
    from uacregistrant.sip.uri import SipUri

_V = TypeVar("_V", bound=Hashable)
_K = TypeVar("_K", bound=Hashable)
_R = TypeVar("_R")


class SharedValues(Generic[_V]):
    """
    Hands out the first object seen for each equal value (semantic
    interning).

    Bounded: values from the network (a registrar inventing realms or
    reasons) cannot grow it without end; past C{limit} distinct values,
    new ones are returned as they are.
    """

    __slots__ = ("_values", "_limit")

    def __init__(self, limit: int = 4096) -> None:
        self._values: dict[_V, _V] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    @property
    def limit(self) -> int:
        """The most distinct values kept."""
        return self._limit

    def share(self, value: _V) -> _V:
        """The kept object equal to C{value} (C{value} itself the first time)."""
        kept = self._values.get(value)
        if kept is None:
            if len(self._values) >= self._limit:
                return value
            self._values[value] = kept = value
        return kept


class Memo(Generic[_K, _R]):
    """
    Results of one pure function by argument (pure memoization), bounded:
    past C{limit} arguments, new results are not kept.

    The function is the caller's (see L{uacregistrant.sip.uri.parse_uri}):
    C{get} then, on a miss, C{keep} the computed result.
    """

    __slots__ = ("_results", "_limit")

    def __init__(self, limit: int = 8192) -> None:
        self._results: dict[_K, _R] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._results)

    def __contains__(self, key: object) -> bool:
        return key in self._results

    @property
    def limit(self) -> int:
        """The most results kept."""
        return self._limit

    def get(self, key: _K) -> _R | None:
        """The kept result for C{key}, or C{None}."""
        return self._results.get(key)

    def keep(self, key: _K, result: _R) -> _R:
        """Keep C{result} for C{key} if there is room; return it."""
        if len(self._results) < self._limit:
            self._results[key] = result
        return result


class Names:
    """
    Raw header and parameter name spellings already validated, mapped to
    their canonical (lower-case, long) form (pure memoization for
    L{uacregistrant.sip.message}): a spelling seen before is looked up
    instead of matched again.

    The parser reads C{headers} and C{params} directly (they are its hot
    path) and adds to them only through L{remember}, which bounds them:
    at most C{limit} spellings each, none longer than L{LENGTH_MAX}
    characters (a name padded with 60,000 spaces must not pin 60 KB).
    """

    __slots__ = ("headers", "params", "_limit")

    #: The longest spelling remembered.
    LENGTH_MAX: Final = 32

    def __init__(self, limit: int = 1024) -> None:
        self.headers: dict[str, str] = {}
        self.params: dict[str, str] = {}
        self._limit = limit

    @property
    def limit(self) -> int:
        """The most spellings kept in each table."""
        return self._limit

    def remember(self, table: dict[str, str], raw: str, name: str) -> None:
        """Keep C{raw} → C{name} in C{table} (C{headers} or C{params}) if it is short and there is room."""
        if len(raw) <= self.LENGTH_MAX and len(table) < self._limit:
            table[raw] = name


class SharedTables:
    """
    One service's bounded tables; make one per service and hand it to
    what parses and keeps values (table sync, challenge parsing, the
    registrant's replies and expiries, the transports' parser).

    Semantic interning (L{SharedValues}):
      - C{text}: digest challenge schemes, parameter names and repeated
        values (realm, qop, algorithm), of which every kept challenge
        would otherwise hold its own copy; 4096 values, each at most 256
        characters (see L{uacregistrant.sip.digest.parse_challenges}).
      - C{replies}: C{(status, reason)} pairs of last replies (reasons
        at most 128 characters); 4096.
      - C{expiries}: configured and granted expiries (ints past 256 are
        an object each); 4096.
      - C{layouts}: kept challenges' layouts (scheme, realm, qop,
        algorithm...: all but the nonce and opaque, see
        L{uacregistrant.sip.digest.ChallengeLayout}), one per registrar
        as a rule; 1024, none of a challenge over the registrant's
        C{KEEP_CHALLENGE_MAX} characters.

    Pure memoization:
      - C{uris}: parsed registrar, proxy and third-party URIs by text,
        for L{uacregistrant.sip.uri.parse_uri}; 8192.  Accounts whose
        next hop came from it share one L{SipUri}.
      - C{names}: header and parameter names in unusual spellings
        (L{Names}; the usual ones are constants of
        L{uacregistrant.sip.message}); 1024 each.
      - C{challenges}: parsed challenge headers by their text without the
        nonce (L{uacregistrant.sip.digest.parse_challenges}: a registrar's
        401s differ only there); 1024, each a header of one challenge of at
        most 1024 characters and 16 parameters (a few KB each).  Kept
        first come, like every table here: a registrar sending ever new
        headers uses them up, which costs the others speed, never answers.
    """

    __slots__ = ("text", "replies", "expiries", "layouts", "uris", "names", "challenges")

    def __init__(
        self,
        *,
        text_limit: int = 4096,
        replies_limit: int = 4096,
        expiries_limit: int = 4096,
        layouts_limit: int = 1024,
        uris_limit: int = 8192,
        names_limit: int = 1024,
        challenges_limit: int = 1024,
    ) -> None:
        self.text: SharedValues[str] = SharedValues(text_limit)
        self.replies: SharedValues[tuple[int, str]] = SharedValues(replies_limit)
        self.expiries: SharedValues[int] = SharedValues(expiries_limit)
        self.layouts: SharedValues[ChallengeLayout] = SharedValues(layouts_limit)
        self.uris: Memo[str, SipUri] = Memo(uris_limit)
        self.names = Names(names_limit)
        self.challenges: Memo[str, ChallengeTemplate] = Memo(challenges_limit)
