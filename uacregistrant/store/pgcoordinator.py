# -*- test-case-name: tests.integration.test_coordinator -*-
"""
The cluster's coordinator in PostgreSQL, through txpostgres (a thread
only to look a host name up, as the store does).

One dedicated connection, not shared with the registrant store, named
C{uacregistrant:<cluster>} in C{pg_stat_activity}.  Every call is one
statement in autocommit (the claim: one statement in a REPEATABLE READ
transaction; start: the schema under a transaction lock), comparing
times only with the server's C{now()}; values are always query
parameters.  Nothing here depends on the session surviving (no advisory
locks, no LISTEN): the lease rows are the truth, so a connection that was
lost is simply opened again by the next call.  There is no background
loop: the caller calls regularly.

The session asks the server to notice a vanished client within about
20 s (TCP keepalives 10 s + 3 × 3 s; C{tcp_user_timeout} 15 s for data
not acknowledged) and turns the idle-session timeouts off; libpq's
client keepalives are on as well.  A call the server has not answered
within C{timeout} seconds fails and drops the connection.

The tables (L{SCHEMA}, shipped as C{schema/cluster-postgres.sql}) are
keyed by the cluster's name, so several clusters can share a database.
"""

from __future__ import annotations

import random
import socket
from importlib import resources
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from twisted.internet import defer, error, task, threads
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from zope.interface import implementer

from uacregistrant.store.coordinator import (
    HAND_OVER,
    SLOTS,
    UNREGISTER,
    CoordinatorError,
    ICoordinator,
    Member,
    RecordKey,
    Reservation,
    slot_of,
)
from uacregistrant.store.postgres import _Connection, _lookup_host, redact

T = TypeVar("T")

#: The highest CSeq number (RFC 3261 §8.1.1.5: less than 2**31).
CSEQ_MAX = 2**31 - 1
#: Records reserved per statement.
RESERVE_BATCH = 1000
#: Seconds a call may wait for the server (connecting included).
TIMEOUT = 5.0
#: Times a claim is tried again after losing a race with another claimer.
CLAIM_RETRIES = 20
#: The transaction lock taken while creating the tables ('uacrclus').
_SCHEMA_LOCK = 0x7561637263_6C7573

#: Server settings of the session (set where the server knows them).
SESSION_SETTINGS = (
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "3"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "15000"),
    ("idle_session_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
)
#: libpq's client-side keepalives (where the URL does not say otherwise).
CLIENT_SETTINGS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}


def schema() -> str:
    """The packaged CREATE TABLE script of the cluster tables."""
    return resources.files("uacregistrant.store").joinpath("schema/cluster-postgres.sql").read_text("utf-8")


#: The cluster tables, as shipped for DBAs.
SCHEMA = schema()

#: The cluster's tables, as the schema script creates them.
TABLES = ("uacregistrant_members", "uacregistrant_slots", "uacregistrant_records")

_MISSING_SQL = """
SELECT t.name FROM unnest(%s::text[]) AS t(name) WHERE to_regclass(t.name) IS NULL ORDER BY t.name
"""

_SETTINGS_SQL = """
SELECT count(set_config(s.name, s.value, false))
  FROM unnest(%s::text[], %s::text[]) AS s(name, value)
 WHERE s.name IN (SELECT name FROM pg_settings)
"""

_SLOTS_SQL = """
INSERT INTO uacregistrant_slots (cluster, slot)
SELECT %s, g FROM generate_series(0, %s::integer - 1) AS g
    ON CONFLICT DO NOTHING
"""

_JOIN_SQL = """
INSERT INTO uacregistrant_members AS m (cluster, name, epoch, listen, slots, records, renewed_at, expires_at)
VALUES (%(cluster)s, %(name)s, 1, %(listen)s, 0, 0, now(), now() + make_interval(secs => %(ttl)s::float8))
    ON CONFLICT (cluster, name) DO UPDATE
   SET epoch = m.epoch + 1, listen = EXCLUDED.listen, slots = 0, records = 0,
       renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at, stopping = NULL
 WHERE m.expires_at <= now()
RETURNING m.epoch
"""

_RENEW_SQL = """
UPDATE uacregistrant_members
   SET renewed_at = now(), expires_at = now() + make_interval(secs => %(ttl)s::float8),
       slots = %(slots)s, records = %(records)s
 WHERE cluster = %(cluster)s AND name = %(name)s AND epoch = %(epoch)s AND expires_at > now()
RETURNING epoch
"""

