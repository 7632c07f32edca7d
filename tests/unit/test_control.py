"""Tests for the control protocol and its commands."""

import json
import random

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.account import Account
from uacregistrant.control.commands import Commands
from uacregistrant.control.protocol import ControlFactory
from uacregistrant.registrant import Policy, RegState, Registrant
from uacregistrant.registry import Registry
from uacregistrant.stats import SipCounters


def registry() -> Registry:
    reg = Registry(1)
    policy = Policy(rng=random.Random(1))
    for user, enabled in [("alice", True), ("bob", False)]:
        account = Account(
            row_id=1, aor=f"sip:{user}@example.com", registrar="sip:example.com", binding_uri=f"sip:{user}@192.0.2.1",
            expiry=3600, enabled=enabled, username=user, password="TopSecret!", proxy="sip:proxy.example.com",
        )
        reg.add(Registrant(account, policy))
    alice = reg.by_aor("sip:alice@example.com")[0]
    alice.start(1_700_000_000)
    alice.state = RegState.REGISTERED_STATE
    alice.last_reply = (200, "OK")
    alice.next_at = 1_700_003_000
    return reg


class ControlProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.transport = StringTransport()
        self.protocol = ControlFactory(Commands(registry(), SipCounters())).buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def ask(self, line: bytes) -> list[str]:
        self.transport.clear()
        self.protocol.dataReceived(line + b"\r\n")
        return self.transport.value().decode().split("\n")

    def test_reg_list_json(self) -> None:
        """reg_list json: 200 OK, one line of JSON, an empty line; no password."""
        lines = self.ask(b"reg_list json")
        self.assertEqual((lines[0], lines[2], lines[3:]), ("200 OK", "", [""]))
        records = json.loads(lines[1])["Records"]
        alice = next(r for r in records if r["AOR"] == "sip:alice@example.com")
        self.assertEqual(
            {k: alice[k] for k in ("state", "state_code", "expires", "enabled", "registrar", "binding", "last_reply", "proxy")},
            {"state": "REGISTERED_STATE", "state_code": 3, "expires": 3600, "enabled": "yes", "registrar": "sip:example.com",
             "binding": "sip:alice@192.0.2.1", "last_reply": "200 OK", "proxy": "sip:proxy.example.com"},
        )
        self.assertEqual(alice["last_register_sent"], "2023-11-14T22:13:20Z")
        self.assertEqual(alice["registration_t_out"], "2023-11-14T23:03:20Z")
        bob = next(r for r in records if r["AOR"] == "sip:bob@example.com")
        self.assertEqual((bob["enabled"], bob["last_register_sent"], bob["registration_t_out"]), ("no", None, None))
        self.assertNotIn("TopSecret", "\n".join(lines))

    def test_reg_list_text_and_one_aor(self) -> None:
        """Text blocks; one AOR; unknown AOR is 404."""
        lines = self.ask(b"reg_list sip:alice@example.com")
        self.assertEqual(lines[:3], ["200 OK", "AOR: sip:alice@example.com", "    id: 1"])
        self.assertIn("    state: REGISTERED_STATE", lines)
        self.assertNotIn("TopSecret", "\n".join(lines))
        self.assertEqual(self.ask(b"reg_list json sip:nobody@example.com")[0], "404 No such registrant")

    def test_reg_stats(self) -> None:
        """reg_stats counts per state."""
        stats = json.loads(self.ask(b"reg_stats json")[1])
        self.assertEqual((stats["total"], stats["enabled"]), (2, 1))
        self.assertEqual(stats["states"]["REGISTERED_STATE"], 1)
        self.assertEqual(stats["states"]["NOT_REGISTERED_STATE"], 1)
        self.assertIn("REGISTERED_STATE: 1", self.ask(b"reg_stats"))

    def test_errors_and_session(self) -> None:
        """Unknown commands get 400 and the connection stays open until quit."""
        self.assertEqual(self.ask(b"frobnicate now")[0], "400 Unknown command")
        self.assertEqual(self.ask(b"reg_list a b")[0], "400 Too many arguments")
        self.assertIn("reg_list [json] [AOR]: every record, or one AOR's", self.ask(b"help"))
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.ask(b"quit")[0], "200 Bye")
        self.assertTrue(self.transport.disconnecting)

    def test_overlong_line(self) -> None:
        """An over-long line is refused and the connection closed."""
        self.protocol.dataReceived(b"x" * 70000)
        self.assertTrue(self.transport.value().startswith(b"400 Line too long"))
        self.assertTrue(self.transport.disconnecting)
