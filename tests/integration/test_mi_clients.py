"""
OpenSIPS's own MI clients against the MI over HTTP: C{opensips-cli}
(C{communication_type: http}) and C{opensips-mi -t http}, run as they are
installed, against the real service on the real reactor (UDP to the test
registrar on 127.0.0.1, a SQLite table), the MI listening on a free
loopback port (writes on, as with --mi-http-writes, but for the test of
writes off).  The clients run as child processes while the reactor keeps
serving.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, reactor, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.names.resolve import ResolverChain
from twisted.trial.unittest import SkipTest, TestCase

from uacregistrant.app.service import RegistrantService
from uacregistrant.app.settings import build_settings
from uacregistrant.control.mi import MiSite, mi_site
from uacregistrant.store.sqlite import SqliteStore
from uacregistrant.testing.registrar import TestRegistrar as Registrar
from uacregistrant.testing.registrar import UserPolicy

from .helpers import PATIENCE, free_udp_port, make_table

USERS = {"alice": "p-alice", "bob": "p-bob"}


def client(name: str) -> str:
    """An OpenSIPS client installed beside this interpreter, or skip (fail under UACREG_REQUIRE_PEERS=1)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        message = f"{name} not found beside {sys.executable}: install the test extra (UACREG_PURE_PYTHON=1 pip install -e '.[test]': opensipscli, opensips)"
        if os.environ.get("UACREG_REQUIRE_PEERS") == "1":
            raise AssertionError(message + " (UACREG_REQUIRE_PEERS=1)")
        raise SkipTest(message)
    return str(path)


