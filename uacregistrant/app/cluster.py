# -*- test-case-name: tests.unit.app.test_cluster_node,tests.integration.test_cluster -*-
"""
A node of a cluster, as the rest of the daemon sees it: which records may
send from here (L{ClusterNode.eligible}), and taking records over.

Every node loads the whole table; a record sends only from the node that
holds its slot, while that node's lease is safe (L{ClusterMember}), and
only with CSeq numbers reserved for it in the database: a take-over
continues the record's Call-ID above every CSeq another node may have
used, so the registrar sees a refresh of the same binding.  Records of
slots taken over are refreshed at once (paced as every request is);
records of slots given up stop at once and are not un-registered.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from uacregistrant.app.membership import ClusterMember
from uacregistrant.core.registrant import Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.store.coordinator import CoordinatorError, ICoordinator, Member, RecordKey, slot_of

_log = Logger(namespace=__name__)

#: CSeq numbers reserved per record at a time (a record uses about two
#: per refresh: some weeks of refreshes between two database writes).
BLOCK = 1000
#: A record needs this many numbers left to start an attempt (its
#: follow-ups: challenges, 423s; six at most).
MARGIN = 8
#: Records reserved per database call.
RESERVE_BATCH = 2000


def record_key(registrant: Registrant) -> RecordKey:
    """The record's key in the cluster tables."""
    account = registrant.account
    return (account.aor, account.binding_uri, account.registrar)


