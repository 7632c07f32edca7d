"""
The daemon against SIPp as an independent registrar (UAS scenarios in
tests/sipp/): SIPp checks the digest answer itself with verifyauth.
Over UDP (SIPp's default) and over TCP (C{-t t1}, L{TcpRegistrar}).
"""

from __future__ import annotations

import csv
import datetime
import json
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from uacregistrant.control.ctl import request

from .helpers import PATIENCE, Processes, ProcessTestCase, ROOT, free_udp_port, make_table, records, require_binary, wait_for

SCENARIOS = ROOT / "tests" / "sipp"
#: The TCP registrar's scenario: a TCP Via, 401, then 200 for the password C{pw-USER}, else 403.
TCP_SCENARIO = "uas_tcp_401_200.xml"


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens there: connecting is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port() -> int:
    """A port on 127.0.0.1 free for both UDP and TCP a moment ago (a daemon listening on both)."""
    while True:
        port = free_tcp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def tcp_listening(port: int) -> bool:
    """Whether a socket listens on TCP 127.0.0.1:C{port}, read from /proc/net/tcp (no probe connection)."""
    address = f"{int.from_bytes(socket.inet_aton('127.0.0.1'), sys.byteorder):08X}:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return any(fields[1] == address and fields[3] == "0A" for fields in (line.split() for line in table))


