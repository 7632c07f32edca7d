"""
The daemon as a hostile peer, a careless operator and a slow client would
meet it: C{twistd -n uacregistrant} on real sockets on loopback.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from typing import IO

from uacregistrant.control.ctl import request

from .helpers import PATIENCE, ProcessTestCase, environment, free_udp_port, make_table, records, wait_for

#: A process that holds an exclusive lock on the SQLite file given until a
#: line arrives on its stdin (or stdin closes), then commits.
LOCK_HOLDER = (
    "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
    "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline(); db.execute('COMMIT')"
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stats(control: str) -> dict:
    status, body = request(control, "reg_stats json", timeout=PATIENCE / 2)
    assert status == "200 OK", status
    return json.loads(body[0])


class Lines:
    """The lines a child writes to an unbuffered pipe, each waited for at most a given time."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        assert pipe is not None
        self.fd = pipe.fileno()
        self.buffer = b""

    def next(self, timeout: float) -> str | None:
        """The next line, or C{None} if none came within C{timeout} seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"the stream ended; unfinished line: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")


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
        wait_for(lambda: len([r for r in records(control).values() if r["state"] == "REGISTERED_STATE"]) == count)

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
        # Some of the 3000 may be lost on the way (a full socket buffer).
        wait_for(lambda: stats(control)["sip"]["dropped_malformed"] >= 2500)
        # Thousands were handled: one line per datagram would be there by now.
        log = wait_for(lambda: (text := self.processes.log("daemon")) and f"{source[0]}:{source[1]}" in text and text)
        self.assertEqual(log.count(f"{source[0]}:{source[1]}"), 1, log[-2000:])
        self.assertNotIn("Traceback", log)

    def test_ctl_follows_events(self) -> None:
        """uacregistrant-ctl reg_events prints each state change as it comes."""
        daemon, control, _ = self.start({"a": {"password": "p"}})
        self.registered(control, 1)
        follower = subprocess.Popen(
            [sys.executable, "-m", "uacregistrant.control.ctl", "--control", control, "reg_events"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(), bufsize=0,
        )
        self.addCleanup(lambda: follower.poll() is None and follower.kill())
        lines = Lines(follower.stdout)
        # Nothing tells when the follower has subscribed: force registrations
        # until one is seen from its start (the changes of one forced before
        # the subscription may arrive in part, or not at all).
        deadline = time.monotonic() + PATIENCE
        while True:
            self.assertLess(time.monotonic(), deadline, "uacregistrant-ctl reg_events printed no forced registration")
            self.registered(control, 1)
            self.assertEqual(request(control, "reg_force_register sip:a@test.invalid")[0], "200 OK")
            first = lines.next(1.0)
            if first is not None and "REGISTERED_STATE -> REGISTERING_STATE" in first:
                break
        second = lines.next(PATIENCE)
        self.assertIn("sip:a@test.invalid", first)
        self.assertIsNotNone(second, "the registration's end was not printed")
        self.assertIn("-> REGISTERED_STATE", second)
        follower.terminate()
        follower.wait(PATIENCE)

    def test_locked_database_does_not_freeze(self) -> None:
        """
        Another process holding an exclusive lock on the SQLite file while
        the daemon polls it: the console keeps answering during the lock,
        no registration lapses, and the next poll after the lock works.
        """
        users = {f"u{i}": {"password": "p"} for i in range(20)}
        daemon, control, _ = self.start(users, "--db-poll", "1", expiry=20)
        self.registered(control, 20)
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(self.db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(lambda: holder.poll() is None and holder.kill())
        assert holder.stdin is not None and holder.stdout is not None
        self.assertEqual(holder.stdout.readline().strip(), b"locked")
        # Polls now wait on the lock (about 11 s of busy retries each) until
        # one gives up and says so; the console is tried all along. A
        # reactor waiting with the polls answers in seconds, not in
        # milliseconds, one reply in every few (between waits it runs): the
        # 90th percentile of the reply times tells; a few slow replies on a
        # loaded machine do not.
        replies: list[float] = []
        deadline = time.monotonic() + PATIENCE
        while "the database stayed locked by another process" not in self.processes.log("daemon"):
            self.assertLess(time.monotonic(), deadline, "no poll gave up on the lock")
            for command in ("reg_list json", "reg_stats json"):
                started = time.monotonic()
                self.assertEqual(request(control, command, timeout=PATIENCE)[0], "200 OK")
                replies.append(time.monotonic() - started)
            time.sleep(0.5)
        self.assertIsNone(holder.poll(), "the lock holder exited before it was told to")
        self.assertGreaterEqual(len(replies), 10, "the console was tried too few times while a poll waited")
        self.assertLess(statistics.quantiles(replies, n=10)[-1], 1.0, replies)
        holder.stdin.close()  # release the lock
        self.assertEqual(holder.wait(PATIENCE), 0)
        # The lock is gone: polls work again; a row added now registers.
        db = sqlite3.connect(self.db)
        registrar = db.execute("SELECT registrar, binding_URI FROM registrant LIMIT 1").fetchone()
        db.execute("INSERT INTO registrant (registrar, aor, binding_URI, username, password, expiry) VALUES (?, ?, ?, 'u20', 'p', 20)",
                   (registrar[0], "sip:u20@test.invalid", registrar[1].replace("u0@", "u20@")))
        db.commit()
        wait_for(lambda: "u20" in records(control))
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
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(lambda: holder.poll() is None and holder.kill())
        assert holder.stdin is not None and holder.stdout is not None
        self.assertEqual(holder.stdout.readline().strip(), b"locked")
        daemon, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0", "--timer-interval", "10"]
        )
        self.addCleanup(lambda: print(self.processes.log("daemon")[-3000:]))
        wait_for(lambda: "loading the table failed" in self.processes.log("daemon"))
        self.assertEqual(records(control), {})
        holder.stdin.close()  # release the lock
        self.assertEqual(holder.wait(PATIENCE), 0)
        wait_for(lambda: records(control).get("a", {}).get("state") == "REGISTERED_STATE")

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
                self.assertEqual(request(control, "reg_stats json", timeout=PATIENCE / 2)[0], "200 OK")
        growth = rss_kib(daemon.pid) - before
        self.assertLess(growth, 20 * 1024, f"RSS grew {growth} KiB after {sent} bytes of commands")
        self.assertEqual(request(control, "reg_stats json", timeout=PATIENCE / 2)[0], "200 OK")

    def test_stream_and_secure_rows_are_not_sent_in_clear(self) -> None:
        """
        Rows asking for TCP or TLS (transport parameter, sips: registrar or
        proxy) never reach a UDP-only registrar over UDP: they try a
        connection of their transport, which is refused, and say so in
        last_error; a plain row beside them registers.
        """
        users = {user: {"password": "p"} for user in ("plain", "tls", "tcp", "sips", "proxied")}
        port = self.processes.registrar(users)
        local = free_udp_port()
        db = self.directory / "registrant.db"
        hop = f"127.0.0.1:{port}"
        columns = {
            "plain": {"registrar": f"sip:{hop}"},
            "tls": {"registrar": f"sip:{hop};transport=tls"},
            "tcp": {"registrar": f"sip:{hop};transport=tcp"},
            "sips": {"registrar": f"sips:{hop}"},
            "proxied": {"registrar": f"sip:{hop}", "proxy": f"sip:{hop};transport=tls"},
        }
        make_table(db, [
            {"aor": f"sip:{user}@test.invalid", "username": user, "password": "p",
             "binding_URI": f"sip:{user}@127.0.0.1:{local}", "expiry": 60, **row}
            for user, row in columns.items()
        ])
        daemon, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0", "--timer-interval", "10"]
        )
        wanted = {"plain": "REGISTERED_STATE", **{user: "REGISTER_TIMEOUT_STATE" for user in columns if user != "plain"}}
        found = wait_for(lambda: (lambda r: r if {u: v["state"] for u, v in r.items()} == wanted else None)(records(control)))
        for user, transport in (("tls", "tls"), ("tcp", "tcp"), ("sips", "tls"), ("proxied", "tls")):
            self.assertIn(f"connection to {transport}:{hop} failed: connection refused", found[user]["last_error"])
            self.assertEqual(found[user]["transport"], transport)
        log = self.processes.log("registrar")
        self.assertIn("REGISTER user=plain", log)
        for user in ("tls", "tcp", "sips", "proxied"):
            self.assertNotIn(f"user={user} ", log)
