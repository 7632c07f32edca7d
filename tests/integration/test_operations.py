"""
The daemon as a service manager and an operator's tools see it: C{twistd
-n uacregistrant} with a notify socket standing for systemd's, a log file
in JSON lines, SIGHUP (re-read the table, reopen the log after logrotate
moved it), SIGUSR1 (rotate), SIGTERM (STOPPING=1, un-register).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from uacregistrant.control.ctl import request

from .helpers import PATIENCE, TWISTD, ProcessTestCase, free_udp_port, make_table, records, wait_for
from .test_mi_clients import client

USERS = {f"u{i}": {"password": f"pw{i}"} for i in range(3)}


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=PATIENCE / 2) as reply:
            return reply.status, reply.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


def json_rpc(port: int, method: str, params: object) -> dict[str, object]:
    """One JSON-RPC call as OpenSIPS's MI clients send it (POST /mi, the id a string)."""
    body = json.dumps({"jsonrpc": "2.0", "id": "4242", "method": method, "params": params}).encode()
    call = urllib.request.Request(f"http://127.0.0.1:{port}/mi", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=PATIENCE / 2) as reply:
        assert reply.status == 200
        answer: dict[str, object] = json.loads(reply.read())
    return answer


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and sorted labels (parsed by prometheus_client)."""
    status, text = http_get(port, "/metrics")
    assert status == 200, (status, text)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text + "\n")
        for sample in family.samples
    }


class NotifySocket:
    """A datagram socket where systemd's would be; every message read, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.setblocking(False)
        self.seen: list[dict[str, str]] = []

    def read(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return self.seen
            self.seen.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def has(self, key: str) -> dict[str, str] | None:
        return next((m for m in self.read() if key in m), None)

    def close(self) -> None:
        self.socket.close()


class OperationsTests(ProcessTestCase):
    timeout = 120

    def row(self, user: str, registrar: int, binding: int) -> dict[str, object]:
        return {
            "registrar": f"sip:127.0.0.1:{registrar}", "aor": f"sip:{user}@test.invalid", "username": user,
            "password": USERS[user]["password"], "binding_URI": f"sip:{user}@127.0.0.1:{binding}", "expiry": 300,
        }

    def test_systemd_signals_and_json_log(self) -> None:
        port = self.processes.registrar(USERS)
        local = free_udp_port()
        table = self.directory / "registrant.db"
        make_table(table, [self.row("u0", port, local), self.row("u1", port, local)])
        notify = NotifySocket(self.processes.sockets / "notify")
        self.addCleanup(notify.close)
        logfile = self.directory / "uacregistrant.log"
        control = f"unix:{self.processes.sockets / 'ctl'}"
        metrics, mi = free_tcp_port(), free_tcp_port()
        daemon = self.processes.spawn(
            [*TWISTD, "-n", "--pidfile=", f"--logfile={logfile}", "uacregistrant", "--control", control,
             "--db-url", f"sqlite:{table}", "--listen", f"udp:127.0.0.1:{local}", "--log-format", "json",
             "--hash-size", "0", "--timer-interval", "10", "--metrics", f"tcp:{metrics}",
             "--mi-http", f"tcp:{mi}"],
            "daemon",
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},
        )

        def log_lines(path: Path = logfile) -> list[dict[str, object]]:
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

        try:
            # READY=1 once the table is loaded, with the counts; the watchdog pinged from the reactor.
            ready = wait_for(lambda: notify.has("READY"))
            self.assertEqual(ready["READY"], "1")
            self.assertIn("2 records", ready["STATUS"])
            self.assertTrue(any(m.get("message", "").startswith("table registrant: 2 added") for m in log_lines()))  # type: ignore[union-attr]
            wait_for(lambda: [r["state"] for r in records(control).values()] == ["REGISTERED_STATE"] * 2)
            pings = len([m for m in notify.read() if m.get("WATCHDOG") == "1"])
            time.sleep(1.2)
            # Every 10 s a status line with the counts by state.
            wait_for(lambda: any(m.get("STATUS", "").startswith("2 records: 2 registered, 0 failing, 2 bindings held") for m in notify.read()),
                     timeout=25)
            self.assertGreater(len([m for m in notify.read() if m.get("WATCHDOG") == "1"]), pings)

            # Prometheus: /healthz is ok, /metrics counts what reg_stats counts.
            self.assertEqual(http_get(metrics, "/healthz"), (200, "ok"))
            scraped = scrape(metrics)
            stats = dict(line.split(": ", 1) for line in request(control, "reg_stats")[1])
            self.assertEqual(scraped[("uacregistrant_records", (("state", "REGISTERED_STATE"),))], float(stats["REGISTERED_STATE"]))
            self.assertEqual(scraped[("uacregistrant_records", (("state", "REGISTERED_STATE"),))], 2.0)
            self.assertEqual(scraped[("uacregistrant_bindings_held", ())], 2.0)
            self.assertEqual(scraped[("uacregistrant_db_up", ())], 1.0)
            self.assertGreaterEqual(scraped[("uacregistrant_responses_total", (("class", "2xx"),))], 2.0)

            # OpenSIPS's MI over HTTP: reg_list as opensips-cli asks for it.
            answer = json_rpc(mi, "reg_list", {})
            self.assertEqual(answer["id"], "4242")
            self.assertEqual(sorted(r["state"] for r in answer["result"]["Records"]), ["REGISTERED_STATE"] * 2)
            self.assertIn("uac_registrant:list", json_rpc(mi, "which", {})["result"])
            # Writes are off unless --mi-http-writes: the MI has no authentication.
            refused = json_rpc(mi, "reg_disable", {"aor": "sip:u0@test.invalid", "contact": f"sip:u0@127.0.0.1:{local}",
                                                   "registrar": f"sip:127.0.0.1:{port}"})
            self.assertEqual(refused["error"]["code"], 403, refused)  # type: ignore[index]
            self.assertEqual(records(control)["u0"]["state"], "REGISTERED_STATE")
            # ... and the real OpenSIPS client against the daemon's --mi-http.
            listed = subprocess.run([client("opensips-mi"), "-t", "http", "-i", "127.0.0.1", "-p", str(mi), "uac_registrant:list"],
                                    capture_output=True, text=True, timeout=PATIENCE, env={**os.environ, "HOME": str(self.directory)})
            self.assertEqual(listed.returncode, 0, listed.stdout + listed.stderr)
            self.assertEqual(sorted(r["AOR"] for r in json.loads(listed.stdout)["Records"]), ["sip:u0@test.invalid", "sip:u1@test.invalid"])

            # Every log line is one JSON object with time, level, namespace and message.
            lines = log_lines()
            self.assertTrue(lines)
            for line in lines:
                self.assertLessEqual({"time", "level", "namespace", "message"}, set(line))

            # logrotate moves the file; SIGHUP reopens it and re-reads the table (a row added meanwhile).
            db = sqlite3.connect(table)
            db.execute(
                "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) VALUES (?, ?, ?, ?, ?, ?)",
                tuple(self.row("u2", port, local).values()),
            )
            db.commit()
            db.close()
            moved = self.directory / "uacregistrant.log.old"
            os.rename(logfile, moved)
            daemon.send_signal(signal.SIGHUP)
            wait_for(lambda: records(control).get("u2", {}).get("state") == "REGISTERED_STATE")
            self.assertIsNone(daemon.poll(), "SIGHUP stopped the daemon")
            self.assertTrue(any("SIGHUP" in str(m["message"]) for m in log_lines()), logfile.read_text() if logfile.exists() else "no new log")
            self.assertFalse(any("SIGHUP" in str(m["message"]) for m in log_lines(moved)))

            # SIGUSR1 rotates as twistd does.
            daemon.send_signal(signal.SIGUSR1)
            rotated = self.directory / "uacregistrant.log.1"
            wait_for(lambda: rotated.exists())
            self.assertIsNone(daemon.poll())

            # SIGTERM: STOPPING=1, every binding un-registered, exit.
            daemon.send_signal(signal.SIGTERM)
            self.assertIn(daemon.wait(PATIENCE), (0, -signal.SIGTERM))
            self.assertEqual(notify.has("STOPPING"), {"STOPPING": "1", "STATUS": "stopping: un-registering"})
            self.assertTrue(any(m["message"] == "shutdown: every binding un-registered" for m in log_lines()))
        finally:
            print(self.processes.log("daemon")[-3000:])
            for path in (logfile, self.directory / "uacregistrant.log.old"):
                if path.exists():
                    print(f"--- {path.name} ---\n{path.read_text()[-3000:]}")
