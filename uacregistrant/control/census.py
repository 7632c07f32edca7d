# -*- test-case-name: tests.unit.control.test_metrics -*-
"""
The census of the records: L{RecordCensus} counts them by state (and
bindings held, and per registrar host if asked) a slice per reactor turn,
as C{reg_stats} counts them, for C{/metrics} and systemd's C{STATUS}.

Nothing here serves HTTP (no twisted.web, no prometheus_client): the
daemon counts its records whether or not an HTTP endpoint is configured.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from operator import attrgetter, lt
from typing import Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from uacregistrant.core.registrant import RegState, Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.sharing import Memo
from uacregistrant.sip.uri import parse_uri_uncached

#: Records counted per reactor turn (as C{reg_stats} counts them).
CENSUS_SLICE = 20000
#: Registrar hosts named in C{uacregistrant_registrar_records}; the rest are C{other}.
MAX_REGISTRARS = 1000
#: The label of the registrars past L{MAX_REGISTRARS}.
OTHER_REGISTRARS = "other"
#: Registrar texts whose host is kept between counts (past it, parsed once per slice).
HOSTS_KEPT = 20000
_STATES = tuple(RegState)


@dataclass(frozen=True, slots=True)
class Census:
    """
    One count of the records.

    @ivar taken_at: when the count began (C{clock.seconds()}).
    @ivar states: records by state, indexed by L{RegState} value.
    @ivar bindings_held: records whose binding the registrar still holds.
    @ivar registrars: per registrar host label, records by state (empty
        unless counted per registrar).
    """

    taken_at: float
    states: tuple[int, ...]
    bindings_held: int
    registrars: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every record counted."""
        return sum(self.states)

    def by_state(self) -> dict[str, int]:
        """Records by state name, every state (as C{reg_stats} shows them)."""
        return {state.name: self.states[state] for state in _STATES}


def registrar_host(registrar: str) -> str:
    """The host of a registrar URI (lower-case, IPv6 without brackets), or L{OTHER_REGISTRARS} if it has none."""
    try:
        return parse_uri_uncached(registrar).host or OTHER_REGISTRARS
    except SipParseError:
        return OTHER_REGISTRARS


_state_of = attrgetter("state")
_until_of = attrgetter("registered_until")
_registrar_of = attrgetter("account.registrar")


class _Tally:
    """
    A census being counted, slice by slice (the loops over records run in
    C: C{map}, C{filter} and L{Counter}).

    Per registrar, records are counted by registrar text (a few texts
    serve many records), then by host, parsed once per text through
    C{hosts}; L{result} names the C{max_registrars} hosts with the most
    records and counts the rest as L{OTHER_REGISTRARS}.
    """

    def __init__(
        self, now: float, holds: Callable[[Registrant], bool] | None, hosts: Memo[str, str] | None, max_registrars: int
    ) -> None:
        self.now = now
        self.states: Counter[RegState] = Counter()
        self.held = 0
        self._holds = holds
        self._hosts = hosts
        self._max_registrars = max_registrars
        self._by_host: dict[str, list[int]] = {}

    def count(self, records: Sequence[Registrant]) -> None:
        if self._holds is not None:
            records = list(filter(self._holds, records))
        self.states.update(map(_state_of, records))
        # registered_until is never 0: filter(None, ...) keeps the bindings we asked for.
        self.held += sum(map(partial(lt, self.now), filter(None, map(_until_of, records))))
        hosts = self._hosts
        if hosts is None:
            return
        by_host = self._by_host
        for (registrar, state), n in Counter(zip(map(_registrar_of, records), map(_state_of, records))).items():
            host = hosts.get(registrar)
            if host is None:
                host = hosts.keep(registrar, registrar_host(registrar))
            row = by_host.get(host)
            if row is None:
                row = by_host[host] = [0] * len(_STATES)
            row[state] += n

    def result(self) -> Census:
        states = tuple(self.states[state] for state in _STATES)
        by_host = self._by_host
        named = heapq.nlargest(self._max_registrars, by_host, key=lambda host: (sum(by_host[host]), host))
        registrars = {host: tuple(by_host[host]) for host in named}
        rest = [row for host, row in by_host.items() if host not in registrars]
        if rest:
            other = registrars.get(OTHER_REGISTRARS, (0,) * len(_STATES))
            registrars[OTHER_REGISTRARS] = tuple(map(sum, zip(other, *rest)))
        return Census(self.now, states, self.held, registrars)


