# -*- test-case-name: tests.unit.test_control -*-
"""
The admin commands: a command line in, a L{Reply} out.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..registrant import RegState, Registrant
from ..registry import Registry
from ..stats import SipCounters
from .formatting import record_dict, record_text


@dataclass(frozen=True, slots=True)
class Reply:
    """A status line, body lines, and whether to close afterwards."""

    code: int
    reason: str
    body: list[str] = field(default_factory=list)
    close: bool = False

    @property
    def status_line(self) -> str:
        """E.g. C{200 OK}."""
        return f"{self.code} {self.reason}"


Handler = Callable[[list[str]], Reply]


class Commands:
    """The command table over one registry."""

    def __init__(self, registry: Registry, counters: SipCounters) -> None:
        self._registry = registry
        self._counters = counters
        self._table: dict[str, tuple[Handler, str]] = {
            "help": (self.help, "help: list the commands"),
            "reg_list": (self.reg_list, "reg_list [json] [AOR]: every record, or one AOR's"),
            "reg_stats": (self.reg_stats, "reg_stats [json]: total, count per state, SIP counters"),
            "quit": (self.quit, "quit: close this connection"),
        }

    def run(self, line: str) -> Reply:
        """Run one command line; never raises."""
        words = line.split()
        if not words:
            return Reply(400, "Empty command")
        entry = self._table.get(words[0].lower())
        if entry is None:
            return Reply(400, "Unknown command", [f"unknown command {words[0][:64]!r}; try help"])
        try:
            return entry[0](words[1:])
        except Exception as e:  # a bug must not kill the console
            return Reply(500, "Internal error", [type(e).__name__])

    def help(self, args: list[str]) -> Reply:
        """List the commands."""
        return Reply(200, "OK", [usage for _, usage in self._table.values()])

    def quit(self, args: list[str]) -> Reply:
        """Close the connection."""
        return Reply(200, "Bye", close=True)

    @staticmethod
    def _json_flag(args: list[str]) -> tuple[bool, list[str]]:
        if args and args[0].lower() == "json":
            return True, args[1:]
        return False, args

    def _select(self, args: list[str]) -> list[Registrant] | Reply:
        if len(args) > 1:
            return Reply(400, "Too many arguments", ["usage: reg_list [json] [AOR]"])
        if not args:
            return list(self._registry)
        found = self._registry.by_aor(args[0])
        if not found:
            return Reply(404, "No such registrant", [f"no record for AOR {args[0][:256]}"])
        return found

    def reg_list(self, args: list[str]) -> Reply:
        """List records as text blocks or one line of JSON."""
        as_json, args = self._json_flag(args)
        selected = self._select(args)
        if isinstance(selected, Reply):
            return selected
        if as_json:
            body = json.dumps({"Records": [record_dict(r) for r in selected]}, separators=(",", ":"))
            return Reply(200, "OK", [body])
        lines: list[str] = []
        for registrant in selected:
            lines.extend(record_text(registrant))
        return Reply(200, "OK", lines)

    def reg_stats(self, args: list[str]) -> Reply:
        """Totals per state and the SIP counters."""
        as_json, args = self._json_flag(args)
        if args:
            return Reply(400, "Too many arguments", ["usage: reg_stats [json]"])
        counts = Counter(r.state for r in self._registry)
        by_state = {state.name: counts.get(state, 0) for state in RegState}
        enabled = sum(1 for r in self._registry if r.enabled)
        stats = {
            "total": len(self._registry),
            "enabled": enabled,
            "states": by_state,
            "sip": self._counters.as_dict(),
        }
        if as_json:
            return Reply(200, "OK", [json.dumps(stats, separators=(",", ":"))])
        lines = [f"total: {stats['total']}", f"enabled: {enabled}"]
        lines += [f"{name}: {count}" for name, count in by_state.items()]
        lines += [f"sip.{name}: {value}" for name, value in self._counters.as_dict().items()]
        return Reply(200, "OK", lines)
