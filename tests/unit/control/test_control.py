"""
Tests for the control protocol and the admin commands, on the real service
(fake clock and network, real SQLite table, real test registrar).
"""

import json
import sqlite3

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.simulation import REGISTRAR, Simulation
from uacregistrant import __version__
from uacregistrant.control.protocol import ControlFactory
from uacregistrant.testing.registrar import UserPolicy

REG = f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}"


class ControlTestBase(SynchronousTestCase):
    """A running service on the fake clock with one console connection (no tests of its own)."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        users = {name: UserPolicy(password="TopSecret!") for name in ("alice", "bob", "carol", "dan")}
        self.sim = Simulation(self.path, users, hash_size=0, timer_interval=10)
        self.sim.add("alice", password="TopSecret!", proxy=REG)
        self.sim.add("bob", password="TopSecret!", state=1)
        self.sim.add("carol", password="TopSecret!")
        self.sim.add("carol", password="TopSecret!", binding_URI="sip:carol@127.0.0.1:5070")
        self.service = self.sim.start()
        self.addCleanup(self.service.stopService)
        self.sim.run(2)
        self.transport = StringTransport()
        self.protocol = ControlFactory(self.service.commands, self.sim.reactor).buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def ask(self, line: str, run: float = 0.0) -> list[str]:
        self.transport.clear()
        self.protocol.dataReceived(line.encode() + b"\r\n")
        self.drain()
        if run:
            self.sim.run(run)
            self.drain()
        return self.transport.value().decode().split("\n")

    def drain(self) -> None:
        """Let a streamed body go out, a slice per reactor turn."""
        for _ in range(10000):
            if self.protocol.idle:
                return
            self.sim.reactor.advance(0)

    def table(self, user: str) -> list[tuple]:
        db = sqlite3.connect(self.path)
        return db.execute("SELECT binding_URI, state, expiry FROM registrant WHERE username = ? ORDER BY id", (user,)).fetchall()

    def records(self) -> dict[str, dict]:
        lines = self.ask("reg_list json")
        return {r["binding"]: r for r in json.loads(lines[1])["Records"]}



class ControlTests(ControlTestBase):
    def test_reg_list_json(self) -> None:
        """reg_list json: 200 OK, one line of JSON, an empty line; no password."""
        lines = self.ask("reg_list json")
        self.assertEqual((lines[0], lines[2:]), ("200 OK", ["", ""]))
        alice = self.records()["sip:alice@127.0.0.1:5060"]
        self.assertEqual(
            {k: alice[k] for k in ("AOR", "state", "state_code", "expires", "enabled", "registrar", "last_reply", "proxy")},
            {"AOR": "sip:alice@test.invalid", "state": "REGISTERED_STATE", "state_code": 3, "expires": 3600,
             "enabled": "yes", "registrar": REG, "last_reply": "200 OK", "proxy": REG},
        )
        self.assertRegex(alice["last_register_sent"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertRegex(alice["registration_t_out"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        bob = self.records()["sip:bob@127.0.0.1:5060"]
        self.assertEqual((bob["enabled"], bob["state"], bob["last_register_sent"]), ("no", "NOT_REGISTERED_STATE", None))
        self.assertNotIn("TopSecret", "\n".join(lines))

    def test_reg_list_text_and_one_aor(self) -> None:
        """Text blocks; one AOR; an unknown AOR is 404."""
        lines = self.ask("reg_list sip:alice@test.invalid")
        self.assertEqual(lines[:3], ["200 OK", "AOR: sip:alice@test.invalid", "    id: 1"])
        self.assertIn("    state: REGISTERED_STATE", lines)
        self.assertEqual(self.ask("reg_list json sip:nobody@test.invalid")[0], "404 No such registrant")

    def test_reg_stats(self) -> None:
        """reg_stats counts per state."""
        stats = json.loads(self.ask("reg_stats json")[1])
        self.assertEqual((stats["total"], stats["enabled"]), (4, 3))
        self.assertEqual(stats["states"]["REGISTERED_STATE"], 3)
        self.assertEqual(stats["bindings_held"], 3)
        self.assertIn("REGISTERED_STATE: 3", self.ask("reg_stats"))
        self.assertEqual(self.ask("reg_stats")[1], f"version: {__version__}")
        self.assertEqual(stats["version"], __version__)

    def test_reg_stats_in_slices(self) -> None:
        """A registry larger than a slice is counted over several reactor turns, with the same totals."""
        from uacregistrant.control import commands

        self.patch(commands, "STATS_SLICE", 1)
        self.transport.clear()
        self.protocol.dataReceived(b"reg_stats json\r\n")
        self.assertEqual(self.transport.value(), b"")  # first slice counted, three to go
        self.sim.run(0.001)
        self.drain()
        lines = self.transport.value().decode().split("\n")
        stats = json.loads(lines[1])
        self.assertEqual((lines[0], stats["total"], stats["enabled"], stats["bindings_held"]), ("200 OK", 4, 3, 3))
        self.assertEqual(stats["states"]["REGISTERED_STATE"], 3)

    def test_errors_and_session(self) -> None:
        """Bad commands get 4xx; the connection stays open until quit."""
        self.assertEqual(self.ask("frobnicate now")[0], "400 Unknown command")
        self.assertEqual(self.ask("reg_list a b")[0], "400 Too many arguments")
        self.assertEqual(self.ask("reg_enable")[0], "400 Bad arguments")
        self.assertEqual(self.ask("reg_enable a b")[0], "400 Bad arguments")
        self.assertEqual(self.ask("reg_disable sip:nobody@test.invalid")[0], "404 No such registrant")
        ambiguous = self.ask("reg_disable sip:carol@test.invalid")
        self.assertEqual(ambiguous[0], "409 Ambiguous AOR")
        self.assertIn(f"sip:carol@test.invalid sip:carol@127.0.0.1:5070 {REG}", ambiguous)
        self.assertEqual(self.ask("reg_force_register sip:bob@test.invalid")[0], "409 Registrant disabled")
        self.assertEqual(self.ask("reg_upsert aor=sip:x@y")[0], "400 Bad arguments")
        self.assertEqual(self.ask("reg_upsert nonsense")[0], "400 Bad arguments")
        bad = self.ask("reg_upsert aor=sip:x@test.invalid registrar=sip:u@h binding_URI=sip:x@h")
        self.assertEqual(bad[0], "400 Bad record")
        self.assertIn("user part", bad[1])
        self.assertEqual(self.ask("reg_reload sip:a b")[0], "400 Bad arguments")
        self.assertIn("reg_events: follow state changes, one line each, until quit", self.ask("help"))
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.ask("quit")[0], "200 Bye")
        self.assertTrue(self.transport.disconnecting)

    def test_overlong_line(self) -> None:
        """An over-long line is refused and the connection closed."""
        self.protocol.dataReceived(b"x" * 70000)
        self.assertTrue(self.transport.value().startswith(b"400 Line too long"))
        self.assertTrue(self.transport.disconnecting)

    def test_disable_enable_write_exactly_one_row(self) -> None:
        """Disable un-registers one binding and writes state for that row only; enable re-registers."""
        key = f"sip:carol@test.invalid sip:carol@127.0.0.1:5070 {REG}"
        self.assertEqual(self.ask(f"reg_disable {key}", run=1)[:2], ["200 OK", "changed"])
        self.assertEqual(self.table("carol"), [("sip:carol@127.0.0.1:5060", 0, 3600), ("sip:carol@127.0.0.1:5070", 1, 3600)])
        self.assertEqual(self.sim.registrar.received[-1].expires, 0)
        self.assertNotIn(("sip:carol@test.invalid", "sip:carol@127.0.0.1:5070"), self.sim.registrar.bindings)
        self.assertIn(("sip:carol@test.invalid", "sip:carol@127.0.0.1:5060"), self.sim.registrar.bindings)
        records = self.records()
        self.assertEqual(records["sip:carol@127.0.0.1:5070"]["state"], "NOT_REGISTERED_STATE")
        self.assertEqual(records["sip:carol@127.0.0.1:5070"]["enabled"], "no")
        self.assertEqual(self.ask(f"reg_disable {key}")[:2], ["200 OK", "unchanged"])
        self.assertEqual(self.ask(f"reg_enable {key}", run=1)[:2], ["200 OK", "changed"])
        self.assertEqual(self.table("carol")[1][1], 0)
        self.assertEqual(self.records()["sip:carol@127.0.0.1:5070"]["state"], "REGISTERED_STATE")

    def test_force_register_sends_now(self) -> None:
        """reg_force_register sends at once, keeping the Call-ID."""
        before = len(self.sim.registrar.received)
        call_id = self.records()["sip:alice@127.0.0.1:5060"]["call_id"]
        self.assertEqual(self.ask("reg_force_register sip:alice@test.invalid", run=0.5)[0], "200 OK")
        sent = self.sim.registrar.received[before:]
        self.assertEqual([r.call_id for r in sent], [call_id])  # one request: credentials up front
        self.assertTrue(sent[0].authorized)

    def test_delete(self) -> None:
        """reg_delete un-registers, forgets, and leaves the row disabled so a reload keeps it gone."""
        self.assertEqual(self.ask("reg_delete sip:alice@test.invalid", run=1)[0], "200 OK")
        self.assertEqual(self.sim.registrar.received[-1].expires, 0)
        self.assertNotIn("sip:alice@127.0.0.1:5060", self.records())
        self.assertEqual(self.table("alice")[0][1], 1)
        self.assertEqual(self.ask("reg_reload", run=1)[0], "200 OK")
        self.assertNotIn("sip:alice@127.0.0.1:5060", self.records())
        # Enabling the row in the table brings it back.
        sqlite3.connect(self.path).execute("UPDATE registrant SET state = 0 WHERE username = 'alice'").connection.commit()
        self.assertEqual(self.ask("reg_reload", run=1)[0], "200 OK")
        self.assertEqual(self.records()["sip:alice@127.0.0.1:5060"]["state"], "REGISTERED_STATE")

    def test_upsert(self) -> None:
        """reg_upsert adds a record (table and memory) and changes one in place."""
        lines = self.ask(f"reg_upsert aor=sip:dan@test.invalid registrar={REG} binding_URI=sip:dan@127.0.0.1:5060 "
                         "username=dan password=TopSecret! expiry=600", run=1)
        self.assertEqual(lines[:2], ["200 OK", "added"])
        self.assertEqual(self.table("dan"), [("sip:dan@127.0.0.1:5060", 0, 600)])
        self.assertEqual(self.records()["sip:dan@127.0.0.1:5060"]["state"], "REGISTERED_STATE")
        call_id = self.records()["sip:dan@127.0.0.1:5060"]["call_id"]
        lines = self.ask(f"reg_upsert aor=sip:dan@test.invalid registrar={REG} binding_URI=sip:dan@127.0.0.1:5060 "
                         "username=dan password=TopSecret! expiry=900", run=1)
        self.assertEqual(lines[:2], ["200 OK", "changed"])
        self.assertEqual(self.table("dan"), [("sip:dan@127.0.0.1:5060", 0, 900)])
        record = self.records()["sip:dan@127.0.0.1:5060"]
        self.assertEqual((record["expires"], record["call_id"]), (900, call_id))
        self.assertEqual(self.sim.registrar.received[-1].expires, 900)

    def test_reload_keeps_unchanged_and_applies_changes(self) -> None:
        """A reload keeps Call-IDs and sends nothing for unchanged rows; changes and removals take effect."""
        before = self.records()
        sent = len(self.sim.registrar.received)
        lines = self.ask("reg_reload json", run=1)
        self.assertEqual(json.loads(lines[1]), {"added": 0, "changed": 0, "unchanged": 4, "skipped": 0, "removed": 0})
        self.assertEqual(len(self.sim.registrar.received), sent)
        self.assertEqual({k: r["call_id"] for k, r in self.records().items()}, {k: r["call_id"] for k, r in before.items()})
        db = sqlite3.connect(self.path)
        db.execute("UPDATE registrant SET expiry = 1200 WHERE username = 'alice'")
        db.execute("DELETE FROM registrant WHERE binding_URI = 'sip:carol@127.0.0.1:5070'")
        db.commit()
        lines = self.ask("reg_reload", run=1)
        self.assertEqual(lines[:6], ["200 OK", "added: 0", "changed: 1", "unchanged: 2", "skipped: 0", "removed: 1"])
        after = self.records()
        self.assertEqual(after["sip:alice@127.0.0.1:5060"]["call_id"], before["sip:alice@127.0.0.1:5060"]["call_id"])
        self.assertEqual(after["sip:alice@127.0.0.1:5060"]["expires"], 1200)
        self.assertNotIn("sip:carol@127.0.0.1:5070", after)
        self.assertNotIn(("sip:carol@test.invalid", "sip:carol@127.0.0.1:5070"), self.sim.registrar.bindings)
        # One record by key: a vanished row retires it; an unknown key is 404.
        self.assertEqual(self.ask(f"reg_reload sip:nobody@test.invalid sip:n@h {REG}")[0], "404 No such registrant in database")
        db.execute("DELETE FROM registrant WHERE username = 'alice'")
        db.commit()
        self.assertEqual(self.ask("reg_reload sip:alice@test.invalid", run=1)[:2], ["200 OK", "removed: 1"])
        self.assertNotIn("sip:alice@127.0.0.1:5060", self.records())

    def test_events(self) -> None:
        """reg_events streams one line per state change until quit."""
        self.assertEqual(self.ask("reg_events"), ["200 OK", ""])
        self.transport.clear()
        self.protocol.dataReceived(b"reg_force_register sip:alice@test.invalid\r\n")
        self.sim.run(1)
        out = self.transport.value().decode().split("\n")
        self.assertEqual(out[:2], ["200 OK", ""])
        events = [line for line in out[2:] if line]
        self.assertEqual(len(events), 2)
        self.assertRegex(events[0], r"^\S+Z sip:alice@test.invalid sip:alice@127.0.0.1:5060 REGISTERED_STATE -> REGISTERING_STATE 200 OK$")
        self.assertTrue(events[1].endswith("REGISTERING_STATE -> REGISTERED_STATE 200 OK"))
        self.assertEqual(self.ask("quit"), ["", "200 Bye", "", ""])
        self.assertEqual(self.service.events._subscribers, set())

    def test_events_json(self) -> None:
        """reg_events json streams OpenSIPS 4.0's events, one JSON object per line, over the console."""
        self.assertEqual(self.ask("reg_events json"), ["200 OK", ""])
        self.transport.clear()
        self.protocol.dataReceived(b"reg_force_register sip:alice@test.invalid\r\n")
        self.sim.run(1)
        out = self.transport.value().decode().split("\n")
        self.assertEqual(out[:2], ["200 OK", ""])
        events = [json.loads(line) for line in out[2:] if line]
        self.assertEqual([e["method"] for e in events], ["E_REGISTRANT_REGISTERING", "E_REGISTRANT_REGISTERED"])
        self.assertEqual(events[1]["params"], {"aor": "sip:alice@test.invalid", "contact": "sip:alice@127.0.0.1:5060", "registrar": REG})
        self.assertNotIn("TopSecret", "".join(out))


