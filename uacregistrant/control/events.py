# -*- test-case-name: tests.unit.control.test_control -*-
"""State changes as lines, for connections that asked for C{reg_events}."""

from __future__ import annotations

import datetime
from typing import Callable

from twisted.logger import Logger

from uacregistrant.agent.changes import StateChange

_log = Logger()


def event_line(change: StateChange) -> str:
    """C{TIME AOR BINDING OLD -> NEW LAST_REPLY}, one line, no password."""
    registrant = change.registrant
    moment = datetime.datetime.fromtimestamp(change.time, datetime.timezone.utc)
    stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    reply = registrant.last_reply
    last = f"{reply[0]} {reply[1]}" if reply else "-"
    account = registrant.account
    return f"{stamp} {account.aor} {account.binding_uri} {change.old.name} -> {change.new.name} {last}".replace("\n", " ")


class EventHub:
    """Fans state changes out to subscribers (one per watching connection)."""

    def __init__(self) -> None:
        self._subscribers: set[Callable[[str], None]] = set()

    def subscribe(self, subscriber: Callable[[str], None]) -> None:
        """Start sending lines to C{subscriber}."""
        self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Callable[[str], None]) -> None:
        """Stop sending lines to C{subscriber}."""
        self._subscribers.discard(subscriber)

    def publish(self, change: StateChange) -> None:
        """Format once, send to every subscriber (one failing does not starve the others)."""
        if not self._subscribers:
            return
        line = event_line(change)
        for subscriber in list(self._subscribers):
            try:
                subscriber(line)
            except Exception:
                _log.failure("a reg_events subscriber failed; dropping it")
                self._subscribers.discard(subscriber)
