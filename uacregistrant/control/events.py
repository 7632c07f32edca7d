# -*- test-case-name: tests.unit.control.test_control,tests.unit.control.test_events_json -*-
"""
State changes as lines, for connections that asked for C{reg_events}:
text, or (C{reg_events json}) OpenSIPS 4.0's uac_registrant events as
its event sockets deliver them, one JSON-RPC notification per line.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Callable

from twisted.logger import Logger

from uacregistrant.agent.changes import StateChange
from uacregistrant.core.registrant import RegState

_log = Logger(namespace=__name__)

#: The event OpenSIPS raises on entering each state (none for NOT_REGISTERED).
EVENT_NAMES: dict[RegState, str] = {
    RegState.REGISTERING_STATE: "E_REGISTRANT_REGISTERING",
    RegState.AUTHENTICATING_STATE: "E_REGISTRANT_AUTHENTICATING",
    RegState.REGISTERED_STATE: "E_REGISTRANT_REGISTERED",
    RegState.REGISTER_TIMEOUT_STATE: "E_REGISTRANT_REGISTER_TIMEOUT",
    RegState.INTERNAL_ERROR_STATE: "E_REGISTRANT_INTERNAL_ERROR",
    RegState.WRONG_CREDENTIALS_STATE: "E_REGISTRANT_WRONG_CREDENTIALS",
    RegState.REGISTRAR_ERROR_STATE: "E_REGISTRANT_REGISTRAR_ERROR",
    RegState.UNREGISTERING_STATE: "E_REGISTRANT_UNREGISTERING",
    RegState.AUTHENTICATING_UNREGISTER_STATE: "E_REGISTRANT_AUTHENTICATING_UNREGISTER",
}

#: The key of what uacregistrant adds to OpenSIPS's event (not OpenSIPS's).
EXTRA_KEY = "uacregistrant"


def _stamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_line(change: StateChange) -> str:
    """C{TIME AOR BINDING OLD -> NEW LAST_REPLY}, one line, no password."""
    registrant = change.registrant
    reply = registrant.last_reply
    last = f"{reply[0]} {reply[1]}" if reply else "-"
    account = registrant.account
    return f"{_stamp(change.time)} {account.aor} {account.binding_uri} {change.old.name} -> {change.new.name} {last}".replace("\n", " ")


def event_json(change: StateChange) -> str | None:
    """
    The change as OpenSIPS 4.0 raises it, a JSON-RPC notification
    C{{"jsonrpc": "2.0", "method": "E_REGISTRANT_...", "params": {"aor",
    "contact", "registrar"}}}, plus C{"uacregistrant"}: the time, the
    states before and after, the last reply.  One line (JSON escapes
    every control character), no password; C{None} for a change to
    NOT_REGISTERED, which raises no event.
    """
    name = EVENT_NAMES.get(change.new)
    if name is None:
        return None
    registrant = change.registrant
    account = registrant.account
    reply = registrant.last_reply
    event: dict[str, Any] = {
        "jsonrpc": "2.0",
        "method": name,
        "params": {"aor": account.aor, "contact": account.binding_uri, "registrar": account.registrar},
        EXTRA_KEY: {
            "time": _stamp(change.time),
            "old_state": change.old.name,
            "state": change.new.name,
            "last_reply": f"{reply[0]} {reply[1]}".rstrip() if reply else None,
        },
    }
    return json.dumps(event, separators=(",", ":"))


class EventHub:
    """Fans state changes out to subscribers (one per watching connection), as text or JSON lines."""

    def __init__(self) -> None:
        self._subscribers: set[Callable[[str], None]] = set()
        self._json_subscribers: set[Callable[[str], None]] = set()

    def subscribe(self, subscriber: Callable[[str], None], as_json: bool = False) -> None:
        """Start sending lines to C{subscriber}: text, or (C{as_json}) OpenSIPS's events in JSON."""
        self.unsubscribe(subscriber)
        (self._json_subscribers if as_json else self._subscribers).add(subscriber)

    def unsubscribe(self, subscriber: Callable[[str], None]) -> None:
        """Stop sending lines to C{subscriber}."""
        self._subscribers.discard(subscriber)
        self._json_subscribers.discard(subscriber)

    @property
    def quiet(self) -> bool:
        """No one watching: no change is of interest (L{QuietObserver})."""
        return not (self._subscribers or self._json_subscribers)

    def publish(self, change: StateChange) -> None:
        """Format once per form, send to every subscriber (one failing does not starve the others)."""
        if self._subscribers:
            self._send(self._subscribers, event_line(change))
        if self._json_subscribers:
            line = event_json(change)
            if line is not None:
                self._send(self._json_subscribers, line)

    #: The hub is a L{QuietObserver} of the state changes: called, it publishes.
    __call__ = publish

    def _send(self, subscribers: set[Callable[[str], None]], line: str) -> None:
        for subscriber in list(subscribers):
            try:
                subscriber(line)
            except Exception:
                _log.failure("a reg_events subscriber failed; dropping it")
                self.unsubscribe(subscriber)
