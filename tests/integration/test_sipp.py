"""
The daemon against SIPp as an independent registrar (UAS scenarios in
tests/sipp/): SIPp checks the digest answer itself with verifyauth.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from twisted.trial.unittest import TestCase

from .helpers import ROOT, Processes, free_udp_port, make_table, records, require_binary, wait_for

SCENARIOS = ROOT / "tests" / "sipp"


class SippTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sipp = require_binary("sipp", "sip-tester")
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.processes = Processes(self.directory)
        self.addCleanup(self.processes.stop)

    def run_scenario(self, scenario: str, password: str, expiry: int = 60) -> tuple[subprocess.Popen[bytes], dict]:
        users = self.directory / "users.csv"
        users.write_text("SEQUENTIAL\nalice;secret;\n")
        port = free_udp_port()
        sipp = self.processes.spawn(
            [self.sipp, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1",
             "-inf", str(users), "-nostdin", "-timeout", "40", "-timeout_error", "-trace_err"],
            "sipp",
        )
        local = free_udp_port()
        db = self.directory / "registrant.db"
        make_table(db, [{"registrar": f"sip:127.0.0.1:{port}", "aor": "sip:alice@sipp.invalid", "username": "alice",
                         "password": password, "binding_URI": f"sip:alice@127.0.0.1:{local}", "expiry": expiry}])
        _, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0",
             "--timer-interval", "30", "--sip-t1", "200"]
        )
        try:
            record = wait_for(
                lambda: (r := records(control).get("alice")) and r["state"] not in ("NOT_REGISTERED_STATE", "REGISTERING_STATE", "AUTHENTICATING_STATE") and r,
                30,
            )
        finally:
            print(self.processes.log("daemon")[-3000:])
        return sipp, record

    def finished(self, sipp: subprocess.Popen[bytes]) -> int:
        try:
            return sipp.wait(30)
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
