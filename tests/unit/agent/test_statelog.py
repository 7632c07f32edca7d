"""Tests for L{uacregistrant.agent.statelog}: failures logged when news, bounded, summarised."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.simulation import Simulation
from uacregistrant.agent.changes import StateChange
from uacregistrant.agent.statelog import StateLog
from uacregistrant.core.registrant import RegState
from uacregistrant.testing.registrar import UserPolicy


class StateLogTests(SynchronousTestCase):
    def simulation(self, users: dict[str, UserPolicy]) -> Simulation:
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=100, sip_t1=100, send_rate=10000,
                         max_in_flight=10000, retry_interval=10, retry_max_interval=20)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        for user in users:
            sim.add(user)
        return sim

    def lines(self, events: list, text: str) -> list:
        return [e for e in events if text in e.get("log_format", "")]

    def test_retries_are_quiet(self) -> None:
        """A record failing the same way again and again is logged once; its recovery once."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        users = {"a": UserPolicy(silent=True)}
        sim = self.simulation(users)
        sim.start()
        sim.run(200)
        failures = self.lines(events, "retry in")
        self.assertEqual([e["state"] for e in failures], ["REGISTER_TIMEOUT_STATE"])
        users["a"].silent = False
        users["a"].reply = 503
        sim.run(30)
        self.assertEqual([e["state"] for e in self.lines(events, "retry in")], ["REGISTER_TIMEOUT_STATE", "REGISTRAR_ERROR_STATE"])
        users["a"].reply = None
        sim.run(30)
        self.assertEqual(len(self.lines(events, "registered again")), 1)
        self.assertEqual(sim.states(), {"a": "REGISTERED_STATE"})

    def test_outage_is_summarised(self) -> None:
        """2,000 records failing over several back-off rounds: 100 lines a minute, the rest in a summary."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        users = {f"u{i}": UserPolicy(reply=500) for i in range(2000)}
        sim = self.simulation(users)
        sim.start()
        sim.run(59)
        self.assertEqual(len(self.lines(events, "retry in")), 100)
        sim.run(2)
        (summary,) = self.lines(events, "not logged one by one")
        self.assertEqual(summary["count"], 1900)
        self.assertEqual(summary["failing"], 2000)
        self.assertIn("1900 REGISTRAR_ERROR_STATE", summary["detail"])
        sim.run(180)  # more back-off rounds: no news, no lines
        self.assertEqual(len(self.lines(events, "retry in")), 100)
        self.assertEqual(len(self.lines(events, "not logged one by one")), 1)

    def test_retry_due_at_once_is_not_negative(self) -> None:
        """A fail-over's retry, due a moment before the change was stamped, reads "retry in 0s", not "-0s"."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        class Record:  # hashable, as registrants are
            account = SimpleNamespace(aor="sip:a@x.invalid", binding_uri="sip:a@127.0.0.1", registrar="sip:x.invalid", row_id=1)
            last_error = "connection to tcp:127.0.0.1:5099 failed: connection refused"
            next_at = 99.9999

        StateLog(MemoryReactorClock())(StateChange(Record(), RegState.REGISTERING_STATE, RegState.REGISTER_TIMEOUT_STATE, 100.0))  # type: ignore[arg-type]
        (line,) = [formatEvent(e) for e in self.lines(events, "retry in")]
        self.assertTrue(line.endswith("connection refused; retry in 0s"), line)
