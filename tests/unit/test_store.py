"""Tests for the SQLite store."""

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.store import COLUMNS, StoreError, TableLayout, schema_sql
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
