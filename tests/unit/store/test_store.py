"""Tests for the SQLite store."""

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.store import COLUMNS, StoreError, TableLayout, make_row, schema_sql
from uacregistrant.store.sqlite import SqliteStore, run_synchronously, sqlite_path


def started(test: SynchronousTestCase, path: str, layout: TableLayout) -> SqliteStore:
    """A store opened on this thread (fake clock), closed at the end of the test."""
    store = SqliteStore(path, layout, Clock(), run_in_thread=run_synchronously)
    test.successResultOf(store.start())
    test.addCleanup(store.close)
    return store


class SqliteStoreTests(SynchronousTestCase):
    def test_creates_opensips_table(self) -> None:
        """A missing table is created with the seed's schema and version row."""
        path = self.mktemp()
        store = started(self, path, TableLayout())
        db = sqlite3.connect(path)
        columns = [r[1] for r in db.execute("PRAGMA table_info(registrant)")]
        self.assertEqual(columns, list(COLUMNS))
        self.assertEqual(db.execute("SELECT table_version FROM version WHERE table_name='registrant'").fetchone(), (3,))
        db.execute("INSERT INTO registrant (registrar, aor, binding_URI, expiry) VALUES ('sip:r', 'sip:a@r', 'sip:a@h', 60)")
        db.commit()
        with self.assertRaises(sqlite3.IntegrityError):
            db.execute("INSERT INTO registrant (registrar, aor, binding_URI) VALUES ('sip:r', 'sip:a@r', 'sip:a@h')")
        rows: list = []
        self.successResultOf(store.load(rows.extend))
        self.assertEqual(rows[0]["aor"], "sip:a@r")
        self.assertEqual((rows[0]["state"], rows[0]["proxy"]), (0, None))

    def test_custom_columns_and_missing_optional(self) -> None:
        """Renamed columns are read; absent optional columns read as NULL."""
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE accounts (aor TEXT, reg TEXT, contact TEXT, expiry INT)")
        db.execute("INSERT INTO accounts VALUES ('sip:a@r', 'sip:r', 'sip:a@h', 90)")
        db.commit()
        columns = {name: name for name in COLUMNS}
        columns.update(registrar="reg", binding_URI="contact")
        store = started(self, path, TableLayout("accounts", columns))
        rows: list = []
        self.successResultOf(store.load(rows.extend))
        (row,) = rows
        self.assertEqual((row["registrar"], row["binding_URI"], row["expiry"], row["password"]), ("sip:r", "sip:a@h", 90, None))

    def test_refusals(self) -> None:
        """Missing directory, non-database file, missing column: one clear error each."""
        with self.assertRaises(StoreError) as caught:
            SqliteStore(os.path.join(self.mktemp(), "x.db"), TableLayout(), Clock()).check()
        self.assertIn("does not exist", str(caught.exception))
        junk = self.mktemp()
        with open(junk, "wb") as f:
            f.write(b"this is not sqlite" * 100)
        with self.assertRaises(StoreError) as caught:
            SqliteStore(junk, TableLayout(), Clock()).check()
        self.assertIn("not a database", str(caught.exception))
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE registrant (aor TEXT, registrar TEXT)")
        db.commit()
        with self.assertRaises(StoreError) as caught:
            SqliteStore(path, TableLayout(), Clock()).check()
        self.assertIn("binding_URI", str(caught.exception))

    def test_urls(self) -> None:
        """sqlite:PATH and sqlite://PATH name files."""
        self.assertEqual(sqlite_path("sqlite:reg.db"), "reg.db")
        self.assertEqual(sqlite_path("sqlite:/var/lib/reg.db"), "/var/lib/reg.db")
        self.assertEqual(sqlite_path("sqlite:///var/lib/reg.db"), "/var/lib/reg.db")
        with self.assertRaises(StoreError):
            sqlite_path("sqlite:")


class NotifySqlTests(SynchronousTestCase):
    def test_shipped_trigger_matches_generated(self) -> None:
        """The trigger SQL shipped for DBAs is what the daemon installs for the default table."""
        from uacregistrant.store.postgres import notify_sql

        columns = {name: name for name in COLUMNS}
        columns["binding_URI"] = "binding_uri"
        shipped = schema_sql("notify-postgres")
        self.assertIn(notify_sql(TableLayout(), columns), shipped)
        self.assertIn("pg_notify('uacregistrant_registrant'", shipped)


