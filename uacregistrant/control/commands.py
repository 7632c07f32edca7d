# -*- test-case-name: tests.unit.control.test_control,tests.unit.control.test_mi,tests.unit.control.test_events_json -*-
"""
The admin commands: a command line in, a L{Reply} out.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from uacregistrant import __version__
from uacregistrant.control.admin import Admin, AdminError
from uacregistrant.control.events import EventHub
from uacregistrant.control.formatting import IsoSeconds, json_records, record_text
from uacregistrant.core.counters import SipCounters
from uacregistrant.core.registrant import RegState, Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.schedule.slices import in_slices
from uacregistrant.store import StoreError, StoreValueError
from uacregistrant.store.coordinator import CoordinatorError

_log = Logger(namespace=__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    """A status line, body lines, and whether to close afterwards."""

    code: int
    reason: str
    body: list[str] = field(default_factory=list)
    close: bool = False
    #: Start streaming state changes to this connection (reg_events).
    subscribe: bool = False
    #: Those state changes as OpenSIPS's events in JSON (reg_events json).
    events_json: bool = False
    #: A body too large to build at once: chunks written as the
    #: connection drains, each ending where it likes (the body's last
    #: chunk ends with a newline).
    stream: Iterator[str] | None = None

    @property
    def status_line(self) -> str:
        """E.g. C{200 OK}."""
        return f"{self.code} {self.reason}"


Result = Reply | defer.Deferred[Reply]
Handler = Callable[[list[str]], Result]
_KEY_USAGE = "AOR [BINDING REGISTRAR]"


def failure_reply(failure: Failure) -> Reply:
    """
    The reply for a command that failed: a refusal's own code and reason,
    400 for a bad value, 503 when the database is unavailable, else 500
    (and the failure in the log).
    """
    if failure.check(AdminError):
        error: Any = failure.value
        return Reply(error.code, error.reason, error.detail)
    if failure.check(StoreValueError):
        return Reply(400, "Bad record", [failure.getErrorMessage()])
    if failure.check(StoreError, CoordinatorError):
        return Reply(503, "Database unavailable", [failure.getErrorMessage()])
    _log.failure("admin command failed", failure)
    return Reply(500, "Internal error", [failure.type.__name__ if failure.type else "error"])


class Commands:
    """The command table over one registry."""

    def __init__(
        self,
        registry: Registry,
        counters: SipCounters,
        admin: Admin,
        events: EventHub,
        clock: IReactorTime,
        transport_status: Callable[[], dict[str, Any]] | None = None,
        holds: Callable[[Registrant], bool] | None = None,
        cluster: Callable[[], defer.Deferred[list[dict[str, Any]]]] | None = None,
    ) -> None:
        """
        @param transport_status: what reg_stats shows of the transports
            (open connections, whether TLS certificates are checked), and
            of the cluster.
        @param holds: whether this node holds a record (a cluster node
            lists and acts on its own records only).
        @param cluster: the cluster's members, for reg_cluster.
        """
        self._transport_status = transport_status
        self._holds = holds
        self._cluster = cluster
        self._registry = registry
        self._clock = clock
        self._counters = counters
        self._admin = admin
        self.events = events
        self._table: dict[str, tuple[Handler, str]] = {
            "help": (self.help, "help: list the commands"),
            "reg_list": (self.reg_list, "reg_list [json] [AOR]: every record, or one AOR's"),
            "reg_stats": (self.reg_stats, "reg_stats [json]: total, bindings held, count per state, SIP counters"),
            "reg_reload": (self.reg_reload, f"reg_reload [json] [{_KEY_USAGE}]: re-read the table, or one record"),
            "reg_enable": (self.reg_enable, f"reg_enable {_KEY_USAGE}: enable and register"),
            "reg_disable": (self.reg_disable, f"reg_disable {_KEY_USAGE}: un-register and disable"),
            "reg_force_register": (self.reg_force_register, f"reg_force_register {_KEY_USAGE}: send a REGISTER now"),
            "reg_delete": (self.reg_delete, f"reg_delete {_KEY_USAGE}: un-register and forget (row kept, disabled)"),
            "reg_upsert": (self.reg_upsert, "reg_upsert column=value ...: add or change one record (aor, registrar, binding_URI required)"),
            "reg_events": (
                self.reg_events,
                "reg_events: follow state changes, one line each, until quit\n"
                "reg_events json: the same as OpenSIPS 4.0's events (E_REGISTRANT_*), one JSON object per line",
            ),
            "reg_cluster": (self.reg_cluster, "reg_cluster [json]: the cluster's nodes (alive, state, last heartbeat, slots, records, listen)"),
            "quit": (self.quit, "quit: close this connection"),
        }

    def run(self, line: str) -> Result:
        """
        Run one command line; never raises (a Deferred never fails).

        Words split as a shell would: C{key="a b"} or C{'a b'} keeps the
        space, a backslash escapes the next character.
        """
        try:
            words = shlex.split(line)
        except ValueError as e:
            return Reply(400, "Bad quoting", [f"{e}: close every quote (a value with a space: key=\"a b\")"])
        if not words:
            return Reply(400, "Empty command")
        return self.call(words[0], words[1:])

    def call(self, name: str, args: list[str]) -> Result:
        """
        Run command C{name} with its arguments already split (the MI
        calls it too); never raises (a Deferred never fails).
        """
        entry = self._table.get(name.lower())
        if entry is None:
            return Reply(400, "Unknown command", [f"unknown command {name[:64]!r}; try help"])
        try:
            result = entry[0](args)
        except Exception:
            return failure_reply(Failure())
        if isinstance(result, defer.Deferred):
            return result.addErrback(failure_reply)
        return result

    def listed(self) -> list[Registrant]:
        """The records this node lists: all of them, or in a cluster those it holds."""
        holds = self._holds
        return list(self._registry) if holds is None else [r for r in self._registry if holds(r)]

    def held(self, registrant: Registrant) -> bool:
        """Whether this node holds C{registrant} (always, outside a cluster)."""
        return self._holds is None or self._holds(registrant)

    def help(self, args: list[str]) -> Reply:
        """List the commands."""
        return Reply(200, "OK", [line for _, usage in self._table.values() for line in usage.split("\n")])

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
        holds = self._holds
        if not args:
            return self.listed()
        found = self._registry.by_aor(args[0])
        if not found:
            return Reply(404, "No such registrant", [f"no record for AOR {args[0][:256]}"])
        if holds is not None:
            mine = [r for r in found if holds(r)]
            if not mine:
                return Reply(404, "Held by another node", [f"{args[0][:256]} is registered by another node of the cluster (see reg_cluster)"])
            return mine
        return found

    def reg_list(self, args: list[str]) -> Reply:
        """
        List records as text blocks or one line of JSON, streamed: the
        body is produced a slice at a time as the connection drains.
        """
        as_json, args = self._json_flag(args)
        selected = self._select(args)
        if isinstance(selected, Reply):
            return selected
        return Reply(200, "OK", stream=_json_body(selected) if as_json else _text_body(selected))

    def reg_stats(self, args: list[str]) -> Result:
        """
        Totals per state, bindings held, and the SIP counters.  A large
        registry is counted a slice per reactor turn (a snapshot of the
        records taken when the command arrived).
        """
        as_json, args = self._json_flag(args)
        if args:
            return Reply(400, "Too many arguments", ["usage: reg_stats [json]"])
        # A cluster node counts the records it holds (every node loads them all).
        records = self.listed()
        tally = _Tally(self._clock.seconds())

        def reply() -> Reply:
            stats = tally.result(len(records), self._counters.as_dict())
            transports = self._transport_status() if self._transport_status is not None else {}
            if transports:
                stats["transport"] = transports
            if as_json:
                return Reply(200, "OK", [json.dumps({"version": __version__, **stats}, separators=(",", ":"))])
            lines = [f"version: {__version__}", f"total: {stats['total']}", f"enabled: {stats['enabled']}",
                     f"bindings_held: {stats['bindings_held']}"]
            lines += [f"{name}: {count}" for name, count in tally.by_state().items()]
            lines += [f"sip.{name}: {value}" for name, value in self._counters.as_dict().items()]
            lines += [f"transport.{name}: {value}" for name, value in transports.items()]
            return Reply(200, "OK", lines)

        return in_slices(self._clock, records, STATS_SLICE, tally.count).addCallback(lambda _: reply())

    def reg_reload(self, args: list[str]) -> Result:
        """Reload all, or one record (a missing row retires the record)."""
        as_json, args = self._json_flag(args)

        def done(counts: dict[str, int]) -> Reply:
            if as_json:
                return Reply(200, "OK", [json.dumps(counts, separators=(",", ":"))])
            return Reply(200, "OK", [f"{name}: {count}" for name, count in counts.items()])

        return self._admin.reload(args).addCallback(done)

    def reg_enable(self, args: list[str]) -> Result:
        """Enable a record and write state 0."""
        return self._admin.set_enabled(self._admin.find(args), True).addCallback(lambda outcome: Reply(200, "OK", [outcome]))

    def reg_disable(self, args: list[str]) -> Result:
        """Disable (un-register) a record and write state 1."""
        return self._admin.set_enabled(self._admin.find(args), False).addCallback(lambda outcome: Reply(200, "OK", [outcome]))

    def reg_force_register(self, args: list[str]) -> Result:
        """Send a REGISTER now (from the node that holds the record)."""
        registrant = self._admin.find(args)
        if not self.held(registrant):
            return Reply(409, "Held by another node", [f"{registrant.account.aor} is registered by another node: ask that node (see reg_cluster)"])
        self._admin.force_register(registrant)
        return Reply(200, "OK")

    def reg_cluster(self, args: list[str]) -> Result:
        """The cluster's nodes, as the database has them."""
        as_json, args = self._json_flag(args)
        if args:
            return Reply(400, "Too many arguments", ["usage: reg_cluster [json]"])
        if self._cluster is None:
            return Reply(404, "Not a cluster", ["this daemon runs alone (no --cluster)"])

        def reply(nodes: list[dict[str, Any]]) -> Reply:
            if as_json:
                return Reply(200, "OK", [json.dumps({"Nodes": nodes}, separators=(",", ":"))])
            lines = []
            for node in nodes:
                lines.append(f"node: {node['name']}")
                lines += [f"    {key}: {value}" for key, value in node.items() if key != "name"]
            return Reply(200, "OK", lines)

        return self._cluster().addCallback(reply)

    def reg_delete(self, args: list[str]) -> Result:
        """Un-register and forget a record."""
        return self._admin.delete(self._admin.find(args)).addCallback(lambda _: Reply(200, "OK"))

    def reg_upsert(self, args: list[str]) -> Result:
        """Add or change one record in memory and in the table."""
        return self._admin.upsert(args).addCallback(lambda outcome: Reply(200, "OK", [outcome]))

    def reg_events(self, args: list[str]) -> Result:
        """Subscribe this connection to state changes, as text lines or (C{json}) OpenSIPS's events."""
        as_json, args = self._json_flag(args)
        if args:
            return Reply(400, "Too many arguments", ["usage: reg_events [json]"])
        return Reply(200, "OK", subscribe=True, events_json=as_json)


