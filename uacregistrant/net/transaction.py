# -*- test-case-name: tests.unit.net.test_transaction -*-
"""
Client non-INVITE transactions (RFC 3261 §17.1.2), without I/O.

L{NonInviteClientTransactions} is given the time and what happened, and
answers with actions for its caller to carry out: L{Transmit} a request,
L{Deliver} a final response, report that a transaction L{TimedOut}.  It
never sends, never reads a clock and never calls back; the Twisted edge is
L{uacregistrant.net.transaction_layer.TransactionLayer}.

Timer E retransmits (T1 doubling up to T2; T2 once a provisional came),
Timer F ends the transaction at 64*T1, Timer K (T4) absorbs retransmitted
responses.  Over a reliable transport there is no Timer E and Timer K is
zero (§17.1.2.2).  A response is matched by its top Via branch, then
checked against the CSeq and the address the request went to; anything
else is counted and dropped.
"""

from __future__ import annotations

import itertools
from collections import deque
from heapq import heapify, heappop, heappush
from typing import Any, Callable, Final, Generic, TypeVar, Union

from uacregistrant.core.counters import SipCounters
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import Response

Address = tuple[str, int]

#: What the caller attaches to a transaction to route its outcome (the
#: machine only hands it back).
_User = TypeVar("_User")

#: Cancelled heap entries tolerated before the heap is rebuilt without them
#: (and only once they are half of it).
_COMPACT_AFTER: Final = 256


class _Action:
    """Equality and a repr from the slots, for tests and logs."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Transmit(_Action, Generic[_User]):
    """
    Send C{data} to C{dest} (read-only).

    @ivar retransmission: false for the first send, true when Timer E fired.
    """

    __slots__ = ("data", "dest", "user", "retransmission")

    def __init__(self, data: bytes, dest: Address, user: _User, retransmission: bool) -> None:
        self.data = data
        self.dest = dest
        self.user = user
        self.retransmission = retransmission


class Deliver(_Action, Generic[_User]):
    """Hand the final C{response} to the transaction's C{user} (read-only); the transaction is complete."""

    __slots__ = ("user", "response")

    def __init__(self, user: _User, response: Response) -> None:
        self.user = user
        self.response = response


class TimedOut(_Action, Generic[_User]):
    """The transaction of C{user} ended without a final response: Timer F, or its stream broke (read-only)."""

    __slots__ = ("user",)

    def __init__(self, user: _User) -> None:
        self.user = user


#: What L{NonInviteClientTransactions.on_timer} returns.
TimerAction = Union[Transmit[_User], TimedOut[_User]]


class ClientTransaction(Generic[_User]):
    """
    One REGISTER transaction; callers read C{key}, C{dest}, C{cseq},
    C{user} and C{reliable} (e.g. to choose what to L{abort
    <NonInviteClientTransactions.abort>}) and change nothing.

    @ivar interval: the current Timer E interval.
    @ivar timeout_at: when Timer F fires.
    @ivar entry: the sequence number of the transaction's live heap entry
        (0: none, the transaction is over or its entry was popped).
    @ivar resend: the L{Transmit} of every retransmission, made at the
        first (actions are read-only, so one serves them all, and a batch
        of retransmissions allocates nothing).
    """

    __slots__ = ("key", "dest", "data", "cseq", "user", "reliable", "interval", "timeout_at", "entry", "resend", "origin")

    def __init__(
        self, key: str, dest: Any, data: bytes, cseq: int, user: _User, reliable: bool, interval: float, timeout_at: float, origin: object
    ) -> None:
        self.key = key
        self.dest = dest
        self.data = data
        self.cseq = cseq
        self.user = user
        self.reliable = reliable
        self.interval = interval
        self.timeout_at = timeout_at
        self.entry = 0
        self.resend: Transmit[_User] | None = None
        self.origin = origin


#: A completed transaction in Timer K: C{(forget_at, dest, cseq, key)}.  Only
#: this is kept, not the transaction and what its user holds (some 700
#: bytes more each, for T4, through a burst of thousands of completions).
_Completed = tuple[float, Address, int, str]