class SqliteStoreHardeningTests(SynchronousTestCase):
    """The SQLite store against a careless operator and another process's locks."""

    def table(self, path: str, rows: int) -> None:
        db = sqlite3.connect(path)
        db.executescript(schema_sql("sqlite"))
        for i in range(rows):
            db.execute("INSERT INTO registrant (registrar, aor, binding_URI) VALUES ('sip:r', ?, 'sip:a@h')", (f"sip:a{i}@r",))
        db.commit()
        db.close()

    def rows(self, store: SqliteStore) -> list:
        found: list = []
        self.successResultOf(store.load(found.extend))
        return found

    def test_check_creates_nothing(self) -> None:
        """The check before forking leaves a missing database missing."""
        path = self.mktemp()
        SqliteStore(path, TableLayout(), Clock()).check()
        self.assertFalse(os.path.exists(path))

    def test_created_table_warns_and_loads_count(self) -> None:
        """A table created at start is a warning; every load says how many rows it read."""
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        path = self.mktemp()
        store = started(self, path, TableLayout())
        (created,) = [e for e in events if "created an empty table" in e["log_format"]]
        self.assertEqual(created["log_level"].name, "warn")
        self.assertEqual(self.rows(store), [])
        self.assertEqual([e["rows"] for e in events if "read {rows}" in e["log_format"]], [0])

    def test_text_that_is_not_utf8_is_a_row_not_an_error(self) -> None:
        """A TEXT value that is not UTF-8 reaches validation (as surrogates) instead of failing the whole read."""
        path = self.mktemp()
        self.table(path, 2)
        db = sqlite3.connect(path)
        db.execute("UPDATE registrant SET username = CAST(x'61ff62' AS TEXT) WHERE id = 1")
        db.commit()
        store = started(self, path, TableLayout())
        found = self.rows(store)
        self.assertEqual(len(found), 2)
        self.assertEqual(found[0]["username"], "a\udcffb")

    def test_replaced_and_deleted_file(self) -> None:
        """
        A file replaced under the daemon by one holding the table is opened
        anew; one without the table (an empty copy) is not, so the records
        are not all retired; a deleted one is said once and the open copy
        kept.
        """
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        path = self.mktemp()
        self.table(path, 1)
        store = started(self, path, TableLayout())
        other = self.mktemp()
        self.table(other, 3)
        os.replace(other, path)
        self.assertEqual(len(self.rows(store)), 3)
        empty = self.mktemp()
        sqlite3.connect(empty).execute("CREATE TABLE unrelated (x)").connection.close()
        os.replace(empty, path)
        self.assertEqual(len(self.rows(store)), 3)
        self.assertEqual(len(self.rows(store)), 3)
        os.unlink(path)
        self.assertEqual(len(self.rows(store)), 3)
        self.assertEqual(len(self.rows(store)), 3)
        self.assertFalse(os.path.exists(path))
        said = [e["log_format"].split(":")[0] for e in events if "database file" in e["log_format"]]
        self.assertEqual(len(said), 3, said)  # replaced, replaced by an unusable one, deleted: once each

    def test_busy_database_is_retried(self) -> None:
        """Another connection's exclusive lock: the call waits (on the clock, not the reactor) and succeeds after it."""
        from uacregistrant.store import sqlite as module

        self.patch(module, "BUSY_TIMEOUT", 0.01)
        self.patch(module, "BUSY_RETRIES", (1.0, 1.0, 1.0))
        path = self.mktemp()
        self.table(path, 2)
        clock = Clock()
        store = SqliteStore(path, TableLayout(), clock, run_in_thread=run_synchronously)
        self.successResultOf(store.start())
        self.addCleanup(store.close)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        found: list = []
        d = store.load(found.extend)
        self.assertNoResult(d)
        clock.advance(1)
        self.assertNoResult(d)
        holder.execute("COMMIT")
        clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(len(found), 2)
        # Held for longer than the retries: a StoreError saying so.
        holder.execute("BEGIN EXCLUSIVE")
        d = store.load(found.extend)
        clock.pump([1, 1, 1, 1])
        self.assertIn("locked", str(self.failureResultOf(d, StoreError).value))
        holder.execute("COMMIT")

    def test_writes_report_rows(self) -> None:
        """set_state says how many rows it changed; upsert updates only the columns named."""
        path = self.mktemp()
        self.table(path, 1)
        store = started(self, path, TableLayout())
        self.assertEqual(self.successResultOf(store.set_state(("sip:a0@r", "sip:a@h", "sip:r"), 1)), 1)
        self.assertEqual(self.successResultOf(store.set_state(("sip:zz@r", "sip:a@h", "sip:r"), 1)), 0)
        db = sqlite3.connect(path)
        db.execute("UPDATE registrant SET username = 'kept', password = 'pw' WHERE id = 1")
        db.commit()
        key = {"aor": "sip:a0@r", "binding_URI": "sip:a@h", "registrar": "sip:r"}
        self.assertEqual(self.successResultOf(store.upsert({**key, "expiry": 900})), "updated")
        self.assertEqual(db.execute("SELECT username, password, expiry, state FROM registrant WHERE id = 1").fetchone(),
                         ("kept", "pw", 900, 1))
        self.assertEqual(self.successResultOf(store.upsert(dict(key))), "updated")
        self.assertEqual(self.successResultOf(store.upsert({**key, "aor": "sip:new@r"})), "inserted")

    def test_replacement_with_other_columns_and_fixed_in_place(self) -> None:
        """
        The first load after a replacement reads with the new file's
        columns (not the old one's names as string literals); a replacement
        without the table that is fixed in place is picked up at a later load.
        """
        path = self.mktemp()
        self.table(path, 1)
        store = started(self, path, TableLayout())
        other = self.mktemp()
        db = sqlite3.connect(other)
        db.execute("CREATE TABLE registrant (id INTEGER PRIMARY KEY, aor TEXT, registrar TEXT, binding_URI TEXT)")
        db.execute("INSERT INTO registrant (aor, registrar, binding_URI) VALUES ('sip:n@r', 'sip:r', 'sip:n@h')")
        db.commit()
        db.close()
        os.replace(other, path)
        (row,) = self.rows(store)
        self.assertEqual((row["aor"], row["binding_params"], row["username"]), ("sip:n@r", None, None))
        empty = self.mktemp()
        sqlite3.connect(empty).execute("CREATE TABLE unrelated (x)").connection.close()
        os.replace(empty, path)
        self.assertEqual(len(self.rows(store)), 1)  # the copy held open
        self.table(path, 4)  # fixed in place: same file, the table created now
        self.assertEqual(len(self.rows(store)), 4)


