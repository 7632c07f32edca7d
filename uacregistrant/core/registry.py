# -*- test-case-name: tests.unit.app.test_simulation,tests.unit.net.test_transaction_layer,tests.unit.schedule.test_walker -*-
"""
All registrants, in 2^hash_size buckets chosen by a stable hash of the AOR.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator, KeysView

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
    Registrants by bucket, by key C{(aor, binding, registrar)} and by AOR.
    """

    def __init__(self, hash_size: int) -> None:
        self.bucket_count = 1 << hash_size
        self._buckets: list[dict[AccountKey, Registrant]] = [{} for _ in range(self.bucket_count)]
        self._by_key: dict[AccountKey, Registrant] = {}
        # One record per AOR is the common case: a list only when shared.
        self._by_aor: dict[str, Registrant | list[Registrant]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Registrant]:
        for bucket in self._buckets:
            yield from bucket.values()

    def add(self, registrant: Registrant) -> None:
        """Add a registrant; its key must be new."""
        # One tuple for both dictionaries: compiled (mypyc), a variable of the
        # key's own tuple type would be boxed anew for each (64 bytes each).
        key: Any = registrant.account.key
        if key in self._by_key:
            raise KeyError(f"duplicate registrant {key}")
        self._buckets[bucket_of(key[0], self.bucket_count)][key] = registrant
        self._by_key[key] = registrant
        same = self._by_aor.get(key[0])
        if same is None:
            self._by_aor[key[0]] = registrant
        elif isinstance(same, list):
            same.append(registrant)
        else:
            self._by_aor[key[0]] = [same, registrant]

    def remove(self, registrant: Registrant) -> None:
        """Forget a registrant."""
        key = registrant.account.key
        del self._buckets[bucket_of(key[0], self.bucket_count)][key]
        del self._by_key[key]
        same = self._by_aor[key[0]]
        if isinstance(same, list):
            same.remove(registrant)
            if len(same) == 1:
                self._by_aor[key[0]] = same[0]
        else:
            del self._by_aor[key[0]]
        registrant.mark_removed()

    def keys(self) -> KeysView[AccountKey]:
        """Every record's key (a live view)."""
        return self._by_key.keys()

    def get(self, key: AccountKey) -> Registrant | None:
        """The registrant with this key, or C{None}."""
        return self._by_key.get(key)

    def by_aor(self, aor: str) -> list[Registrant]:
        """All registrants of an AOR."""
        same = self._by_aor.get(aor)
        if same is None:
            return []
        return list(same) if isinstance(same, list) else [same]

    def bucket(self, index: int) -> list[Registrant]:
        """A snapshot of one bucket's registrants."""
        return list(self._buckets[index].values())
