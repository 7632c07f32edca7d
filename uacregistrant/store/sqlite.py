# -*- test-case-name: tests.unit.test_store -*-
"""
The embedded default store: an SQLite file read on the reactor thread
(SQLite answers from a local file in microseconds; no thread pool).
"""

from __future__ import annotations

import os
import sqlite3

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from . import COLUMNS, REQUIRED_COLUMNS, IRegistrantStore, Row, StoreError, TableLayout, quote_identifier, schema_sql

_log = Logger()


def sqlite_path(url: str) -> str:
    """The file path of C{sqlite:PATH} or C{sqlite://PATH}."""
    if not url.startswith("sqlite:"):
        raise StoreError(f"not an sqlite URL: {url!r}")
    path = url[len("sqlite:") :]
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise StoreError("sqlite URL without a path")
    return path


@implementer(IRegistrantStore)
class SqliteStore:
    """The registrant table in an SQLite file."""

    def __init__(self, path: str, layout: TableLayout) -> None:
        self.path = path
        self.layout = layout
        self._db: sqlite3.Connection | None = None
        self._present: dict[str, str] = {}

    def open(self) -> None:
        """Connect, create the table if missing, check the columns."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open database {self.path}: directory {directory} does not exist")
        try:
            db = sqlite3.connect(self.path)
            db.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {self.path}: {e}") from None
        self._db = db
        table = self.layout.table
        try:
            found = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
            if found is None:
                if not self.layout.is_default:
                    raise StoreError(
                        f"table {table} does not exist in {self.path}; create it (see the packaged "
                        "schema registrant-sqlite.sql) or use the default table and column names"
                    )
                db.executescript(schema_sql("sqlite"))
                db.commit()
                _log.info("created table {table} in {path}", table=table, path=self.path)
            info = db.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read table {table} in {self.path}: {e}") from None
        actual = {str(row[1]).lower(): str(row[1]) for row in info}
        missing = []
        for logical in COLUMNS:
            real = self.layout.columns[logical]
            if real.lower() in actual:
                self._present[logical] = actual[real.lower()]
            elif logical in REQUIRED_COLUMNS:
                missing.append(real)
        if missing:
            raise StoreError(f"table {table} in {self.path} lacks required column(s): {', '.join(missing)}")

    def load(self) -> defer.Deferred[list[Row]]:
        """Read every row."""
        try:
            return defer.succeed(self._read())
        except Exception as e:
            return defer.fail(StoreError(f"reading {self.layout.table} failed: {e}"))

    def _read(self) -> list[Row]:
        if self._db is None:
            raise StoreError("store is not open")
        logical = list(self._present)
        select = ", ".join(quote_identifier(self._present[name]) for name in logical)
        cursor = self._db.execute(f"SELECT {select} FROM {quote_identifier(self.layout.table)}")
        rows: list[Row] = []
        for values in cursor:
            row: Row = dict.fromkeys(COLUMNS)
            row.update(zip(logical, values))
            rows.append(row)
        return rows

    def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            self._db.close()
            self._db = None