#: A live member (the caller, named by the parameters) in this epoch.
_ALIVE = """EXISTS (SELECT 1 FROM uacregistrant_members AS me
             WHERE me.cluster = %(cluster)s AND me.name = %(name)s AND me.epoch = %(epoch)s AND me.expires_at > now())"""

#: Run in REPEATABLE READ: a slot another claimer took after this
#: statement's snapshot is a serialization failure (then tried again),
#: never taken a second time on the strength of an old view of the members.
CLAIM_SQL = f"""
UPDATE uacregistrant_slots AS s
   SET owner = %(name)s, owner_epoch = %(epoch)s
 WHERE s.cluster = %(cluster)s AND s.slot IN (
       SELECT f.slot FROM uacregistrant_slots AS f
        WHERE f.cluster = %(cluster)s
          AND (f.owner IS NULL OR NOT EXISTS (
               SELECT 1 FROM uacregistrant_members AS o
                WHERE o.cluster = f.cluster AND o.name = f.owner AND o.epoch = f.owner_epoch AND o.expires_at > now()))
          AND {_ALIVE}
        ORDER BY f.slot
        LIMIT %(count)s
          FOR UPDATE OF f SKIP LOCKED)
RETURNING s.slot
"""

_LOCK_MEMBERS_SQL = """
SELECT name FROM uacregistrant_members WHERE cluster = %(cluster)s ORDER BY name FOR SHARE
"""

_RELEASE_SQL = """
UPDATE uacregistrant_slots SET owner = NULL, owner_epoch = NULL
 WHERE cluster = %(cluster)s AND owner = %(name)s AND owner_epoch = %(epoch)s AND slot = ANY(%(slots)s::integer[])
"""

_HELD_SQL = """
SELECT slot FROM uacregistrant_slots
 WHERE cluster = %(cluster)s AND owner = %(name)s AND owner_epoch = %(epoch)s
 ORDER BY slot
"""

_MEMBERS_SQL = """
SELECT name, epoch, expires_at > now(), extract(epoch FROM now() - renewed_at)::float8, slots, records, listen,
       coalesce(stopping, '')
  FROM uacregistrant_members
 WHERE cluster = %s
 ORDER BY name
"""

#: Every member's row locked first (FOR UPDATE), so that stopping members
#: decide one after the other, each seeing the decisions made before.
_LOCK_MEMBERS_FOR_STOP_SQL = """
SELECT name FROM uacregistrant_members WHERE cluster = %(cluster)s ORDER BY name FOR UPDATE
"""

_BEGIN_STOP_SQL = f"""
UPDATE uacregistrant_members AS me
   SET stopping = CASE WHEN EXISTS (
           SELECT 1 FROM uacregistrant_members AS o
            WHERE o.cluster = me.cluster AND o.name <> me.name AND o.expires_at > now() AND o.stopping IS NULL)
       THEN '{HAND_OVER}' ELSE '{UNREGISTER}' END
 WHERE me.cluster = %(cluster)s AND me.name = %(name)s AND me.epoch = %(epoch)s AND me.expires_at > now()
RETURNING me.stopping
"""

_LEAVE_SQL = """
WITH released AS (
    UPDATE uacregistrant_slots SET owner = NULL, owner_epoch = NULL
     WHERE cluster = %(cluster)s AND owner = %(name)s AND owner_epoch = %(epoch)s
    RETURNING slot)
UPDATE uacregistrant_members
   SET expires_at = least(expires_at, now()), slots = 0, records = 0
 WHERE cluster = %(cluster)s AND name = %(name)s AND epoch = %(epoch)s
"""

