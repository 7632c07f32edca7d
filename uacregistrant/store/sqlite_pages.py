# -*- test-case-name: tests.unit.store.test_sqlite_pages -*-
"""
Reading an SQLite table a page at a time, one statement step per page.

Python's C{sqlite3} lets go of the GIL around every step of a statement,
that is for every row.  A loader thread reading row by row must take the
GIL back once per row, and while the reactor thread is busy each of its
system calls wakes the loader to try: during a cold start of 50,000
accounts that ping-pong took some 15 % of the daemon's CPU, and stretched
the load over most of the start (C{bench/cold_start_sipp.py}; see
C{docs/PERFORMANCE.md}).  Here SQLite writes a whole page as one JSON
text in C, and the thread takes the GIL once to decode it.

JSON carries text, integers and NULL exactly.  A row holding a REAL (JSON
keeps 15 digits) or a BLOB (JSON refuses it), or more than
L{PAGED_ROW_CHARS} characters in all, is read again by rowid with a plain
SELECT, so every value is the one C{sqlite3} itself would return, and a
page stays small (at most about 6.5 MB of JSON, control characters
escaped six times over; some 0.3 MB for usual rows): no row can make a
page exceed SQLite's longest string, nor its decoding hold the GIL long.
The pages are read inside one read transaction, held by an open
statement: they see the table as it was when the reading began, as one
SELECT would.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from uacregistrant.store import quote_identifier

#: Names SQLite accepts for a rowid table's row number, unless a column has taken them.
_ROWID_NAMES = ("rowid", "_rowid_", "oid")
#: A row whose values take more characters than this is read on its own.
PAGED_ROW_CHARS = 1024
#: The smallest rowid: the first page starts there (C{>=}), the others after the last one seen (C{>}).
_FIRST_ROWID = -(1 << 63)


class PagedReader:
    """The rows of one table, C{size} per L{next_page}, in rowid order; every call on the store's thread."""

    __slots__ = ("_db", "_anchor", "_first_sql", "_next_sql", "_row_sql", "_size", "_after", "done")

    def __init__(self, db: sqlite3.Connection, first_sql: str, next_sql: str, row_sql: str, size: int) -> None:
        self._db = db
        self._first_sql = first_sql
        self._next_sql = next_sql
        self._row_sql = row_sql
        self._size = size
        # None until the first page: it takes rowids from the smallest one on.
        self._after: int | None = None
        self.done = False
        # Holds the connection's read transaction (and so its snapshot)
        # open until the last page: the pages are one consistent read.
        self._anchor: sqlite3.Cursor | None = None

    @classmethod
    def open(cls, db: sqlite3.Connection, table: str, columns: list[str], size: int) -> PagedReader | None:
        """
        A reader of C{columns} (physical names) of C{table}, or C{None} if
        this table cannot be read in pages: a virtual table, no rowid
        (C{WITHOUT ROWID}), every rowid name taken by a column (hidden and
        generated ones included), or an SQLite without JSON functions.
        The caller then reads row by row.

        @raise sqlite3.Error: for any other failure (a busy database: to retry).
        """
        quoted = quote_identifier(table)
        found = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if found is None or not columns or str(found[0] or "").lstrip().upper().startswith("CREATE VIRTUAL"):
            return None
        # table_xinfo lists generated and hidden columns too (table_info does not).
        taken = {str(row[1]).lower() for pragma in ("table_info", "table_xinfo") for row in db.execute(f"PRAGMA {pragma}({quoted})")}
        rowid = next((name for name in _ROWID_NAMES if name not in taken), None)
        if rowid is None:
            return None
        outputs = ", ".join(f"{quote_identifier(name)} AS c{i}" for i, name in enumerate(columns, 1))
        numbers = range(1, len(columns) + 1)
        inexact = " OR ".join(f"typeof(c{i}) IN ('real', 'blob')" for i in numbers)
        chars = " + ".join(f"ifnull(length(c{i}), 0)" for i in numbers)
        values = ", ".join(f"c{i}" for i in numbers)
        # The first page from the smallest rowid on (>=), the others after the last one seen (>).
        first_sql, next_sql = (
            f"SELECT json_group_array(CASE WHEN {inexact} OR {chars} > {PAGED_ROW_CHARS} THEN json_array(c0) "
            f"ELSE json_array(c0, {values}) END) "
            f"FROM (SELECT {rowid} AS c0, {outputs} FROM {quoted} WHERE {rowid} {operator} ? ORDER BY {rowid} LIMIT {int(size)})"
            for operator in (">=", ">")
        )
        row_sql = f"SELECT {', '.join(quote_identifier(name) for name in columns)} FROM {quoted} WHERE {rowid} = ?"
        try:
            db.execute(f"EXPLAIN {next_sql}", (0,)).close()  # compiled, not run
        except sqlite3.OperationalError as e:
            if str(e).startswith(("no such column", "no such function")):
                return None  # no rowid, or no JSON functions
            raise
        reader = cls(db, first_sql, next_sql, row_sql, size)
        reader._anchor = db.execute(f"SELECT 1 FROM {quoted}")
        return reader

    def next_page(self) -> list[tuple[Any, ...]]:
        """
        The next page of rows, as C{sqlite3} would return them; fewer than
        C{size} (and the read transaction let go) after the last.
        """
        after = self._after
        if after is None:
            text = self._db.execute(self._first_sql, (_FIRST_ROWID,)).fetchone()[0]
        else:
            text = self._db.execute(self._next_sql, (after,)).fetchone()[0]
        page: list[list[Any]] = json.loads(text)
        rows: list[tuple[Any, ...]] = []
        for item in page:
            if len(item) == 1:
                # A REAL, a BLOB or a long row: read exactly, as sqlite3 returns it.
                exact = self._db.execute(self._row_sql, (item[0],)).fetchone()
                if exact is not None:
                    rows.append(tuple(exact))
            else:
                rows.append(tuple(item[1:]))
        if page:
            self._after = max(item[0] for item in page)
        if len(page) < self._size:
            self.close()
        return rows

    def close(self) -> None:
        """Let go of the read transaction (on the store's thread)."""
        self.done = True
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            anchor.close()
