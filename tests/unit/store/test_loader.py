"""
The table loader: the first load retried with back-off, one full pass at a
time, polls, one-row changes from NOTIFY, and the resync after a TRUNCATE
or a reconnect.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.store import IRegistrantStore, Key, Row, StoreError
from uacregistrant.store.loader import START_RETRY, TableLoader
from uacregistrant.store.sync import TableSync


def row(i: int, **changes: Any) -> Row:
    values: Row = {"id": i, "aor": f"sip:u{i}@test.invalid", "registrar": "sip:127.0.0.1:5080",
                   "binding_URI": f"sip:u{i}@127.0.0.1:5060", "expiry": 3600, "state": 0}
    values.update(changes)
    return values


def key_of(values: Row) -> Key:
    return (values["aor"], values["binding_URI"], values["registrar"])


@implementer(IRegistrantStore)
class FakeStore:
    """
    The table in a dict.  C{start} and C{load} fail the number of times
    asked; C{hold} makes C{load} wait until L{release}.  L{notify} turns a
    trigger payload into C{watch} callbacks the way the PostgreSQL store's
    C{_notified} does (TRUNCATE asks for a resync; DELETE reports no new key).
    """

    #: The database answers (uacregistrant_db_up).
    connected = True

    def __init__(self, clock: Clock, rows: list[Row] = (), batch: int = 1000) -> None:  # type: ignore[assignment]
        self.clock = clock
        self.rows: dict[Key, Row] = {key_of(r): r for r in rows}
        self.batch = batch
        self.start_failures = 0
        self.load_failures = 0
        self.hold = False
        self.held: list[tuple[defer.Deferred[None], Callable[[list[Row]], None], list[Row]]] = []
        self.start_calls: list[float] = []
        self.load_calls: list[float] = []
        self.load_key_calls: list[Key] = []
        self.on_change: Callable[[Key | None, Key | None], defer.Deferred[None]] | None = None
        self.on_resync: Callable[[], None] | None = None
        self.watched = 0

    def check(self) -> None:
        pass

    def start(self) -> defer.Deferred[None]:
        self.start_calls.append(self.clock.seconds())
        if self.start_failures:
            self.start_failures -= 1
            return defer.fail(StoreError("database unavailable"))
        return defer.succeed(None)

    def load(self, consume: Callable[[list[Row]], None]) -> defer.Deferred[None]:
        self.load_calls.append(self.clock.seconds())
        if self.load_failures:
            self.load_failures -= 1
            return defer.fail(StoreError("cannot read the table"))
        rows = list(self.rows.values())
        if self.hold:
            d: defer.Deferred[None] = defer.Deferred()
            self.held.append((d, consume, rows))
            return d
        self._feed(consume, rows)
        return defer.succeed(None)

    def _feed(self, consume: Callable[[list[Row]], None], rows: list[Row]) -> None:
        for start in range(0, len(rows), self.batch):
            consume(rows[start : start + self.batch])

    def release(self) -> None:
        """Finish the oldest held load with the rows it read."""
        d, consume, rows = self.held.pop(0)
        self._feed(consume, rows)
        d.callback(None)

    def load_key(self, key: Key) -> defer.Deferred[Row | None]:
        self.load_key_calls.append(key)
        return defer.succeed(self.rows.get(key))

    def set_state(self, key: Key, state: int) -> defer.Deferred[int]:
        return defer.succeed(0)

    def upsert(self, row: Row) -> defer.Deferred[str]:
        return defer.succeed("inserted")

    def watch(self, on_change: Callable[[Key | None, Key | None], defer.Deferred[None]], on_resync: Callable[[], None]) -> None:
        self.on_change = on_change
        self.on_resync = on_resync
        self.watched += 1

    def close(self) -> None:
        pass

    def notify(self, payload: dict[str, Any]) -> defer.Deferred[None] | None:
        """A trigger's NOTIFY, handled as PostgresStore._notified does."""
        op = payload["op"]
        if op == "TRUNCATE":
            if self.on_resync is not None:
                self.on_resync()
            return None
        new = tuple(payload["new"]) if payload.get("new") else None
        old = tuple(payload["old"]) if payload.get("old") else None
        assert self.on_change is not None
        return self.on_change(new if op != "DELETE" else None, old)

    def reconnected(self) -> None:
        """The listening connection came back: changes may have been missed."""
        assert self.on_resync is not None
        self.on_resync()


class TableLoaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry(2)
        self.poked: list[Registrant] = []
        self.forgotten: list[Registrant] = []
        self.sync = TableSync(
            self.registry, Policy(rng=random.Random(1)), self.clock, default_expires=3600, timer_interval=60,
            sockets=[], poke=self.poked.append, forget=self.forgotten.append,
        )
        self.store = FakeStore(self.clock, [row(i) for i in range(5)])
        self.passes: list[dict[str, int]] = []
        self.batches = 0

    def loader(self, poll_interval: float = 0.0) -> TableLoader:
        def first_batch() -> None:
            self.batches += 1

        loader = TableLoader(self.store, self.sync, self.clock, poll_interval=poll_interval,
                             loaded=self.passes.append, first_batch=first_batch)
        loader.startService()
        self.addCleanup(loader.stopService)
        return loader

    def keys(self) -> set[Key]:
        return set(self.registry.keys())

    def test_fake_store_provides_the_interface(self) -> None:
        """The fake is a complete IRegistrantStore."""
        self.assertTrue(verifyObject(IRegistrantStore, self.store))

    def test_first_load(self) -> None:
        """The first load starts the store, watches it, reads every row in batches and reports the pass once."""
        self.store.batch = 2
        loader = self.loader()
        self.assertTrue(loader.loaded)
        self.assertEqual(self.keys(), {key_of(row(i)) for i in range(5)})
        self.assertEqual(self.passes, [{"added": 5, "changed": 0, "unchanged": 0, "skipped": 0, "removed": 0}])
        self.assertEqual(self.batches, 3)
        self.assertEqual((self.store.start_calls, self.store.watched), ([0], 1))
        # New records of the first load wait for their bucket's visit.
        self.assertEqual(self.poked, [])
        self.assertFalse(loader.busy)

    def test_first_load_retried_with_doubling_delay(self) -> None:
        """start() and load() failing: attempts after 1, 2, 4 … s, capped at 60 s; loaded once one succeeds."""
        self.assertEqual(START_RETRY, (1.0, 60.0))
        self.store.start_failures = 5
        self.store.load_failures = 3
        loader = self.loader()
        for _ in range(300):
            if loader.loaded:
                break
            self.assertEqual(self.passes, [])
            self.clock.advance(1)
        self.assertEqual(self.store.start_calls, [0, 1, 3, 7, 15, 31])  # not started again once it worked
        self.assertEqual(self.store.load_calls, [31, 63, 123, 183])
        self.assertEqual(self.store.watched, 1)
        self.assertTrue(loader.loaded)
        self.assertEqual(len(self.passes), 1)
        self.assertEqual(len(self.registry), 5)
        self.clock.advance(1000)
        self.assertEqual(len(self.store.load_calls), 4)  # nothing retried after success
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hook_once_per_complete_pass(self) -> None:
        """Each complete pass calls the hook with its counts; a failed pass does not, and retires nothing."""
        loader = self.loader()
        self.store.rows.pop(key_of(row(0)))
        self.assertEqual(self.successResultOf(loader.reload())["removed"], 1)
        self.store.load_failures = 1
        self.store.rows.clear()
        self.failureResultOf(loader.reload(), StoreError)
        self.assertEqual(len(self.passes), 2)
        self.assertEqual(self.passes[1]["removed"], 1)
        self.assertEqual(len(self.registry), 4)
        self.assertEqual(self.batches, 1)  # first_batch is for the first load only

    def test_one_pass_at_a_time(self) -> None:
        """A pass asked for while one runs waits for it (busy meanwhile)."""
        loader = self.loader()
        self.store.hold = True
        first = loader.reload()
        self.assertTrue(loader.busy)
        second = loader.reload()
        self.assertEqual(len(self.store.load_calls), 2)  # the second waits for the lock
        self.assertNoResult(first)
        self.store.hold = False
        self.store.release()
        self.assertEqual(self.successResultOf(first)["unchanged"], 5)
        self.assertEqual(len(self.store.load_calls), 3)
        self.successResultOf(second)
        self.assertFalse(loader.busy)
        self.assertEqual(len(self.passes), 3)

    def test_burst_of_reloads_costs_two_passes(self) -> None:
        """
        Reloads asked for while one pass runs share the one pass waiting
        for it (it reads the table after them all): 500 SIGHUPs or MI
        notifications are two passes, and each caller gets its counts.
        """
        loader = self.loader()
        self.store.hold = True
        first = loader.reload()
        burst = [loader.reload() for _ in range(500)]
        self.assertEqual(len(self.store.load_calls), 2)
        self.store.hold = False
        self.store.release()
        self.successResultOf(first)
        results = [self.successResultOf(d) for d in burst]
        self.assertEqual(len(self.store.load_calls), 3)
        self.assertEqual({r["unchanged"] for r in results}, {5})
        self.assertFalse(loader.busy)
        # Once nothing waits, a reload is a pass of its own again.
        self.successResultOf(loader.reload())
        self.assertEqual(len(self.store.load_calls), 4)

    def test_shared_pass_failure_reaches_every_caller(self) -> None:
        """A waiting pass that fails fails for everyone who shared it."""
        loader = self.loader()
        self.store.hold = True
        first = loader.reload()
        shared = [loader.reload() for _ in range(3)]
        self.store.hold = False
        self.store.load_failures = 1
        self.store.release()
        self.successResultOf(first)
        for d in shared:
            self.failureResultOf(d, StoreError)

    def test_poll_during_a_pass_skipped(self) -> None:
        """Polls run every poll_interval after the first load; one due while a pass runs is skipped."""
        loader = self.loader(poll_interval=10)
        self.assertEqual(self.store.load_calls, [0])
        self.clock.advance(10)
        self.assertEqual(self.store.load_calls, [0, 10])
        self.store.hold = True
        running = loader.reload()
        self.assertEqual(self.store.load_calls, [0, 10, 10])
        self.assertIsNone(loader.poll())
        self.clock.advance(10)  # the timed poll finds the pass running
        self.assertEqual(self.store.load_calls, [0, 10, 10])
        self.store.hold = False
        self.store.release()
        self.successResultOf(running)
        self.clock.advance(10)
        self.assertEqual(self.store.load_calls, [0, 10, 10, 30])

    def test_failed_poll_keeps_polling(self) -> None:
        """A poll that fails keeps the records and the loop."""
        self.loader(poll_interval=10)
        self.store.load_failures = 1
        self.store.rows.clear()
        self.clock.advance(10)
        self.assertEqual(len(self.registry), 5)
        self.clock.advance(10)
        self.assertEqual(self.store.load_calls, [0, 10, 20])
        self.assertEqual(len(self.registry), 0)

    def test_insert_and_update(self) -> None:
        """An INSERT applies the new row (sent soon); an UPDATE hands the record its new configuration."""
        loader = self.loader()
        new = row(9)
        self.store.rows[key_of(new)] = new
        self.successResultOf(self.store.notify({"op": "INSERT", "id": 9, "new": list(key_of(new))}))
        added = self.registry.get(key_of(new))
        assert added is not None
        self.assertEqual(self.poked, [added])
        changed = row(1, expiry=600)
        self.store.rows[key_of(changed)] = changed
        self.successResultOf(loader.row_changed(key_of(changed), key_of(changed)))
        record = self.registry.get(key_of(changed))
        assert record is not None
        self.assertEqual(record.account.expiry, 600)
        self.assertEqual(self.poked, [added, record])
        self.assertEqual(self.forgotten, [])

    def test_key_change_retires_the_old_key(self) -> None:
        """An UPDATE that changes the key retires the record of the old key and adds the new one."""
        self.loader()
        old = key_of(row(2))
        moved = row(2, aor="sip:moved@test.invalid")
        del self.store.rows[old]
        self.store.rows[key_of(moved)] = moved
        self.successResultOf(self.store.notify({"op": "UPDATE", "id": 2, "new": list(key_of(moved)), "old": list(old)}))
        self.assertIsNone(self.registry.get(old))
        self.assertIsNotNone(self.registry.get(key_of(moved)))
        self.assertEqual([r.account.key for r in self.forgotten], [old])

    def test_deleted_row_retired(self) -> None:
        """A change whose row is gone (load_key → None) retires the record."""
        loader = self.loader()
        key = key_of(row(3))
        del self.store.rows[key]
        self.successResultOf(loader.row_changed(key, None))
        self.assertEqual(self.store.load_key_calls, [key])
        self.assertIsNone(self.registry.get(key))
        self.assertEqual([r.account.key for r in self.forgotten], [key])

    def test_delete_notify_retires_without_reading(self) -> None:
        """row_changed(None, old) (a DELETE) retires the old key without reading the table."""
        self.loader()
        key = key_of(row(4))
        self.successResultOf(self.store.notify({"op": "DELETE", "id": 4, "old": list(key)}))
        self.assertEqual(self.store.load_key_calls, [])
        self.assertIsNone(self.registry.get(key))
        self.assertEqual(len(self.registry), 4)

    def test_unusable_row_keeps_the_record(self) -> None:
        """A NOTIFY for a row that no longer validates leaves the record on its last good configuration."""
        self.loader()
        key = key_of(row(1))
        self.store.rows[key] = row(1, expiry="junk")
        self.successResultOf(self.store.notify({"op": "UPDATE", "id": 1, "new": list(key), "old": list(key)}))
        record = self.registry.get(key)
        assert record is not None
        self.assertEqual((record.account.expiry, record.retiring), (3600, False))

    def test_truncate_resyncs(self) -> None:
        """A TRUNCATE runs a full pass that retires every record whose row is gone."""
        self.loader()
        self.store.rows.clear()
        self.assertIsNone(self.store.notify({"op": "TRUNCATE"}))
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(len(self.forgotten), 5)
        self.assertEqual(self.passes[-1]["removed"], 5)
        self.assertEqual(len(self.store.load_calls), 2)

    def test_reconnect_resyncs(self) -> None:
        """After a reconnect, a full pass catches up with changes missed meanwhile."""
        self.loader()
        del self.store.rows[key_of(row(0))]
        self.store.rows[key_of(row(7))] = row(7)
        self.store.reconnected()
        self.assertEqual(self.keys(), {key_of(row(i)) for i in (1, 2, 3, 4, 7)})
        self.assertEqual(self.passes[-1]["added"], 1)

    def test_failed_resync_keeps_the_records(self) -> None:
        """A resync that cannot read the table changes nothing (registrations continue from memory)."""
        self.loader()
        self.store.rows.clear()
        self.store.load_failures = 1
        self.store.reconnected()
        self.assertEqual(len(self.registry), 5)
        self.assertEqual(len(self.passes), 1)

    def test_stop_cancels_the_retry(self) -> None:
        """stopService cancels a pending first-load retry."""
        self.store.start_failures = 10
        loader = self.loader()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        loader.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(self.store.start_calls, [0])
        self.assertFalse(loader.loaded)

    def test_stop_ends_polling(self) -> None:
        """stopService stops the poll loop."""
        loader = self.loader(poll_interval=10)
        self.clock.advance(10)
        loader.stopService()
        self.clock.advance(100)
        self.assertEqual(self.store.load_calls, [0, 10])
        self.assertEqual(self.clock.getDelayedCalls(), [])
