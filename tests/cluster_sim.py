"""
The coordinating database in memory, for simulations on a fake clock: the
same rules as L{uacregistrant.store.pgcoordinator} (leases on the
server's clock, epochs, slots free once their holder's lease expired),
with a switch per node that cuts it off (its calls fail, as they would
with the database unreachable).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from uacregistrant.store.coordinator import (
    HAND_OVER,
    RUNNING,
    SLOTS,
    UNREGISTER,
    CoordinatorError,
    ICoordinator,
    Member,
    RecordKey,
    Reservation,
    slot_of,
)


@dataclass
class _Row:
    epoch: int
    listen: str
    expires_at: float
    renewed_at: float
    slots: int = 0
    records: int = 0
    stopping: str = RUNNING


@dataclass
class SharedState:
    """What the database holds, and its clock."""

    clock: IReactorTime
    members: dict[str, _Row] = field(default_factory=dict)
    owners: dict[int, tuple[str, int]] = field(default_factory=dict)
    records: dict[RecordKey, tuple[str, int]] = field(default_factory=dict)
    #: Names whose calls fail (cut off from the database).
    cut: set[str] = field(default_factory=set)
    #: (name, method): calls that fail once without effect, or take effect but lose their answer.
    fail_once: set[tuple[str, str]] = field(default_factory=set)
    lose_answer_once: set[tuple[str, str]] = field(default_factory=set)
    calls: Any = field(default_factory=itertools.count)
    #: Seconds every answer takes (each call takes effect at once, as a
    #: committed statement whose answer is still on its way).
    latency: float = 0.0

    def now(self) -> float:
        return self.clock.seconds()

    def live(self, name: str, epoch: int) -> bool:
        row = self.members.get(name)
        return row is not None and row.epoch == epoch and row.expires_at > self.now()


@implementer(ICoordinator)
class MemoryCoordinator:
    """One node's connection to the shared state."""

    def __init__(self, state: SharedState, node: str) -> None:
        self.state = state
        self.node = node

    def _check(self) -> None:
        next(self.state.calls)
        if self.node in self.state.cut:
            raise CoordinatorError(f"database unreachable from {self.node}")

    def _answer(self, compute: Any, method: str) -> defer.Deferred[Any]:
        key = (self.node, method)
        try:
            self._check()
            if key in self.state.fail_once:
                self.state.fail_once.discard(key)
                raise CoordinatorError(f"{method} failed")
            result = compute()
            if key in self.state.lose_answer_once:
                self.state.lose_answer_once.discard(key)
                raise CoordinatorError(f"{method}: no answer (it took effect)")
            answer = defer.succeed(result)
        except CoordinatorError as e:
            answer = defer.fail(e)
        if not self.state.latency:
            return answer
        late: defer.Deferred[Any] = defer.Deferred()
        self.state.clock.callLater(self.state.latency, answer.chainDeferred, late)
        return late

    def start(self) -> defer.Deferred[None]:
        return self._answer(lambda: None, "start")

    def join(self, name: str, listen: str, ttl: float) -> defer.Deferred[int]:
        def do() -> int:
            state = self.state
            old = state.members.get(name)
            if old is not None and old.expires_at > state.now():
                raise CoordinatorError(f"a live node is already named {name}")
            epoch = (old.epoch if old else 0) + 1
            state.members[name] = _Row(epoch, listen, state.now() + ttl, state.now())
            return epoch

        return self._answer(do, "join")

    def renew(self, name: str, epoch: int, ttl: float, slots: int, records: int) -> defer.Deferred[bool]:
        def do() -> bool:
            state = self.state
            if not state.live(name, epoch):
                return False
            row = state.members[name]
            row.expires_at, row.renewed_at, row.slots, row.records = state.now() + ttl, state.now(), slots, records
            return True

        return self._answer(do, "renew")

    def claim(self, name: str, epoch: int, count: int) -> defer.Deferred[list[int]]:
        def do() -> list[int]:
            state = self.state
            if not state.live(name, epoch):
                return []
            taken = []
            for slot in range(SLOTS):
                if len(taken) >= count:
                    break
                owner = state.owners.get(slot)
                if owner is None or not state.live(*owner):
                    state.owners[slot] = (name, epoch)
                    taken.append(slot)
            return taken

        return self._answer(do, "claim")

    def release(self, name: str, epoch: int, slots: list[int]) -> defer.Deferred[None]:
        def do() -> None:
            for slot in slots:
                if self.state.owners.get(slot) == (name, epoch):
                    del self.state.owners[slot]

        return self._answer(do, "release")

    def held(self, name: str, epoch: int) -> defer.Deferred[list[int]]:
        return self._answer(lambda: sorted(s for s, o in self.state.owners.items() if o == (name, epoch)), "held")

    def members(self) -> defer.Deferred[list[Member]]:
        def do() -> list[Member]:
            now = self.state.now()
            return [
                Member(name, row.epoch, row.expires_at > now, now - row.renewed_at, row.slots, row.records, row.listen, row.stopping)
                for name, row in sorted(self.state.members.items())
            ]

        return self._answer(do, "members")

    def reserve(self, name: str, epoch: int, records: list[tuple[RecordKey, str]], block: int) -> defer.Deferred[list[Reservation]]:
        def do() -> list[Reservation]:
            state = self.state
            out = []
            for key, proposed in records:
                if state.owners.get(slot_of(key[0])) != (name, epoch) or not state.live(name, epoch):
                    continue
                call_id, reserved = state.records.get(key, (proposed, 0))
                state.records[key] = (call_id, reserved + block)
                out.append(Reservation(key, call_id, reserved + 1, reserved + block))
            return out

        return self._answer(do, "reserve")

    def begin_stop(self, name: str, epoch: int) -> defer.Deferred[bool]:
        def do() -> bool:
            state = self.state
            if not state.live(name, epoch):
                return True
            now = state.now()
            running = any(n != name and row.expires_at > now and row.stopping == RUNNING for n, row in state.members.items())
            state.members[name].stopping = HAND_OVER if running else UNREGISTER
            return running

        return self._answer(do, "begin_stop")

    def leave(self, name: str, epoch: int) -> defer.Deferred[None]:
        def do() -> None:
            state = self.state
            for slot in [s for s, o in state.owners.items() if o == (name, epoch)]:
                del state.owners[slot]
            row = state.members.get(name)
            if row is not None and row.epoch == epoch:
                row.expires_at = state.now()

        return self._answer(do, "leave")

    def close(self) -> None:
        pass
