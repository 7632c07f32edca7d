# -*- test-case-name: tests.unit.app.test_cluster -*-
"""
One node's membership of a cluster: its lease, its slots, and when it
must stop sending.

Every L{ClusterMember.period} seconds the node renews its lease (on the
database's clock), reads the members, and moves towards its quota: the
alive members sorted by name, the first C{SLOTS % n} hold
C{ceil(SLOTS / n)} slots, the others C{floor}; a node above its quota
releases (at most L{STEP} slots a round), one below claims free slots
(all it lacks at once).

Fencing: before each renewal the node notes the time on its own
monotonic clock; a renewal that succeeds lets it send until that time
plus the lease minus a safety margin, which is before the lease can
expire on the server (the server ran its C{now()} later).  Past that
deadline without a newer renewal it stops sending for every slot
(L{fenced}), keeps its records, and goes on trying; a renewal that
succeeds again lifts the fence, and one that says the membership is over
gives up every slot and joins again.  Another node can claim a slot only
after the lease expired on the server: two nodes never send for one
record at once, except a REGISTER already in flight (Timer F at most).
"""

from __future__ import annotations

import math
import time
from typing import Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from uacregistrant.store.coordinator import HAND_OVER, SLOTS, CoordinatorError, ICoordinator, Member

_log = Logger(namespace=__name__)

#: Seconds between joining and the first claim.
JOIN_SETTLE = 2.0
#: Slots released at most per round (a join moves slots gradually).
STEP = 64
#: Seconds between two looks at the members handing over to the last one stopping.
HAND_OVER_POLL = 0.2


def quota(name: str, alive: list[str], slots: int = SLOTS) -> int:
    """How many slots C{name} should hold among the C{alive} members."""
    names = sorted(set(alive) | {name})
    base, extra = divmod(slots, len(names))
    return base + (1 if names.index(name) < extra else 0)