def last_csv_row(path: Any) -> dict[str, str]:
    """The last row of one of SIPp's C{;}-separated statistics files, by column name."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    assert len(rows) >= 2, rows
    return dict(zip(rows[0], rows[-1]))


class TcpRegistrar:
    """
    SIPp over TCP (C{-t t1}) as a registrar: L{TCP_SCENARIO}, every account
    one call, the password of user U being C{pw-U}.  It runs until
    L{finish} (a soft exit, SIGUSR1) so that the daemon's connection is
    still open when a test looks at it; C{-timeout} bounds it anyway.
    """

    def __init__(self, processes: Processes, sipp: str, name: str = "sipp-tcp") -> None:
        self.processes = processes
        self.name = name
        self.port = free_tcp_port()
        self.child = processes.spawn(
            [sipp, "-sf", str(SCENARIOS / TCP_SCENARIO), "-t", "t1", "-i", "127.0.0.1", "-p", str(self.port),
             "-nostdin", "-timeout", str(int(PATIENCE + 30)), "-timeout_error", "-trace_err",
             "-trace_counts", "-trace_stat", "-stf", f"{name}-stats.csv"],
            name,
        )
        wait_for(lambda: self._alive() and tcp_listening(self.port))

    def _alive(self) -> bool:
        if self.child.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.child.returncode}): {self.processes.log(self.name)[-3000:]}")
        return True

    def finish(self) -> tuple[int, dict[str, int], dict[str, str]]:
        """
        Stop SIPp (its calls are over) and return its exit code, its
        per-message counts (C{-trace_counts}: C{0_REGISTER_Recv},
        C{1_401_Sent}, C{…_Retrans}, C{…_Unexp}) and its statistics
        (C{-trace_stat}: C{SuccessfulCall(C)}, C{OutOfCallMsgs(C)}, …).
        """
        self._alive()
        self.child.send_signal(signal.SIGUSR1)
        try:
            code = self.child.wait(PATIENCE)
        finally:
            print(self.processes.log(self.name)[-3000:])
        directory = self.processes.directory
        counts = last_csv_row(directory / f"{TCP_SCENARIO[:-4]}_{self.child.pid}_counts.csv")
        stats = last_csv_row(directory / f"{self.name}-stats.csv")
        return code, {k: int(v) for k, v in counts.items() if k[:1].isdigit()}, stats

    def assert_clean(self, test: Any, accounts: int) -> None:
        """
        SIPp ended well having seen each of C{accounts} REGISTER once and its
        digest answer once: nothing retransmitted, unexpected, or outside a call.
        """
        code, counts, stats = self.finish()
        test.assertEqual(code, 0, (counts, stats))
        expected = {
            "0_REGISTER_Recv": accounts, "1_401_Sent": accounts, "2_REGISTER_Recv": accounts,
            "4_403_Sent": 0, "5_200_Sent": accounts,
        }
        test.assertEqual({k: counts[k] for k in expected}, expected, counts)
        test.assertEqual({k: v for k, v in counts.items() if k.endswith(("_Retrans", "_Unexp", "_Timeout")) and v}, {}, counts)
        test.assertEqual(
            [stats[k] for k in ("SuccessfulCall(C)", "FailedCall(C)", "OutOfCallMsgs(C)", "DeadCallMsgs(C)", "Retransmissions(C)")],
            [str(accounts), "0", "0", "0", "0"],
            stats,
        )


def seconds(iso: str) -> int:
    """A reg_list time (ISO 8601 UTC, whole seconds) as seconds since the epoch."""
    return int(datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


class SippTests(ProcessTestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sipp = require_binary("sipp", "sip-tester")
        super().setUp()

    def run_scenario(
        self, scenario: str, password: str, expiry: int = 60, settled: tuple[str, ...] = (), extra: tuple[str, ...] = ()
    ) -> tuple[subprocess.Popen[bytes], dict]:
        users = self.directory / "users.csv"
        users.write_text("SEQUENTIAL\nalice;secret;\n")
        port = free_udp_port()
        sipp = self.processes.spawn(
            [self.sipp, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1",
             "-inf", str(users), "-nostdin", "-timeout", str(int(PATIENCE + 30)), "-timeout_error", "-trace_err"],
            "sipp",
        )
        local = free_udp_port()
        db = self.directory / "registrant.db"
        make_table(db, [{"registrar": f"sip:127.0.0.1:{port}", "aor": "sip:alice@sipp.invalid", "username": "alice",
                         "password": password, "binding_URI": f"sip:alice@127.0.0.1:{local}", "expiry": expiry}])
        _, control = self.control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0",
             "--timer-interval", "30", "--sip-t1", "200", *extra]
        )
        try:
            record = wait_for(
                lambda: (r := records(control).get("alice")) and (
                    r["state"] in settled if settled else
                    r["state"] not in ("NOT_REGISTERED_STATE", "REGISTERING_STATE", "AUTHENTICATING_STATE")
                ) and r,
            )
        finally:
            print(self.processes.log("daemon")[-3000:])
        return sipp, record

    def finished(self, sipp: subprocess.Popen[bytes]) -> int:
        try:
            return sipp.wait(2 * PATIENCE)
        finally:
            print(self.processes.log("sipp")[-3000:])

    def test_401_then_200(self) -> None:
        """SIPp challenges, verifies the MD5 answer and accepts."""
        sipp, record = self.run_scenario("uas_401_200.xml", "secret")
        self.assertEqual((record["state"], record["last_reply"]), ("REGISTERED_STATE", "200 OK"))
        self.assertEqual(self.finished(sipp), 0)

    def test_423_then_401_then_200(self) -> None:
        """SIPp demands Min-Expires 1800, then a digest answer carrying it."""
        sipp, record = self.run_scenario("uas_423_401_200.xml", "secret")
        self.assertEqual((record["state"], record["expires"]), ("REGISTERED_STATE", 1800))
        self.assertEqual(self.finished(sipp), 0)

    def test_wrong_password_is_refused_by_sipp(self) -> None:
        """With a wrong password SIPp's verifyauth fails and answers 403."""
        sipp, record = self.run_scenario("uas_401_200.xml", "not-the-secret")
        self.assertEqual((record["state"], record["last_reply"]), ("REGISTRAR_ERROR_STATE", "403 Forbidden"))
        self.finished(sipp)

    def test_407_from_a_proxy(self) -> None:
        """A proxy's 407 is answered in Proxy-Authorization, verified by SIPp."""
        sipp, record = self.run_scenario("uas_407_200.xml", "secret")
        self.assertEqual((record["state"], record["last_reply"]), ("REGISTERED_STATE", "200 OK"))
        self.assertEqual(self.finished(sipp), 0)

    def test_topmost_supported_challenge(self) -> None:
        """Of two challenges, the first with an unsupported algorithm is skipped; MD5 is answered."""
        sipp, record = self.run_scenario("uas_multi_challenge.xml", "secret")
        self.assertEqual(record["state"], "REGISTERED_STATE")
        self.assertEqual(self.finished(sipp), 0)

    def test_stale_nonce(self) -> None:
        """A 401 with stale=true after a good answer is answered again with the new nonce."""
        sipp, record = self.run_scenario("uas_stale.xml", "secret")
        self.assertEqual(record["state"], "REGISTERED_STATE")
        self.assertEqual(self.finished(sipp), 0)

    def test_503_with_retry_after(self) -> None:
        """
        503 + Retry-After: 2 is REGISTRAR_ERROR, retried after 2 s on the same
        Call-ID (Retry-After is clamped to at least a quarter of the retry
        interval: 8 s here; the back-off alone would wait 4 to 8 s).

        The delay is read from the daemon's own times (whole seconds in
        reg_list), not from when this test happens to look.
        """
        sipp, record = self.run_scenario(
            "uas_503_retry_after.xml", "secret", settled=("REGISTRAR_ERROR_STATE",), extra=("--retry-interval", "8")
        )
        self.assertEqual(record["last_reply"], "503 Service Unavailable")
        # The retry is due 2 s after the 503 (a round trip after the REGISTER
        # was sent): 2 or 3 whole seconds later; 4 or more is the back-off.
        sent, due = seconds(record["last_register_sent"]), seconds(record["registration_t_out"])
        self.assertIn(due - sent, (2, 3), record)
        later = wait_for(lambda: (r := records(self.control[1])["alice"])["state"] == "REGISTERED_STATE" and r, interval=0.05)
        # ... and it did not go before it was due.
        self.assertGreaterEqual(seconds(later["last_register_sent"]), due, later)
        self.assertEqual(later["call_id"], record["call_id"])
        self.assertEqual(self.finished(sipp), 0)

    def test_200_with_several_bindings(self) -> None:
        """Our expiry is read from our own Contact among several (123 s, less than the 300 asked)."""
        sipp, record = self.run_scenario("uas_200_bindings.xml", "secret", expiry=300)
        self.assertEqual((record["state"], record["expires"]), ("REGISTERED_STATE", 123))
        self.assertEqual(self.finished(sipp), 0)

    def test_silence_times_out(self) -> None:
        """No answer: retransmissions on Timer E, then REGISTER_TIMEOUT at Timer F (64 x T1 = 12.8 s)."""
        started = time.monotonic()
        sipp, record = self.run_scenario("uas_silence.xml", "secret")
        self.assertEqual(record["state"], "REGISTER_TIMEOUT_STATE")
        self.assertGreaterEqual(time.monotonic() - started, 12)
        stats = json.loads(request(self.control[1], "reg_stats json")[1][0])
        # On time, Timer E (0.2 s doubling to T2 = 4 s) fires 6 times before
        # Timer F; each firing late on a loaded machine pushes the next ones
        # back, so fewer may fit, never more (the exact schedule is a unit
        # test on a fake clock).
        self.assertTrue(4 <= stats["sip"]["retransmissions"] <= 6, stats["sip"])
        self.assertEqual(stats["sip"]["timeouts"], 1)
        self.finished(sipp)

    def test_late_answer_after_retransmissions(self) -> None:
        """An answer after 1 s (retransmissions meanwhile) is accepted."""
        sipp, record = self.run_scenario("uas_late_answer.xml", "secret")
        self.assertEqual(record["state"], "REGISTERED_STATE")
        stats = json.loads(request(self.control[1], "reg_stats json")[1][0])
        # Due at 0.2 and 0.6 s, before the answer; a late reactor may send only the first.
        self.assertGreaterEqual(stats["sip"]["retransmissions"], 1)
        self.assertEqual(self.finished(sipp), 0)


