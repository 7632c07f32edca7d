"""TableSync/FullSync: the full pass that finds vanished rows a slice at a time."""

import random

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.registrant import Policy
from uacregistrant.core.registry import Registry
from uacregistrant.sip.sharing import SharedTables
from uacregistrant.store.sync import TableSync


def row(i: int) -> dict:
    return {"id": i, "aor": f"sip:u{i}@test.invalid", "registrar": "sip:127.0.0.1:5080",
            "binding_URI": f"sip:u{i}@127.0.0.1:5060", "expiry": 3600, "state": 0}


class FullSyncTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry(2)
        self.forgotten: list = []
        self.sync = TableSync(
            self.registry, Policy(rng=random.Random(1)), self.clock, default_expires=3600, timer_interval=60,
            sockets=[], poke=lambda r: None, forget=self.forgotten.append,
        )
        first = self.sync.full(initial=True)
        first.feed([row(i) for i in range(25)])
        self.assertEqual(self.successResultOf(first.finish(self.clock))["added"], 25)

    def test_vanished_rows_found_a_slice_per_turn(self) -> None:
        """Rows gone from the table are retired over several reactor turns; the counts arrive with the last slice."""
        again = self.sync.full()
        again.feed([row(i) for i in range(25) if i % 5])  # rows 0, 5, 10, 15, 20 deleted
        result: list = []
        again.finish(self.clock, slice_size=10).addCallback(result.append)
        self.assertEqual(result, [])  # first slice done, two to go
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(result[0]["removed"], 5)
        self.assertEqual(result[0]["unchanged"], 20)
        # Never registered, so nothing to un-register: forgotten at once.
        gone = sorted(int(r.account.aor[5:].split("@")[0]) for r in self.forgotten)
        self.assertEqual(gone, [0, 5, 10, 15, 20])
        self.assertEqual(len(self.registry), 20)

    def test_small_registry_finishes_at_once(self) -> None:
        again = self.sync.full()
        again.feed([row(i) for i in range(24)])
        result: list = []
        again.finish(self.clock).addCallback(result.append)
        self.assertEqual(result[0]["removed"], 1)


