"""
The daemon against Kamailio 5 as the registrar (registrar, usrloc, auth,
auth_db): what Kamailio stores is read back with its ul.lookup RPC.
"""

from __future__ import annotations

import re
import time


from uacregistrant.control.ctl import request

from .helpers import PATIENCE, ProcessTestCase, ROOT, free_udp_port, make_table, records, require_binary, wait_for
from .kamailio import KamailioRegistrar

DOMAIN = "kam.test"


class KamailioTests(ProcessTestCase):
    timeout = 120


    def kamailio(self, subscribers: dict[str, str], **options: object) -> KamailioRegistrar:
        kamailio = KamailioRegistrar({(user, DOMAIN): pw for user, pw in subscribers.items()}, **options)  # type: ignore[arg-type]
        self.addCleanup(kamailio.destroy)
        kamailio.start()
        self.addCleanup(kamailio.assert_not_crashed)
        return kamailio

    def daemon(self, kamailio: KamailioRegistrar, rows: list[dict[str, object]]) -> tuple[str, int]:
        local = free_udp_port()
        table = []
        for row in rows:
            user = str(row["user"])
            table.append({
                "registrar": kamailio.uri, "aor": f"sip:{user}@{DOMAIN}", "username": user,
                "password": row["password"], "binding_URI": f"sip:{user}@127.0.0.1:{local}", "expiry": row.get("expiry", 300),
            })
        db = self.directory / "registrant.db"
        make_table(db, table)
        _, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0",
             "--timer-interval", "4", "--sip-t1", "100"]
        )
        return control, local

    def test_md5_registrar(self) -> None:
        """MD5 digest, a wrong password, a 423 from min_expires, refreshes, disable and delete."""
        kamailio = self.kamailio({"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}, min_expires=10)
        control, local = self.daemon(kamailio, [
            {"user": "alice", "password": "alice-pw", "expiry": 300},
            {"user": "bob", "password": "not-bobs", "expiry": 300},
            {"user": "carol", "password": "carol-pw", "expiry": 5},
        ])
        try:
            wait_for(lambda: {u: r["state"] for u, r in records(control).items()} == {
                "alice": "REGISTERED_STATE", "bob": "WRONG_CREDENTIALS_STATE", "carol": "REGISTERED_STATE"})
            found = records(control)
            self.assertEqual(found["bob"]["last_reply"], "401 Unauthorized")
            self.assertEqual(found["carol"]["expires"], 10)  # 423 Interval Too Brief, Min-Expires: 10
            (alice,) = kamailio.bindings(f"sip:alice@{DOMAIN}")
            self.assertEqual(alice["Address"], f"sip:alice@127.0.0.1:{local}")
            self.assertEqual(alice["Call-ID"], found["alice"]["call_id"])
            # Kamailio shows the seconds left of the 300 granted (not 3600, not 60).
            self.assertTrue(200 <= int(alice["Expires"]) <= 300, alice)
            self.assertEqual(kamailio.bindings(f"sip:bob@{DOMAIN}"), [])

            # Refreshes keep Carol's 10 s binding alive at Kamailio, same Call-ID,
            # rising CSeq: looked at every second for longer than the binding lives.
            (first,) = kamailio.bindings(f"sip:carol@{DOMAIN}")
            since = time.monotonic()
            while True:
                time.sleep(1)
                (now,) = kamailio.bindings(f"sip:carol@{DOMAIN}")
                self.assertEqual(now["Call-ID"], first["Call-ID"])
                self.assertGreater(int(now["Expires"]), 0)
                if time.monotonic() - since > 12 and int(now["CSeq"]) > int(first["CSeq"]):
                    break
                self.assertLess(time.monotonic() - since, PATIENCE, f"no refresh seen: {now}")

            # Disable and delete remove the bindings at Kamailio.
            self.assertEqual(request(control, f"reg_disable sip:alice@{DOMAIN}")[0], "200 OK")
            wait_for(lambda: kamailio.bindings(f"sip:alice@{DOMAIN}") == [], interval=0.1)
            self.assertEqual(request(control, f"reg_delete sip:carol@{DOMAIN}")[0], "200 OK")
            wait_for(lambda: kamailio.bindings(f"sip:carol@{DOMAIN}") == [], interval=0.1)
            self.assertNotIn("carol", records(control))
        finally:
            print(self.processes.log("daemon")[-4000:])

    def test_sha256_registrar(self) -> None:
        """Kamailio configured for SHA-256 digests (it checks the answer with SHA-256 only)."""
        kamailio = self.kamailio({"dave": "dave-pw"}, algorithm="SHA-256")
        control, local = self.daemon(kamailio, [{"user": "dave", "password": "dave-pw"}])
        wait_for(lambda: records(control).get("dave", {}).get("state") == "REGISTERED_STATE")
        (dave,) = kamailio.bindings(f"sip:dave@{DOMAIN}")
        self.assertEqual(dave["Address"], f"sip:dave@127.0.0.1:{local}")

    def test_same_storage_as_sipp_uac(self) -> None:
        """SIPp's UAC and uacregistrant register to the same Kamailio; it stores the same shape for both."""
        sipp = require_binary("sipp", "sip-tester")
        kamailio = self.kamailio({"erin": "erin-pw", "frank": "frank-pw"})
        control, local = self.daemon(kamailio, [{"user": "erin", "password": "erin-pw", "expiry": 300}])
        users = self.directory / "uac.csv"
        users.write_text(f"SEQUENTIAL\nfrank;frank-pw;{DOMAIN};\n")
        sipp_port = free_udp_port()
        child = self.processes.spawn(
            [sipp, "127.0.0.1:" + str(kamailio.port), "-sf", str(ROOT / "tests" / "sipp" / "uac_register.xml"),
             "-inf", str(users), "-au", "frank", "-ap", "frank-pw", "-i", "127.0.0.1", "-p", str(sipp_port), "-m", "1", "-nostdin",
             "-timeout", str(int(PATIENCE)), "-timeout_error", "-trace_err"],
            "sipp",
        )
        self.assertEqual(child.wait(2 * PATIENCE), 0, self.processes.log("sipp"))
        wait_for(lambda: records(control).get("erin", {}).get("state") == "REGISTERED_STATE")
        (ours,) = kamailio.bindings(f"sip:erin@{DOMAIN}")
        (theirs,) = kamailio.bindings(f"sip:frank@{DOMAIN}")
        self.assertEqual(ours["Address"], f"sip:erin@127.0.0.1:{local}")
        self.assertEqual(theirs["Address"], f"sip:frank@127.0.0.1:{sipp_port}")
        for binding in (ours, theirs):
            self.assertTrue(200 <= int(binding["Expires"]) <= 300, binding)  # seconds left of 300
            self.assertEqual(binding["Q"], theirs["Q"])
            self.assertEqual(int(binding["CSeq"]), 2)  # challenged once, then accepted
            self.assertTrue(re.fullmatch(r"\S+", binding["Call-ID"]))