def _json_body(registrants: list[Registrant]) -> Iterator[str]:
    """C{{"Records": [...]}} as one line, a record per chunk."""
    yield from json_records(registrants)
    yield "\n"


def _text_body(registrants: list[Registrant]) -> Iterator[str]:
    """A block of lines per record."""
    times = IsoSeconds()
    for registrant in registrants:
        yield "".join(line.replace("\n", " ") + "\n" for line in record_text(registrant, times=times))


#: Records counted per reactor turn by reg_stats.
STATS_SLICE = 20000


class _Tally:
    """reg_stats's counts, accumulated slice by slice."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.counts: Counter[tuple[RegState, bool]] = Counter()
        self.held = 0

    def count(self, records: Sequence[Registrant]) -> None:
        now = self.now
        counts = self.counts
        held = 0
        for r in records:
            counts[(r.state, r.account.enabled)] += 1
            until = r.registered_until
            if until is not None and until > now:
                held += 1
        self.held += held

    def by_state(self) -> dict[str, int]:
        counts = self.counts
        return {state.name: counts[(state, True)] + counts[(state, False)] for state in RegState}

    def result(self, total: int, sip: dict[str, int]) -> dict[str, Any]:
        # Bindings held: the registrars still hold them for us (a
        # REGISTERED record whose refresh is overdue no longer has one).
        return {
            "total": total,
            "enabled": sum(count for (_, on), count in self.counts.items() if on),
            "bindings_held": self.held,
            "states": self.by_state(),
            "sip": sip,
        }
