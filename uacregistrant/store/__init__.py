# -*- test-case-name: tests.unit.app.test_simulation,tests.unit.store.test_loader,tests.unit.store.test_store -*-
"""
Where the accounts come from: the OpenSIPS C{registrant} table.

L{IRegistrantStore} is the seam; L{sqlite.SqliteStore} is the embedded
default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

#: The table's columns in the seed's spelling (also the row keys).
COLUMNS = (
    "id",
    "registrar",
    "proxy",
    "aor",
    "third_party_registrant",
    "username",
    "password",
    "binding_URI",
    "binding_params",
    "expiry",
    "forced_socket",
    "cluster_shtag",
    "state",
)
REQUIRED_COLUMNS = ("aor", "registrar", "binding_URI")
KEY_COLUMNS = ("aor", "binding_URI", "registrar")
#: Names accepted for the columns in admin commands (lower case).
COLUMN_ALIASES = {name.lower(): name for name in COLUMNS} | {
    "binding": "binding_URI",
    "contact": "binding_URI",
    "socket": "forced_socket",
}

Row = dict[str, Any]
#: The table's unique key: (aor, binding_URI, registrar).
Key = tuple[str, str, str]
#: Rows are handed over in batches of this many.
BATCH_SIZE = 1000


class StoreError(Exception):
    """The store cannot be used (unreadable, missing table or column, unavailable)."""


class StoreValueError(StoreError):
    """The table refused the values written (too long, out of range, a constraint)."""


@dataclass(frozen=True, slots=True)
class TableLayout:
    """The table name and the real name of each logical column."""

    table: str = "registrant"
    columns: dict[str, str] = field(default_factory=lambda: {name: name for name in COLUMNS})

    @property
    def is_default(self) -> bool:
        """Whether every name is the seed's default."""
        return self.table == "registrant" and all(k == v for k, v in self.columns.items())


def quote_identifier(name: str) -> str:
    """Quote an SQL identifier; refuse names that cannot be quoted safely."""
    if not name or '"' in name or "\x00" in name:
        raise StoreError(f"invalid SQL identifier {name!r}")
    return f'"{name}"'


def schema_sql(flavour: str) -> str:
    """The packaged CREATE TABLE script (C{sqlite} or C{postgres})."""
    return resources.files(__name__).joinpath(f"schema/registrant-{flavour}.sql").read_text("utf-8")


class IRegistrantStore(Interface):
    """A source of registrant rows, and where admin changes are written."""

    connected = Attribute(
        """
        C{bool}: whether the database can be reached now (PostgreSQL: the query
        connection is up and, with NOTIFY, so is the listening one; SQLite:
        always).  For the C{uacregistrant_db_up} metric.
        """
    )

    def check() -> None:
        """
        At the start-up checks: refuse what cannot work, creating nothing
        and keeping no connection.

        @raise StoreError: with one line saying what is wrong.
        """

    def start() -> "Deferred[None]":
        """Connect (and create the table if missing); fails with L{StoreError}."""

    def load(consume: Callable[[list[Row]], None]) -> "Deferred[None]":
        """
        Hand every row (keyed by logical column name, absent columns
        C{None}) to C{consume} in batches, one batch per reactor turn, so a
        large table neither stalls the reactor nor sits in memory twice.
        """

    def load_key(key: Key) -> "Deferred[Row | None]":
        """The row with this (aor, binding_URI, registrar), or C{None}."""

    def set_state(key: Key, state: int) -> "Deferred[int]":
        """Write the state column of exactly this record; fires with the number of rows changed."""

    def upsert(row: Row) -> "Deferred[str]":
        """
        Update the columns C{row} names (the key columns find the row), or
        insert the row; fires with C{"updated"} or C{"inserted"}.
        """

    def watch(
        on_change: Callable[[Key | None, Key | None], "Deferred[None]"],
        on_resync: Callable[[], None],
    ) -> None:
        """
        Report live changes, if the store can: C{on_change(key, old_key)}
        for one changed row (C{key} C{None} when deleted, C{old_key} when
        the key changed or went); C{on_resync()} after reconnecting, when
        changes may have been missed.
        """

    def close() -> None:
        """Release the connection(s)."""


def row_assignments(row: Row, present: dict[str, str]) -> list[tuple[str, Any]]:
    """C{(real column, value)} for every logical column of C{row} the table has (not id)."""
    return [(present[name], row[name]) for name in COLUMNS if name != "id" and name in row and name in present]


def match_columns(layout: TableLayout, actual: list[str], where: str) -> dict[str, str]:
    """
    Map each logical column to the table's real column name (matched
    case-insensitively); optional columns may be absent.

    @raise StoreError: naming the missing required columns.
    """
    by_lower = {name.lower(): name for name in actual}
    present: dict[str, str] = {}
    missing = []
    for logical in COLUMNS:
        real = layout.columns[logical]
        if real.lower() in by_lower:
            present[logical] = by_lower[real.lower()]
        elif logical in REQUIRED_COLUMNS:
            missing.append(real)
    if missing:
        raise StoreError(f"table {where} lacks required column(s): {', '.join(missing)}")
    return present


def select_sql(layout: TableLayout, present: dict[str, str]) -> tuple[list[str], str]:
    """The logical columns read, and the SELECT reading them."""
    logical = list(present)
    columns = ", ".join(quote_identifier(present[name]) for name in logical)
    return logical, f"SELECT {columns} FROM {quote_identifier(layout.table)}"


def where_key_sql(present: dict[str, str], placeholder: str) -> str:
    """C{aor = ? AND binding_URI = ? AND registrar = ?} with the real names."""
    return " AND ".join(f"{quote_identifier(present[name])} = {placeholder}" for name in KEY_COLUMNS)


def make_row(logical: list[str], values: tuple[Any, ...]) -> Row:
    """A row keyed by every logical column (absent ones C{None})."""
    row = _NO_VALUES.copy()  # (a copy: 0.5 against 0.8 µs for dict.fromkeys)
    row.update(zip(logical, values))
    return row


#: Every logical column, without a value (never changed: L{make_row} copies it).
_NO_VALUES: Row = dict.fromkeys(COLUMNS)