@defer.inlineCallbacks
def until(predicate: Callable[[], Any], what: str) -> Any:
    """Let the reactor run until C{predicate()} holds; fail after PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {PATIENCE}s")
        yield task.deferLater(reactor, 0.05, lambda: None)


class MiClientsTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.cli = client("opensips-cli")
        self.mi = client("opensips-mi")
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        registrar = Registrar(reactor, {user: UserPolicy(password=password) for user, password in USERS.items()})
        udp = reactor.listenUDP(0, registrar, interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        self.registrar = f"sip:127.0.0.1:{udp.getHost().port}"
        self.db = str(self.directory / "registrant.db")
        make_table(
            Path(self.db),
            [
                {"registrar": self.registrar, "aor": f"sip:{user}@test.invalid", "binding_URI": f"sip:{user}@127.0.0.1:5060",
                 "username": user, "password": password, "expiry": 600}
                for user, password in USERS.items()
            ],
        )
        values = {"db_url": f"sqlite:{self.db}", "listen": [f"udp:127.0.0.1:{free_udp_port()}"], "control": ["unix:unused"], "timer_interval": 10}
        settings = dataclasses.replace(build_settings(values), control=())
        self.service = RegistrantService(settings, SqliteStore(self.db, settings.table, reactor), reactor, resolver=ResolverChain([]))
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield until(lambda: self.states() == {"alice": "REGISTERED_STATE", "bob": "REGISTERED_STATE"}, "both registered")
        self.site, self.port = self.listen(writes=True)
        self.config = self.cli_config(self.port)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSIPS_")}
        self.env["HOME"] = str(self.directory)  # no operator's ~/.opensips-cli.cfg; the history file lands here

    def listen(self, writes: bool) -> tuple[MiSite, int]:
        """An MI site over the service on a free loopback port."""
        site = mi_site(self.service.commands, self.service.admin, reactor, writes=writes)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # Connections the clients closed are gone before the reactor is checked for leftovers.
        self.addCleanup(lambda: until(lambda: site.connections == 0, "MI connections closed"))
        return site, port.getHost().port

    def cli_config(self, port: int) -> str:
        """An opensips-cli configuration file speaking HTTP to the MI on C{port}."""
        config = self.directory / f"opensips-cli-{port}.cfg"
        config.write_text(f"[default]\ncommunication_type: http\nurl: http://127.0.0.1:{port}/mi\n")
        return str(config)

    def states(self) -> dict[str, str]:
        return {r.account.aor.split(":")[1].split("@")[0]: r.state.name for r in self.service.registry}

    def key(self, user: str) -> dict[str, str]:
        return {"aor": f"sip:{user}@test.invalid", "contact": f"sip:{user}@127.0.0.1:5060", "registrar": self.registrar}

    def run_client(self, args: list[str]) -> defer.Deferred[tuple[str, str, int]]:
        d = getProcessOutputAndValue(args[0], args[1:], env=self.env, path=str(self.directory))
        return d.addCallback(lambda result: (result[0].decode(), result[1].decode(), result[2]))

    def opensips_cli(self, *words: str, config: str | None = None) -> defer.Deferred[tuple[str, str, int]]:
        return self.run_client([self.cli, "-f", config or self.config, "-x", "mi", *words])

    def opensips_mi(self, *words: str) -> defer.Deferred[tuple[str, str, int]]:
        return self.run_client([self.mi, "-t", "http", "-i", "127.0.0.1", "-p", str(self.port), *words])

    def table_state(self, user: str) -> int:
        db = sqlite3.connect(self.db)
        try:
            state: int = db.execute("SELECT state FROM registrant WHERE username = ?", (user,)).fetchone()[0]
            return state
        finally:
            db.close()

    @defer.inlineCallbacks
    def test_cli_reg_list(self) -> Any:
        """opensips-cli -x mi reg_list (3.x name) and mi uac_registrant:list (4.0 name): every record, as JSON."""
        for name in ("reg_list", "uac_registrant:list"):
            out, err, code = yield self.opensips_cli(name)
            self.assertEqual(code, 0, err)
            records = json.loads(out)["Records"]
            self.assertEqual(sorted((r["AOR"], r["state"], r["enabled"]) for r in records),
                             [("sip:alice@test.invalid", "REGISTERED_STATE", "yes"), ("sip:bob@test.invalid", "REGISTERED_STATE", "yes")])
            self.assertNotIn("p-alice", out)

    @defer.inlineCallbacks
    def test_cli_disable_enable(self) -> Any:
        """mi reg_disable aor=... contact=... registrar=... un-registers and writes the row; uac_registrant:enable registers again."""
        words = [f"{name}={value}" for name, value in self.key("bob").items()]
        out, err, code = yield self.opensips_cli("reg_disable", *words)
        self.assertEqual((code, json.loads(out)), (0, "OK"), err)
        yield until(lambda: self.states()["bob"] == "NOT_REGISTERED_STATE", "bob un-registered")
        self.assertEqual(self.table_state("bob"), 1)
        out, err, code = yield self.opensips_cli("uac_registrant:enable", *words)
        self.assertEqual((code, json.loads(out)), (0, "OK"), err)
        yield until(lambda: self.states()["bob"] == "REGISTERED_STATE", "bob registered again")
        self.assertEqual(self.table_state("bob"), 0)

    @defer.inlineCallbacks
    def test_cli_errors(self) -> Any:
        """An unknown record: OpenSIPS's 404 on stderr, exit 255; a command not in which is refused by the client itself."""
        words = [f"{name}={value}" for name, value in self.key("nobody").items()]
        out, err, code = yield self.opensips_cli("reg_enable", *words)
        self.assertEqual(code, 255)
        self.assertIn("404: No such registrant", err)
        out, err, code = yield self.opensips_cli("reg_frobnicate")
        self.assertEqual(code, 255)
        self.assertIn("no command 'reg_frobnicate' in module 'mi'", err)
        self.assertEqual(self.states(), {"alice": "REGISTERED_STATE", "bob": "REGISTERED_STATE"})

    @defer.inlineCallbacks
    def test_opensips_mi_reg_list(self) -> Any:
        """opensips-mi -t http ... reg_list: every record; -j with named parameters: one record."""
        out, err, code = yield self.opensips_mi("reg_list")
        self.assertEqual(code, 0, out + err)
        self.assertEqual(sorted(r["AOR"] for r in json.loads(out)["Records"]), ["sip:alice@test.invalid", "sip:bob@test.invalid"])
        out, err, code = yield self.opensips_mi("-j", json.dumps(self.key("alice")), "uac_registrant:list")
        self.assertEqual(code, 0, out + err)
        record = json.loads(out)["Registrant"]
        self.assertEqual((record["AOR"], record["binding"], record["state"]), ("sip:alice@test.invalid", "sip:alice@127.0.0.1:5060", "REGISTERED_STATE"))

    @defer.inlineCallbacks
    def test_opensips_mi_positional_and_errors(self) -> Any:
        """opensips-mi's positional arguments take the recipe's order; errors are printed with OpenSIPS's codes, exit 1."""
        key = self.key("alice")
        out, err, code = yield self.opensips_mi("reg_force_register", key["aor"], key["contact"], key["registrar"])
        self.assertEqual((code, json.loads(out)), (0, "OK"), out + err)
        out, err, code = yield self.opensips_mi("reg_enable", "sip:nobody@test.invalid", key["contact"], key["registrar"])
        self.assertEqual(code, 1)
        self.assertIn("404: No such registrant", out)
        out, err, code = yield self.opensips_mi("reg_enable", f"aor={key['aor']}")  # not split: one positional value
        self.assertEqual(code, 1)
        self.assertIn("-32602: Invalid params (Too few or too many parameters)", out)

    @defer.inlineCallbacks
    def test_cli_writes_off(self) -> Any:
        """MI writes off (the default): opensips-cli prints the 403 saying how to turn them on, exits 255, nothing changes; reg_list still works."""
        _, port = self.listen(writes=False)
        config = self.cli_config(port)
        words = [f"{name}={value}" for name, value in self.key("bob").items()]
        out, err, code = yield self.opensips_cli("reg_disable", *words, config=config)
        self.assertEqual(code, 255, out + err)
        self.assertIn("403: Forbidden (MI writes are off: start the daemon with --mi-http-writes)", err)
        self.assertEqual(self.table_state("bob"), 0)
        self.assertEqual(self.states(), {"alice": "REGISTERED_STATE", "bob": "REGISTERED_STATE"})
        out, err, code = yield self.opensips_cli("uac_registrant:list", config=config)
        self.assertEqual(code, 0, err)
        self.assertEqual(len(json.loads(out)["Records"]), 2)
