# -*- test-case-name: tests.unit.test_store -*-
"""
Where the accounts come from: the OpenSIPS C{registrant} table.

L{IRegistrantStore} is the seam; L{sqlite.SqliteStore} is the embedded
default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

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

Row = dict[str, Any]


class StoreError(Exception):
    """The store cannot be used (unreadable, missing table or column)."""


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
    """A source of registrant rows."""

    def open() -> None:
        """
        Check the store is usable, creating the table if missing.

        @raise StoreError: with one line saying what is wrong.
        """

    def load() -> "Deferred[list[Row]]":
        """All rows, keyed by logical column name (absent columns are C{None})."""

    def close() -> None:
        """Release the connection."""
