# -*- test-case-name: tests.unit.core.test_registry,tests.unit.app.test_simulation,tests.unit.net.test_transaction_layer,tests.unit.schedule.test_walker -*-
"""
All registrants, in 2^hash_size buckets chosen by a stable hash of the AOR.
"""

from __future__ import annotations

import zlib
from typing import Iterator

from uacregistrant.core.account import AccountKey
from uacregistrant.core.registrant import Registrant


def bucket_of(aor: str, bucket_count: int) -> int:
    """
    The bucket of an AOR: CRC-32 of its UTF-8 bytes, masked.

    Stable across processes and runs, unlike Python's salted C{hash()}.
    """
    return zlib.crc32(aor.encode("utf-8")) & (bucket_count - 1)


class Registry:
    """
    Registrants by bucket, and by AOR (which also finds one by its key
    C{(aor, binding, registrar)}).

    Nothing here holds a key tuple: a bucket is keyed by the registrants
    themselves (a dict, for its insertion order), and a key is found among
    the records of its AOR (one, as a rule; an AOR with several has them
    by C{(binding, registrar)}, so a large one is no linear search).  A
    third dictionary by key and its tuples took some 110 bytes per record
    at 100,000.
    """

    def __init__(self, hash_size: int) -> None:
        self.bucket_count = 1 << hash_size
        self._buckets: list[dict[Registrant, None]] = [{} for _ in range(self.bucket_count)]
        # One record per AOR is the common case: a dict only when shared.
        self._by_aor: dict[str, Registrant | dict[tuple[str, str], Registrant]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Registrant]:
        for bucket in self._buckets:
            yield from bucket

    def add(self, registrant: Registrant) -> None:
        """Add a registrant; its key must be new."""
        account = registrant.account
        aor = account.aor
        same = self._by_aor.get(aor)
        if same is not None and _find(same, aor, account.binding_uri, account.registrar) is not None:
            raise KeyError(f"duplicate registrant {account.key}")
        self._buckets[bucket_of(aor, self.bucket_count)][registrant] = None
        self._count += 1
        if same is None:
            self._by_aor[aor] = registrant
        elif isinstance(same, dict):
            same[(account.binding_uri, account.registrar)] = registrant
        else:
            first = same.account
            self._by_aor[aor] = {(first.binding_uri, first.registrar): same, (account.binding_uri, account.registrar): registrant}

    def remove(self, registrant: Registrant) -> None:
        """Forget a registrant."""
        account = registrant.account
        aor = account.aor
        del self._buckets[bucket_of(aor, self.bucket_count)][registrant]
        self._count -= 1
        same = self._by_aor[aor]
        if isinstance(same, dict):
            del same[(account.binding_uri, account.registrar)]
            if len(same) == 1:
                self._by_aor[aor] = next(iter(same.values()))
        else:
            del self._by_aor[aor]
        registrant.mark_removed()

    def keys(self) -> list[AccountKey]:
        """Every record's key (a snapshot, in bucket order)."""
        return [registrant.account.key for registrant in self]

    def get(self, key: AccountKey) -> Registrant | None:
        """The registrant with this key, or C{None}."""
        aor, binding, registrar = key
        same = self._by_aor.get(aor)
        return None if same is None else _find(same, aor, binding, registrar)

    def by_aor(self, aor: str) -> list[Registrant]:
        """All registrants of an AOR."""
        same = self._by_aor.get(aor)
        if same is None:
            return []
        return list(same.values()) if isinstance(same, dict) else [same]

    def bucket(self, index: int) -> list[Registrant]:
        """A snapshot of one bucket's registrants."""
        return list(self._buckets[index])


def _find(same: Registrant | dict[tuple[str, str], Registrant], aor: str, binding: str, registrar: str) -> Registrant | None:
    """The record of C{same} (one AOR's) with this key, or C{None}."""
    if isinstance(same, dict):
        return same.get((binding, registrar))
    account = same.account
    if account.binding_uri == binding and account.registrar == registrar and account.aor == aor:
        return same
    return None
