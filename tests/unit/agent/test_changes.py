"""StateChanges: which changes are news, and observers that fail."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.agent.changes import StateChange, StateChanges
from uacregistrant.agent.statelog import StateLog
from uacregistrant.control.events import EventHub
from uacregistrant.core.account import Account
from uacregistrant.core.registrant import FAILURE_STATES, Policy, RegState, Registrant


def registrant(state: RegState) -> Registrant:
    r = Registrant(
        Account(row_id=1, aor="sip:alice@example.com", registrar="sip:example.com",
                binding_uri="sip:alice@192.0.2.1:5060", expiry=3600),
        Policy(rng=random.Random(1)),
    )
    r._state = state  # a fixture: put the record in the state under test
    return r


class StateChangesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.seen: list[StateChange] = []
        self.changes = StateChanges([self.seen.append])

    def test_change_published(self) -> None:
        """A state change reaches the observer with the record, both states and the time."""
        r = registrant(RegState.REGISTERED_STATE)
        self.changes.publish(r, RegState.REGISTERING_STATE, 12.5)
        self.assertEqual(self.seen, [StateChange(r, RegState.REGISTERING_STATE, RegState.REGISTERED_STATE, 12.5)])

    def test_unchanged_healthy_state_not_published(self) -> None:
        """A state that did not change and is not a failure (a refresh, a wait) is not news."""
        for state in set(RegState) - FAILURE_STATES:
            self.changes.publish(registrant(state), state, 1.0)
        self.assertEqual(self.seen, [])

    def test_repeated_failure_published(self) -> None:
        """A failure again (a retry failing, maybe differently) is published every time."""
        self.assertEqual(FAILURE_STATES, {RegState.REGISTER_TIMEOUT_STATE, RegState.INTERNAL_ERROR_STATE,
                                          RegState.WRONG_CREDENTIALS_STATE, RegState.REGISTRAR_ERROR_STATE})
        for state in FAILURE_STATES:
            r = registrant(state)
            self.changes.publish(r, state, 1.0)
            self.changes.publish(r, state, 2.0)
        self.assertEqual(len(self.seen), 2 * len(FAILURE_STATES))
        self.assertEqual({(c.old, c.new) for c in self.seen}, {(s, s) for s in FAILURE_STATES})

    def test_failing_observer_does_not_stop_the_others(self) -> None:
        """An observer that raises is logged; the ones after it still hear of the change, and of later ones."""
        def broken(change: StateChange) -> None:
            raise RuntimeError("observer broke")

        later: list[StateChange] = []
        changes = StateChanges([broken, self.seen.append])
        changes.observe(later.append)
        r = registrant(RegState.REGISTERED_STATE)
        changes.publish(r, RegState.AUTHENTICATING_STATE, 3.0)
        changes.publish(r, RegState.REGISTERING_STATE, 4.0)
        self.assertEqual([c.time for c in self.seen], [3.0, 4.0])
        self.assertEqual([c.time for c in later], [3.0, 4.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_observe_adds_an_observer(self) -> None:
        """observe() makes an observer hear of later changes only."""
        r = registrant(RegState.REGISTERED_STATE)
        self.changes.publish(r, RegState.REGISTERING_STATE, 1.0)
        late: list[StateChange] = []
        self.changes.observe(late.append)
        self.changes.publish(r, RegState.AUTHENTICATING_STATE, 2.0)
        self.assertEqual([c.time for c in late], [2.0])


class QuietRecorder:
    """A L{QuietObserver} whose quiet flag the test sets."""

    def __init__(self) -> None:
        self.quiet = True
        self.seen: list[StateChange] = []

    def __call__(self, change: StateChange) -> None:
        self.seen.append(change)


class QuietObserverTests(SynchronousTestCase):
    def test_healthy_change_skipped_while_every_observer_is_quiet(self) -> None:
        """A change into a healthy state reaches no one while all are quiet; a failure reaches them all the same."""
        a, b = QuietRecorder(), QuietRecorder()
        changes = StateChanges([a, b])
        changes.publish(registrant(RegState.REGISTERED_STATE), RegState.AUTHENTICATING_STATE, 1.0)
        self.assertEqual((a.seen, b.seen), ([], []))
        changes.publish(registrant(RegState.REGISTER_TIMEOUT_STATE), RegState.REGISTERING_STATE, 2.0)
        self.assertEqual(([c.time for c in a.seen], [c.time for c in b.seen]), ([2.0], [2.0]))

    def test_one_listening_observer_gets_every_observer_told(self) -> None:
        """One observer not quiet (or a plain callable) is enough for the change to be made and given to all."""
        a, b = QuietRecorder(), QuietRecorder()
        b.quiet = False
        StateChanges([a, b]).publish(registrant(RegState.REGISTERED_STATE), RegState.AUTHENTICATING_STATE, 1.0)
        self.assertEqual((len(a.seen), len(b.seen)), (1, 1))
        plain: list[StateChange] = []
        c = QuietRecorder()
        StateChanges([c, plain.append]).publish(registrant(RegState.REGISTERED_STATE), RegState.AUTHENTICATING_STATE, 1.0)
        self.assertEqual((len(c.seen), len(plain)), (1, 1))

    def test_state_log_is_quiet_while_nothing_fails(self) -> None:
        """The state log listens for recoveries exactly while some record is failing, and logs the recovery."""
        log = StateLog(Clock())
        changes = StateChanges([log])
        self.assertTrue(log.quiet)
        r = registrant(RegState.REGISTER_TIMEOUT_STATE)
        changes.publish(r, RegState.REGISTERING_STATE, 1.0)
        self.assertFalse(log.quiet)
        r._state = RegState.REGISTERED_STATE
        changes.publish(r, RegState.REGISTERING_STATE, 2.0)
        self.assertTrue(log.quiet)
        self.assertEqual(log.failing, 0)
        r._state = RegState.WRONG_CREDENTIALS_STATE
        changes.publish(r, RegState.AUTHENTICATING_STATE, 3.0)
        log.forget(r)
        self.assertTrue(log.quiet)

    def test_event_hub_is_quiet_while_no_one_watches(self) -> None:
        """The console's event hub wants changes exactly while it has a subscriber, text or JSON."""
        hub = EventHub()
        changes = StateChanges([hub])
        lines: list[str] = []
        self.assertTrue(hub.quiet)
        hub.subscribe(lines.append, as_json=True)
        self.assertFalse(hub.quiet)
        changes.publish(registrant(RegState.REGISTERED_STATE), RegState.AUTHENTICATING_STATE, 1.0)
        self.assertEqual(len(lines), 1)
        hub.unsubscribe(lines.append)
        self.assertTrue(hub.quiet)
        hub.subscribe(lines.append)
        hub.unsubscribe(lines.append)
        self.assertTrue(hub.quiet)
