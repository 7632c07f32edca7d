"""
Tests for C{reg_events json}: OpenSIPS 4.0's uac_registrant events, one
JSON object per line, from real state changes of the real service (fake
clock and network, real SQLite table, real test registrar).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.control.test_control import REG, ControlTestBase
from uacregistrant.agent.changes import StateChange
from uacregistrant.control.events import EVENT_NAMES, EventHub, event_json
from uacregistrant.core.registrant import RegState


class EventNamesTests(SynchronousTestCase):
    def test_every_state_but_not_registered_has_its_event(self) -> None:
        """Each state's event is E_REGISTRANT_ and the state's name; NOT_REGISTERED raises none."""
        self.assertEqual(set(EVENT_NAMES), set(RegState) - {RegState.NOT_REGISTERED_STATE})
        for state, name in EVENT_NAMES.items():
            self.assertEqual(name, "E_REGISTRANT_" + state.name.removesuffix("_STATE"))


class EventsJsonTests(ControlTestBase):
    """The events of real registrations, as a reg_events json follower gets them."""

    def follow(self, as_json: bool = True) -> list[str]:
        lines: list[str] = []
        self.service.events.subscribe(lines.append, as_json=as_json)
        self.addCleanup(self.service.events.unsubscribe, lines.append)
        return lines

    def test_command(self) -> None:
        """reg_events json subscribes to JSON events; plain reg_events to text; anything else is refused."""
        commands = self.service.commands
        json_reply: Any = commands.run("reg_events json")
        text_reply: Any = commands.run("reg_events")
        self.assertEqual((json_reply.code, json_reply.subscribe, json_reply.events_json), (200, True, True))
        self.assertEqual((text_reply.code, text_reply.subscribe, text_reply.events_json), (200, True, False))
        self.assertEqual(commands.run("reg_events xml").status_line, "400 Too many arguments")
        self.assertIn("reg_events json: the same as OpenSIPS 4.0's events (E_REGISTRANT_*), one JSON object per line", self.ask("help"))

    def test_register_events(self) -> None:
        """A forced registration: REGISTERING then REGISTERED, with aor, contact and registrar; extras apart; no password."""
        lines = self.follow()
        self.service.commands.run("reg_force_register sip:alice@test.invalid")
        self.sim.run(1)
        events = [json.loads(line) for line in lines]
        self.assertEqual([e["method"] for e in events], ["E_REGISTRANT_REGISTERING", "E_REGISTRANT_REGISTERED"])
        params = {"aor": "sip:alice@test.invalid", "contact": "sip:alice@127.0.0.1:5060", "registrar": REG}
        for event in events:
            self.assertEqual((event["jsonrpc"], event["params"]), ("2.0", params))
            self.assertEqual(set(event), {"jsonrpc", "method", "params", "uacregistrant"})
        extra = events[1]["uacregistrant"]
        self.assertEqual((extra["old_state"], extra["state"], extra["last_reply"]), ("REGISTERING_STATE", "REGISTERED_STATE", "200 OK"))
        self.assertRegex(extra["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertNotIn("TopSecret", "".join(lines))
        self.assertTrue(all("\n" not in line and "\r" not in line for line in lines))

    def test_not_registered_raises_none(self) -> None:
        """Disabling: UNREGISTERING and its challenge are raised, the move to NOT_REGISTERED is not (text followers see it)."""
        lines = self.follow()
        text = self.follow(as_json=False)
        self.ask(f"reg_disable sip:carol@test.invalid sip:carol@127.0.0.1:5070 {REG}", run=1)
        self.assertEqual([json.loads(line)["method"] for line in lines], ["E_REGISTRANT_UNREGISTERING", "E_REGISTRANT_AUTHENTICATING_UNREGISTER"])
        self.assertEqual(len(text), 3)
        self.assertTrue(text[-1].endswith("AUTHENTICATING_UNREGISTER_STATE -> NOT_REGISTERED_STATE 200 OK"))

    def test_failure_events(self) -> None:
        """A record whose credentials are refused: AUTHENTICATING, then WRONG_CREDENTIALS."""
        lines = self.follow()
        self.ask(f"reg_upsert aor=sip:dan@test.invalid registrar={REG} binding_URI=sip:dan@127.0.0.1:5060 username=dan password=wrong", run=2)
        methods = [json.loads(line)["method"] for line in lines]
        self.assertEqual(methods[:3], ["E_REGISTRANT_REGISTERING", "E_REGISTRANT_AUTHENTICATING", "E_REGISTRANT_WRONG_CREDENTIALS"])
        self.assertEqual(json.loads(lines[2])["uacregistrant"]["last_reply"][:4], "401 ")

    def test_failing_follower_dropped_alone(self) -> None:
        """A JSON follower that raises is dropped (and logged); the others keep getting events."""
        lines = self.follow()

        def broken(line: str) -> None:
            raise OSError("gone")

        self.service.events.subscribe(broken, as_json=True)
        self.service.commands.run("reg_force_register sip:alice@test.invalid")
        self.sim.run(1)
        self.assertEqual(len(lines), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertNotIn(broken, self.service.events._json_subscribers)

    def test_one_line_whatever_the_reply(self) -> None:
        """Control characters and line separators in a reply's text stay escaped: one event, one line."""
        registrant = next(iter(self.service.registry))
        registrant.last_reply = (500, "Bad\r\nX-Injected: 1\u2028\u0000")
        line = event_json(StateChange(registrant, RegState.REGISTERING_STATE, RegState.REGISTRAR_ERROR_STATE, 0.0))
        assert line is not None
        self.assertEqual(len(line.splitlines()), 1)
        self.assertTrue(line.isascii())
        self.assertEqual(json.loads(line)["uacregistrant"]["last_reply"], "500 Bad\r\nX-Injected: 1\u2028\u0000")


class HubTests(SynchronousTestCase):
    """The hub's bookkeeping of text and JSON followers."""

    def test_switch_and_unsubscribe(self) -> None:
        """Subscribing again changes the form; unsubscribing stops both."""
        hub = EventHub()
        got: list[str] = []
        hub.subscribe(got.append)
        hub.subscribe(got.append, as_json=True)
        self.assertEqual((hub._subscribers, hub._json_subscribers), (set(), {got.append}))
        hub.unsubscribe(got.append)
        self.assertEqual((hub._subscribers, hub._json_subscribers), (set(), set()))
