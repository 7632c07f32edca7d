"""
Loading the table and writing to it leave no garbage cycles behind.

The daemon freezes what survives the collector's older generations
(L{uacregistrant.app.gcpolicy.FreezeSurvivors}): a cycle frozen while in
use is never collected afterwards.  A full pass's state (every key seen, a
tuple per row) caught in such a cycle stayed for good after each load, so
what the store and the loader build per call must be freed by reference
counting alone.
"""

from __future__ import annotations

import gc
import os
import random
import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.registrant import Policy
from uacregistrant.core.registry import Registry
from uacregistrant.store import BATCH_SIZE, TableLayout, schema_sql
from uacregistrant.store.loader import TableLoader
from uacregistrant.store.sqlite import SqliteStore, run_synchronously
from uacregistrant.store.sync import FullSync, TableSync


def _table(path: str, rows: int) -> None:
    db = sqlite3.connect(path)
    db.executescript(schema_sql("sqlite"))
    db.executemany(
        "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) VALUES (?, ?, ?, ?, ?, ?)",
        [("sip:127.0.0.1:5080", f"sip:u{i}@test.invalid", f"u{i}", "pw", f"sip:u{i}@127.0.0.1:5060", 3600) for i in range(rows)],
    )
    db.commit()
    db.close()


class NoCyclesTests(SynchronousTestCase):
    def setUp(self) -> None:
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        self.path = os.path.join(self.mktemp() + ".db")
        _table(self.path, 2 * BATCH_SIZE + 10)

    def loaded(self, clock: Clock) -> tuple[SqliteStore, TableLoader, list[Any]]:
        """A store and a loader, the first load done; the garbage of first uses (imports, class set-up) collected."""
        store = SqliteStore(self.path, TableLayout(), clock, run_in_thread=run_synchronously)
        self.addCleanup(store.close)
        registry = Registry(2)
        sync = TableSync(registry, Policy(rng=random.Random(1)), clock, default_expires=3600, timer_interval=60, sockets=[],
                         poke=lambda r: None, forget=lambda r: None)
        passes: list[Any] = []
        loader = TableLoader(store, sync, clock, poll_interval=0.0, loaded=passes.append, first_batch=lambda: None)
        loader.startService()
        self.addCleanup(loader.stopService)
        for _ in range(10):
            clock.advance(0)
        self.assertEqual(len(registry), 2 * BATCH_SIZE + 10)
        self.assertEqual(len(passes), 1)
        gc.collect()
        return store, loader, passes

    def test_full_pass_leaves_no_cycles(self) -> None:
        """
        A full pass (a reload) is freed by reference counting: no pass
        object stays, and the collector finds nothing.
        """
        clock = Clock()
        store, loader, passes = self.loaded(clock)
        loader.reload()
        for _ in range(10):
            clock.advance(0)
        self.assertEqual(len(passes), 2)
        self.assertEqual([o for o in gc.get_objects() if isinstance(o, FullSync)], [])
        self.assertEqual(gc.collect(), 0)

    def test_writes_leave_no_cycles(self) -> None:
        """A state write, an upsert and a lookup each leave nothing for the collector."""
        clock = Clock()
        store, loader, passes = self.loaded(clock)
        key = ("sip:u1@test.invalid", "sip:u1@127.0.0.1:5060", "sip:127.0.0.1:5080")
        results: list[Any] = []
        store.set_state(key, 1).addCallback(results.append)
        store.load_key(key).addCallback(results.append)
        store.upsert({"aor": key[0], "binding_URI": key[1], "registrar": key[2], "expiry": 60}).addCallback(results.append)
        clock.advance(0)
        self.assertEqual(len(results), 3)
        self.assertEqual(gc.collect(), 0)
