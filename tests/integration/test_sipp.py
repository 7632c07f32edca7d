"""
The daemon against SIPp as an independent registrar (UAS scenarios in
tests/sipp/): SIPp checks the digest answer itself with verifyauth.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time


from uacregistrant.control.ctl import request

from .helpers import PATIENCE, ProcessTestCase, ROOT, free_udp_port, make_table, records, require_binary, wait_for

SCENARIOS = ROOT / "tests" / "sipp"


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