class ClusterMember:
    """
    The membership of one node.

    @param on_claimed: told of slots newly held (their records may be
        taken over once their CSeq blocks are reserved).
    @param on_released: told of slots no longer held (their records stop
        sending at once, before the database is told).
    @param on_fence: told when sending stops (C{True}) or may resume.
    @param monotonic: the node's monotonic clock (seconds).
    """

    def __init__(
        self,
        coordinator: ICoordinator,
        clock: IReactorTime,
        name: str,
        listen: str,
        lease: float,
        on_claimed: Callable[[list[int]], None],
        on_released: Callable[[list[int]], None],
        on_fence: Callable[[bool], None] = lambda fenced: None,
        records: Callable[[], int] = lambda: 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._coordinator = coordinator
        self._clock = clock
        self.name = name
        self.listen = listen
        self.lease = lease
        self.period = lease / 3
        #: Margin kept between our deadline and the server's expiry.
        self.safety = lease / 3
        self._on_claimed = on_claimed
        self._on_released = on_released
        self._on_fence = on_fence
        self._records = records
        self._monotonic = monotonic
        self.epoch: int | None = None
        #: Slots the database says this node holds.
        self.held: set[int] = set()
        self.fenced = True
        self.deadline = -math.inf
        self.members: list[Member] = []
        self._timer: IDelayedCall | None = None
        self._fence_timer: IDelayedCall | None = None
        self._round: defer.Deferred[None] | None = None
        self._stopped = False
        self._next_delay = self.period
        # Slots given up here whose release the database may not have had.
        self._releasing: set[int] = set()

    def start(self) -> None:
        """Begin the rounds (the first joins)."""
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if not self._stopped:
            self._timer = self._clock.callLater(delay, self._run_round)

    def _run_round(self) -> None:
        self._timer = None
        self._round = defer.ensureDeferred(self.round())
        self._round.addErrback(lambda f: _log.failure("cluster round failed", f))
        self._round.addBoth(lambda _: self._schedule(self._next_delay))

    async def round(self) -> None:
        """One round: join if needed, renew, then move towards the quota."""
        coordinator = self._coordinator
        self._next_delay = self.period
        joined = False
        try:
            if self.epoch is None:
                self.epoch = await coordinator.join(self.name, self.listen, self.lease)
                joined = True
                _log.info("cluster: joined as {name}, epoch {epoch}", name=self.name, epoch=self.epoch)
            epoch = self.epoch
            started = self._monotonic()
            renewed = await coordinator.renew(self.name, epoch, self.lease, len(self.held), self._records())
            if self._stopped or epoch != self.epoch:
                return
            if not renewed:
                _log.warn("cluster: membership {epoch} of {name} is over (lease expired): joining again", epoch=epoch, name=self.name)
                self._drop_all()
                self.epoch = None
                return
            self._renewed(started)
            await self._reconcile(epoch)
            if self._stopped or epoch != self.epoch:
                return
            self.members = await coordinator.members()
            if joined:
                # Nodes started together see each other before any claims
                # (else the first would take every slot, then hand most back).
                self._next_delay = min(self.period, JOIN_SETTLE)
                return
            alive = [m.name for m in self.members if m.alive]
            want = quota(self.name, alive)
            if len(self.held) > want:
                spare = sorted(self.held)[-min(STEP, len(self.held) - want) :]
                self.held.difference_update(spare)
                self._releasing.update(spare)
                self._on_released(spare)
                await coordinator.release(self.name, epoch, spare)
                self._releasing.difference_update(spare)
            elif len(self.held) < want and not self.fenced:
                # Free slots are taken all at once (a dead member's records
                # must not wait); only releases are paced.
                claimed = await coordinator.claim(self.name, epoch, want - len(self.held))
                if self._stopped or epoch != self.epoch:
                    return
                fresh = [slot for slot in claimed if slot not in self.held]
                self.held.update(fresh)
                if fresh:
                    self._on_claimed(fresh)
        except CoordinatorError as e:
            _log.warn("cluster: {error}", error=str(e))

    async def _reconcile(self, epoch: int) -> None:
        """
        Make the slots held here what the database says (a release whose
        answer was lost, a claim that committed but timed out): slots being
        released are released again, slots the database gives us are taken
        over, slots it no longer gives us stop.
        """
        listed = set(await self._coordinator.held(self.name, epoch))
        if epoch != self.epoch:
            return
        again = sorted(listed & self._releasing)
        if again:
            await self._coordinator.release(self.name, epoch, again)
        self._releasing.intersection_update(listed)
        self._releasing.difference_update(again)
        lost = sorted(self.held - listed)
        if lost:
            self.held.difference_update(lost)
            self._on_released(lost)
        found = sorted(listed - self.held - set(again))
        if found:
            self.held.update(found)
            self._on_claimed(found)

    def _renewed(self, started: float) -> None:
        """A renewal begun at C{started} succeeded: sending is safe until the new deadline."""
        self.deadline = started + self.lease - self.safety
        if self.deadline <= self._monotonic():
            return  # answered too late to be of use: the fence stays as it is
        if self._fence_timer is not None and self._fence_timer.active():
            self._fence_timer.cancel()
        self._fence_timer = self._clock.callLater(max(0.0, self.deadline - self._monotonic()), self._check_fence)
        if self.fenced:
            self.fenced = False
            self._on_fence(False)

    def _check_fence(self) -> None:
        self._fence_timer = None
        remaining = self.deadline - self._monotonic()
        if remaining > 0:  # the reactor's clock ran ahead of the monotonic one
            self._fence_timer = self._clock.callLater(remaining, self._check_fence)
            return
        if not self.fenced:
            self.fenced = True
            _log.warn("cluster: lease not renewed in time: {name} stops sending until the database answers", name=self.name)
            self._on_fence(True)

    def may_send(self) -> bool:
        """Whether the lease allows sending now (checked on the monotonic clock too)."""
        return not self.fenced and self._monotonic() < self.deadline

    def _drop_all(self) -> None:
        held, self.held = sorted(self.held), set()
        if held:
            self._on_released(held)

    async def begin_stop(self) -> bool:
        """
        Decide, in turn with the other members, how this node stops:
        C{True} to hand its slots over (another member is still running,
        or the database cannot say: never un-register then), C{False} to
        un-register what it holds (every other live member is stopping).
        """
        if self.epoch is None:
            return True
        try:
            return await self._coordinator.begin_stop(self.name, self.epoch)
        except CoordinatorError as e:
            _log.warn("cluster: cannot tell whether another node is running ({error}): handing over", error=str(e))
            return True

    async def claim_rest(self) -> list[int]:
        """
        The last member stopping: take every free slot, and those of the
        members still handing over as they release them (until none is
        left, or a lease has passed); the slots newly held.  Their records
        are un-registered from here.
        """
        fresh: list[int] = []
        deadline = self._monotonic() + self.lease + self.period
        while self.epoch is not None and self.may_send():
            try:
                # The members first: one seen gone has released before the claim.
                members = await self._coordinator.members()
                claimed = await self._coordinator.claim(self.name, self.epoch, SLOTS)
            except CoordinatorError as e:
                _log.warn("cluster: taking the slots of the nodes stopped before failed ({error})", error=str(e))
                break
            new = [slot for slot in claimed if slot not in self.held]
            self.held.update(new)
            fresh.extend(new)
            handing = [m.name for m in members if m.alive and m.name != self.name and m.stopping == HAND_OVER]
            if not handing or self._monotonic() >= deadline:
                break
            await task.deferLater(self._clock, HAND_OVER_POLL, lambda: None)
        return fresh

    async def stop(self, hand_over: bool) -> None:
        """
        Stop the rounds and leave: every slot is released (its records
        stop here first).  C{hand_over}: the others take them over.
        """
        self._stopped = True
        for timer in (self._timer, self._fence_timer):
            if timer is not None and timer.active():
                timer.cancel()
        epoch = self.epoch
        self._drop_all()
        if epoch is not None:
            try:
                await self._coordinator.leave(self.name, epoch)
                _log.info("cluster: {name} left{how}", name=self.name, how=", its slots handed over" if hand_over else "")
            except CoordinatorError as e:
                _log.warn("cluster: leaving failed ({error}); the slots free themselves when the lease expires", error=str(e))
