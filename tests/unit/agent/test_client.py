"""
Tests for L{uacregistrant.agent.client}: the one guarded place where records
meet the network, on the real service (fake clock and network, real
SQLite table, real test registrar).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.simulation import REGISTRAR, Simulation
from uacregistrant.agent.client import RegistrationClient
from uacregistrant.core.registrant import IN_TRANSACTION, Registrant, RegState
from uacregistrant.net.resolver import SipResolver
from uacregistrant.app.service import stuck_after
from uacregistrant.testing.registrar import UserPolicy


def boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom")


class GuardTests(SynchronousTestCase):
    """An exception in any step leaves the record INTERNAL_ERROR with a retry, never silent."""

    def simulation(self, users: dict[str, UserPolicy], **settings: object) -> Simulation:
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=100, sip_t1=100,
                         retry_interval=10, retry_max_interval=40, **settings)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        for user in users:
            sim.add(user, password="p")
        return sim

    def assertRetrying(self, sim: Simulation, what: str) -> None:
        assert sim.service is not None
        now = sim.reactor.seconds()
        for r in sim.service.registry:
            self.assertEqual(r.state, RegState.INTERNAL_ERROR_STATE, r)
            self.assertIn(what, r.last_error)
            self.assertIn("RuntimeError: boom", r.last_error)
            assert r.next_at is not None
            self.assertGreater(r.next_at, now)

    def check_step(self, owner: type, name: str, what: str, users: dict[str, UserPolicy] | None = None) -> None:
        users = users or {f"u{i}": UserPolicy(password="p") for i in range(5)}
        sim = self.simulation(users)
        patched = self.patch(owner, name, boom)
        service = sim.start()
        sim.run(8)
        self.assertRetrying(sim, what)
        self.assertGreaterEqual(service.counters.internal_errors, len(users))
        # One traceback per kind of failure a minute, not one per record.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        patched.restore()
        for policy in users.values():
            policy.silent = False
        sim.run(60)
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})

    def test_response_handling(self) -> None:
        """The state machine raising on a response."""
        self.check_step(Registrant, "on_response", "handling a response")

    def test_timeout_handling(self) -> None:
        """The state machine raising on Timer F."""
        users = {f"u{i}": UserPolicy(password="p", silent=True) for i in range(3)}
        self.check_step(Registrant, "on_timeout", "handling a timeout", users)

    def test_starting_an_attempt(self) -> None:
        """The state machine raising when an attempt starts."""
        self.check_step(Registrant, "start", "starting an attempt")

    def test_sending(self) -> None:
        """Rendering or sending raising."""
        self.check_step(RegistrationClient, "_transmit", "starting an attempt")

    def test_lookup_result(self) -> None:
        """A lookup that answers later, and handling its answer raising."""
        sim = self.simulation({"a": UserPolicy(password="p")})
        sim.db.execute("UPDATE registrant SET registrar = 'sip:registrar.test.invalid'")
        sim.db.commit()
        answers: list[defer.Deferred[tuple[str, int]]] = []

        def resolve(resolver: SipResolver, uri: object) -> defer.Deferred[tuple[str, int]]:
            answers.append(defer.Deferred())
            return answers[-1]

        self.patch(SipResolver, "resolve", resolve)
        transmit = self.patch(RegistrationClient, "_transmit", boom)
        sim.start()
        sim.run(1)
        (r,) = sim.service.registry if sim.service else []
        self.assertEqual(r.state, RegState.REGISTERING_STATE)
        answers[0].callback(REGISTRAR)
        self.assertRetrying(sim, "sending after a lookup")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        transmit.restore()
        for _ in range(30):
            sim.run(1)
            for answer in answers:
                if not answer.called:
                    answer.callback(REGISTRAR)
        self.assertEqual(sim.states(), {"a": "REGISTERED_STATE"})

    def test_late_callbacks_are_ignored(self) -> None:
        """A lookup answering after its attempt ended (or for an older CSeq) sends nothing."""
        sim = self.simulation({"a": UserPolicy(password="p")})
        sim.db.execute("UPDATE registrant SET registrar = 'sip:registrar.test.invalid'")
        sim.db.commit()
        answers: list[defer.Deferred[tuple[str, int]]] = []
        self.patch(SipResolver, "resolve", lambda resolver, uri: answers.append(defer.Deferred()) or answers[-1])
        service = sim.start()
        sim.run(1)
        (r,) = service.registry
        r.on_internal_error(sim.reactor.seconds(), "test")
        answers[0].callback(REGISTRAR)
        sim.run(0.5)
        self.assertEqual(sim.registrar.received, [])

    def test_stuck_record_recovered(self) -> None:
        """
        A record left in a transaction state with nothing pending (a bug's
        result) is found by the bucket walk and retried.
        """
        sim = self.simulation({"a": UserPolicy(password="p")})
        service = sim.start()
        sim.run(2)
        (r,) = service.registry
        r.start(sim.reactor.seconds())  # as if a send had been lost without a trace
        self.assertIn(r.state, IN_TRANSACTION)
        limit = stuck_after(service.policy.transaction_timeout)
        sim.run(limit + 100 + 1)  # found at the next bucket visit after the limit
        self.assertIn(r.state, (RegState.INTERNAL_ERROR_STATE, RegState.REGISTERED_STATE))
        self.assertEqual(service.counters.internal_errors, 1)
        sim.run(60)
        self.assertEqual(r.state, RegState.REGISTERED_STATE)


class PacingTests(SynchronousTestCase):
    def test_follow_ups_go_through_the_pacer(self) -> None:
        """Digest answers count against --send-rate like first requests."""
        users = {f"u{i}": UserPolicy(password="p") for i in range(300)}
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=100, send_rate=50)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        for user in users:
            sim.add(user, password="p")
        sim.start()
        sim.run(15)
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})
        times = [r.time for r in sim.registrar.received]
        self.assertEqual(len(times), 600)
        busiest = max(len([t for t in times if start <= t < start + 1]) for start in times)
        self.assertLessEqual(busiest, 50 + 1)

    def test_escalating_min_expires(self) -> None:
        """
        A registrar answering every REGISTER with 423 and a higher
        Min-Expires gets two follow-ups per attempt, then the back-off: a
        handful of requests a minute, not thousands a second.
        """
        users = {"a": UserPolicy(escalate_min_expires=True)}
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=100, retry_interval=30, retry_max_interval=600)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        sim.add("a")
        service = sim.start()
        sim.run(60)
        self.assertEqual(sim.states(), {"a": "REGISTRAR_ERROR_STATE"})
        self.assertLessEqual(len(sim.registrar.received), 3 * 3)
        (r,) = service.registry
        self.assertIn("423 again", r.last_error)
        assert r.next_at is not None
        self.assertGreater(r.next_at, sim.reactor.seconds())

    def test_rewritten_contact(self) -> None:
        """
        A registrar that rewrites the Contact and grants less than asked:
        the daemon refreshes before the grant runs out (guess counted), so
        the binding never lapses.
        """
        users = {"a": UserPolicy(max_expires=60, rewrite_contact=";transport=udp")}
        sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=10)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        sim.add("a", expiry=3600)
        service = sim.start()
        sim.run(1)
        (r,) = service.registry
        self.assertEqual((r.state, r.expires), (RegState.REGISTERED_STATE, 60))
        for _ in range(600):
            sim.run(1)
            for binding in sim.registrar.bindings.values():
                self.assertGreater(binding.expires_at, sim.reactor.seconds())
        self.assertGreater(service.counters.expiry_guesses, 10)
        self.assertEqual(service.counters.lapsed_registrations, 0)