class HostileClientTests(ControlTestBase):
    """What a careless or hostile console client can cost: bounded, and answered clearly."""

    def test_client_not_reading(self) -> None:
        """
        When replies back up (the transport pauses its producer), commands
        are no longer read nor run; they run once the client has read.
        """
        self.transport.clear()
        self.protocol.pauseProducing()  # what the transport does when its buffer is full
        self.assertEqual(self.transport.producerState, "paused")  # reading commands stopped
        self.protocol.dataReceived(b"help\n" * 100)
        self.assertEqual(self.transport.value(), b"")
        self.protocol.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.transport.value().count(b"200 OK\n"), 10)  # ten per reactor turn
        self.sim.reactor.advance(0)
        self.assertEqual(self.transport.value().count(b"200 OK\n"), 100)

    def test_many_commands_answered_at_once(self) -> None:
        """
        Thousands of queued commands whose replies are ready at once (a
        Deferred already fired) are all answered, ten per reactor turn,
        without recursion.
        """
        self.transport.clear()
        self.protocol.pauseProducing()
        self.protocol.dataReceived(b"reg_stats json\n" * 3000)
        self.protocol.resumeProducing()
        self.assertEqual(self.transport.value().count(b"200 OK\n"), 10)
        for _ in range(400):
            self.sim.reactor.advance(0)
        self.assertEqual(self.transport.value().count(b"200 OK\n"), 3000)
        self.assertTrue(self.protocol.idle)

    def test_client_that_never_reads_is_cut(self) -> None:
        """A client that reads nothing for IDLE_TIMEOUT (the transport stays paused) loses its connection."""
        from uacregistrant.control.protocol import IDLE_TIMEOUT

        aborted = []
        self.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[attr-defined]
        self.protocol.dataReceived(b"reg_list\n")
        self.protocol.pauseProducing()
        self.sim.reactor.advance(IDLE_TIMEOUT + 1)
        self.assertEqual(aborted, [True])

    def test_pending_commands_are_bounded(self) -> None:
        """More than MAX_PENDING bytes of unread commands: one clear line, then the connection closes."""
        from uacregistrant.control.protocol import MAX_PENDING

        self.protocol.pauseProducing()
        line = b"reg_list json\n"
        self.protocol.dataReceived(line * (MAX_PENDING // len(line) + 10))
        self.assertTrue(self.transport.value().startswith(b"503 Too many commands waiting"))
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.protocol.idle)

    def test_slow_event_subscriber_dropped(self) -> None:
        """A reg_events subscriber that stops reading is dropped after MAX_EVENTS_BEHIND bytes, saying why."""
        from uacregistrant.agent.changes import StateChange
        from uacregistrant.control.protocol import MAX_EVENTS_BEHIND
        from uacregistrant.core.registrant import RegState

        self.ask("reg_events")
        self.protocol.pauseProducing()
        registrant = next(iter(self.service.registry))
        change = StateChange(registrant, RegState.REGISTERED_STATE, RegState.REGISTERING_STATE, 0.0)
        for _ in range(MAX_EVENTS_BEHIND // 50):
            self.service.events.publish(change)
        lines = self.transport.value().decode().split("\n")
        written = sum(len(x) + 1 for x in lines if "REGISTERING_STATE" in x)
        self.assertLessEqual(written, MAX_EVENTS_BEHIND)
        self.assertGreater(written, MAX_EVENTS_BEHIND - 200)
        self.assertIn("dropped: more than", lines[-2])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.service.events._subscribers, set())

    def test_too_many_connections(self) -> None:
        """Past MAX_CONNECTIONS at once, a new connection is told why and closed."""
        from uacregistrant.control.protocol import MAX_CONNECTIONS

        factory = ControlFactory(self.service.commands, self.sim.reactor)
        kept = []
        for _ in range(MAX_CONNECTIONS):
            transport = StringTransport()
            factory.buildProtocol(None).makeConnection(transport)
            kept.append(transport)
        refused = StringTransport()
        factory.buildProtocol(None).makeConnection(refused)
        self.assertTrue(refused.value().startswith(b"503 Too many control connections"))
        self.assertTrue(refused.disconnecting)

    def test_quoting(self) -> None:
        """Values may hold spaces when quoted, shell-like; an open quote is a clear error."""
        lines = self.ask(f'reg_upsert aor=sip:dan@test.invalid registrar={REG} binding_URI=sip:dan@127.0.0.1:5060 '
                         'username=dan password="Top Secret!" binding_params=\';x="a b"\'', run=1)
        self.assertEqual(lines[:2], ["200 OK", "added"])
        db = sqlite3.connect(self.path)
        self.assertEqual(db.execute("SELECT password, binding_params FROM registrant WHERE username = 'dan'").fetchone(),
                         ("Top Secret!", ';x="a b"'))
        self.assertEqual(self.ask('reg_upsert aor="sip:dan@test.invalid')[0], "400 Bad quoting")

    def test_bad_values_are_400(self) -> None:
        """Out-of-range numbers, Unicode digits, a bad port and bracketed keys: 400 with the reason, never 500."""
        base = f"reg_upsert aor=sip:eve@test.invalid registrar={REG} binding_URI=sip:eve@127.0.0.1:5060"
        cases = [
            (f"{base} state={2**70}", "state"),
            (f"{base} expiry=\u00b2", "expiry"),
            (f"{base} expiry=0", "expiry"),
            (f"reg_upsert aor=sip:eve@test.invalid registrar=sip:h:\u00b2 binding_URI=sip:eve@127.0.0.1:5060", "port"),
            (f"reg_upsert aor='<sip:eve@test.invalid>' registrar={REG} binding_URI=sip:eve@127.0.0.1:5060", "as stored"),
            (f"{base} binding_params=';x=y,<sip:evil@203.0.113.9>'", "binding_params"),
        ]
        for command, word in cases:
            lines = self.ask(command)
            self.assertEqual(lines[0][:4], "400 ", command)
            self.assertIn(word, " ".join(lines[1:]), command)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_partial_upsert_keeps_other_columns(self) -> None:
        """reg_upsert naming only the key and expiry changes expiry and keeps credentials, in memory and in the table."""
        key = f"aor=sip:alice@test.invalid registrar={REG} binding_URI=sip:alice@127.0.0.1:5060"
        self.assertEqual(self.ask(f"reg_upsert {key} expiry=1800", run=2)[:2], ["200 OK", "changed"])
        db = sqlite3.connect(self.path)
        self.assertEqual(db.execute("SELECT username, password, proxy, expiry, state FROM registrant WHERE username = 'alice'").fetchone(),
                         ("alice", "TopSecret!", REG, 1800, 0))
        record = self.records()["sip:alice@127.0.0.1:5060"]
        self.assertEqual((record["state"], record["expires"], record.get("username")), ("REGISTERED_STATE", 1800, "alice"))
        # A disabled row stays disabled when state is not named.
        bob = f"aor=sip:bob@test.invalid registrar={REG} binding_URI=sip:bob@127.0.0.1:5060"
        self.ask(f"reg_upsert {bob} expiry=1200", run=1)
        self.assertEqual(db.execute("SELECT state, expiry FROM registrant WHERE username = 'bob'").fetchone(), (1, 1200))

    def test_upserted_record_unchanged_on_reload(self) -> None:
        """A record added by reg_upsert is unchanged on the next reg_reload: nothing is sent again."""
        self.ask(f"reg_upsert aor=sip:dan@test.invalid registrar={REG} binding_URI=sip:dan@127.0.0.1:5060 "
                 "username=dan password=TopSecret!", run=1)
        sent = len(self.sim.registrar.received)
        lines = self.ask("reg_reload json", run=1)
        self.assertEqual(json.loads(lines[1])["changed"], 0)
        self.assertEqual(len(self.sim.registrar.received), sent)

    def test_writes_to_no_row_are_404(self) -> None:
        """A row deleted behind the daemon's back (no NOTIFY on SQLite): enable/disable/delete answer 404, not 'changed'."""
        db = sqlite3.connect(self.path)
        db.execute("DELETE FROM registrant WHERE username = 'alice'")
        db.commit()
        self.assertEqual(self.ask("reg_disable sip:alice@test.invalid")[0], "404 No such row in the table")
        self.assertEqual(self.ask("reg_delete sip:alice@test.invalid")[0], "404 No such row in the table")
        self.assertEqual(self.records()["sip:alice@127.0.0.1:5060"]["enabled"], "yes")


class StreamingTests(SynchronousTestCase):
    def test_large_listing_is_streamed_in_slices(self) -> None:
        """reg_list json over 3000 records is written slice by slice, still one line, then the next command."""
        users = {f"u{i}": UserPolicy() for i in range(3000)}
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=10)
        sim.db.executemany(
            "INSERT INTO registrant (registrar, aor, binding_URI, expiry) VALUES (?, ?, ?, 600)",
            [(REG, f"sip:{u}@test.invalid", f"sip:{u}@127.0.0.1:5060") for u in users],
        )
        sim.db.commit()
        service = sim.start()
        self.addCleanup(service.stopService)
        sim.reactor.advance(0)
        transport = StringTransport()
        protocol = ControlFactory(service.commands, sim.reactor).buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"reg_list json\nreg_stats json\n")
        first = len(transport.value())
        self.assertLess(first, 300 * 1024)  # one slice, then a reactor turn per slice
        turns = [call for call in sim.reactor.getDelayedCalls() if call.getTime() == sim.reactor.seconds()]
        self.assertEqual(len(turns), 1)
        sim.reactor.advance(0)
        self.assertTrue(protocol.idle)
        self.assertGreater(len(transport.value()), 3 * first)
        lines = transport.value().decode().split("\n")
        self.assertEqual((lines[0], lines[2], lines[3]), ("200 OK", "", "200 OK"))
        self.assertEqual(len(json.loads(lines[1])["Records"]), 3000)
        self.assertEqual(json.loads(lines[4])["total"], 3000)