#: Past CSeq 2**31-1 a record starts over: a new Call-ID (32 hex digits
#: from the server, like the registry's own) and CSeq 1.
RESERVE_SQL = f"""
INSERT INTO uacregistrant_records AS r (cluster, aor, binding_uri, registrar, call_id, cseq_reserved)
SELECT %(cluster)s, v.aor, v.binding_uri, v.registrar, v.call_id, %(block)s::bigint
  FROM unnest(%(aors)s::text[], %(bindings)s::text[], %(registrars)s::text[], %(slots)s::integer[], %(call_ids)s::text[])
       AS v(aor, binding_uri, registrar, slot, call_id)
  JOIN uacregistrant_slots AS s ON s.cluster = %(cluster)s AND s.slot = v.slot
 WHERE s.owner = %(name)s AND s.owner_epoch = %(epoch)s AND {_ALIVE}
 ORDER BY v.aor, v.binding_uri, v.registrar
    ON CONFLICT (cluster, aor, binding_uri, registrar) DO UPDATE
   SET call_id = CASE WHEN r.cseq_reserved > {CSEQ_MAX} - EXCLUDED.cseq_reserved
                      THEN replace(gen_random_uuid()::text, '-', '') ELSE r.call_id END,
       cseq_reserved = CASE WHEN r.cseq_reserved > {CSEQ_MAX} - EXCLUDED.cseq_reserved
                            THEN EXCLUDED.cseq_reserved ELSE r.cseq_reserved + EXCLUDED.cseq_reserved END
RETURNING r.aor, r.binding_uri, r.registrar, r.call_id, r.cseq_reserved
"""


class _Retry(Exception):
    """A claim lost a race with another claimer: try again."""


class _TimedOut(Exception):
    """The server did not answer in time."""


class _Abandoned(Exception):
    """The connection was dropped while a call waited for it."""


