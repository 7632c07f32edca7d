# -*- test-case-name: tests.unit.test_transaction -*-
"""
Client non-INVITE transactions over UDP (RFC 3261 §17.1.2).

Timer E retransmits (T1 doubling up to T2; T2 once a provisional came),
Timer F ends the transaction, Timer K absorbs retransmitted responses.  A
response is matched by its top Via branch, then checked against the CSeq
and the address the request went to; anything else is counted and dropped.
"""

from __future__ import annotations

from typing import Callable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .sip.errors import SipParseError
from .sip.message import Response
from .stats import SipCounters

_log = Logger()

Address = tuple[str, int]


class DatagramSender(Protocol):
    """Something that sends a datagram to an address."""

    def send(self, data: bytes, dest: Address) -> None:
        """Send C{data} to C{dest}; may raise L{OSError}."""


class ClientTransaction:
    """One outstanding (or just completed) REGISTER transaction."""

    __slots__ = (
        "branch",
        "cseq",
        "dest",
        "data",
        "sender",
        "on_final",
        "on_timeout",
        "interval",
        "timer_e",
        "timer_f",
        "completed",
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
        self.timer_e: IDelayedCall | None = None
        self.timer_f: IDelayedCall | None = None
        self.completed = False


class TransactionLayer:
    """
    The table of client transactions, keyed by branch.

    @param t1: RFC 3261 T1 in seconds (RTT estimate).
    """

    def __init__(
        self,
        clock: IReactorTime,
        counters: SipCounters,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
    ) -> None:
        self._clock = clock
        self._counters = counters
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self._table: dict[str, ClientTransaction] = {}

    def __len__(self) -> int:
        return sum(1 for t in self._table.values() if not t.completed)

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
        txn = ClientTransaction(branch, cseq, dest, data, sender, on_final, on_timeout)
        txn.interval = self.t1
        txn.timer_e = self._clock.callLater(self.t1, self._retransmit, txn)
        txn.timer_f = self._clock.callLater(64 * self.t1, self._timeout, txn)
        self._table[branch] = txn

    def _retransmit(self, txn: ClientTransaction) -> None:
        try:
            txn.sender.send(txn.data, txn.dest)
            self._counters.retransmissions += 1
        except OSError as e:
            self._counters.send_errors += 1
            _log.warn("retransmission to {dest} failed: {error}", dest=txn.dest, error=str(e))
        txn.interval = min(2 * txn.interval, self.t2)
        txn.timer_e = self._clock.callLater(txn.interval, self._retransmit, txn)

    def _timeout(self, txn: ClientTransaction) -> None:
        txn.timer_f = None
        self._cancel_e(txn)
        self._table.pop(txn.branch, None)
        self._counters.timeouts += 1
        txn.on_timeout()

    @staticmethod
    def _cancel_e(txn: ClientTransaction) -> None:
        if txn.timer_e is not None and txn.timer_e.active():
            txn.timer_e.cancel()
        txn.timer_e = None

    def receive(self, response: Response, source: Address) -> None:
        """
        Deliver a response to its transaction, or count and drop it.
        """
        counters = self._counters
        try:
            branch = response.top_via.branch
            number, method = response.cseq
        except SipParseError:
            counters.dropped_malformed += 1
            return
        txn = self._table.get(branch or "")
        if txn is None:
            counters.dropped_no_transaction += 1
            return
        if (source[0], source[1]) != txn.dest:
            counters.dropped_wrong_source += 1
            return
        if number != txn.cseq or method != "REGISTER":
            counters.dropped_cseq_mismatch += 1
            return
        if txn.completed:
            counters.absorbed_retransmissions += 1
            return
        counters.responses_accepted += 1
        if response.status < 200:
            if txn.timer_e is not None and txn.interval < self.t2:
                self._cancel_e(txn)
                txn.interval = self.t2
                txn.timer_e = self._clock.callLater(self.t2, self._retransmit, txn)
            return
        self._cancel_e(txn)
        if txn.timer_f is not None and txn.timer_f.active():
            txn.timer_f.cancel()
        txn.completed = True
        txn.timer_f = self._clock.callLater(self.t4, self._table.pop, txn.branch, None)
        txn.on_final(response)

    def stop(self) -> None:
        """Cancel every timer (service shutdown)."""
        for txn in self._table.values():
            self._cancel_e(txn)
            if txn.timer_f is not None and txn.timer_f.active():
                txn.timer_f.cancel()
        self._table.clear()