class ConnectionLifeTests(ControlTestBase):
    """Connections end: idle ones, and ones told to close that do not read."""

    def test_idle_connection_closed(self) -> None:
        """A connection with no command for IDLE_TIMEOUT is told why and closed; a subscriber is not."""
        from uacregistrant.control.protocol import IDLE_TIMEOUT

        self.sim.reactor.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(self.transport.disconnecting)
        self.ask("help")
        self.sim.reactor.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(self.transport.disconnecting)
        self.sim.reactor.advance(2)
        self.assertTrue(self.transport.value().endswith(b"408 Idle for 600 s: closing\n\n"))
        self.assertTrue(self.transport.disconnecting)
        watcher = StringTransport()
        protocol = ControlFactory(self.service.commands, self.sim.reactor).buildProtocol(None)
        protocol.makeConnection(watcher)
        protocol.dataReceived(b"reg_events\n")
        self.sim.reactor.advance(3 * IDLE_TIMEOUT)
        self.assertFalse(watcher.disconnecting)

    def test_closing_while_paused(self) -> None:
        """quit while the client is not reading: the protocol stops producing, the connection closes, a deaf client is cut."""
        from uacregistrant.control.protocol import CLOSE_GRACE

        aborted = []
        self.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[attr-defined]
        self.protocol.pauseProducing()
        self.protocol.dataReceived(b"quit\n")
        self.protocol.resumeProducing()
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)
        self.sim.reactor.advance(CLOSE_GRACE)
        self.assertEqual(aborted, [True])
