"""
The daemon as a hostile peer, a careless operator and a slow client would
meet it: C{twistd -n uacregistrant} on real sockets on loopback.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time

from uacregistrant.control.ctl import request

from .helpers import ProcessTestCase, environment, free_udp_port, make_table, records, wait_for


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stats(control: str) -> dict:
    status, body = request(control, "reg_stats json")
    assert status == "200 OK", status
    return json.loads(body[0])


class HardeningTests(ProcessTestCase):
    timeout = 120

    def start(self, users: dict[str, dict], *args: str, expiry: int = 60, rows: list[dict] | None = None) -> tuple[subprocess.Popen[bytes], str, int]:
        port = self.processes.registrar(users)
        local = free_udp_port()
        db = self.directory / "registrant.db"
        self.db = db
        make_table(db, rows if rows is not None else [
            {"registrar": f"sip:127.0.0.1:{port}", "aor": f"sip:{user}@test.invalid", "username": user,
             "password": policy.get("password"), "binding_URI": f"sip:{user}@127.0.0.1:{local}", "expiry": expiry}
            for user, policy in users.items()
        ])
        daemon, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0", "--timer-interval", "10",
             "--sip-t1", "100", *args]
        )
        self.addCleanup(lambda: print(self.processes.log("daemon")[-3000:]))
        return daemon, control, local

    def registered(self, control: str, count: int) -> None:
        wait_for(lambda: len([r for r in records(control).values() if r["state"] == "REGISTERED_STATE"]) == count, 30)

    def test_large_responses(self) -> None:
        """A 200 listing 250 bindings (about 20 KiB, more than Twisted's default 8 KiB read) registers."""
        daemon, control, _ = self.start({"many": {"password": "p", "extra_bindings": 250}})
        self.registered(control, 1)
        self.assertEqual(stats(control)["sip"]["dropped_malformed"], 0)

    def test_garbage_flood_is_one_line(self) -> None:
        """Thousands of malformed datagrams from one source: all counted, one line in the log, no traceback."""
        daemon, control, local = self.start({"a": {"password": "p"}})
        self.registered(control, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            source = peer.getsockname()
            garbage = b"SIP/2.0 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\n"
            for _ in range(3000):
                peer.sendto(garbage, ("127.0.0.1", local))
        wait_for(lambda: stats(control)["sip"]["dropped_malformed"] >= 2500, 20)
        time.sleep(0.5)
        log = self.processes.log("daemon")
        self.assertEqual(log.count(f"{source[0]}:{source[1]}"), 1, log[-2000:])
        self.assertNotIn("Traceback", log)

    def test_ctl_follows_events(self) -> None:
        """uacregistrant-ctl reg_events prints each state change as it comes."""
        daemon, control, _ = self.start({"a": {"password": "p"}})
        self.registered(control, 1)
        follower = subprocess.Popen(
            [sys.executable, "-m", "uacregistrant.control.ctl", "--control", control, "reg_events"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(),
        )
        self.addCleanup(lambda: follower.poll() is None and follower.kill())
        time.sleep(1)
        self.assertEqual(request(control, "reg_force_register sip:a@test.invalid")[0], "200 OK")
        assert follower.stdout is not None
        first = follower.stdout.readline().decode()
        second = follower.stdout.readline().decode()
        self.assertIn("sip:a@test.invalid", first)
        self.assertIn("REGISTERED_STATE -> REGISTERING_STATE", first)
        self.assertIn("-> REGISTERED_STATE", second)
        follower.terminate()
        follower.wait(10)

    def test_locked_database_does_not_freeze(self) -> None:
        """
        Another process holding an exclusive lock on the SQLite file while
        the daemon polls it: the console keeps answering during the lock,
        no registration lapses, and the next poll after the lock works.
        """
        users = {f"u{i}": {"password": "p"} for i in range(20)}
        daemon, control, _ = self.start(users, "--db-poll", "1", expiry=20)
        self.registered(control, 20)
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
             "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(12); db.execute('COMMIT')",
             str(self.db)],
            stdout=subprocess.PIPE,
        )
        self.addCleanup(lambda: holder.poll() is None and holder.kill())
        assert holder.stdout is not None
        self.assertEqual(holder.stdout.readline().strip(), b"locked")
        time.sleep(2)  # the daemon's polls are now waiting on the lock
        for _ in range(5):
            self.assertEqual(request(control, "reg_list json", timeout=3)[0], "200 OK")
            self.assertEqual(request(control, "reg_stats json", timeout=3)[0], "200 OK")
            time.sleep(1)
        self.assertIsNone(holder.poll(), "the lock was released before the console was tried")
        holder.wait(30)
        # The lock is gone: polls work again; a row added now registers.
        db = sqlite3.connect(self.db)
        registrar = db.execute("SELECT registrar, binding_URI FROM registrant LIMIT 1").fetchone()
        db.execute("INSERT INTO registrant (registrar, aor, binding_URI, username, password, expiry) VALUES (?, ?, ?, 'u20', 'p', 20)",
                   (registrar[0], "sip:u20@test.invalid", registrar[1].replace("u0@", "u20@")))
        db.commit()
        wait_for(lambda: "u20" in records(control), 20)
        found = stats(control)
        self.assertEqual(found["sip"]["lapsed_registrations"], 0)
        self.assertIn("locked", self.processes.log("daemon"))

    def test_first_load_retried(self) -> None:
        """The table locked when the daemon starts: the first load is retried until it works (no --db-poll)."""
        users = {"a": {"password": "p"}}
        port = self.processes.registrar(users)
        local = free_udp_port()
        db = self.directory / "registrant.db"
        make_table(db, [{"registrar": f"sip:127.0.0.1:{port}", "aor": "sip:a@test.invalid", "username": "a",
                         "password": "p", "binding_URI": f"sip:a@127.0.0.1:{local}", "expiry": 60}])
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
             "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(15); db.execute('COMMIT')",
             str(db)],
            stdout=subprocess.PIPE,
        )
        self.addCleanup(lambda: holder.poll() is None and holder.kill())
        assert holder.stdout is not None
        self.assertEqual(holder.stdout.readline().strip(), b"locked")
        daemon, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0", "--timer-interval", "10"]
        )
        self.addCleanup(lambda: print(self.processes.log("daemon")[-3000:]))
        wait_for(lambda: "loading the table failed" in self.processes.log("daemon"), 30)
        self.assertEqual(records(control), {})
        holder.wait(30)
        wait_for(lambda: records(control).get("a", {}).get("state") == "REGISTERED_STATE", 60)

    def test_pipelining_client_is_bounded(self) -> None:
        """
        A client sending listings without reading any reply: the daemon
        stops reading its commands, its memory stays bounded, and other
        clients are answered meanwhile.
        """
        users = {f"u{i}": {"password": "p"} for i in range(300)}
        daemon, control, _ = self.start(users, "--send-rate", "2000")
        self.registered(control, 300)
        before = rss_kib(daemon.pid)
        hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(hog.close)
        hog.connect(control[len("unix:"):])
        hog.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sent < 50_000_000:
            try:
                sent += hog.send(b"reg_list json\n" * 1000)
            except BlockingIOError:
                time.sleep(0.05)
                self.assertEqual(request(control, "reg_stats json", timeout=5)[0], "200 OK")
        growth = rss_kib(daemon.pid) - before
        self.assertLess(growth, 20 * 1024, f"RSS grew {growth} KiB after {sent} bytes of commands")
        self.assertEqual(request(control, "reg_stats json", timeout=5)[0], "200 OK")