class RedactTests(SynchronousTestCase):
    """URLs in logs and errors never carry a password, in the user part or the query."""

    def test_passwords_hidden_everything_else_kept(self) -> None:
        """A password in either place becomes ***; a URL without one is returned as it was."""
        from uacregistrant.store.postgres import redact

        cases = {
            "postgres://u:s3cret@h:5432/db": "postgres://u:***@h:5432/db",
            "postgres://u@h/db?password=s3cret": "postgres://u@h/db?password=***",
            "postgresql://u:pw@h/db?sslmode=require&PASSWORD=x": "postgresql://u:***@h/db?sslmode=require&PASSWORD=***",
            "postgresql:///db?host=/run/postgresql&password=zz": "postgresql:///db?host=/run/postgresql&password=***",
            "postgresql:///db?host=/run/postgresql": "postgresql:///db?host=/run/postgresql",
            "postgres://u@h/db": "postgres://u@h/db",
        }
        for url, expected in cases.items():
            self.assertEqual(redact(url), expected, url)


class MakeRowTests(SynchronousTestCase):
    def test_every_column_and_rows_independent(self) -> None:
        """A row holds every logical column (absent ones None); changing one row changes no other."""
        first = make_row(["aor", "expiry"], ("sip:a@h", 60))
        self.assertEqual(list(first), list(COLUMNS))
        self.assertEqual((first["aor"], first["expiry"], first["registrar"]), ("sip:a@h", 60, None))
        first["registrar"] = "sip:h"
        second = make_row(["id"], (2,))
        self.assertIsNone(second["registrar"])
        self.assertIsNot(first, second)
