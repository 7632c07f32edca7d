"""
The daemon as operators run it: C{twistd -n uacregistrant} against an
OpenSIPS-schema SQLite table and the packaged test registrar, queried with
C{uacregistrant-ctl}'s client over the UNIX control socket.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import stat
import subprocess

from uacregistrant.control.ctl import main as ctl_main
from uacregistrant.control.ctl import request

from .helpers import PATIENCE, ROOT, TWISTD, ProcessTestCase, environment, free_udp_port, make_table, records, wait_for

USERS = {
    "md5": {"password": "p-md5"},
    "sha": {"password": "p-sha", "algorithms": ["SHA-256"], "challenge": 407},
    "multi_alg": {"password": "p-ma", "algorithms": ["SHA-512-256", "SHA-256", "MD5"]},
    "brief": {"password": "p-brief", "min_expires": 1800},
    "wrong": {"password": "right"},
    "nocreds": {"password": "p-nc"},
    "busy": {"reply": 503, "retry_after": 300},
    "moved": {"reply": 302},
    "silent": {"silent": True},
    "stale": {"password": "p-stale", "stale_once": True},
    "ha1": {"password": "p-ha1"},
    "multi": {"password": "p-multi", "extra_bindings": 2, "max_expires": 30},
    "proxied": {"password": "p-px"},
    "named": {"password": "p-named"},
    "forced": {"password": "p-forced"},
    "lossy": {"password": "p-lossy", "drop_first": 1},
    "disabled": {"password": "p-dis"},
}

EXPECTED = {
    "md5": "REGISTERED_STATE",
    "sha": "REGISTERED_STATE",
    "multi_alg": "REGISTERED_STATE",
    "brief": "REGISTERED_STATE",
    "wrong": "WRONG_CREDENTIALS_STATE",
    "nocreds": "WRONG_CREDENTIALS_STATE",
    "busy": "REGISTRAR_ERROR_STATE",
    "moved": "REGISTRAR_ERROR_STATE",
    "silent": "REGISTER_TIMEOUT_STATE",
    "stale": "REGISTERED_STATE",
    "ha1": "REGISTERED_STATE",
    "multi": "REGISTERED_STATE",
    "proxied": "REGISTERED_STATE",
    "named": "REGISTERED_STATE",
    "forced": "REGISTERED_STATE",
    "lossy": "REGISTERED_STATE",
    "disabled": "NOT_REGISTERED_STATE",
}


class DaemonTests(ProcessTestCase):
    timeout = 120


    def rows(self, port: int, local: int, second: int) -> list[dict[str, object]]:
        rows = []
        ha1 = hashlib.md5(b"ha1:test.invalid:p-ha1").hexdigest()
        for user, policy in USERS.items():
            row: dict[str, object] = {
                "registrar": f"sip:127.0.0.1:{port}",
                "aor": f"sip:{user}@test.invalid",
                "username": user,
                "password": policy.get("password"),
                "binding_URI": f"sip:{user}@127.0.0.1:{local}",
                "expiry": 60,
            }
            if user == "wrong":
                row["password"] = "not-right"
            elif user == "nocreds":
                row["password"] = None
            elif user == "ha1":
                row["password"] = "0x" + ha1
            elif user == "proxied":
                row["registrar"] = "sip:registrar.test.invalid"
                row["proxy"] = f"sip:127.0.0.1:{port};lr"
            elif user == "named":
                row["registrar"] = f"sip:localhost:{port}"
            elif user == "forced":
                row["forced_socket"] = f"udp:127.0.0.1:{second}"
                row["binding_URI"] = f"sip:forced@127.0.0.1:{second}"
            elif user == "disabled":
                row["state"] = 1
            rows.append(row)
        rows.append({"registrar": "sip:someone@127.0.0.1", "aor": "sip:bad@test.invalid", "binding_URI": "sip:bad@h", "expiry": 60})
        return rows

    def test_every_account_reaches_its_state(self) -> None:
        """The issue's acceptance run: every account reaches its state, reg_list json well-formed."""
        port = self.processes.registrar(USERS)
        local, second = free_udp_port(), free_udp_port()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            tcp_port = probe.getsockname()[1]
        db = self.directory / "registrant.db"
        make_table(db, self.rows(port, local, second))
        token = "tok-" + hashlib.sha256(os.urandom(16)).hexdigest()
        token_file = self.directory / "control.token"
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        daemon, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--listen", f"udp:127.0.0.1:{second}",
             "--hash-size", "2", "--timer-interval", "4", "--sip-t1", "100", "--control", f"tcp:{tcp_port}",
             "--control-token-file", str(token_file)]
        )

        def settled() -> bool:
            states = {user: record["state"] for user, record in records(control).items()}
            return states == EXPECTED

        try:
            wait_for(settled)
        finally:
            print(self.processes.log("daemon")[-4000:])
        found = records(control)
        self.assertEqual(found["brief"]["expires"], 1800)
        self.assertEqual(found["multi"]["expires"], 30)
        self.assertEqual(found["busy"]["last_reply"], "503 Service Unavailable")
        self.assertEqual(found["forced"]["socket"], f"udp:127.0.0.1:{second}")
        self.assertEqual((found["disabled"]["enabled"], found["md5"]["enabled"]), ("no", "yes"))
        self.assertEqual(found["proxied"]["proxy"], f"sip:127.0.0.1:{port};lr")
        self.assertTrue(found["md5"]["last_register_sent"].endswith("Z"))
        self.assertIsNone(found["disabled"]["last_register_sent"])
        self.assertNotIn("bad", found)

        # The wire format: status line, one line of JSON, an empty line.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(PATIENCE)
            s.connect(control[len("unix:"):])
            s.sendall(b"reg_list json\n")
            data = b""
            while not data.endswith(b"\n\n"):
                chunk = s.recv(65536)
                self.assertTrue(chunk, f"connection closed after {data!r}")
                data += chunk
        lines = data.decode().split("\n")
        self.assertEqual((lines[0], lines[2:]), ("200 OK", ["", ""]))

        # Security: the socket is 0600 and no password reached the log or the console.
        mode = stat.S_IMODE(os.stat(control[len("unix:"):]).st_mode)
        self.assertEqual(mode, 0o600)
        log = self.processes.log("daemon")
        self.assertIn("skipping row id=18", log)
        for password in ["p-md5", "p-sha", "not-right", "p-ha1"]:
            self.assertNotIn(password, log)
            self.assertNotIn(password, data.decode())

        # The TCP console (loopback only, as telnet would use it): nothing
        # before the token, then commands.
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=PATIENCE) as s:
            s.sendall(f"reg_stats\r\nauth {token}\r\nreg_stats\r\nquit\r\n".encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        text = reply.decode()
        self.assertTrue(text.startswith("401 Unauthorized\n\n200 OK\n\n200 OK\n"), text)
        self.assertIn("\nREGISTERED_STATE: 11\n", text)
        self.assertTrue(text.endswith("\n\n200 Bye\n\n"), text)
        self.assertNotIn(token, text + self.processes.log("daemon"))
        self.assertEqual(request(f"tcp:{tcp_port}", "reg_stats")[0], "401 Unauthorized")
        self.assertEqual(request(f"tcp:{tcp_port}", "reg_stats", token=token.encode())[0], "200 OK")

        # The console script.
        self.assertEqual(ctl_main(["--control", control, "reg_stats"]), 0)
        self.assertEqual(ctl_main(["--control", control, "no_such_command"]), 1)
        self.assertEqual(request(control, "reg_list json sip:md5@test.invalid")[0], "200 OK")
        daemon.terminate()
        # twistd re-raises SIGTERM after a clean shutdown (exit status -15).
        self.assertIn(daemon.wait(PATIENCE), (0, -15))
        self.assertIn("Server Shut Down.", self.processes.log("daemon"))
        # Shutdown un-registered the registered bindings (and only those).
        registrar = self.processes.log("registrar")
        for user in ("md5", "sha", "forced", "named"):
            self.assertRegex(registrar, rf"user={user} call_id={found[user]['call_id']} cseq=\d+ expires=0")
        self.assertNotRegex(registrar, r"user=(wrong|busy|disabled) [^\n]*expires=0")

    def run_twistd(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "uacregistrant", "--control", f"unix:{self.processes.sockets / 'c'}", *args],
            capture_output=True, env=environment(), cwd=self.directory, timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        return result

    def refusal(self, *args: str) -> str:
        """A start refused by the service's checks: what it wrote on stderr."""
        return self.run_twistd(*args).stderr.decode()

    def usage_error(self, *args: str) -> str:
        """Options refused by their validation (twistd prints the options, then the reason): the reason line."""
        result = self.run_twistd(*args)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, b"")
        lines = result.stdout.decode().strip().splitlines()
        self.assertIn("--hash-size", result.stdout.decode())  # the options are listed
        return lines[-1]

    def test_refuses_to_start(self) -> None:
        """Bad settings are usage errors naming the value; an unusable database stops the start with one clear line."""
        port = str(free_udp_port())
        listen = ["--listen", f"udp:127.0.0.1:{port}"]
        reason = self.usage_error("--hash-size", "3", "--timer-interval", "4", *listen)
        self.assertIn("timer_interval=4 must be at least 2^hash_size=8", reason)
        self.assertIn("invalid sip_t1", self.usage_error("--sip-t1", "fast", *listen))
        self.assertIn("unsupported db_url", self.usage_error("--db-url", "mysql://h/db", *listen))
        err = self.refusal("--db-url", f"sqlite:{self.directory}/missing/dir.db", *listen)
        self.assertIn("does not exist", err)
        junk = self.directory / "junk.db"
        junk.write_bytes(b"not a database" * 100)
        err = self.refusal("--db-url", f"sqlite:{junk}", *listen)
        self.assertIn("not a database", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_daemonized_refusal_reaches_the_parent(self) -> None:
        """
        Without -n, a refused start is reported by twistd's parent process,
        which exits 1 (it must not wait forever), and no pid file is left.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        busy.bind(("127.0.0.1", 0))
        self.addCleanup(busy.close)
        taken = busy.getsockname()[1]
        pidfile = self.directory / "refused.pid"
        result = subprocess.run(
            [*TWISTD, f"--pidfile={pidfile}", f"--logfile={self.directory / 'refused.log'}", "uacregistrant",
             "--control", f"unix:{self.processes.sockets / 'c'}", "--db-url", f"sqlite:{self.directory / 'never.db'}",
             "--listen", f"udp:127.0.0.1:{taken}"],
            capture_output=True, env=environment(), cwd=self.directory, timeout=PATIENCE,
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"StartRefused: cannot listen on udp:127.0.0.1:{taken}", result.stderr.decode())
        self.assertFalse(pidfile.exists())
        self.assertIn("Address already in use", (self.directory / "refused.log").read_text())

    def test_startup_failures_are_one_line(self) -> None:
        """
        A port in use, an address not of this host, a control socket in a
        missing directory: one line on stderr, a non-zero exit.  A Unicode
        digit or an unbounded number: a usage error naming it.  Either way
        nothing is created (no table, no socket).
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        busy.bind(("127.0.0.1", 0))
        self.addCleanup(busy.close)
        taken = busy.getsockname()[1]
        port = free_udp_port()
        db = self.directory / "never.db"
        cases = [
            (["--listen", f"udp:127.0.0.1:{taken}"], "address already in use"),
            (["--listen", "udp:192.0.2.1:5060"], "not an address of this host"),
            (["--listen", f"udp:127.0.0.1:{port}", "--control", f"unix:{self.directory}/missing/ctl"], "does not exist"),
        ]
        for args, expected in cases:
            err = self.refusal("--db-url", f"sqlite:{db}", *args)
            self.assertIn(expected, err.lower(), args)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertTrue(err.startswith("uacregistrant: cannot start: "), err)
            self.assertFalse(db.exists(), args)
        usage = [
            (["--listen", "udp:127.0.0.1:\u00b2"], "invalid port"),
            (["--listen", f"udp:127.0.0.1:{port}", "--db-poll", "nan"], "invalid db_poll"),
            (["--listen", f"udp:127.0.0.1:{port}", "--default-expires", str(2**40)], "invalid default_expires"),
            (["--listen", f"udp:127.0.0.1:{port}", "--send-rate", "1e-300"], "invalid send_rate"),
        ]
        for args, expected in usage:
            self.assertIn(expected, self.usage_error("--db-url", f"sqlite:{db}", *args).lower(), args)
            self.assertFalse(db.exists(), args)
        self.assertEqual(list(self.processes.sockets.iterdir()), [])
        # The .tac refuses the same way.
        config = self.directory / "bad.toml"
        config.write_text(f'db_url = "sqlite:{db}"\nlisten = ["udp:127.0.0.1:{taken}"]\n')
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "-y", str(ROOT / "registrant.tac")],
            capture_output=True, env={**environment(), "UACREG_CONFIG": str(config)}, cwd=self.directory, timeout=60,
        )
        err = result.stderr.decode()
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(err.strip().splitlines(), [f"uacregistrant: cannot start: cannot listen on udp:127.0.0.1:{taken}: Address already in use"])
        self.assertFalse(db.exists())

    def test_help_lists_options_and_tac(self) -> None:
        """twistd uacregistrant --help lists every option; the .tac file runs the same service."""
        result = subprocess.run(
            [*TWISTD, "uacregistrant", "--help"], capture_output=True, env=environment(), cwd=self.directory, timeout=60
        )
        text = result.stdout.decode()
        for option in ["--db-url", "--table-name", "--registrar-column", "--proxy-column", "--aor-column",
                       "--third-party-registrant-column", "--username-column", "--password-column", "--binding-uri-column",
                       "--binding-params-column", "--expiry-column", "--forced-socket-column", "--state-column", "--hash-size",
                       "--timer-interval", "--listen", "--control", "--sip-t1", "--config", "--default-expires"]:
            self.assertIn(option, text)
        port = self.processes.registrar({"tac": {"password": "p-tac"}})
        local = free_udp_port()
        db = self.directory / "tac.db"
        make_table(db, [{"registrar": f"sip:127.0.0.1:{port}", "aor": "sip:tac@test.invalid", "username": "tac",
                         "password": "p-tac", "binding_URI": f"sip:tac@127.0.0.1:{local}", "expiry": 120}])
        config = self.directory / "uacregistrant.toml"
        control = f"unix:{self.processes.sockets / 'tac.ctl'}"
        config.write_text(
            f'db_url = "sqlite:{db}"\nlisten = ["udp:127.0.0.1:{local}"]\ncontrol = ["{control}"]\n'
            "hash_size = 0\ntimer_interval = 10\n"
        )
        env_child = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "--logfile=-", "-y", str(ROOT / "registrant.tac")],
            stdout=open(self.directory / "tac.log", "wb"), stderr=subprocess.STDOUT, cwd=self.directory,
            env={**environment(), "UACREG_CONFIG": str(config)},
        )
        self.processes.children.append(env_child)
        wait_for(lambda: records(control).get("tac", {}).get("state") == "REGISTERED_STATE")
        # SIGHUP re-reads the table (a row disabled meanwhile is un-registered) and never stops the daemon.
        table = sqlite3.connect(db)
        table.execute("UPDATE registrant SET state = 1")
        table.commit()
        table.close()
        env_child.send_signal(signal.SIGHUP)
        wait_for(lambda: records(control).get("tac", {}).get("state") == "NOT_REGISTERED_STATE")
        self.assertIsNone(env_child.poll(), "SIGHUP stopped the .tac daemon")
