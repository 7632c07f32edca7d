"""TableSync/FullSync: the full pass that finds vanished rows a slice at a time."""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.registrant import Policy
from uacregistrant.registry import Registry
from uacregistrant.sync import TableSync


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
