# -*- test-case-name: tests.unit.test_store -*-
"""
The embedded default store: an SQLite file read on the reactor thread
(SQLite answers from a local file in microseconds; no thread pool).
"""

from __future__ import annotations

import os
import sqlite3

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from . import (
    BATCH_SIZE,
    IRegistrantStore,
    Key,
    Row,
    StoreError,
    TableLayout,
    make_row,
    match_columns,
    quote_identifier,
    row_assignments,
    schema_sql,
    select_sql,
    where_key_sql,
)

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

    def __init__(self, path: str, layout: TableLayout, clock: IReactorTime | None = None) -> None:
        self.path = path
        self.layout = layout
        self.clock = clock
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
        self._present = match_columns(self.layout, [str(row[1]) for row in info], f"{table} in {self.path}")

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    def _select(self) -> tuple[list[str], str]:
        return select_sql(self.layout, self._present)

    def _where_key(self) -> str:
        return where_key_sql(self._present, "?")

    def load(self, consume: Callable[[list[Row]], None]) -> defer.Deferred[None]:
        """Read every row, C{BATCH_SIZE} per reactor turn."""
        done: defer.Deferred[None] = defer.Deferred()
        try:
            logical, query = self._select()
            cursor = self._connection().execute(query)
        except (sqlite3.Error, StoreError) as e:
            return defer.fail(StoreError(f"reading {self.layout.table} failed: {e}"))

        def batch() -> None:
            try:
                values = cursor.fetchmany(BATCH_SIZE)
                if values:
                    consume([make_row(logical, v) for v in values])
            except Exception as e:
                done.errback(StoreError(f"reading {self.layout.table} failed: {e}"))
                return
            if len(values) < BATCH_SIZE:
                done.callback(None)
            elif self.clock is not None:
                self.clock.callLater(0, batch)
            else:
                batch()

        batch()
        return done

    def load_key(self, key: Key) -> defer.Deferred[Row | None]:
        """The row with this key, or C{None}."""
        try:
            logical, query = self._select()
            found = self._connection().execute(f"{query} WHERE {self._where_key()}", key).fetchone()
        except (sqlite3.Error, StoreError) as e:
            return defer.fail(StoreError(f"reading {self.layout.table} failed: {e}"))
        return defer.succeed(None if found is None else make_row(logical, found))

    def set_state(self, key: Key, state: int) -> defer.Deferred[None]:
        """Write the state column of exactly this record (all three key columns)."""
        if "state" not in self._present:
            return defer.succeed(None)
        return self._write(
            f"UPDATE {quote_identifier(self.layout.table)} SET {quote_identifier(self._present['state'])} = ? "
            f"WHERE {self._where_key()}",
            (state, *key),
        )

    def upsert(self, row: Row) -> defer.Deferred[None]:
        """Update the row with the same key, or insert it."""
        assignments = row_assignments(row, self._present)
        table = quote_identifier(self.layout.table)
        key = (row["aor"], row["binding_URI"], row["registrar"])
        sets = ", ".join(f"{quote_identifier(name)} = ?" for name, _ in assignments)
        try:
            db = self._connection()
            with db:
                cursor = db.execute(f"UPDATE {table} SET {sets} WHERE {self._where_key()}", [v for _, v in assignments] + list(key))
                if cursor.rowcount == 0:
                    names = ", ".join(quote_identifier(name) for name, _ in assignments)
                    marks = ", ".join("?" for _ in assignments)
                    db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", [v for _, v in assignments])
        except (sqlite3.Error, StoreError) as e:
            return defer.fail(StoreError(f"writing {self.layout.table} failed: {e}"))
        return defer.succeed(None)

    def _write(self, sql: str, params: tuple[Any, ...]) -> defer.Deferred[None]:
        try:
            db = self._connection()
            with db:
                db.execute(sql, params)
        except (sqlite3.Error, StoreError) as e:
            return defer.fail(StoreError(f"writing {self.layout.table} failed: {e}"))
        return defer.succeed(None)

    def watch(
        self,
        on_change: Callable[[Key | None, Key | None], defer.Deferred[None]],
        on_resync: Callable[[], None],
    ) -> None:
        """SQLite has no NOTIFY: changes are found by --db-poll."""

    def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            self._db.close()
            self._db = None
