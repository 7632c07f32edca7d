# -*- test-case-name: tests.unit.net.test_transaction_layer,tests.unit.control.test_metrics -*-
"""
The client transactions on the reactor: L{TransactionLayer} sends what the
pure L{NonInviteClientTransactions} asks for, hands final responses and
timeouts to the transaction user's callbacks, and keeps one timer in the
shared L{TimerQueue} at the table's next deadline.
"""

from __future__ import annotations

from typing import Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from uacregistrant.core.counters import SipCounters
from uacregistrant.net.transaction import Address, NonInviteClientTransactions, Transmit
from uacregistrant.schedule.timers import Timer, TimerQueue
from uacregistrant.sip.message import Response

__all__ = ["Address", "DatagramSender", "TransactionLayer"]

_log = Logger(namespace=__name__)


class DatagramSender(Protocol):
    """Something that sends a datagram to an address."""

    def send(self, data: bytes, dest: Address) -> None:
        """Send C{data} to C{dest}; may raise L{OSError}."""


#: A transaction's owner: who (re)transmits it, who gets its final
#: response, who hears that it ended without one (C{None}: Timer F; else
#: why its connection failed).
_Owner = tuple[DatagramSender, Callable[[Response], None], Callable[[str | None], None]]


class TransactionLayer:
    """
    The client transactions of every socket, on the reactor's time: one
    timer, at the earliest deadline of them all.

    @param timers: the shared timer queue (if not given, a private one,
        which L{stop} stops).
    @param t1: RFC 3261 T1 in seconds (RTT estimate); see
        L{NonInviteClientTransactions} for C{t2} and C{t4}.
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
        self._own_timers = timers is None
        self._timers = TimerQueue(clock) if timers is None else timers
        self._counters = counters
        self._table: NonInviteClientTransactions[_Owner] = NonInviteClientTransactions(counters, t1, t2, t4)
        self._wake: Timer | None = None
        self._wake_at = float("inf")

    @property
    def t1(self) -> float:
        """RFC 3261 T1 in seconds."""
        return self._table.t1

    @t1.setter
    def t1(self, value: float) -> None:
        self._table.t1 = value

    @property
    def t2(self) -> float:
        """RFC 3261 T2 in seconds."""
        return self._table.t2

    @t2.setter
    def t2(self, value: float) -> None:
        self._table.t2 = value

    @property
    def t4(self) -> float:
        """RFC 3261 T4 in seconds (Timer K)."""
        return self._table.t4

    @t4.setter
    def t4(self, value: float) -> None:
        self._table.t4 = value

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
        on_timeout: Callable[[str | None], None],
        reliable: bool = False,
    ) -> None:
        """
        Send a request and run its timers.

        @param branch: the request's top Via branch, unique among those in
            progress (L{ValueError} otherwise).
        @param on_timeout: called with C{None} at Timer F, or with the
            reason when L{abort} ends the transaction.
        @param reliable: C{sender} is a stream: no retransmissions, no Timer K.
        @raise OSError: if the first send fails; nothing is left running
            (whatever the first send raises).
        """
        table = self._table
        transmit = table.start(self._clock.seconds(), branch, dest, data, cseq, (sender, on_final, on_timeout), reliable, sender)
        try:
            sender.send(transmit.data, transmit.dest)
        except BaseException:
            table.cancel(branch)
            raise
        self._counters.requests_sent += 1
        self._arm()

    def receive(self, response: Response, source: Address, via: DatagramSender | None = None) -> None:
        """
        Deliver a response to its transaction, or count and drop it.

        @param via: the socket or connection it came over (the request's own, or it is dropped).
        """
        delivery = self._table.receive(response, source, self._clock.seconds(), via)
        if delivery is not None:
            if self._wake is None:
                self._arm()
            # Otherwise the pending wake-up, due no later than the
            # transaction's next retransmission, re-arms for its Timer K.
            delivery.user[1](response)

    def abort(self, sender: DatagramSender, reason: str) -> int:
        """
        End at once every transaction sent through C{sender} (a stream that
        broke): each owner hears C{reason}; returns how many ended.
        """
        ended = self._table.abort(lambda txn: txn.user[0] is sender, self._clock.seconds())
        for action in ended:
            try:
                action.user[2](reason)
            except Exception:
                _log.failure("handling an aborted transaction failed")
        return len(ended)

    def stop(self) -> None:
        """Cancel the timer and forget every transaction (service shutdown)."""
        if self._wake is not None:
            self._wake.cancel()
        if self._own_timers:
            self._timers.stop()
        self._wake = None
        self._wake_at = float("inf")
        self._table.clear()

    def sweep(self) -> None:
        """Forget now the completed transactions past Timer K (else done as new work arrives)."""
        self._table.sweep(self._clock.seconds())

    def _arm(self) -> None:
        """Wake at the table's next deadline if that is earlier than the wake-up set."""
        when = self._table.next_deadline()
        if when is not None and when < self._wake_at:
            if self._wake is not None:
                self._wake.cancel()
            self._wake_at = when
            self._wake = self._timers.call_at(when, self._on_wake, None)

    def _on_wake(self, _: object) -> None:
        """Carry out what is due; one failing callback does not stop the others."""
        self._wake = None
        self._wake_at = float("inf")
        counters = self._counters
        for action in self._table.on_timer(self._clock.seconds()):
            try:
                if isinstance(action, Transmit):
                    try:
                        action.user[0].send(action.data, action.dest)
                        counters.retransmissions += 1
                    except OSError as e:
                        counters.send_errors += 1
                        _log.warn("retransmission to {dest} failed: {error}", dest=action.dest, error=str(e))
                else:
                    action.user[2](None)
            except Exception:
                what = "retransmission" if isinstance(action, Transmit) else "timeout"
                _log.failure("handling a transaction {what} failed", what=what)
        self._arm()
