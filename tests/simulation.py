"""
Helpers to run the real service on the fake network and clock, against
the real test registrar.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from twisted.names.resolve import ResolverChain

from tests.fakes import FakeReactor
from uacregistrant.app.service import RegistrantService
from uacregistrant.app.settings import build_settings
from uacregistrant.store import schema_sql
from uacregistrant.store.sqlite import SqliteStore, run_synchronously
from uacregistrant.testing.registrar import TestRegistrar, UserPolicy

REGISTRAR = ("127.0.0.1", 5080)


class Simulation:
    """A daemon, a registrar and a table on a fake network."""

    def __init__(self, path: str, users: dict[str, UserPolicy], **settings: Any) -> None:
        self.reactor = FakeReactor()
        self.registrar = TestRegistrar(self.reactor, users)
        self.reactor.listenUDP(REGISTRAR[1], self.registrar, interface=REGISTRAR[0])
        values = {"db_url": f"sqlite:{path}", "listen": ["udp:127.0.0.1:5060"], "control": ["unix:unused"]}
        values.update(settings)
        self.settings = dataclasses.replace(build_settings(values), control=())
        self.db = sqlite3.connect(path)
        self.db.executescript(schema_sql("sqlite"))
        self.store = SqliteStore(path, self.settings.table, self.reactor, run_in_thread=run_synchronously)
        self.store.check()
        self.service: RegistrantService | None = None

    def add(self, user: str, **columns: Any) -> None:
        row = {
            "registrar": f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}",
            "aor": f"sip:{user}@test.invalid",
            "binding_URI": f"sip:{user}@127.0.0.1:5060",
            "username": user,
            "expiry": 3600,
        }
        row.update(columns)
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.db.execute(f"INSERT INTO registrant ({names}) VALUES ({marks})", list(row.values()))
        self.db.commit()

    def start(self) -> RegistrantService:
        self.service = RegistrantService(self.settings, self.store, self.reactor, resolver=ResolverChain([]))
        self.service.startService()
        return self.service

    def run(self, seconds: float) -> None:
        """Advance the clock from one scheduled call to the next, up to C{seconds}."""
        clock = self.reactor
        end = clock.seconds() + seconds
        while True:
            calls = clock.getDelayedCalls()  # Clock keeps them sorted by time
            upcoming = calls[0].getTime() if calls else end + 1
            if upcoming > end:
                break
            clock.advance(max(0.0, upcoming - clock.seconds()))
        clock.advance(end - clock.seconds())

    def states(self) -> dict[str, str]:
        assert self.service is not None
        return {r.account.aor.split(":")[1].split("@")[0]: r.state.name for r in self.service.registry}
