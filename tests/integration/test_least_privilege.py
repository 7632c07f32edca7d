"""
PostgreSQL with least privilege and no password in argv, on a real server:
a role that must give its password (a pg_hba line of its own, first match,
ahead of the fixture's trust lines) and has only SELECT, INSERT, UPDATE and
DELETE on the table and USAGE on its sequence; its password only in a
PGPASSFILE of mode 0600.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any, Callable

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from uacregistrant.store import StoreError, TableLayout, schema_sql
from uacregistrant.store.postgres import FALLBACK_POLL, NOTIFY_SQL_FILE, PostgresStore

from .helpers import PATIENCE, ProcessTestCase, free_udp_port, records, wait_for
from .postgres import PostgresServer

ROLE = "uacreg_app"
USERS = {f"lp{i}": {"password": f"lp-pw-{i}"} for i in range(1, 4)}


def require_password(server: PostgresServer, role: str) -> None:
    """
    Make C{role} give its password over TCP (SCRAM): a pg_hba line ahead
    of the fixture's (which trust every local connection), reloaded.
    """
    hba = os.path.join(server.data, "pg_hba.conf")
    with open(hba) as f:
        rest = f.read()
    with open(hba, "w") as f:  # the same file, its owner kept
        f.write(f"host all {role} 127.0.0.1/32 scram-sha-256\n{rest}")
    server.execute("SELECT pg_reload_conf()")


def _notify_objects(server: PostgresServer) -> list[tuple[Any, ...]]:
    """The trigger function's and triggers' identities (oid, xmin): any DDL changes them."""
    return server.execute(
        "SELECT oid::text, xmin::text FROM pg_proc WHERE proname = 'uacregistrant_registrant_notify'"
        " UNION ALL SELECT oid::text, xmin::text FROM pg_trigger WHERE tgrelid = 'registrant'::regclass ORDER BY 1"
    )


class LeastPrivilegeTests(ProcessTestCase):
    timeout = 240

    def setUp(self) -> None:
        self.server = PostgresServer()
        self.addCleanup(self.server.destroy)
        self.server.start()
        super().setUp()
        self.server.execute(schema_sql("postgres"))
        self.password = "pw-" + secrets.token_hex(12)
        self.server.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD %s", (self.password,))
        self.server.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON registrant TO {ROLE}")
        self.server.execute(f"GRANT USAGE ON SEQUENCE registrant_id_seq TO {ROLE}")
        require_password(self.server, ROLE)
        #: The role's URL: no password in it.
        self.url = f"postgresql://{ROLE}@127.0.0.1:{self.server.port}/postgres"
        self.passfile = self.directory / "pgpass"
        self.passfile.write_text(f"127.0.0.1:{self.server.port}:postgres:{ROLE}:{self.password}\n")
        os.chmod(self.passfile, 0o600)
        self.environ("PGPASSFILE", str(self.passfile))
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def environ(self, name: str, value: str | None) -> None:
        """Set (or unset) a variable of this process's environment for the test (children inherit it)."""
        previous = os.environ.get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
        self.addCleanup(lambda: os.environ.__setitem__(name, previous) if previous is not None else os.environ.pop(name, None))

    def store(self, url: str | None = None, **kw: Any) -> PostgresStore:
        store = PostgresStore(url or self.url, TableLayout(), reactor, **kw)
        self.addCleanup(store.close)
        return store

    def logged(self) -> str:
        return "\n".join(formatEvent(e) or "" for e in self.events)

    def insert(self, user: str, registrar_port: int = 5080, local: int = 5060) -> None:
        self.server.execute(
            "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) VALUES (%s, %s, %s, %s, %s, 30)",
            (f"sip:127.0.0.1:{registrar_port}", f"sip:{user}@test.invalid", user, USERS.get(user, {}).get("password", "x"),
             f"sip:{user}@127.0.0.1:{local}"),
        )

    @defer.inlineCallbacks
    def until(self, predicate: Callable[[], Any]) -> Any:
        """Let the reactor run until C{predicate()} is true (or fail after PATIENCE)."""
        for _ in range(int(PATIENCE * 20)):
            if predicate():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"not true within {PATIENCE}s: {predicate}")

    def test_password_only_in_pgpassfile(self) -> None:
        """The role cannot log in without its password (so the pg_hba line works); libpq finds it in PGPASSFILE."""
        self.environ("PGPASSFILE", os.devnull)
        with self.assertRaises(psycopg2.OperationalError) as caught:
            psycopg2.connect(self.url, connect_timeout=10).close()
        self.assertIn("password", str(caught.exception))
        self.environ("PGPASSFILE", str(self.passfile))
        connection = psycopg2.connect(self.url, connect_timeout=10)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_user")
                self.assertEqual(cursor.fetchone(), (ROLE,))
        finally:
            connection.close()
        self.store().check()

    @defer.inlineCallbacks
    def test_no_trigger_rights_falls_back_to_polling(self) -> Any:
        """
        No trigger and no right to create one: the store starts, warns (naming
        the SQL file for the DBA and --no-db-notify), does not LISTEN, and asks
        for a full pass every 30 s, never piling passes up; its writes work.
        """
        clock = Clock()
        store = self.store(clock=clock)
        yield store.start()
        self.assertFalse(store.notify_active)
        self.assertEqual(self.server.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'registrant'::regclass"), [(0,)])
        text = self.logged()
        self.assertIn(f"the NOTIFY trigger on table registrant is missing and this role may not install it", text)
        self.assertIn(NOTIFY_SQL_FILE, text)
        self.assertIn("--no-db-notify", text)
        self.assertIn(f"re-reading the table every {FALLBACK_POLL:g} s", text)
        self.assertNotIn(self.password, text)

        resyncs: list[float] = []
        store.watch(lambda key, old: defer.succeed(None), lambda: resyncs.append(clock.seconds()))
        self.assertEqual(store.poll_interval, FALLBACK_POLL)
        self.assertTrue(store.connected)
        clock.advance(FALLBACK_POLL)
        self.assertEqual(resyncs, [FALLBACK_POLL])
        clock.advance(FALLBACK_POLL)  # the pass asked for has not begun: not asked again
        self.assertEqual(len(resyncs), 1)
        rows: list[Any] = []
        yield store.load(rows.extend)
        clock.advance(FALLBACK_POLL)
        self.assertEqual(len(resyncs), 2)

        # The role's rights suffice for the console's writes (INSERT uses the sequence).
        key = ("sip:w@test.invalid", "sip:w@127.0.0.1:5060", "sip:127.0.0.1:5080")
        result = yield store.upsert({"aor": key[0], "binding_URI": key[1], "registrar": key[2], "expiry": 60})
        self.assertEqual(result, "inserted")
        changed = yield store.set_state(key, 1)
        self.assertEqual(changed, 1)
        store.close()
        self.assertFalse(store.connected)

    @defer.inlineCallbacks
    def test_loader_polls_already(self) -> Any:
        """With --db-poll the loader polls: the store asks for no passes of its own."""
        clock = Clock()
        store = self.store(poll=5.0, clock=clock)
        yield store.start()
        self.assertIn("every 5 s (--db-poll)", self.logged())
        resyncs: list[float] = []
        store.watch(lambda key, old: defer.succeed(None), lambda: resyncs.append(clock.seconds()))
        clock.advance(FALLBACK_POLL * 3)
        self.assertEqual((store.poll_interval, resyncs), (0.0, []))

    @defer.inlineCallbacks
    def test_trigger_installed_by_the_dba(self) -> Any:
        """The DBA ran the shipped SQL: the role starts with no DDL (nothing re-created) and NOTIFY reaches it."""
        self.server.execute(schema_sql("notify-postgres"))
        before = _notify_objects(self.server)
        self.assertEqual(len(before), 3)
        store = self.store()
        yield store.start()
        self.assertTrue(store.notify_active)
        self.assertNotIn("may not install", self.logged())
        self.assertEqual(_notify_objects(self.server), before)

        changes: list[Any] = []
        store.watch(lambda key, old: defer.succeed(changes.append((key, old))), lambda: None)
        self.assertEqual(store.poll_interval, 0.0)
        yield self.until(lambda: store.connected)  # the query and the LISTEN connections
        self.insert("n1")
        yield self.until(lambda: changes)
        self.assertEqual(changes, [(("sip:n1@test.invalid", "sip:n1@127.0.0.1:5060", "sip:127.0.0.1:5080"), None)])

    @defer.inlineCallbacks
    def test_other_trigger_failure_mentions_no_db_notify(self) -> Any:
        """A trigger the database refuses for another reason (no plpgsql): one line naming the SQL file and --no-db-notify."""
        self.server.execute("DROP EXTENSION plpgsql")
        store = self.store(self.server.url)
        with self.assertRaises(StoreError) as caught:
            yield store.start()
        message = str(caught.exception)
        self.assertIn("cannot install the NOTIFY trigger on table registrant", message)
        self.assertIn(NOTIFY_SQL_FILE, message)
        self.assertIn("--no-db-notify", message)
        self.assertNotIn("\n", message)

    def test_daemon(self) -> None:
        """
        The daemon with UACREG_DB_URL (no password anywhere in argv or the
        URL) and the role without DDL rights: it starts, warns for the DBA,
        registers the table's accounts and picks up a new row by polling
        (--db-poll 2, to keep the test short).
        """
        port = self.processes.registrar(USERS)
        local = free_udp_port()
        self.insert("lp1", port, local)
        self.environ("UACREG_DB_URL", self.url)
        daemon, control = self.processes.daemon(
            ["--listen", f"udp:127.0.0.1:{local}", "--hash-size", "1", "--timer-interval", "4", "--sip-t1", "100", "--db-poll", "2"]
        )
        try:
            wait_for(lambda: records(control).get("lp1", {}).get("state") == "REGISTERED_STATE")
            with open(f"/proc/{daemon.pid}/cmdline", "rb") as f:
                self.assertNotIn(self.password.encode(), f.read())
            log = self.processes.log("daemon")
            self.assertRegex(log, rf"NOTIFY trigger on table registrant is missing and this role may not install it.*{re.escape(NOTIFY_SQL_FILE)}")
            # No NOTIFY: polling brings the new row in (every --db-poll seconds here; FALLBACK_POLL without it,
            # as the store tests above show on a fake clock).
            self.insert("lp2", port, local)
            wait_for(lambda: records(control).get("lp2", {}).get("state") == "REGISTERED_STATE")
            self.assertNotIn(self.password, self.processes.log("daemon"))
            self.assertNotIn("Traceback", self.processes.log("daemon"))
        finally:
            print(self.processes.log("daemon")[-4000:])
