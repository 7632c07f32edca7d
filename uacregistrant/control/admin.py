# -*- test-case-name: tests.unit.control.test_control,tests.integration.test_postgres -*-
"""
What the admin commands do to records, the table and the registrations:
reload, enable, disable, force a registration, delete, upsert.

Every table write names exactly one record: all three key columns, as
stored; a write that changes no row is a 404, never "changed".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from uacregistrant.core.account import Account, AccountKey, RowError
from uacregistrant.core.registrant import Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.sip.numbers import parse_signed
from uacregistrant.store import COLUMNS, COLUMN_ALIASES, KEY_COLUMNS, IRegistrantStore, Row
from uacregistrant.store.sync import TableSync

#: The table's INTEGER columns hold 32 bits in PostgreSQL.
_INT32 = (-(2**31), 2**31 - 1)


class AdminError(Exception):
    """A refused admin request: a status code and one line of reason."""

    def __init__(self, code: int, reason: str, detail: list[str] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.detail = detail or []


class Admin:
    """Admin operations over one registry, table and sync."""

    def __init__(
        self,
        registry: Registry,
        store: IRegistrantStore,
        sync: TableSync,
        clock: IReactorTime,
        reload_all: Callable[[], defer.Deferred[dict[str, int]]],
    ) -> None:
        self._registry = registry
        self._store = store
        self._sync = sync
        self._clock = clock
        self._reload_all = reload_all

    def find(self, args: list[str]) -> Registrant:
        """
        The record named by C{AOR} (if it has one binding) or by
        C{AOR BINDING REGISTRAR}.

        @raise AdminError: 400 for bad arguments, 404 unknown, 409 ambiguous.
        """
        if len(args) == 3:
            found = self._registry.get((args[0], args[1], args[2]))
            if found is None:
                raise AdminError(404, "No such registrant", [f"no record {' '.join(args)[:512]}"])
            return found
        if len(args) != 1:
            raise AdminError(400, "Bad arguments", ["give AOR, or AOR BINDING REGISTRAR"])
        matches = self._registry.by_aor(args[0])
        if not matches:
            raise AdminError(404, "No such registrant", [f"no record for AOR {args[0][:256]}"])
        if len(matches) > 1:
            raise AdminError(
                409,
                "Ambiguous AOR",
                ["several records share this AOR; give AOR BINDING REGISTRAR, one of:"]
                + [" ".join(r.account.key) for r in matches],
            )
        return matches[0]

    def set_enabled(self, registrant: Registrant, enabled: bool) -> defer.Deferred[str]:
        """Enable or disable a record (disable un-registers); write its state."""
        key = registrant.account.key
        if registrant.account.enabled == enabled:
            return defer.succeed("unchanged")
        d = self._store.set_state(key, 0 if enabled else 1)

        def written(rows: int) -> str:
            _require_row(rows, key)
            current = self._registry.get(key)
            if current is not None:
                self._sync.apply(dataclasses.replace(current.account, enabled=enabled))
            return "changed"

        return d.addCallback(written)

    def force_register(self, registrant: Registrant) -> None:
        """Send a REGISTER now rather than at the next bucket visit."""
        if not registrant.enabled:
            raise AdminError(409, "Registrant disabled", ["enable it first (reg_enable)"])
        registrant.send_soon(self._clock.seconds())
        self._sync.poke(registrant)

    def delete(self, registrant: Registrant) -> defer.Deferred[None]:
        """
        Un-register then forget a record; its row is kept, disabled
        (state 1), and the record stays forgotten (reloads and NOTIFYs
        included) until that row is enabled again.
        """
        key = registrant.account.key
        d = self._store.set_state(key, 1)

        def written(rows: int) -> None:
            _require_row(rows, key)
            self._sync.delete(key)

        return d.addCallback(written)

    def upsert(self, pairs: list[str]) -> defer.Deferred[str]:
        """
        Add one record, or change the columns named in C{column=value}
        pairs and keep the others, in the table and in memory (the record
        is then read back from its row).
        """
        named = self.row_from_pairs(pairs)
        key: AccountKey = (named["aor"], named["binding_URI"], named["registrar"])

        def merge(stored: Row | None) -> defer.Deferred[str]:
            merged: Row = dict(stored) if stored is not None else {"state": 0}
            merged.update(named)
            account = self._validate(merged)
            # Decided before writing: the table's own NOTIFY may apply the
            # row before this write's callback runs.
            existing = self._registry.get(account.key)
            outcome = "added" if existing is None else "unchanged" if existing.account == account else "changed"
            written: defer.Deferred[str] = self._store.upsert(named)
            reread: defer.Deferred[Row | None] = written.addCallback(lambda _: self._store.load_key(key))
            return reread.addCallback(lambda row: read_back(row, outcome))

        def read_back(row: Row | None, outcome: str) -> str:
            if row is None:
                raise AdminError(409, "Row changed meanwhile", [f"the row for {' '.join(key)[:512]} is gone; try again"])
            self._sync.apply(self._validate(row))
            return outcome

        return self._store.load_key(key).addCallback(merge)

    def _validate(self, row: Row) -> Account:
        try:
            return self._sync.validate(row)
        except RowError as e:
            raise AdminError(400, "Bad record", [f"{e.reason}; fix: {e.hint}"]) from None

    def row_from_pairs(self, pairs: list[str]) -> Row:
        """
        Parse C{column=value} pairs into the columns they name (an empty
        value is NULL); the key columns are required.
        """
        row: Row = {}
        for pair in pairs:
            name, eq, value = pair.partition("=")
            column = COLUMN_ALIASES.get(name.lower())
            if not eq or column is None or column == "id":
                raise AdminError(400, "Bad arguments", [f"unknown column in {pair[:64]!r}; columns: {', '.join(COLUMNS[1:])}"])
            if column in row:
                raise AdminError(400, "Bad arguments", [f"{column} given twice"])
            row[column] = value if value != "" else None
        missing = [name for name in KEY_COLUMNS if not row.get(name)]
        if missing:
            raise AdminError(400, "Bad arguments", [f"missing {', '.join(missing)}"])
        for name, low in (("expiry", 1), ("state", _INT32[0])):
            if row.get(name) is not None:
                row[name] = _integer(name, row[name], low, _INT32[1])
        return row

    def reload(self, args: list[str]) -> defer.Deferred[dict[str, Any]]:
        """Reload everything, or one record by its full key."""
        if not args:
            return self._reload_all()
        if len(args) == 1:
            key: AccountKey = self.find(args).account.key
        elif len(args) == 3:
            key = (args[0], args[1], args[2])
        else:
            raise AdminError(400, "Bad arguments", ["give nothing, AOR, or AOR BINDING REGISTRAR"])

        def loaded(row: Row | None) -> dict[str, Any]:
            if row is None:
                if self._sync.retire(key):
                    return {"removed": 1}
                raise AdminError(404, "No such registrant in database", [" ".join(key)[:512]])
            account = self._validate(row)
            if account.key != key:
                raise AdminError(409, "Key mismatch", ["the row read back has another key; reload all"])
            return {self._sync.apply(account): 1}

        return self._store.load_key(key).addCallback(loaded)


def _integer(name: str, text: str, low: int, high: int) -> int:
    """A console value as an integer in [low, high], in ASCII digits."""
    number = parse_signed(text, max_digits=12)
    if number is None or not low <= number <= high:
        raise AdminError(400, "Bad arguments", [f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}"])
    return number


def _require_row(rows: int, key: AccountKey) -> None:
    """A write that changed no row: the row is gone (or its key differs)."""
    if rows == 0:
        raise AdminError(404, "No such row in the table", [f"no row has the key {' '.join(key)[:512]}; reg_reload to resynchronise"])