class SippTcpTests(ProcessTestCase):
    """SIPp over TCP (C{-t t1}, one connection for every call) as the registrar of C{transport=tcp} rows."""

    timeout = 120

    def setUp(self) -> None:
        self.sipp = require_binary("sipp", "sip-tester")
        super().setUp()

    def start(self, registrar: TcpRegistrar, passwords: dict[str, str]) -> str:
        """The daemon with one row per user over TCP to C{registrar}; its control endpoint."""
        local = free_port()
        db = self.directory / "registrant.db"
        make_table(db, [
            {"registrar": f"sip:127.0.0.1:{registrar.port};transport=tcp", "aor": f"sip:{user}@sipp.invalid", "username": user,
             "password": password, "binding_URI": f"sip:{user}@127.0.0.1:{local};transport=tcp", "expiry": 3600}
            for user, password in passwords.items()
        ])
        _, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--listen", f"tcp:127.0.0.1:{local}",
             "--hash-size", "0", "--timer-interval", "30", "--sip-t1", "200"]
        )
        self.addCleanup(lambda: print(self.processes.log("daemon")[-3000:]))
        return control

    def test_accounts_share_one_connection(self) -> None:
        """
        20 accounts register over one TCP connection: SIPp challenges each
        and checks its digest; each REGISTER went once (no retransmission
        over TCP), as SIPp's own counts show.
        """
        accounts = 20
        registrar = TcpRegistrar(self.processes, self.sipp)
        control = self.start(registrar, {f"u{i}": f"pw-u{i}" for i in range(accounts)})
        listed = wait_for(
            lambda: len(r := records(control)) == accounts and all(x["state"] == "REGISTERED_STATE" for x in r.values()) and r
        )
        self.assertEqual(
            {(r["transport"], r["target"], r["last_reply"]) for r in listed.values()},
            {("tcp", f"127.0.0.1:{registrar.port}", "200 OK")},
        )
        stats = json.loads(request(control, "reg_stats json")[1][0])
        self.assertEqual(stats["transport"]["connections"], 1, stats)
        sip = stats["sip"]
        self.assertEqual(
            {k: sip[k] for k in ("connections_opened", "connection_failures", "connections_lost", "requests_sent", "retransmissions", "timeouts")},
            {"connections_opened": 1, "connection_failures": 0, "connections_lost": 0, "requests_sent": 2 * accounts,
             "retransmissions": 0, "timeouts": 0},
        )
        registrar.assert_clean(self, accounts)

    def test_wrong_password_is_refused_over_tcp(self) -> None:
        """SIPp's verifyauth really checks the answers: a wrong password gets 403 over TCP too."""
        registrar = TcpRegistrar(self.processes, self.sipp)
        control = self.start(registrar, {"good": "pw-good", "bad": "not-pw-bad"})
        listed = wait_for(
            lambda: (r := records(control)) and len(r) == 2
            and all(x["state"] not in ("NOT_REGISTERED_STATE", "REGISTERING_STATE", "AUTHENTICATING_STATE") for x in r.values()) and r
        )
        self.assertEqual((listed["good"]["state"], listed["good"]["last_reply"]), ("REGISTERED_STATE", "200 OK"))
        self.assertEqual((listed["bad"]["state"], listed["bad"]["last_reply"]), ("REGISTRAR_ERROR_STATE", "403 Forbidden"))
        code, counts, _ = registrar.finish()
        self.assertEqual((counts["4_403_Sent"], counts["5_200_Sent"]), (1, 1), counts)
