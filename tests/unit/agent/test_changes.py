"""StateChanges: which changes are news, and observers that fail."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.agent.changes import StateChange, StateChanges
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
