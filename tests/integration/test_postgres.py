"""
The daemon on a real PostgreSQL table: load, live changes by NOTIFY, an
outage of the server, admin commands writing exactly one row.
"""

from __future__ import annotations

import re
import subprocess
import time


from uacregistrant.control.ctl import request
from uacregistrant.store import schema_sql

from .helpers import PATIENCE, ProcessTestCase, TWISTD, environment, free_udp_port, records, wait_for
from .postgres import PostgresServer

USERS = {f"u{i}": {"password": f"pw-{i}"} for i in range(1, 8)}


class PostgresTests(ProcessTestCase):
    timeout = 180

    def setUp(self) -> None:
        self.server = PostgresServer()
        self.addCleanup(self.server.destroy)
        self.server.start()
        super().setUp()

    def row(self, user: str, port: int, local: int, **extra: object) -> None:
        values = {
            "registrar": f"sip:127.0.0.1:{port}", "aor": f"sip:{user}@test.invalid", "username": user,
            "password": USERS[user]["password"], "binding_URI": f"sip:{user}@127.0.0.1:{local}", "expiry": 8,
        }
        values.update(extra)
        names = ", ".join(values)
        self.server.execute(f"INSERT INTO registrant ({names}) VALUES ({', '.join(['%s'] * len(values))})", tuple(values.values()))

    def registrar_saw(self, pattern: str) -> bool:
        return re.search(pattern, self.processes.log("registrar")) is not None

    def test_live_table(self) -> None:
        """
        NOTIFY applies inserts, updates and deletes (nothing else would: no
        --db-poll); an outage of the server loses nothing.
        """
        port = self.processes.registrar(USERS)
        local = free_udp_port()
        self.server.execute(schema_sql("postgres"))
        self.row("u1", port, local)
        self.row("u2", port, local)
        self.row("u3", port, local, state=1)
        _, control = self.processes.daemon(
            ["--db-url", self.server.url, "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "1",
             "--timer-interval", "4", "--sip-t1", "100", "--retry-interval", "1", "--retry-max-interval", "2"]
        )
        try:
            wait_for(lambda: {u: r["state"] for u, r in records(control).items()} ==
                     {"u1": "REGISTERED_STATE", "u2": "REGISTERED_STATE", "u3": "NOT_REGISTERED_STATE"})
            call_ids = {u: r["call_id"] for u, r in records(control).items()}

            # INSERT: registered, no command (the time it took is printed).
            start = time.monotonic()
            self.row("u4", port, local)
            wait_for(lambda: records(control).get("u4", {}).get("state") == "REGISTERED_STATE", interval=0.05)
            inserted = time.monotonic() - start

            # UPDATE: re-registers with the new expiry, same Call-ID.
            self.server.execute("UPDATE registrant SET expiry = 30 WHERE username = 'u1'")
            wait_for(lambda: records(control)["u1"]["expires"] == 30, interval=0.05)
            self.assertEqual(records(control)["u1"]["call_id"], call_ids["u1"])

            # DELETE: the registrar receives the un-REGISTER.
            start = time.monotonic()
            self.server.execute("DELETE FROM registrant WHERE username = 'u2'")
            wait_for(lambda: self.registrar_saw(rf"user=u2 call_id={call_ids['u2']} cseq=\d+ expires=0"), interval=0.05)
            deleted = time.monotonic() - start
            wait_for(lambda: "u2" not in records(control), interval=0.05)
            print(f"INSERT to REGISTERED {inserted:.2f}s, DELETE to un-REGISTER {deleted:.2f}s")

            # Outage: the server stopped until the daemon has failed to get
            # back to it twice and u4 (8 s) has refreshed; registrations keep
            # refreshing from memory.
            sent_before = self.processes.log("registrar").count("user=u4 ")
            failures_before = self.processes.log("daemon").count("cannot LISTEN at")
            self.server.stop()

            def outage_lived_through() -> dict | None:
                if self.processes.log("daemon").count("cannot LISTEN at") < failures_before + 2:
                    return None
                if self.processes.log("registrar").count("user=u4 ") <= sent_before:
                    return None  # not refreshed yet
                now = records(control)
                # (A refresh shows REGISTERING for a moment: look again.)
                expected = {"u1": "REGISTERED_STATE", "u3": "NOT_REGISTERED_STATE", "u4": "REGISTERED_STATE"}
                return now if {u: r["state"] for u, r in now.items()} == expected else None

            during = wait_for(outage_lived_through)
            self.assertEqual(request(control, "reg_disable sip:u1@test.invalid")[0], "503 Database unavailable")
            self.server.start()
            # Changes made while the daemon was not listening are caught by the resync.
            self.row("u5", port, local)
            wait_for(lambda: records(control).get("u5", {}).get("state") == "REGISTERED_STATE")
            after = records(control)
            self.assertEqual({u: after[u]["call_id"] for u in ("u1", "u4")}, {u: during[u]["call_id"] for u in ("u1", "u4")})
            self.assertEqual(after["u1"]["state"], "REGISTERED_STATE")
        finally:
            print(self.processes.log("daemon")[-5000:])

    def test_admin_commands_write_one_row(self) -> None:
        """Enable, disable, delete and upsert write exactly the named row (through the UNIX socket)."""
        port = self.processes.registrar(USERS)
        local, other = free_udp_port(), free_udp_port()
        self.server.execute(schema_sql("postgres"))
        self.row("u6", port, local)
        self.row("u6", port, other, binding_URI=f"sip:u6@127.0.0.1:{other}")
        _, control = self.processes.daemon(
            ["--db-url", self.server.socket_url, "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0",
             "--timer-interval", "4", "--sip-t1", "100"]
        )
        try:
            wait_for(lambda: [r["state"] for r in records_all(control)] == ["REGISTERED_STATE"] * 2)
            self.assertEqual(request(control, "reg_disable sip:u6@test.invalid")[0], "409 Ambiguous AOR")
            key = f"sip:u6@test.invalid sip:u6@127.0.0.1:{other} sip:127.0.0.1:{port}"
            self.assertEqual(request(control, f"reg_disable {key}"), ("200 OK", ["changed"]))
            states = self.server.execute("SELECT binding_uri, state FROM registrant ORDER BY id")
            self.assertEqual(states, [(f"sip:u6@127.0.0.1:{local}", 0), (f"sip:u6@127.0.0.1:{other}", 1)])
            status, body = request(
                control,
                f"reg_upsert aor=sip:u7@test.invalid registrar=sip:127.0.0.1:{port} binding_URI=sip:u7@127.0.0.1:{local} "
                "username=u7 password=pw-7 expiry=60",
            )
            self.assertEqual((status, body), ("200 OK", ["added"]))
            self.assertEqual(self.server.execute("SELECT expiry, state FROM registrant WHERE username = 'u7'"), [(60, 0)])
            wait_for(lambda: records(control).get("u7", {}).get("state") == "REGISTERED_STATE")
            self.assertEqual(request(control, "reg_delete sip:u7@test.invalid")[0], "200 OK")
            self.assertEqual(self.server.execute("SELECT state FROM registrant WHERE username = 'u7'"), [(1,)])
            wait_for(lambda: "u7" not in records(control))
            self.assertEqual(request(control, f"reg_enable {key}"), ("200 OK", ["changed"]))
            self.assertEqual(self.server.execute("SELECT state FROM registrant ORDER BY id")[:2], [(0,), (0,)])
            log = self.processes.log("daemon")
            self.assertNotIn("secret-pg", log)
            self.assertNotIn("pw-7", log)
        finally:
            print(self.processes.log("daemon")[-5000:])

    def test_hostile_rows_and_writes(self) -> None:
        """
        On PostgreSQL, through a host name (looked up off the reactor): a
        row with a bracketed key or a CR/LF is skipped and the others load;
        a partial reg_upsert keeps the other columns; a value the table
        cannot hold is 400; a write to a row deleted behind the daemon's
        back is 404.
        """
        port = self.processes.registrar(USERS)
        local = free_udp_port()
        self.server.execute(schema_sql("postgres"))
        self.row("u1", port, local)
        self.row("u2", port, local, aor="<sip:u2@test.invalid>")
        self.row("u3", port, local, username="u3\r\nX-Injected: 1")
        self.row("u4", port, local)
        url = self.server.url.replace("@127.0.0.1:", "@localhost:")
        _, control = self.processes.daemon(
            ["--db-url", url, "--no-db-notify", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0",
             "--timer-interval", "4", "--sip-t1", "100"]
        )
        try:
            wait_for(lambda: {u: r["state"] for u, r in records(control).items()} ==
                     {"u1": "REGISTERED_STATE", "u4": "REGISTERED_STATE"})
            log = self.processes.log("daemon")
            self.assertIn("skipping row id=2: aor '<sip:u2@test.invalid>' is not stored as a bare URI", log)
            self.assertIn("skipping row id=3: username holds a control character", log)
            key = f"aor=sip:u1@test.invalid registrar=sip:127.0.0.1:{port} binding_URI=sip:u1@127.0.0.1:{local}"
            self.assertEqual(request(control, f"reg_upsert {key} expiry=30"), ("200 OK", ["changed"]))
            self.assertEqual(self.server.execute("SELECT username, password, expiry FROM registrant WHERE id = 1"),
                             [("u1", "pw-1", 30)])
            wait_for(lambda: records(control)["u1"]["expires"] == 30 and records(control)["u1"]["state"] == "REGISTERED_STATE")
            status, body = request(control, f"reg_upsert {key} username={'x' * 100}")
            self.assertEqual(status, "400 Bad record")
            self.assertIn("refused", body[0])
            self.server.execute("DELETE FROM registrant WHERE username = 'u4'")
            self.assertEqual(request(control, "reg_disable sip:u4@test.invalid")[0], "404 No such row in the table")
            self.assertNotIn("Traceback", self.processes.log("daemon"))
        finally:
            print(self.processes.log("daemon")[-5000:])

    def test_refuses_unreachable_database(self) -> None:
        """An unreachable server stops the start with one line, password hidden."""
        self.server.stop()
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "uacregistrant", "--db-url", self.server.url,
             "--listen", f"udp:127.0.0.1:{free_udp_port()}", "--control", f"unix:{self.processes.sockets / 'c'}"],
            capture_output=True, env=environment(), cwd=self.directory, timeout=60,
        )
        err = result.stderr.decode()
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("uacregistrant: cannot start: cannot connect to postgresql://postgres:***@127.0.0.1:", err)
        self.assertNotIn("secret-pg", err + result.stdout.decode())


def records_all(control: str) -> list[dict]:
    import json

    status, body = request(control, "reg_list json", timeout=PATIENCE / 2)
    assert status == "200 OK", status
    return list(json.loads(body[0])["Records"])
