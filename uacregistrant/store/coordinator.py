# -*- test-case-name: tests.unit.app.test_cluster,tests.integration.test_coordinator -*-
"""
What a cluster node asks of the database that coordinates it.

The nodes of one cluster share the registrant table; a fixed number of
slots (L{SLOTS}, by the AOR's CRC-32) divide its records.  A node is a
member while its lease, renewed on the server's clock, has not expired;
a slot belongs to the member that claimed it, for as long as that member
is alive in the same epoch.  Every write that depends on being a member
names the member's epoch, so a node that lost its membership (its lease
expired and another took its slots) changes nothing any more.

Per record the database also keeps the Call-ID and the highest CSeq a
node may have used (a reserved block): whoever takes a record over goes
on with the same Call-ID and a higher CSeq, so the registrar sees a
refresh of the same binding.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from twisted.internet import defer
from zope.interface import Interface

#: Slots a cluster's records are divided into (a power of two).
SLOTS = 1024

#: A record as the cluster tables know it: C{(aor, binding_URI, registrar)}.
RecordKey = tuple[str, str, str]


def slot_of(aor: str) -> int:
    """The slot of a record, by the CRC-32 of its AOR (as the registry's buckets)."""
    return zlib.crc32(aor.encode("utf-8")) & (SLOTS - 1)


#: A member's stop decision (L{Member.stopping}): none yet; its slots go
#: to the members still running; it un-registers what it holds.
RUNNING, HAND_OVER, UNREGISTER = "", "hand over", "unregister"


class CoordinatorError(Exception):
    """The database could not be asked (unreachable, an error): try again later."""


@dataclass(frozen=True, slots=True)
class Member:
    """
    A node as the cluster table shows it.

    @ivar alive: its lease has not expired (on the server's clock).
    @ivar age: seconds since its last renewal (server clock).
    @ivar stopping: L{RUNNING}, or how it decided to stop (L{HAND_OVER}, L{UNREGISTER}).
    """

    name: str
    epoch: int
    alive: bool
    age: float
    slots: int
    records: int
    listen: str
    stopping: str = ""


@dataclass(frozen=True, slots=True)
class Reservation:
    """
    A record's continuity: its Call-ID (the one stored, or the one
    proposed if none was) and the CSeq block now reserved for this node:
    requests may use CSeq numbers C{first} to C{last}.
    """

    key: RecordKey
    call_id: str
    first: int
    last: int


class ICoordinator(Interface):  # pragma: no cover - an interface
    """The cluster's shared state, on the database's clock. Every method fails with L{CoordinatorError}."""

    def start() -> defer.Deferred[None]:
        """Connect; create the cluster tables if missing."""

    def join(name: str, listen: str, ttl: float) -> defer.Deferred[int]:
        """
        Become a member (again): a new epoch, greater than any this name
        had, and a lease of C{ttl} seconds.  Slots held under an older
        epoch of the same name are free from now on.
        """

    def renew(name: str, epoch: int, ttl: float, slots: int, records: int) -> defer.Deferred[bool]:
        """
        Extend the lease to C{ttl} seconds from now (server time) and
        publish what the node holds; C{False} if the membership of that
        epoch is over (expired, or the name joined again).
        """

    def claim(name: str, epoch: int, count: int) -> defer.Deferred[list[int]]:
        """
        Take up to C{count} free slots (never held, released, or held by
        a member whose lease expired or whose epoch is over); the slots
        taken.  Nothing while the membership of C{epoch} is over.
        """

    def release(name: str, epoch: int, slots: list[int]) -> defer.Deferred[None]:
        """Give up C{slots} (those still held under C{epoch})."""

    def held(name: str, epoch: int) -> defer.Deferred[list[int]]:
        """The slots held under C{epoch}, as the database has them."""

    def members() -> defer.Deferred[list[Member]]:
        """Every node that was ever a member, alive or not, by name."""

    def reserve(name: str, epoch: int, records: list[tuple[RecordKey, str]], block: int) -> defer.Deferred[list[Reservation]]:
        """
        For each C{(key, proposed Call-ID)} of a slot held under C{epoch}:
        the stored Call-ID (the proposed one is stored if there is none)
        and a new block of C{block} CSeq numbers above every number
        reserved before.  Records of slots not held are left out.
        """

    def begin_stop(name: str, epoch: int) -> defer.Deferred[bool]:
        """
        Decide how this member stops, one member after the other: hand its
        slots over (C{True}) when another live member is still running
        (has not begun to stop), else un-register (C{False}).  The decision
        is recorded (L{Member.stopping}); C{True} when the membership of
        C{epoch} is over (nothing is held any more).
        """

    def leave(name: str, epoch: int) -> defer.Deferred[None]:
        """Stop being a member: release every slot, end the lease now."""

    def close() -> None:
        """Close the connection."""
