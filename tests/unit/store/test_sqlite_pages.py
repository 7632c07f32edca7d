"""Tests for L{uacregistrant.store.sqlite_pages}: a table read a page per statement step."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from uacregistrant.store import COLUMNS, TableLayout, schema_sql
from uacregistrant.store.sqlite import SqliteStore, run_synchronously
from uacregistrant.store.sqlite_pages import PAGED_ROW_CHARS, PagedReader

#: Every kind of value a row can hold, and text JSON must escape.
AWKWARD = [
    ("plain", 1, None),
    ('quo"te \\ back\\slash', -(1 << 63), "x"),
    ("nul\x00inside\r\n\ttabs", (1 << 63) - 1, ""),
    ("ünïcødé ✓ 𝄞", 0, "\x01\x1f\x7f"),
    ("real", 0.1 + 0.2, 1e308),
    ("blob", b"\x00\xff bytes", None),
    ("big real", 12345678901234567.0, float("inf")),
]


def opened(db: sqlite3.Connection, table: str, columns: list[str], size: int) -> PagedReader:
    """A reader of the table, which must be one it can page."""
    reader = PagedReader.open(db, table, columns, size)
    assert reader is not None
    return reader


def read_all(reader: PagedReader) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    while not reader.done:
        rows.extend(reader.next_page())
    return rows


class PagedReaderTests(SynchronousTestCase):
    def connect(self, journal: str = "wal") -> sqlite3.Connection:
        path = self.mktemp()
        db = sqlite3.connect(path, isolation_level=None)
        db.text_factory = functools.partial(str, encoding="utf-8", errors="surrogateescape")
        db.execute(f"PRAGMA journal_mode={journal}")
        self.addCleanup(db.close)
        return db

    def numbers(self, count: int, journal: str = "wal") -> sqlite3.Connection:
        """A database whose table C{t} holds the numbers 0 to C{count} - 1 in its column C{a}."""
        db = self.connect(journal)
        db.execute("CREATE TABLE t (a)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(count)])
        return db

    def test_values_as_sqlite3_returns_them(self) -> None:
        """Text, integers, NULL, REAL and BLOB come back exactly as a plain SELECT returns them, over several pages."""
        db = self.connect()
        db.execute("CREATE TABLE t (a, b, c)")
        db.executemany("INSERT INTO t VALUES (?, ?, ?)", AWKWARD * 5)
        db.execute("INSERT INTO t VALUES (CAST(x'41ff42' AS TEXT), 7, 8)")  # text that is not UTF-8
        expected = db.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall()
        reader = opened(db, "t", ["a", "b", "c"], 4)
        got = read_all(reader)
        self.assertEqual(len(got), len(expected))
        for mine, theirs in zip(got, expected):
            self.assertEqual([(type(v), v) for v in mine], [(type(v), v) for v in theirs])
        self.assertEqual(got[-1][0], "A\udcffB")

    def test_pages_of_the_given_size_then_done(self) -> None:
        """Each page holds C{size} rows; the one after the last row is short and ends the read."""
        db = self.numbers(10)
        reader = opened(db, "t", ["a"], 5)
        self.assertEqual(reader.next_page(), [(i,) for i in range(5)])
        self.assertFalse(reader.done)
        self.assertEqual(reader.next_page(), [(i,) for i in range(5, 10)])
        self.assertFalse(reader.done)
        self.assertEqual(reader.next_page(), [])
        self.assertTrue(reader.done)

    def test_one_snapshot(self) -> None:
        """Rows deleted, changed or added by another connection while the pages are read are not seen: one consistent read."""
        db = self.numbers(6)
        reader = opened(db, "t", ["a"], 2)
        first = reader.next_page()
        other = sqlite3.connect(db.execute("PRAGMA database_list").fetchone()[2], isolation_level=None)
        self.addCleanup(other.close)
        other.execute("DELETE FROM t WHERE a IN (2, 3)")
        other.execute("UPDATE t SET a = 40 WHERE a = 4")
        other.execute("INSERT INTO t VALUES (99)")
        self.assertEqual(first + read_all(reader), [(i,) for i in range(6)])
        # Let go after the last page: the next read sees the changes.
        again = opened(db, "t", ["a"], 2)
        self.assertEqual(read_all(again), [(0,), (1,), (40,), (5,), (99,)])

    def test_lets_go_of_the_lock(self) -> None:
        """In rollback-journal mode another connection can write once the last page is read, or the reader closed."""
        db = self.numbers(3, journal="delete")
        other = sqlite3.connect(db.execute("PRAGMA database_list").fetchone()[2], isolation_level=None, timeout=0)
        self.addCleanup(other.close)
        reader = opened(db, "t", ["a"], 2)
        reader.next_page()
        with self.assertRaises(sqlite3.OperationalError):
            other.execute("INSERT INTO t VALUES (10)")  # the read holds its shared lock
        reader.next_page()
        self.assertTrue(reader.done)
        other.execute("INSERT INTO t VALUES (11)")
        reader = opened(db, "t", ["a"], 2)
        reader.next_page()
        reader.close()
        other.execute("INSERT INTO t VALUES (12)")

    def test_rowid_names_taken_by_columns(self) -> None:
        """A column called rowid (or _rowid_) is a column: the reader pages by a name still free, or declines."""
        db = self.connect()
        db.execute("CREATE TABLE t (rowid, _ROWID_, a)")
        db.executemany("INSERT INTO t VALUES (?, ?, ?)", [(5, 5, "x"), (5, 5, "y"), (1, 1, "z")])
        reader = opened(db, "t", ["a", "rowid"], 1)
        self.assertEqual(read_all(reader), [("x", 5), ("y", 5), ("z", 1)])
        db.execute("CREATE TABLE u (rowid, _rowid_, oid, a)")
        self.assertIsNone(PagedReader.open(db, "u", ["a"], 1))

    def test_without_rowid_declined(self) -> None:
        """A WITHOUT ROWID table cannot be paged by rowid: the caller reads it row by row."""
        db = self.connect()
        db.execute("CREATE TABLE t (a TEXT PRIMARY KEY) WITHOUT ROWID")
        self.assertIsNone(PagedReader.open(db, "t", ["a"], 10))

    def test_smallest_rowid(self) -> None:
        """A row at rowid -2**63 (the smallest there is) is read like any other."""
        db = self.connect()
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(-(1 << 63), "first"), (0, "zero"), ((1 << 63) - 1, "last")])
        reader = opened(db, "t", ["a"], 1)
        self.assertEqual(read_all(reader), [("first",), ("zero",), ("last",)])

    def test_generated_column_named_rowid(self) -> None:
        """A generated (hidden from table_info) column called rowid is not taken for the row number."""
        db = self.connect()
        db.execute("CREATE TABLE t (a, rowid AS (7))")
        db.executemany("INSERT INTO t (a) VALUES (?)", [(i,) for i in range(5)])
        reader = opened(db, "t", ["a"], 2)
        self.assertEqual(read_all(reader), [(i,) for i in range(5)])

    def test_long_rows_read_on_their_own(self) -> None:
        """A row over PAGED_ROW_CHARS (20,000 control characters, JSON would write six times as many) comes back exactly, between the others."""
        db = self.connect()
        # SQLite's longest string made small: a page holding that row as JSON (120,000 characters) would exceed it.
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)
        db.execute("CREATE TABLE t (a, b)")
        rows = [("x", 1), ("\x01" * 20000, 2), ("y" * PAGED_ROW_CHARS, 3), ("z", 4)]
        db.executemany("INSERT INTO t VALUES (?, ?)", rows)
        reader = opened(db, "t", ["a", "b"], 3)
        self.assertEqual(read_all(reader), rows)

    def test_pages_seek_by_rowid(self) -> None:
        """Each page starts with a search by rowid, not a scan: the load stays linear in the rows."""
        db = self.connect()
        db.execute("CREATE TABLE t (a)")
        reader = opened(db, "t", ["a"], 10)
        for sql in (reader._first_sql, reader._next_sql):
            plan = " ".join(str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", (0,)))
            self.assertIn("SEARCH", plan)
            self.assertNotIn("SCAN t", plan)

    def test_virtual_table_declined(self) -> None:
        """A virtual table (its rowid is the module's) is read row by row."""
        db = self.connect()
        try:
            db.execute("CREATE VIRTUAL TABLE t USING fts5(a)")
        except sqlite3.OperationalError as e:
            raise SkipTest(f"this SQLite has no fts5: {e}") from None
        self.assertIsNone(PagedReader.open(db, "t", ["a"], 10))


def load(test: SynchronousTestCase, path: str, consume: Any) -> Any:
    """C{store.load(consume)} on a store opened on this thread, the fake clock run until it ends; its Deferred."""
    clock = Clock()
    store = SqliteStore(path, TableLayout(), clock, run_in_thread=run_synchronously)
    test.successResultOf(store.start())
    test.addCleanup(store.close)
    done = store.load(consume)
    for _ in range(100):
        clock.advance(0)
    return done


class StoreLoadTests(SynchronousTestCase):
    def test_without_rowid_table_loads_row_by_row(self) -> None:
        """The store still reads a table the pages cannot: every row arrives."""
        path = self.mktemp()
        db = sqlite3.connect(path)
        names = ", ".join(f'"{name}"' for name in COLUMNS)
        db.execute(f"CREATE TABLE registrant ({names}, PRIMARY KEY (aor, binding_URI, registrar)) WITHOUT ROWID")
        db.executemany(
            "INSERT INTO registrant (aor, registrar, binding_URI, expiry) VALUES (?, ?, ?, ?)",
            [(f"sip:u{i}@r", "sip:r", f"sip:u{i}@h", 60) for i in range(2500)],
        )
        db.commit()
        db.close()
        batches: list[int] = []
        rows: list[dict[str, Any]] = []
        self.successResultOf(load(self, path, lambda batch: (batches.append(len(batch)), rows.extend(batch))))
        self.assertEqual(sorted(row["aor"] for row in rows), sorted(f"sip:u{i}@r" for i in range(2500)))
        self.assertEqual(batches, [1000, 1000, 500])

    def test_paged_load_reads_every_row_once(self) -> None:
        """A table of rowid pages: every row once, in batches of 1000, the REAL and BLOB values exact."""
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.executescript(schema_sql("sqlite"))
        db.executemany(
            "INSERT INTO registrant (aor, registrar, binding_URI, expiry) VALUES (?, ?, ?, ?)",
            [(f"sip:u{i}@r", "sip:r", f"sip:u{i}@h", 60.5 if i == 7 else b"60" if i == 8 else 60) for i in range(2000)],
        )
        db.commit()
        db.close()
        batches: list[int] = []
        rows: list[dict[str, Any]] = []
        self.successResultOf(load(self, path, lambda batch: (batches.append(len(batch)), rows.extend(batch))))
        self.assertEqual([row["aor"] for row in rows], [f"sip:u{i}@r" for i in range(2000)])
        self.assertEqual(batches, [1000, 1000])
        self.assertEqual((rows[7]["expiry"], rows[8]["expiry"], rows[9]["expiry"]), (60.5, b"60", 60))

    def test_consumer_failure_lets_go_of_the_read(self) -> None:
        """A batch the consumer fails on ends the load with that error, and the open read is closed then (not when collected)."""
        path = self.mktemp()
        db = sqlite3.connect(path, timeout=0)
        self.addCleanup(db.close)
        db.executescript(schema_sql("sqlite"))
        db.executemany(
            "INSERT INTO registrant (aor, registrar, binding_URI) VALUES (?, ?, ?)",
            [(f"sip:u{i}@r", "sip:r", f"sip:u{i}@h") for i in range(1500)],
        )
        db.commit()
        closed: list[PagedReader] = []
        close = PagedReader.close

        def closing(reader: PagedReader) -> None:
            closed.append(reader)
            close(reader)

        self.patch(PagedReader, "close", closing)

        def refuse(batch: list[Any]) -> None:
            raise ValueError("no")

        self.failureResultOf(load(self, path, refuse), ValueError)
        self.assertEqual(len(closed), 1)
        self.assertTrue(closed[0].done)
        db.execute("DELETE FROM registrant")  # no lock left behind (rollback journal: a reader would block this)
        db.commit()