class NonInviteClientTransactions(Generic[_User]):
    """
    The client transactions in progress, keyed by top Via branch, and the
    completed ones still in Timer K.

    Requests are REGISTERs (a response for another method is a CSeq
    mismatch).  Time is whatever the caller passes as C{now} (seconds,
    never going back).  Call L{on_timer} once the time reaches L{next_deadline}, and
    ask L{next_deadline} again after every call that may have moved it
    earlier (L{start}, a L{receive} that returned L{Deliver}, L{on_timer}).

    Each transaction has one entry in a heap of C{(time, sequence,
    transaction)}: its next retransmission, or its Timer F.  Entries are
    cancelled lazily (a transaction knows the sequence number of its live
    entry); the heap is rebuilt once cancelled entries make half of it.
    Timer K expiries come in the order they were set, so they are a queue.

    @param t1: RFC 3261 T1 in seconds (RTT estimate); Timer F is 64*T1.
    @param t2: the longest retransmission interval.
    @param t4: how long a completed transaction absorbs retransmitted
        responses (Timer K, unreliable transports only).
    """

    def __init__(self, counters: SipCounters, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0) -> None:
        self._counters = counters
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self._live: dict[str, ClientTransaction[_User]] = {}
        self._completed: dict[str, _Completed] = {}
        self._forgetting: deque[_Completed] = deque()
        self._heap: list[tuple[float, int, ClientTransaction[_User]]] = []
        self._cancelled = 0
        self._sequence = itertools.count(1).__next__

    def __len__(self) -> int:
        """Transactions in progress (not the completed ones in Timer K)."""
        return len(self._live)

    def start(
        self, now: float, key: str, dest: Any, data: bytes, cseq: int, user: _User, reliable: bool = False, origin: object = None
    ) -> Transmit[_User]:
        """
        Open a transaction for the request C{data}; the answer is the one
        action to take, sending it.  If that send fails, L{cancel} it.

        @param key: the request's top Via branch.
        @param user: handed back in the transaction's actions.
        @param reliable: sent over a stream (no retransmissions, no Timer K).
        @param origin: the socket or connection it goes over: its response
            must come back over the same (see L{receive}).
        @raise ValueError: if C{key} is already in progress.
        """
        live = self._live
        if key in live:
            raise ValueError(f"transaction {key!r} already in progress")
        t1 = self.t1
        timeout_at = now + 64 * t1
        live[key] = txn = ClientTransaction(key, dest, data, cseq, user, reliable, t1, timeout_at, origin)
        entry = txn.entry = self._sequence()
        heappush(self._heap, (timeout_at if reliable else now + t1, entry, txn))
        return Transmit(data, dest, user, False)

    def cancel(self, key: str) -> None:
        """Drop the transaction C{key} without an outcome (its first send failed)."""
        txn = self._live.pop(key, None)
        if txn is not None:
            self._unschedule(txn)

    def receive(self, response: Response, source: Address, now: float, origin: object = None) -> Deliver[_User] | None:
        """
        Match a response to its transaction: a final one completes it, a
        provisional one slows Timer E to T2; anything else is counted in
        L{SipCounters} and dropped (C{None}).

        @param origin: the socket or connection it came over; a response
            for a transaction sent over another is dropped (a datagram
            cannot answer what went over TLS).
        """
        counters = self._counters
        try:
            key = response.top_via.branch or ""
            number, method = response.cseq
        except SipParseError:
            counters.dropped_malformed += 1
            return None
        source = (source[0], source[1])
        txn = self._live.get(key)
        if txn is None:
            done = self._completed.get(key)
            if done is not None and done[0] > now and done[1] == source and done[2] == number:
                counters.absorbed_retransmissions += 1
            else:
                counters.dropped_no_transaction += 1
            return None
        if source != txn.dest or (origin is not None and txn.origin is not None and origin is not txn.origin):
            counters.dropped_wrong_source += 1
            return None
        if number != txn.cseq or method != "REGISTER":
            counters.dropped_cseq_mismatch += 1
            return None
        counters.responses_accepted += 1
        counters.count_response_class(response.status)
        if response.status < 200:
            t2 = self.t2
            if txn.interval < t2 and not txn.reliable:
                txn.interval = t2
                self._unschedule(txn)
                entry = txn.entry = self._sequence()
                heappush(self._heap, (min(now + t2, txn.timeout_at), entry, txn))
            return None
        del self._live[key]
        self._unschedule(txn)
        if not txn.reliable:
            # One tuple in both places: compiled (mypyc), a variable of the
            # tuple's own type would be boxed anew for each (twice the memory
            # for every transaction until Timer K).
            completed: Any = (now + self.t4, txn.dest, txn.cseq, key)
            self._completed[key] = completed
            self._forgetting.append(completed)
        return Deliver(txn.user, response)

    def on_timer(self, now: float) -> list[TimerAction[_User]]:
        """
        What is due at C{now}: retransmissions (Timer E) and timeouts
        (Timer F), in deadline order; completed transactions past Timer K
        are forgotten.
        """
        actions: list[TimerAction[_User]] = []
        append = actions.append
        heap = self._heap
        t2 = self.t2
        sequence = self._sequence
        while heap and heap[0][0] <= now:
            _, entry, txn = heappop(heap)
            if txn.entry != entry:
                self._cancelled -= 1
                continue
            timeout_at = txn.timeout_at
            if now >= timeout_at:
                txn.entry = 0
                del self._live[txn.key]
                self._counters.timeouts += 1
                append(TimedOut(txn.user))
                continue
            resend = txn.resend
            if resend is None:
                resend = txn.resend = Transmit(txn.data, txn.dest, txn.user, True)
            append(resend)
            interval = 2 * txn.interval
            if interval > t2:
                interval = t2
            txn.interval = interval
            when = now + interval
            entry = txn.entry = sequence()
            heappush(heap, (when if when < timeout_at else timeout_at, entry, txn))
        if self._forgetting:
            self.sweep(now)
        return actions

    def next_deadline(self) -> float | None:
        """When L{on_timer} next has something to do (C{None}: nothing pending)."""
        heap = self._heap
        while heap and heap[0][2].entry != heap[0][1]:
            heappop(heap)
            self._cancelled -= 1
        if heap:
            if self._forgetting:
                return min(heap[0][0], self._forgetting[0][0])
            return heap[0][0]
        if self._forgetting:
            return self._forgetting[0][0]
        return None

    def abort(self, which: Callable[[ClientTransaction[_User]], bool], now: float) -> list[TimedOut[_User]]:
        """
        End, as timed out, every transaction in progress that C{which}
        picks, e.g. C{lambda t: t.reliable and t.dest == peer} when the
        stream to C{peer} broke.
        """
        doomed = [txn for txn in self._live.values() if which(txn)]
        for txn in doomed:
            del self._live[txn.key]
            self._unschedule(txn)
        # Not counted as timeouts: the stream's loss is counted where it broke.
        self.sweep(now)
        return [TimedOut(txn.user) for txn in doomed]

    def sweep(self, now: float) -> None:
        """Forget completed transactions whose Timer K has run out at C{now}."""
        forgetting = self._forgetting
        completed = self._completed
        while forgetting and forgetting[0][0] <= now:
            done = forgetting.popleft()
            # Equal, not identical: compiled (mypyc), a tuple is boxed anew
            # where it is stored, and identity never holds.  A newer
            # completion of the same branch differs in its deadline.
            if completed.get(done[3]) == done:
                del completed[done[3]]
        if not completed and not forgetting:
            self._completed = {}

    def clear(self) -> None:
        """Forget everything, without outcomes (shutdown)."""
        for txn in self._live.values():
            txn.entry = 0
        self._live.clear()
        self._completed.clear()
        self._forgetting.clear()
        self._heap.clear()
        self._cancelled = 0

    def _unschedule(self, txn: ClientTransaction[_User]) -> None:
        """Cancel the transaction's heap entry, if it has one."""
        if not txn.entry:
            return
        txn.entry = 0
        self._cancelled += 1
        if self._cancelled > _COMPACT_AFTER and 2 * self._cancelled > len(self._heap):
            self._heap[:] = [item for item in self._heap if item[2].entry == item[1]]
            heapify(self._heap)
            self._cancelled = 0
