"""Tests for L{uacregistrant.core.registry}: records by bucket, by AOR and by key."""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.account import Account
from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.core.registry import Registry, bucket_of


def record(aor: str, binding: str = "sip:u@192.0.2.1", registrar: str = "sip:example.com", policy: Policy | None = None) -> Registrant:
    return Registrant(Account(row_id=None, aor=aor, registrar=registrar, binding_uri=binding, expiry=3600), policy or Policy())


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = Registry(2)
        policy = Policy()
        self.alice = record("sip:alice@example.com", policy=policy)
        # Bob has two bindings, and a third record at another registrar.
        self.bob = [
            record("sip:bob@example.com", "sip:bob@192.0.2.1", policy=policy),
            record("sip:bob@example.com", "sip:bob@192.0.2.2", policy=policy),
            record("sip:bob@example.com", "sip:bob@192.0.2.1", "sip:other.example.com", policy=policy),
        ]
        for r in [self.alice, *self.bob]:
            self.registry.add(r)

    def test_get_by_key(self) -> None:
        """A key finds its record, among its AOR's others; other keys find nothing."""
        for r in [self.alice, *self.bob]:
            self.assertIs(self.registry.get(r.account.key), r)
        self.assertIsNone(self.registry.get(("sip:bob@example.com", "sip:bob@192.0.2.3", "sip:example.com")))
        self.assertIsNone(self.registry.get(("sip:bob@example.com", "sip:bob@192.0.2.2", "sip:other.example.com")))
        self.assertIsNone(self.registry.get(("sip:carol@example.com", "sip:u@192.0.2.1", "sip:example.com")))

    def test_get_after_reconfiguration(self) -> None:
        """A record whose account was replaced (same key) is still found by its key."""
        self.alice.reconfigure(dataclasses.replace(self.alice.account, expiry=600), 0)
        self.assertIs(self.registry.get(("sip:alice@example.com", "sip:u@192.0.2.1", "sip:example.com")), self.alice)

    def test_duplicate_key_refused(self) -> None:
        """A second record with a key already held is refused; the first stays."""
        with self.assertRaises(KeyError):
            self.registry.add(record("sip:bob@example.com", "sip:bob@192.0.2.2"))
        self.assertEqual(len(self.registry), 4)
        self.assertEqual(self.registry.by_aor("sip:bob@example.com"), self.bob)

    def test_by_aor_and_buckets(self) -> None:
        """Records by AOR in the order added; each in the bucket of its AOR; iteration walks the buckets."""
        self.assertEqual(self.registry.by_aor("sip:alice@example.com"), [self.alice])
        self.assertEqual(self.registry.by_aor("sip:nobody@example.com"), [])
        buckets = [self.registry.bucket(i) for i in range(self.registry.bucket_count)]
        for i, bucket in enumerate(buckets):
            self.assertEqual([bucket_of(r.account.aor, 4) for r in bucket], [i] * len(bucket))
        self.assertEqual(buckets[bucket_of("sip:bob@example.com", 4)][-3:], self.bob)
        self.assertEqual(list(self.registry), [r for bucket in buckets for r in bucket])
        self.assertEqual(self.registry.keys(), [r.account.key for r in self.registry])

    def test_remove(self) -> None:
        """A removed record is gone from every view and marked removed; its AOR's others stay."""
        self.registry.remove(self.bob[1])
        self.assertTrue(self.bob[1].removed)
        self.assertIsNone(self.registry.get(self.bob[1].account.key))
        self.assertEqual(self.registry.by_aor("sip:bob@example.com"), [self.bob[0], self.bob[2]])
        self.registry.remove(self.bob[0])
        self.registry.remove(self.alice)
        self.assertEqual(self.registry.by_aor("sip:bob@example.com"), [self.bob[2]])
        self.assertEqual(self.registry.by_aor("sip:alice@example.com"), [])
        self.assertEqual((len(self.registry), list(self.registry)), (1, [self.bob[2]]))
        self.assertEqual(self.registry.keys(), [self.bob[2].account.key])
        with self.assertRaises(KeyError):
            self.registry.remove(self.alice)
        # Added again after its removal.
        again = record("sip:alice@example.com")
        self.registry.add(again)
        self.assertIs(self.registry.get(again.account.key), again)

    def test_many_records_of_one_aor(self) -> None:
        """
        An AOR with many records (bindings or registrars) finds each by its
        key, keeps them in the order added, and goes back to one record as
        they leave.
        """
        policy = Policy()
        many = [record("sip:trunk@example.com", f"sip:trunk@192.0.2.{i}", policy=policy) for i in range(1, 201)]
        for r in many:
            self.registry.add(r)
        self.assertEqual(len(self.registry), 4 + 200)
        for r in many:
            self.assertIs(self.registry.get(r.account.key), r)
        with self.assertRaises(KeyError):
            self.registry.add(record("sip:trunk@example.com", "sip:trunk@192.0.2.7", policy=policy))
        self.assertEqual(self.registry.by_aor("sip:trunk@example.com"), many)
        for r in many[1:]:
            self.registry.remove(r)
        self.assertEqual(self.registry.by_aor("sip:trunk@example.com"), many[:1])
        self.assertIs(self.registry.get(many[0].account.key), many[0])
        self.assertIsNone(self.registry.get(many[1].account.key))
        self.registry.remove(many[0])
        self.assertEqual(self.registry.by_aor("sip:trunk@example.com"), [])