class SingleRowChangesDuringPassTests(SynchronousTestCase):
    """A full pass's older snapshot never undoes a newer single-row change."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry(2)
        self.sync = TableSync(
            self.registry, Policy(rng=random.Random(1)), self.clock, default_expires=3600, timer_interval=60,
            sockets=[], poke=lambda r: None, forget=lambda r: None,
        )
        first = self.sync.full(initial=True)
        first.feed([row(i) for i in range(5)])
        self.successResultOf(first.finish(self.clock))

    def test_admin_delete_during_pass(self) -> None:
        """
        reg_delete (row kept, disabled) while a pass runs whose snapshot
        still has the row enabled: the pass does not bring the record back.
        """
        key = ("sip:u1@test.invalid", "sip:u1@127.0.0.1:5060", "sip:127.0.0.1:5080")
        full = self.sync.full()
        full.feed([row(0)])
        self.sync.delete(key)
        full.feed([row(i) for i in range(1, 5)])
        counts = self.successResultOf(full.finish(self.clock))
        self.assertIsNone(self.registry.get(key))
        self.assertEqual(counts["removed"], 0)

    def test_delete_before_the_row_is_read(self) -> None:
        """A NOTIFY arriving before the pass reaches the row: the snapshot's copy does not bring it back."""
        full = self.sync.full()
        key = ("sip:u3@test.invalid", "sip:u3@127.0.0.1:5060", "sip:127.0.0.1:5080")
        self.sync.retire(key)
        full.feed([row(i) for i in range(5)])
        self.successResultOf(full.finish(self.clock))
        self.assertIsNone(self.registry.get(key))

    def test_insert_during_pass(self) -> None:
        """A row inserted (and applied) during a pass whose snapshot lacks it is not retired by the pass."""
        full = self.sync.full()
        account = self.sync.account(row(9))
        assert account is not None
        self.sync.apply(account)
        full.feed([row(i) for i in range(5)])
        counts = self.successResultOf(full.finish(self.clock))
        self.assertIsNotNone(self.registry.get(account.key))
        self.assertEqual(counts["removed"], 0)

    def test_later_passes_see_everything_again(self) -> None:
        """Only passes under way when the change came leave the key alone."""
        key = ("sip:u3@test.invalid", "sip:u3@127.0.0.1:5060", "sip:127.0.0.1:5080")
        self.sync.retire(key)
        full = self.sync.full()
        full.feed([row(i) for i in range(5)])
        self.successResultOf(full.finish(self.clock))
        self.assertIsNotNone(self.registry.get(key))

    def test_row_id_is_not_configuration(self) -> None:
        """The same row read with another id (re-inserted, or first added from the console) is unchanged."""
        full = self.sync.full()
        full.feed([dict(row(i), id=100 + i) for i in range(5)])
        counts = self.successResultOf(full.finish(self.clock))
        self.assertEqual(counts["unchanged"], 5)
        self.assertEqual(sorted(r.account.row_id or 0 for r in self.registry), [100, 101, 102, 103, 104])

    def test_row_turned_unusable_keeps_its_record(self) -> None:
        """A row edited into something unusable is skipped (logged) and its record runs on, as after a NOTIFY."""
        full = self.sync.full()
        full.feed([dict(row(i), expiry=5) if i == 2 else row(i) for i in range(5)])
        counts = self.successResultOf(full.finish(self.clock))
        self.assertEqual((counts["skipped"], counts["removed"]), (1, 0))
        self.assertIsNotNone(self.registry.get(("sip:u2@test.invalid", "sip:u2@127.0.0.1:5060", "sip:127.0.0.1:5080")))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_duplicate_key_skipped(self) -> None:
        """
        In a table without a unique key, a second row of a key read in the
        same pass is skipped and logged with its id; the first row stands.
        """
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        full = self.sync.full()
        full.feed([row(i) for i in range(5)] + [dict(row(2), id=77, expiry=1800), dict(row(3), id=78)])
        counts = self.successResultOf(full.finish(self.clock))
        self.assertEqual((counts["skipped"], counts["unchanged"], counts["changed"]), (2, 5, 0))
        registrant = self.registry.get(("sip:u2@test.invalid", "sip:u2@127.0.0.1:5060", "sip:127.0.0.1:5080"))
        assert registrant is not None
        self.assertEqual(registrant.account.expiry, 3600)
        skipped = [formatEvent(e) for e in events if "duplicate" in formatEvent(e)]
        self.assertEqual(len(skipped), 2, skipped)
        self.assertIn("skipping row id=77: duplicate of (aor, binding_URI, registrar)", skipped[0])
        self.assertIn("skipping row id=78:", skipped[1])

    def test_unusable_row_does_not_shadow_a_good_one(self) -> None:
        """In a table without a unique key, an unusable copy of a key does not hide the good row after it."""
        full = self.sync.full()
        full.feed([dict(row(2), expiry=5), dict(row(2), expiry=1800)] + [row(i) for i in range(5) if i != 2])
        counts = self.successResultOf(full.finish(self.clock))
        self.assertEqual((counts["skipped"], counts["changed"]), (1, 1))
        registrant = self.registry.get(("sip:u2@test.invalid", "sip:u2@127.0.0.1:5060", "sip:127.0.0.1:5080"))
        assert registrant is not None
        self.assertEqual(registrant.account.expiry, 1800)


class SharedTablesTests(SynchronousTestCase):
    """Rows become accounts through the tables the sync was given, or its own."""

    def sync(self, shared: SharedTables | None) -> TableSync:
        return TableSync(
            Registry(2), Policy(rng=random.Random(1)), Clock(), default_expires=3600, timer_interval=60,
            sockets=[], poke=lambda r: None, forget=lambda r: None, shared=shared,
        )

    def test_accounts_use_the_tables_given(self) -> None:
        shared = SharedTables()
        sync = self.sync(shared)
        first, second = sync.validate(row(1)), sync.validate(row(2))
        self.assertIs(first.next_hop, second.next_hop)
        self.assertEqual(len(shared.uris), 1)
        self.assertIn(3600, shared.expiries)

    def test_each_sync_has_its_own_by_default(self) -> None:
        one, two = self.sync(None), self.sync(None)
        self.assertIs(one.validate(row(1)).next_hop, one.validate(row(2)).next_hop)
        self.assertIsNot(one.validate(row(1)).next_hop, two.validate(row(1)).next_hop)
