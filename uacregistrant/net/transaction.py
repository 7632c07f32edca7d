# -*- test-case-name: tests.unit.test_transaction -*-
"""
Client non-INVITE transactions over UDP (RFC 3261 §17.1.2).

Timer E retransmits (T1 doubling up to T2; T2 once a provisional came),
Timer F ends the transaction, Timer K absorbs retransmitted responses.  A
response is matched by its top Via branch, then checked against the CSeq
and the address the request went to; anything else is counted and dropped.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import Response
from uacregistrant.core.counters import SipCounters
from uacregistrant.schedule.timers import Timer, TimerQueue

_log = Logger()

Address = tuple[str, int]


class DatagramSender(Protocol):
    """Something that sends a datagram to an address."""

    def send(self, data: bytes, dest: Address) -> None:
        """Send C{data} to C{dest}; may raise L{OSError}."""


class ClientTransaction:
    """One outstanding REGISTER transaction."""

    __slots__ = (
        "branch",
        "cseq",
        "dest",
        "data",
        "sender",
        "on_final",
        "on_timeout",
        "interval",
        "deadline",
        "timer",
    )

    def __init__(
        self,
        branch: str,
        cseq: int,
        dest: Address,
        data: bytes,
        sender: DatagramSender,
        on_final: Callable[[Response], None],
        on_timeout: Callable[[], None],
    ) -> None:
        self.branch = branch
        self.cseq = cseq
        self.dest = dest
        self.data = data
        self.sender = sender
        self.on_final = on_final
        self.on_timeout = on_timeout
        self.interval = 0.0
        self.deadline = 0.0
        self.timer: Timer | None = None


class TransactionLayer:
    """
    The table of client transactions, keyed by branch.

    One timer per transaction serves as Timer E and Timer F: it fires for
    each retransmission and, last, exactly at the Timer F deadline.
    Completed transactions are remembered for Timer K (T4) in a queue that
    is swept as new work arrives, not with a timer each.

    @param t1: RFC 3261 T1 in seconds (RTT estimate).
    """

    def __init__(
        self,
        clock: IReactorTime,
        counters: SipCounters,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        timers: TimerQueue | None = None,
    ) -> None:
        self._clock = clock
        self._timers = timers if timers is not None else TimerQueue(clock)
        self._counters = counters
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self._table: dict[str, ClientTransaction] = {}
        self._completed: dict[str, tuple[float, Address, int]] = {}
        # (expiry, branch), oldest first: a dict's head is slow to pop.
        self._expiries: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._table)

    def start(
        self,
        sender: DatagramSender,
        dest: Address,
        data: bytes,
        branch: str,
        cseq: int,
        on_final: Callable[[Response], None],
        on_timeout: Callable[[], None],
    ) -> None:
        """
        Send a request and run its timers.

        @raise OSError: if the first send fails (nothing is left running).
        """
        sender.send(data, dest)
        self._counters.requests_sent += 1
        now = self._clock.seconds()
        txn = ClientTransaction(branch, cseq, dest, data, sender, on_final, on_timeout)
        txn.interval = self.t1
        txn.deadline = now + 64 * self.t1
        txn.timer = self._timers.call_later(self.t1, self._tick, txn)
        self._table[branch] = txn
        self._sweep(now)

    def _tick(self, txn: ClientTransaction) -> None:
        now = self._clock.seconds()
        if now >= txn.deadline:
            txn.timer = None
            self._table.pop(txn.branch, None)
            self._counters.timeouts += 1
            txn.on_timeout()
            return
        try:
            txn.sender.send(txn.data, txn.dest)
            self._counters.retransmissions += 1
        except OSError as e:
            self._counters.send_errors += 1
            _log.warn("retransmission to {dest} failed: {error}", dest=txn.dest, error=str(e))
        txn.interval = min(2 * txn.interval, self.t2)
        self._schedule(txn, now)

    def _schedule(self, txn: ClientTransaction, now: float) -> None:
        txn.timer = self._timers.call_later(max(0.0, min(txn.interval, txn.deadline - now)), self._tick, txn)

    def _sweep(self, now: float) -> None:
        """Forget completed transactions older than T4 (oldest first)."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, branch = expiries.popleft()
            self._completed.pop(branch, None)

    def receive(self, response: Response, source: Address) -> None:
        """
        Deliver a response to its transaction, or count and drop it.
        """
        counters = self._counters
        try:
            branch = response.top_via.branch or ""
            number, method = response.cseq
        except SipParseError:
            counters.dropped_malformed += 1
            return
        txn = self._table.get(branch)
        if txn is None:
            done = self._completed.get(branch)
            if done is not None and done[0] > self._clock.seconds() and done[1] == (source[0], source[1]) and done[2] == number:
                counters.absorbed_retransmissions += 1
            else:
                counters.dropped_no_transaction += 1
            return
        if (source[0], source[1]) != txn.dest:
            counters.dropped_wrong_source += 1
            return
        if number != txn.cseq or method != "REGISTER":
            counters.dropped_cseq_mismatch += 1
            return
        counters.responses_accepted += 1
        if response.status < 200:
            if txn.interval < self.t2 and txn.timer is not None:
                txn.timer.cancel()
                txn.interval = self.t2
                self._schedule(txn, self._clock.seconds())
            return
        if txn.timer is not None:
            txn.timer.cancel()
        txn.timer = None
        del self._table[branch]
        now = self._clock.seconds()
        self._completed[branch] = (now + self.t4, txn.dest, txn.cseq)
        self._expiries.append((now + self.t4, branch))
        self._sweep(now)
        txn.on_final(response)

    def stop(self) -> None:
        """Cancel every timer (service shutdown)."""
        for txn in self._table.values():
            if txn.timer is not None:
                txn.timer.cancel()
        self._table.clear()
        self._completed.clear()
        self._expiries.clear()
