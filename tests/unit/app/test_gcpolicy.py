"""FreezeSurvivors: freezes after older-generation collections, only while running."""

import gc

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.app.gcpolicy import FreezeSurvivors


class FreezeSurvivorsTests(SynchronousTestCase):
    def test_freezes_after_generation_1_and_2_only_while_running(self) -> None:
        frozen: list[int] = []
        policy = FreezeSurvivors(freeze=lambda: frozen.append(1))
        policy.startService()
        self.addCleanup(lambda: policy.running and policy.stopService())
        self.assertIn(policy._after_collection, gc.callbacks)
        gc.collect(0)
        self.assertEqual(frozen, [])
        gc.collect(1)
        gc.collect(2)
        self.assertEqual(len(frozen), 2)
        self.assertEqual(policy.freezes, 2)
        policy.stopService()
        self.assertNotIn(policy._after_collection, gc.callbacks)
        gc.collect(2)
        self.assertEqual(len(frozen), 2)

    def test_young_generation_threshold_only_while_running(self) -> None:
        """Generation 0 is collected every 20,000 allocations while running; the thresholds before come back at stop."""
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        policy = FreezeSurvivors(freeze=lambda: None)
        policy.startService()
        self.addCleanup(lambda: policy.running and policy.stopService())
        self.assertEqual(gc.get_threshold(), (20_000, *before[1:]))
        policy.stopService()
        self.assertEqual(gc.get_threshold(), before)

    def test_started_twice_restores_the_first_thresholds(self) -> None:
        """A second start neither saves the raised thresholds as the ones to restore nor adds a second callback."""
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        policy = FreezeSurvivors(freeze=lambda: None)
        policy.startService()
        policy.startService()
        self.addCleanup(lambda: policy.running and policy.stopService())
        self.assertEqual(gc.callbacks.count(policy._after_collection), 1)
        policy.stopService()
        self.assertEqual(gc.get_threshold(), before)
        self.assertNotIn(policy._after_collection, gc.callbacks)