@implementer(ICoordinator)
class PostgresCoordinator:
    """
    L{ICoordinator} on a PostgreSQL database.

    @ivar timeout: seconds a call may wait for the server.
    """

    def __init__(self, url: str, cluster: str, reactor: Any, timeout: float = TIMEOUT) -> None:
        self.url = url
        self.cluster = cluster
        self.reactor = reactor
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._attempt: defer.Deferred[_Connection] | None = None
        self._attempt_connection: _Connection | None = None
        self._waiters: list[defer.Deferred[_Connection]] = []
        self._closed = False
        try:
            self._dsn: dict[str, str] = psycopg2.extensions.parse_dsn(url)
        except psycopg2.Error:
            self._dsn = {}
        self._password = self._dsn.get("password") or ""

    # The interface.

    def start(self) -> defer.Deferred[None]:
        """Connect; create the cluster tables and this cluster's slot rows if missing."""

        @defer.inlineCallbacks
        def create(cursor: Any) -> Any:
            # Two nodes starting at once would race on CREATE TABLE IF NOT EXISTS.
            yield cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            # Tables a DBA created are used as they are: a role without DDL
            # rights cannot even run CREATE TABLE IF NOT EXISTS on them.
            yield cursor.execute(_MISSING_SQL, (list(TABLES),))
            missing = [str(name) for (name,) in cursor.fetchall()]
            if missing:
                try:
                    yield cursor.execute(SCHEMA)
                except psycopg2.errors.InsufficientPrivilege as e:
                    raise CoordinatorError(
                        f"cluster database {self._where()}: cannot create {', '.join(missing)} ({_first_line(Failure(e))}): "
                        "have the DBA run uacregistrant/store/schema/cluster-postgres.sql and grant this role "
                        "SELECT, INSERT, UPDATE, DELETE on its tables"
                    ) from None
            yield cursor.execute(_SLOTS_SQL, (self.cluster, SLOTS))

        return self._call("start", lambda c: _transaction(c, create)).addCallback(lambda _: None)

    def join(self, name: str, listen: str, ttl: float) -> defer.Deferred[int]:
        """A new epoch for C{name} (1 the first time), alive for C{ttl} seconds."""
        values = {"cluster": self.cluster, "name": name, "listen": listen, "ttl": float(ttl)}
        d = self._call("join", lambda c: c.runQuery(_JOIN_SQL, values))

        def joined(rows: list[Any]) -> int:
            if not rows:
                # Another process with this name holds a live lease: two
                # nodes must never share a name (they would share slots).
                raise CoordinatorError(f"a live node of cluster {self.cluster} is already named {name}: give each node its own --node-name")
            return int(rows[0][0])

        return d.addCallback(joined)

    def renew(self, name: str, epoch: int, ttl: float, slots: int, records: int) -> defer.Deferred[bool]:
        """Extend a live lease of this epoch; C{False} if it expired or the name joined again."""
        values = {**self._member(name, epoch), "ttl": float(ttl), "slots": slots, "records": records}
        return self._call("renew", lambda c: c.runQuery(_RENEW_SQL, values)).addCallback(bool)

    def claim(self, name: str, epoch: int, count: int) -> defer.Deferred[list[int]]:
        """
        Take up to C{count} slots that are free or whose owner's epoch is
        over, lowest first, if C{name} is alive in C{epoch}.  Concurrent
        claimers skip each other's rows; one that finds a row changed since
        its snapshot tries again (up to L{CLAIM_RETRIES} times).
        """
        if count <= 0:
            return defer.succeed([])
        values = {**self._member(name, epoch), "count": count}

        def interaction(cursor: Any) -> Any:
            # The members' rows first, FOR SHARE: a renewal not yet visible
            # (committing) makes this wait or fail to serialize, instead of
            # letting the claim see its lease as expired.
            d = cursor.execute(_LOCK_MEMBERS_SQL, values)
            d.addCallback(lambda _: cursor.execute(CLAIM_SQL, values))
            return d.addCallback(lambda _: sorted(int(slot) for (slot,) in cursor.fetchall()))

        def attempt(connection: _Connection) -> defer.Deferred[list[int]]:
            def lost_race(reason: Failure) -> Failure:
                if reason.check(psycopg2.errors.SerializationFailure):
                    return Failure(_Retry())
                return reason

            d: defer.Deferred[list[int]] = _transaction(connection, interaction, "BEGIN ISOLATION LEVEL REPEATABLE READ")
            return d.addErrback(lost_race)

        @defer.inlineCallbacks
        def claim() -> Any:
            for tries in range(CLAIM_RETRIES):
                try:
                    slots = yield self._call("claim", attempt, retry=True)
                except _Retry:
                    # Another node claimed at the same moment: wait a little
                    # (random, growing) so the two stop colliding.
                    yield task.deferLater(self.reactor, random.uniform(0.005, 0.02) * (tries + 1), lambda: None)
                    continue
                return slots
            raise CoordinatorError(f"cluster database {self._where()}: claim lost {CLAIM_RETRIES} races with other claimers in a row")

        d: defer.Deferred[list[int]] = claim()
        return d

    def release(self, name: str, epoch: int, slots: list[int]) -> defer.Deferred[None]:
        """Free those of C{slots} still held under C{epoch}."""
        if not slots:
            return defer.succeed(None)
        values = {**self._member(name, epoch), "slots": [int(slot) for slot in slots]}
        return self._call("release", lambda c: c.runOperation(_RELEASE_SQL, values))

    def held(self, name: str, epoch: int) -> defer.Deferred[list[int]]:
        """The slots whose owner is C{name} in C{epoch} (alive or not), lowest first."""
        d = self._call("held", lambda c: c.runQuery(_HELD_SQL, self._member(name, epoch)))
        return d.addCallback(lambda rows: [int(slot) for (slot,) in rows])

    def members(self) -> defer.Deferred[list[Member]]:
        """Every member of the cluster, by name; C{slots} and C{records} as last renewed."""

        def made(rows: list[tuple[Any, ...]]) -> list[Member]:
            return [
                Member(str(name), int(epoch), bool(alive), float(age), int(slots), int(records), str(listen), str(stopping))
                for name, epoch, alive, age, slots, records, listen, stopping in rows
            ]

        return self._call("members", lambda c: c.runQuery(_MEMBERS_SQL, (self.cluster,))).addCallback(made)

    def reserve(self, name: str, epoch: int, records: list[tuple[RecordKey, str]], block: int) -> defer.Deferred[list[Reservation]]:
        """
        Reserve C{block} CSeq numbers for each record of a slot held by C{name}
        in C{epoch} (while alive), storing the proposed Call-ID of a record
        seen for the first time.  The result follows the order of
        C{records} (a key given twice counts once, with its first Call-ID).

        CSeq stays within 2**31-1 (RFC 3261): a record whose next block
        would pass it starts over with a new Call-ID made by the server (32
        hex digits) and the block C{1..block}; the registrar then replaces
        the binding, as for any new Call-ID.  This happens after 2**31
        requests, so never in practice.

        Records are written L{RESERVE_BATCH} per statement; when a later
        statement fails, the blocks of the earlier ones stay reserved
        (unused numbers: a gap in CSeq, which a registrar accepts).

        @raise ValueError: (as the failure) for a block outside 1..2**31-1.
        """
        if not 1 <= block <= CSEQ_MAX:
            return defer.fail(ValueError(f"a CSeq block must be 1 to {CSEQ_MAX}, not {block}"))
        proposed: dict[RecordKey, str] = {}
        for key, call_id in records:
            proposed.setdefault(key, call_id)
        keys = list(proposed)

        def statement(batch: list[RecordKey]) -> defer.Deferred[list[tuple[Any, ...]]]:
            values = {
                **self._member(name, epoch),
                "block": block,
                "aors": [k[0] for k in batch],
                "bindings": [k[1] for k in batch],
                "registrars": [k[2] for k in batch],
                "slots": [slot_of(k[0]) for k in batch],
                "call_ids": [proposed[k] for k in batch],
            }
            return self._call("reserve", lambda c: c.runQuery(RESERVE_SQL, values))

        @defer.inlineCallbacks
        def reserve() -> Any:
            found: dict[RecordKey, Reservation] = {}
            for start in range(0, len(keys), RESERVE_BATCH):
                rows = yield statement(keys[start : start + RESERVE_BATCH])
                for aor, binding, registrar, call_id, reserved in rows:
                    key = (str(aor), str(binding), str(registrar))
                    found[key] = Reservation(key, str(call_id), int(reserved) - block + 1, int(reserved))
            return [found[key] for key in keys if key in found]

        d: defer.Deferred[list[Reservation]] = reserve()
        return d

    def begin_stop(self, name: str, epoch: int) -> defer.Deferred[bool]:
        """
        Record and return how C{name} stops: hand over (C{True}) if another
        live member is still running.  The members' rows are locked first,
        so two members stopping at once decide one after the other: the
        second sees the first stopping, and neither hands over to the other.
        """
        values = self._member(name, epoch)

        def interaction(cursor: Any) -> Any:
            d = cursor.execute(_LOCK_MEMBERS_FOR_STOP_SQL, values)
            d.addCallback(lambda _: cursor.execute(_BEGIN_STOP_SQL, values))
            return d.addCallback(lambda _: cursor.fetchall())

        d = self._call("begin_stop", lambda c: _transaction(c, interaction))
        return d.addCallback(lambda rows: not rows or rows[0][0] == HAND_OVER)

    def leave(self, name: str, epoch: int) -> defer.Deferred[None]:
        """Free every slot of C{epoch} and end its lease now (nothing if the epoch is over)."""
        return self._call("leave", lambda c: c.runOperation(_LEAVE_SQL, self._member(name, epoch)))

    def close(self) -> None:
        """Close the connection; later calls fail."""
        self._closed = True
        self._drop()

    # Calls.

    def _member(self, name: str, epoch: int) -> dict[str, Any]:
        return {"cluster": self.cluster, "name": name, "epoch": int(epoch)}

    def _call(self, what: str, operation: Callable[[_Connection], defer.Deferred[T]], retry: bool = False) -> defer.Deferred[T]:
        """
        C{operation} on the connection (opened if need be), within
        C{timeout} seconds; every failure as one L{CoordinatorError} (a
        L{_Retry} passed on if C{retry}).  A connection that failed or
        timed out is dropped, to be opened again by the next call.
        """
        result: defer.Deferred[T] = defer.Deferred()
        timer: IDelayedCall
        finished = False

        def finish(outcome: T | Failure) -> None:
            nonlocal finished
            if timer.active():
                timer.cancel()
            if finished:
                return  # timed out already (or dropping the connection failed this call)
            finished = True
            if not isinstance(outcome, Failure):
                result.callback(outcome)
            elif retry and outcome.check(_Retry):
                result.errback(outcome)
            else:
                result.errback(self._error(what, outcome, used[0] if used else None))

        def expired() -> None:
            finish(Failure(_TimedOut(f"no answer within {self.timeout:g}s")))

        def run(connection: _Connection) -> defer.Deferred[T]:
            used.append(connection)
            return operation(connection)

        used: list[_Connection] = []
        timer = self.reactor.callLater(self.timeout, expired)
        d = self._connection()
        d.addCallback(run)
        d.addBoth(finish)
        return result

    def _error(self, what: str, reason: Failure, connection: _Connection | None) -> CoordinatorError:
        """
        The failure as one line; a connection that failed is dropped (one
        that timed out while connecting too), unless a newer one replaced it.
        """
        if reason.check(CoordinatorError):
            return reason.value  # type: ignore[return-value]
        if reason.check(psycopg2.OperationalError, psycopg2.InterfaceError, error.ConnectionClosed, _TimedOut, OSError):
            if connection is None and reason.check(_TimedOut) or connection is not None and connection is self._conn:
                self._drop()
            else:
                _close(connection)
        return CoordinatorError(f"cluster database {self._where()}: {what} failed: {self._scrub(_first_line(reason))}")

    def _where(self) -> str:
        return self._scrub(redact(self.url))

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    # The connection.

    def _connection(self) -> defer.Deferred[_Connection]:
        if self._closed:
            return defer.fail(CoordinatorError(f"cluster database {self._where()}: the coordinator is closed"))
        if self._conn is not None and not self._conn.closed:
            return defer.succeed(self._conn)
        connection, self._conn = self._conn, None
        _close(connection)
        waiter: defer.Deferred[_Connection] = defer.Deferred()
        self._waiters.append(waiter)
        if self._attempt is None:
            self._open()
        return waiter

    def _open(self) -> None:
        connection = _Connection(reactor=self.reactor)
        attempt: defer.Deferred[Any] = self._lookup()
        self._attempt, self._attempt_connection = attempt, connection
        settings: dict[str, Any] = {k: v for k, v in CLIENT_SETTINGS.items() if k not in self._dsn}
        if "application_name" not in self._dsn:
            settings["application_name"] = f"uacregistrant:{self.cluster}"

        def connect(address: str | None) -> Any:
            if self._attempt is not attempt:
                raise _Abandoned("connection abandoned")
            if address is not None:
                settings["hostaddr"] = address
            return connection.connect(self.url, **settings)

        def configure(_: object) -> Any:
            names, values = zip(*SESSION_SETTINGS)
            return connection.runQuery(_SETTINGS_SQL, (list(names), list(values)))

        def done(outcome: object) -> None:
            current = self._attempt is attempt
            if current:
                self._attempt = self._attempt_connection = None
            if isinstance(outcome, Failure) or not current or self._closed:
                _close(connection)
                waiters = self._waiters if current else []
                if current:
                    self._waiters = []
                failure = outcome if isinstance(outcome, Failure) else Failure(_Abandoned("connection abandoned"))
                for waiter in waiters:
                    waiter.errback(failure)
                return
            self._conn = connection
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(connection)

        attempt.addCallback(connect).addCallback(configure).addBoth(done)

    def _lookup(self) -> defer.Deferred[str | None]:
        """
        The address of the URL's one plain host name, looked up on a thread
        (libpq would block the reactor); C{None} to leave the URL to libpq.
        """
        host = _lookup_host(self.url)
        if host is None:
            return defer.succeed(None)
        port = urlsplit(self.url).port or 5432
        pool = self.reactor.getThreadPool()
        d: defer.Deferred[list[Any]] = threads.deferToThreadPool(self.reactor, pool, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        return d.addCallback(lambda addresses: str(addresses[0][4][0]))

    def _drop(self) -> None:
        """Close the connection and abandon an attempt to open one (its waiters fail)."""
        connection, self._conn = self._conn, None
        _close(connection)
        attempt_connection, self._attempt, self._attempt_connection = self._attempt_connection, None, None
        waiters, self._waiters = self._waiters, []
        _close(attempt_connection)
        for waiter in waiters:
            waiter.errback(_Abandoned("connection dropped"))


def _transaction(connection: _Connection, interaction: Callable[[Any], Any], begin: str = "BEGIN") -> defer.Deferred[Any]:
    """
    C{interaction(cursor)} in a transaction, after the connection's other
    queries.  (txpostgres' runInteraction logs a rollback that fails, as
    it does on a connection that was lost: here the connection is closed,
    to be opened again by the next call.)
    """

    def run() -> defer.Deferred[Any]:
        cursor = connection.cursor()
        d: defer.Deferred[Any] = cursor.execute(begin)
        d.addCallback(lambda _: interaction(cursor))
        d.addCallback(lambda result: cursor.execute("COMMIT").addCallback(lambda _: result))

        def rollback(reason: Failure) -> defer.Deferred[Any]:
            r: defer.Deferred[Any] = defer.maybeDeferred(cursor.execute, "ROLLBACK")
            r.addErrback(lambda _: _close(connection))
            return r.addCallback(lambda _: reason)

        return d.addErrback(rollback)

    return connection.lock.run(run)  # type: ignore[no-any-return]


def _close(connection: _Connection | None) -> None:
    """Close a connection that may be half-open or dead."""
    if connection is None or connection._connection is None:
        return
    try:
        connection.close()
    except Exception:
        pass


def _first_line(reason: Failure) -> str:
    text = str(reason.value).strip()
    return text.splitlines()[0] if text else reason.type.__name__ if reason.type else "error"