class ClusterNode(Service):
    """
    This node's part of the cluster.

    @param wake: called with a record that may send now (the scheduler
        looks at it again).
    """

    def __init__(
        self,
        coordinator: ICoordinator,
        registry: Registry,
        clock: IReactorTime,
        name: str,
        listen: str,
        lease: float,
        wake: Callable[[Registrant], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self._registry = registry
        self._clock = clock
        self._wake = wake
        self.member = ClusterMember(
            coordinator, clock, name, listen, lease,
            on_claimed=self._claimed, on_released=self._released, on_fence=self._fence,
            records=lambda: len(self._limits), monotonic=monotonic,
        )
        #: Slots whose records may send (held, and reserved).
        self.active: set[int] = set()
        # The last CSeq each record may use, by record.
        self._limits: dict[Registrant, int] = {}
        # Records of active slots waiting for a (new) reservation, and those
        # whose reservation is under way.
        self._pending: set[Registrant] = set()
        self._reserving: set[Registrant] = set()
        self._flush: IDelayedCall | None = None
        self._started = False

    @property
    def node_name(self) -> str:
        """The node's name in the cluster."""
        return self.member.name

    def startService(self) -> None:
        """Connect to the coordinator (creating the cluster tables), then start the rounds."""
        self.running = True  # all Service.startService does
        self._connect()

    def _connect(self) -> None:
        if not self.running:
            return
        d = self.coordinator.start()

        def started(_: object) -> None:
            if self.running:
                self.member.start()

        def failed(reason: Any) -> None:
            _log.warn("cluster: cannot reach the database yet ({error}); retrying", error=reason.getErrorMessage())
            self._clock.callLater(self.member.period, self._connect)

        d.addCallbacks(started, failed)

    # What the scheduler and the client ask.

    def eligible(self, registrant: Registrant) -> bool:
        """Whether the record may start an attempt from this node now."""
        if not self.member.may_send():
            return False
        if slot_of(registrant.account.aor) not in self.active:
            return False
        limit = self._limits.get(registrant)
        if limit is not None and registrant.cseq + MARGIN <= limit:
            return True
        self._want(registrant)
        return False

    def may_continue(self, registrant: Registrant, cseq: int) -> bool:
        """Whether request C{cseq} of an attempt under way (a follow-up, or one that waited for DNS or a connection) may go now."""
        limit = self._limits.get(registrant)
        return limit is not None and cseq <= limit and self.member.may_send() and slot_of(registrant.account.aor) in self.active

    def holds(self, registrant: Registrant) -> bool:
        """Whether this node holds the record's slot."""
        return slot_of(registrant.account.aor) in self.member.held

    def forget(self, registrant: Registrant) -> None:
        """A record is gone."""
        self._limits.pop(registrant, None)
        self._pending.discard(registrant)

    @property
    def records_held(self) -> int:
        """Records this node may send for."""
        return len(self._limits)

    async def members(self) -> list[Member]:
        """Every member, as the database has them."""
        return await self.coordinator.members()

    # Slots coming and going.

    def _in_slots(self, slots: Iterable[int]) -> list[Registrant]:
        wanted = set(slots)
        return [r for r in self._registry if not r.removed and slot_of(r.account.aor) in wanted]

    def _claimed(self, slots: list[int]) -> None:
        records = self._in_slots(slots)
        d = defer.ensureDeferred(self._reserve(records))

        def reserved(_: object) -> None:
            still = [slot for slot in slots if slot in self.member.held]
            self.active.update(still)
            for registrant in records:
                if registrant in self._limits:
                    registrant.send_soon(self._clock.seconds())
                    self._wake(registrant)
            # Records the table added to these slots while they were reserved.
            for registrant in self._in_slots(still):
                if registrant not in self._limits:
                    self._want(registrant)
            _log.info("cluster: took {slots} slot(s) with {records} record(s)", slots=len(still), records=len(records))

        def failed(reason: Any) -> None:
            # The slots stay held but silent: the next attempt is a retry of the claim.
            _log.warn("cluster: reserving the records of {count} slot(s) failed ({error}); retrying", count=len(slots),
                      error=reason.getErrorMessage())
            self._clock.callLater(self.member.period, self._claimed, [s for s in slots if s in self.member.held])

        d.addCallbacks(reserved, failed)

    def _released(self, slots: list[int]) -> None:
        self.active.difference_update(slots)
        for registrant in self._in_slots(slots):
            self._limits.pop(registrant, None)
            self._pending.discard(registrant)

    def _fence(self, fenced: bool) -> None:
        if not fenced:
            for registrant in list(self._limits):
                self._wake(registrant)

    # Reservations.

    def _want(self, registrant: Registrant) -> None:
        if registrant in self._reserving:
            return  # one reservation at a time per record
        self._pending.add(registrant)
        if self._flush is None:
            self._flush = self._clock.callLater(0.1, self._reserve_pending)

    def _reserve_pending(self) -> None:
        self._flush = None
        records, self._pending = list(self._pending), set()
        self._reserving.update(records)
        d = defer.ensureDeferred(self._reserve(records))

        def done(result: object) -> object:
            self._reserving.difference_update(records)
            return result

        d.addBoth(done)

        def reserved(_: object) -> None:
            for registrant in records:
                if registrant in self._limits:
                    self._wake(registrant)

        def failed(reason: Any) -> None:
            _log.warn("cluster: reserving CSeq numbers failed ({error}); retrying", error=reason.getErrorMessage())
            self._pending.update(records)
            if self._flush is None:
                self._flush = self._clock.callLater(self.member.period, self._reserve_pending)

        d.addCallbacks(reserved, failed)

    async def _reserve(self, records: list[Registrant]) -> None:
        """Reserve a CSeq block for each record (of a slot held) and continue its Call-ID."""
        epoch = self.member.epoch
        if epoch is None or not records:
            return
        for start in range(0, len(records), RESERVE_BATCH):
            batch = records[start : start + RESERVE_BATCH]
            by_key = {record_key(r): r for r in batch}
            reservations = await self.coordinator.reserve(self.member.name, epoch, [(k, r.call_id) for k, r in by_key.items()], BLOCK)
            if self.member.epoch != epoch:
                return  # the membership ended meanwhile: these blocks are not ours to use
            held = self.member.held
            for reservation in reservations:
                registrant = by_key.get(reservation.key)
                if registrant is None or registrant.removed or slot_of(reservation.key[0]) not in held:
                    continue  # gone, or its slot was given up while the reservation ran
                if registrant.in_transaction:
                    # Its CSeq must not move under a request in flight (its
                    # answer would be ignored): it asks again once that ends.
                    continue
                if not registrant.adopt(reservation.call_id, reservation.first - 1):
                    _log.warn("cluster: {aor} not sent: the Call-ID stored for it is not of this daemon's form", aor=registrant.account.aor)
                    continue
                self._limits[registrant] = reservation.last

    async def stop(self) -> bool:
        """
        Leave the cluster: hand the slots over when another member is
        still running (C{True}: do not un-register), else keep them, take
        those of the members stopping before, until the caller has
        un-registered (then call L{leave}).  Members stopping at once
        decide in turn (L{ICoordinator.begin_stop}), so that however many
        stop together, whoever decides last un-registers for them.
        """
        self.running = False
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        hand_over = await self.member.begin_stop()
        if hand_over:
            self.active.clear()
            self._limits.clear()
            await self.member.stop(hand_over=True)
            return True
        # The last node: the records of slots others handed over are un-registered from here too.
        rest = await self.member.claim_rest()
        if rest:
            records = self._in_slots(rest)
            try:
                await self._reserve(records)
            except CoordinatorError:
                return False
            self.active.update(rest)
        # Every record held, however recently taken over (its take-over
        # REGISTER may still be unanswered): the un-REGISTERs must reach them all.
        now = self._clock.seconds()
        for registrant in self._limits:
            registrant.assume_bound(now)
        return False

    async def leave(self) -> None:
        """Leave after un-registering (the last node)."""
        self.active.clear()
        self._limits.clear()
        await self.member.stop(hand_over=False)
        self.coordinator.close()