class RecordCensus:
    """
    Counts the records by state (and bindings held, and per registrar
    host if asked) a slice per reactor turn, and keeps the last count.

    A count is served again while it is younger than C{max_age} or than
    its own cost divided by C{budget}, whichever is longer: however often
    the scrapes come, counting takes at most that share of the reactor's
    time (with the defaults, a count of a million records, about 0.3 s
    of CPU, is served for a minute).

    @param holds: whether this node holds a record (a cluster node counts
        its own records only, as C{reg_stats} does); C{None}: every record.
    @param per_registrar: count per registrar host too (the
        C{max_registrars} hosts with the most records by name, the rest
        as L{OTHER_REGISTRARS}).
    @param max_age: seconds a count is served at least.
    @param budget: the share of the time counting may take.
    @param slice_size: records counted per reactor turn (half as many
        per registrar).
    @param timer: measures a count's cost (seconds).
    @ivar last: the last completed count, or C{None}.
    """

    def __init__(
        self,
        registry: Registry,
        clock: IReactorTime,
        holds: Callable[[Registrant], bool] | None = None,
        per_registrar: bool = False,
        max_registrars: int = MAX_REGISTRARS,
        max_age: float = 5.0,
        budget: float = 0.005,
        slice_size: int = CENSUS_SLICE,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._registry = registry
        self._clock = clock
        self._holds = holds
        self.per_registrar = per_registrar
        self.max_registrars = max_registrars
        self._max_age = max_age
        self._budget = budget
        # Per registrar, a record costs about twice as much to count.
        self._slice = slice_size // 2 if per_registrar else slice_size
        self._timer = timer
        #: Registrar texts to their hosts (pure memoization, bounded).
        self._hosts: Memo[str, str] = Memo(HOSTS_KEPT)
        self.last: Census | None = None
        #: Seconds the last count is served for.
        self.fresh_for = max_age
        #: Whoever waits for the count under way (C{None}: none under way).
        self._waiting: list[defer.Deferred[Census]] | None = None

    def current(self) -> defer.Deferred[Census]:
        """A fresh enough count: the last one, or a new one (shared by every caller meanwhile)."""
        last = self.last
        if last is not None and self._clock.seconds() - last.taken_at < self.fresh_for:
            return defer.succeed(last)
        waiter: defer.Deferred[Census] = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
        else:
            self._waiting = [waiter]
            self._step(_Pass(_Tally(self._clock.seconds(), self._holds, self._hosts if self.per_registrar else None, self.max_registrars)))
        return waiter

    def _step(self, run: _Pass) -> None:
        """Count one slice (bucket by bucket: no turn copies more than one bucket); the next on a later turn."""
        registry = self._registry
        started = self._timer()
        room = self._slice
        try:
            while room > 0:
                if run.offset >= len(run.records):
                    if run.bucket >= registry.bucket_count:
                        census = run.tally.result()
                        run.spent += self._timer() - started
                        self._done(census, run.spent)
                        return
                    run.records = registry.bucket(run.bucket)
                    run.bucket += 1
                    run.offset = 0
                    continue
                chunk = run.records[run.offset : run.offset + room]
                run.tally.count(chunk)
                run.offset += len(chunk)
                room -= len(chunk)
        except Exception:
            self._failed(Failure())
            return
        run.spent += self._timer() - started
        self._clock.callLater(0, self._step, run)

    def _done(self, census: Census, spent: float) -> None:
        self.last = census
        self.fresh_for = max(self._max_age, spent / self._budget)
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.callback(census)

    def _failed(self, failure: Failure) -> None:
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.errback(failure)


class _Pass:
    """Where a count under way has got to."""

    __slots__ = ("tally", "bucket", "offset", "records", "spent")

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.bucket = 0
        self.offset = 0
        self.records: list[Registrant] = []
        self.spent = 0.0
