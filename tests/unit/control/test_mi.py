"""
Tests for the OpenSIPS-compatible MI over HTTP: raw HTTP requests to the
real site on the real service (fake clock and network, real SQLite table,
real test registrar).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.simulation import REGISTRAR, Simulation
from tests.unit.control.test_control import ControlTestBase
from tests.unit.control.test_http import replies
from uacregistrant.control import mi
from uacregistrant.control.commands import Commands
from uacregistrant.control.mi import MAX_BODY, MAX_CONNECTIONS, MAX_NOTIFICATIONS, REQUEST_TIMEOUT, UPSERT_PARAMS, MiResource, mi_site
from uacregistrant.store.sqlite import SqliteStore
from uacregistrant.testing.registrar import UserPolicy

REG = f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}"
ALICE = {"aor": "sip:alice@test.invalid", "contact": "sip:alice@127.0.0.1:5060", "registrar": REG}
CAROL2 = {"aor": "sip:carol@test.invalid", "contact": "sip:carol@127.0.0.1:5070", "registrar": REG}
NOBODY = {"aor": "sip:nobody@test.invalid", "contact": "sip:nobody@127.0.0.1:5060", "registrar": REG}


class Response:
    """An HTTP response as read off the wire (a chunked body joined)."""

    def __init__(self, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if self.headers.get("transfer-encoding") == "chunked":
            body = _unchunk(body)
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2 :]


class MiTestBase(ControlTestBase):
    """The service of the console tests, with the MI site on the same fake clock (writes on unless C{writes} says not)."""

    writes = True

    def setUp(self) -> None:
        super().setUp()
        self.site = mi_site(self.service.commands, self.service.admin, self.sim.reactor, writes=self.writes)

    def connect(self) -> tuple[Any, StringTransport]:
        transport = StringTransport()
        channel = self.site.buildProtocol(None)
        channel.makeConnection(transport)
        return channel, transport

    def http(self, raw: bytes, run: float = 0.0) -> Response:
        channel, transport = self.connect()
        channel.dataReceived(raw)
        self.turns()
        if run:
            self.sim.run(run)
        return Response(transport.value())

    def turns(self) -> None:
        for _ in range(50):
            self.sim.reactor.advance(0)

    def post(self, body: bytes | str, path: str = "/mi", run: float = 0.0) -> Response:
        data = body.encode() if isinstance(body, str) else body
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        return self.http(head.encode() + data, run)

    def rpc(self, method: Any, params: Any = None, id: Any = "1", run: float = 0.0) -> dict[str, Any]:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
        if params is not None:
            request["params"] = params
        response = self.post(json.dumps(request), run=run)
        self.assertEqual((response.status, response.headers["content-type"]), (200, "application/json"))
        answer: dict[str, Any] = response.json
        return answer

    def result(self, method: str, params: Any = None, run: float = 0.0) -> Any:
        answer = self.rpc(method, params, run=run)
        self.assertNotIn("error", answer)
        return answer["result"]

    def error(self, method: Any, params: Any = None, run: float = 0.0) -> dict[str, Any]:
        answer = self.rpc(method, params, run=run)
        self.assertNotIn("result", answer)
        error: dict[str, Any] = answer["error"]
        return error

    def console_records(self) -> list[dict[str, Any]]:
        lines = self.ask("reg_list json")
        records: list[dict[str, Any]] = json.loads(lines[1])["Records"]
        return records


class JsonRpcTests(MiTestBase):
    """The JSON-RPC envelope and HTTP as OpenSIPS's mi_http serves them."""

    def test_which_lists_every_name(self) -> None:
        """which: every 3.x and 4.0 name clients may type, which itself; {} [] and no params alike."""
        names = self.result("which", {})
        expected = {"which", "core:which"} | {f"reg_{n}" for n in ("list", "reload", "enable", "disable", "force_register", "upsert", "delete")}
        expected |= {f"uac_registrant:{n}" for n in ("list", "reload", "enable", "disable", "force_register", "upsert", "delete")}
        self.assertEqual(set(names), expected)
        self.assertEqual(len(names), len(expected))
        self.assertEqual(self.result("which", []), names)
        self.assertEqual(self.result("which"), names)
        self.assertEqual(self.result("core:which", {}), names)

    def test_which_command_gives_recipes(self) -> None:
        """which {"command": X}: the parameter names of each recipe; unknown X is 404; "module:" lists its commands."""
        self.assertEqual(self.result("which", {"command": "reg_list"}), [[], ["aor", "contact", "registrar"]])
        self.assertEqual(self.result("which", ["uac_registrant:enable"]), [["aor", "contact", "registrar"]])
        self.assertEqual(self.result("which", {"command": "reg_upsert"}), [list(UPSERT_PARAMS)])
        self.assertEqual(self.result("which", {"command": "which"}), [[], ["command"]])
        self.assertEqual(self.error("which", {"command": "ps"}), {"code": 404, "message": "unknown MI command"})
        module = self.result("which", {"command": "uac_registrant:"})
        self.assertEqual(len(module), 7)
        self.assertTrue(all(name.startswith("uac_registrant:") for name in module))

    def test_id_echoed_unchanged(self) -> None:
        """A string id stays a string, a number a number, null null."""
        for request_id in ("17", 17, 2**40, 1.5, None, ""):
            self.assertEqual(self.rpc("which", {}, id=request_id)["id"], request_id)
        self.assertIsInstance(self.rpc("which", {}, id="17")["id"], str)

    def test_not_post_is_405(self) -> None:
        """GET, HEAD, PUT: 405 with Allow: POST."""
        for method in ("GET", "PUT", "DELETE"):
            response = self.http(f"{method} /mi HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            self.assertEqual((response.status, response.headers["allow"]), (405, "POST"), method)

    def test_empty_body_is_400(self) -> None:
        """An empty body is 400 (HTTP), not a JSON-RPC answer."""
        response = self.post(b"")
        self.assertEqual(response.status, 400)
        self.assertIn(b"empty body", response.body)

    def test_other_paths_are_404(self) -> None:
        """Only /mi answers; /, /other and /mi/x are 404."""
        body = json.dumps({"jsonrpc": "2.0", "method": "which", "id": 1})
        for path in ("/", "/other", "/mi/x", "/mi/"):
            self.assertEqual(self.post(body, path=path).status, 404, path)
        self.assertEqual(self.post(body).status, 200)

    def test_root_configurable(self) -> None:
        """mi_root names the path."""
        self.site = mi_site(self.service.commands, self.service.admin, self.sim.reactor, root="opensips-mi")
        body = json.dumps({"jsonrpc": "2.0", "method": "which", "id": 1})
        self.assertEqual(self.post(body, path="/mi").status, 404)
        self.assertEqual(self.post(body, path="/opensips-mi").status, 200)

    def test_parse_errors(self) -> None:
        """Not JSON, bad UTF-8, NaN, numbers out of range, nesting too deep: -32700 with a null id."""
        for body in (b"{", b"hello", b'{"jsonrpc":"2.0","method":"which","id":"\xff"}', b'{"id":NaN}', b'{"id":1e999}', b"[" * 60000):
            response = self.post(body)
            self.assertEqual(response.status, 200)
            self.assertEqual(response.json, {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}, body[:20])

    def test_invalid_requests(self) -> None:
        """A batch, a wrong or missing jsonrpc, a method or params or id of the wrong type: -32600."""
        cases = [
            ([{"jsonrpc": "2.0", "method": "which", "id": 1}], None),
            ({"method": "which", "id": 3}, 3),
            ({"jsonrpc": "1.0", "method": "which", "id": "a"}, "a"),
            ({"jsonrpc": "2.0", "method": 5, "id": 4}, 4),
            ({"jsonrpc": "2.0", "id": 4}, 4),
            ({"jsonrpc": "2.0", "method": "which", "params": "x", "id": 5}, 5),
            ({"jsonrpc": "2.0", "method": "which", "params": None, "id": 5}, 5),
            ({"jsonrpc": "2.0", "method": "which", "id": {"a": 1}}, None),
            ({"jsonrpc": "2.0", "method": "which", "id": True}, None),
            ("which", None),
        ]
        for request, echoed in cases:
            answer = self.post(json.dumps(request)).json
            self.assertEqual((answer["error"]["code"], answer["error"]["message"], answer["id"]), (-32600, "Invalid Request", echoed), request)

    def test_unknown_method(self) -> None:
        """An unknown method is -32601; OpenSIPS 4.0's bare local names are not ours to guess."""
        for method in ("ps", "list", "REG_LIST", "uac_registrant:frobnicate"):
            self.assertEqual(self.error(method, {}), {"code": -32601, "message": "Method not found"}, method)

    def test_notification_runs_and_answers_202(self) -> None:
        """No id: the command runs, the answer is 202 with no body (errors too)."""
        response = self.post(json.dumps({"jsonrpc": "2.0", "method": "reg_disable", "params": CAROL2}), run=1)
        self.assertEqual((response.status, response.body), (202, b""))
        self.assertEqual({r["binding"]: r["enabled"] for r in self.console_records()}["sip:carol@127.0.0.1:5070"], "no")
        for body in ({"jsonrpc": "2.0", "method": "reg_enable", "params": NOBODY}, {"jsonrpc": "2.0", "method": "nonsense"}):
            response = self.post(json.dumps(body))
            self.assertEqual((response.status, response.body), (202, b""))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_body_bound_declared(self) -> None:
        """A Content-Length over MAX_BODY: 413 at once, the connection closed, the body never awaited."""
        channel, transport = self.connect()
        channel.dataReceived(f"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode() + b"{" * 1000)
        response = Response(transport.value())
        self.assertEqual(response.status, 413)
        self.assertEqual(response.json["error"]["data"], f"request body over {MAX_BODY} bytes")
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b" " * (MAX_BODY + 1))  # what was already on its way: ignored
        self.turns()
        self.assertEqual(Response(transport.value()).status, 413)

    def test_body_bound_no_100_continue(self) -> None:
        """Expect: 100-continue with a body over MAX_BODY: the 413 only, no 100 Continue after it on the closing connection."""
        channel, transport = self.connect()
        channel.dataReceived(f"POST /mi HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertEqual(Response(transport.value()).json["error"]["code"], -32600)
        self.assertTrue(transport.disconnecting)

    def test_100_continue_within_the_bound(self) -> None:
        """Expect: 100-continue with a body within MAX_BODY: 100, then the answer once the body came."""
        body = json.dumps({"jsonrpc": "2.0", "method": "which", "id": 2}).encode()
        channel, transport = self.connect()
        channel.dataReceived(b"POST /mi HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        transport.clear()
        channel.dataReceived(body)
        self.assertEqual(Response(transport.value()).json["id"], 2)

    def test_body_bound_chunked(self) -> None:
        """A chunked body growing past MAX_BODY: 413 once it does, nothing kept beyond the bound."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /mi HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 4096
        for _ in range(MAX_BODY // len(chunk)):
            channel.dataReceived(b"1000\r\n" + chunk + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"1\r\n \r\n")
        self.assertEqual(Response(transport.value()).status, 413)
        self.assertTrue(transport.disconnecting)

    def test_body_at_the_bound_is_answered(self) -> None:
        """A request of exactly MAX_BODY bytes is read and answered."""
        request = json.dumps({"jsonrpc": "2.0", "method": "which", "id": 9})
        body = request + " " * (MAX_BODY - len(request))
        answer = self.post(body).json
        self.assertEqual(answer["id"], 9)
        self.assertIn("reg_list", answer["result"])

    def test_site_shows_no_tracebacks(self) -> None:
        """An unexpected exception in a command is a JSON-RPC error (and in the log), never a traceback."""
        self.assertFalse(self.site.displayTracebacks)

        def broken() -> list[Any]:
            raise RuntimeError("boom")

        self.patch(self.service.commands, "listed", broken)
        error = self.error("reg_list", {})
        self.assertEqual((error["code"], error["message"]), (500, "Internal error"))
        self.assertNotIn("boom", json.dumps(error))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failure_outside_a_command_is_a_server_error(self) -> None:
        """An exception while reading the request itself: -32000 over HTTP 200 (logged)."""

        def broken(document: Any) -> Any:
            raise KeyError("boom")

        self.patch(mi, "parse_call", broken)
        response = self.post(json.dumps({"jsonrpc": "2.0", "method": "which", "id": 1}))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json["error"]["code"], -32000)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_connections_bounded(self) -> None:
        """Past MAX_CONNECTIONS at once a connection gets 503 and is closed; one closing frees a place."""
        kept = [self.connect() for _ in range(MAX_CONNECTIONS)]
        refused = StringTransport()
        self.site.buildProtocol(None).makeConnection(refused)
        self.assertTrue(refused.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(refused.disconnecting)
        kept[0][0].connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.post(json.dumps({"jsonrpc": "2.0", "method": "which", "id": 1})).status, 200)

    def test_idle_connection_closed(self) -> None:
        """A connection that sends nothing for REQUEST_TIMEOUT is closed."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /mi HTTP/1.1\r\n")
        self.sim.reactor.advance(REQUEST_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.sim.reactor.advance(2)
        self.assertTrue(transport.disconnecting)


class MethodTests(MiTestBase):
    """uac_registrant's commands, by OpenSIPS's names and recipes."""

    def test_reg_list_has_the_console_fields(self) -> None:
        """reg_list and uac_registrant:list: {"Records": [...]}, the same records as the console's reg_list json; no password."""
        result = self.result("reg_list", {})
        self.assertEqual(result, {"Records": self.console_records()})
        self.assertEqual(len(result["Records"]), 4)
        self.assertEqual(self.result("uac_registrant:list", []), result)
        self.assertNotIn("TopSecret", json.dumps(result))
        alice = [r for r in result["Records"] if r["AOR"] == ALICE["aor"]][0]
        self.assertEqual((alice["state"], alice["expires"], alice["enabled"], alice["binding"]), ("REGISTERED_STATE", 3600, "yes", ALICE["contact"]))

    def test_reg_list_one_record(self) -> None:
        """Named or positional aor, contact, registrar: {"Registrant": rec}; an unknown one is 404 No such registrant."""
        by_name = self.result("reg_list", ALICE)
        self.assertEqual(by_name["Registrant"]["binding"], ALICE["contact"])
        self.assertEqual(self.result("uac_registrant:list", [ALICE["aor"], ALICE["contact"], ALICE["registrar"]]), by_name)
        error = self.error("reg_list", NOBODY)
        self.assertEqual((error["code"], error["message"]), (404, "No such registrant"))
        # The contact tells two bindings of one AOR apart.
        self.assertEqual(self.result("reg_list", CAROL2)["Registrant"]["binding"], CAROL2["contact"])

    def test_recipe_matching(self) -> None:
        """Too few or many, names that do not match, bad types: -32602 with OpenSIPS's texts."""
        invalid = {"code": -32602, "message": "Invalid params"}
        self.assertEqual(self.error("reg_list", {"aor": ALICE["aor"]}), {**invalid, "data": "Too few or too many parameters"})
        self.assertEqual(self.error("reg_enable", {}), {**invalid, "data": "Too few or too many parameters"})
        self.assertEqual(self.error("reg_enable", [1, 2, 3, 4]), {**invalid, "data": "Too few or too many parameters"})
        self.assertEqual(self.error("reg_enable", {**ALICE, "extra": "x"}), {**invalid, "data": "Too few or too many parameters"})
        wrong = {"aor": ALICE["aor"], "binding": ALICE["contact"], "registrar": REG}
        self.assertEqual(self.error("reg_enable", wrong), {**invalid, "data": "Named parameters do not match"})
        for bad in (None, True, [1], {"a": 1}):
            self.assertEqual(self.error("reg_enable", {**ALICE, "aor": bad}), {**invalid, "data": "Bad type for parameter 'aor'"}, bad)

    def test_numbers_accepted_as_strings(self) -> None:
        """A number where a string is wanted is taken as its text (so this is an unknown record, not a type error)."""
        error = self.error("reg_list", {**ALICE, "aor": 12345})
        self.assertEqual((error["code"], error["data"]), (404, f"no record 12345 {ALICE['contact']} {REG}"))

    def test_enable_disable(self) -> None:
        """reg_disable / uac_registrant:enable: "OK", one row written, the record un-registered and registered again."""
        self.assertEqual(self.result("reg_disable", CAROL2, run=1), "OK")
        self.assertEqual(self.table("carol"), [("sip:carol@127.0.0.1:5060", 0, 3600), ("sip:carol@127.0.0.1:5070", 1, 3600)])
        self.assertNotIn((CAROL2["aor"], CAROL2["contact"]), self.sim.registrar.bindings)
        self.assertEqual(self.result("uac_registrant:disable", CAROL2), "OK")  # already: unchanged, still OK
        self.assertEqual(self.result("uac_registrant:enable", list(CAROL2.values()), run=1), "OK")
        self.assertEqual(self.table("carol")[1][1], 0)
        self.assertIn((CAROL2["aor"], CAROL2["contact"]), self.sim.registrar.bindings)
        for method in ("reg_enable", "reg_disable", "uac_registrant:force_register", "reg_delete"):
            error = self.error(method, NOBODY)
            self.assertEqual((error["code"], error["message"]), (404, "No such registrant"), method)

    def test_force_register(self) -> None:
        """reg_force_register sends now; a disabled record is refused as on the console (409)."""
        before = len(self.sim.registrar.received)
        self.assertEqual(self.result("uac_registrant:force_register", ALICE, run=0.5), "OK")
        self.assertEqual(len(self.sim.registrar.received), before + 1)
        bob = {"aor": "sip:bob@test.invalid", "contact": "sip:bob@127.0.0.1:5060", "registrar": REG}
        error = self.error("reg_force_register", bob)
        self.assertEqual((error["code"], error["message"]), (409, "Registrant disabled"))

    def test_delete(self) -> None:
        """reg_delete: "OK", un-registered and forgotten, the row kept disabled."""
        self.assertEqual(self.result("uac_registrant:delete", ALICE, run=1), "OK")
        self.assertEqual(self.sim.registrar.received[-1].expires, 0)
        self.assertEqual(self.error("reg_list", ALICE)["code"], 404)
        self.assertEqual(self.table("alice")[0][1], 1)

    def test_reload(self) -> None:
        """reg_reload: all, or one row; a row not in the table is 404 No such registrant in database."""
        db = sqlite3.connect(self.path)
        db.execute("UPDATE registrant SET expiry = 1200 WHERE username = 'alice'")
        db.commit()
        self.assertEqual(self.result("reg_reload", {}, run=1), "OK")
        self.assertEqual(self.result("reg_list", ALICE)["Registrant"]["expires"], 1200)
        db.execute("UPDATE registrant SET expiry = 1500 WHERE username = 'alice'")
        db.commit()
        self.assertEqual(self.result("uac_registrant:reload", ALICE, run=1), "OK")
        self.assertEqual(self.result("reg_list", ALICE)["Registrant"]["expires"], 1500)
        error = self.error("reg_reload", NOBODY)
        self.assertEqual((error["code"], error["message"]), (404, "No such registrant in database"))


def upsert_params(**changes: Any) -> dict[str, Any]:
    """Every parameter of uac_registrant:upsert for dan, as opensips-cli sends them (strings)."""
    params: dict[str, Any] = {
        "aor": "sip:dan@test.invalid",
        "contact": "sip:dan@127.0.0.1:5060",
        "registrar": REG,
        "proxy": "",
        "third_party_registrant": "",
        "username": "dan",
        "password": "TopSecret!",
        "binding_params": "",
        "expiry": "600",
        "forced_socket": "",
        "cluster_shtag": "",
        "state": "0",
    }
    params.update(changes)
    return params


class UpsertTests(MiTestBase):
    """uac_registrant:upsert through the console's admin, into the real SQLite table."""

    def test_upsert_adds_and_replaces(self) -> None:
        """Named, numeric strings: added, written, registered; again with numbers: changed; positional works too."""
        self.assertEqual(self.result("uac_registrant:upsert", upsert_params(), run=1), "OK")
        self.assertEqual(self.table("dan"), [("sip:dan@127.0.0.1:5060", 0, 600)])
        record = self.result("reg_list", {k: upsert_params()[k] for k in ("aor", "contact", "registrar")})["Registrant"]
        self.assertEqual((record["state"], record["expires"]), ("REGISTERED_STATE", 600))
        self.assertEqual(self.result("reg_upsert", upsert_params(expiry=900, state=0), run=1), "OK")
        self.assertEqual(self.table("dan"), [("sip:dan@127.0.0.1:5060", 0, 900)])
        self.assertEqual(self.sim.registrar.received[-1].expires, 900)
        positional = [upsert_params(expiry="1200", state="1")[name] for name in UPSERT_PARAMS]
        self.assertEqual(self.result("reg_upsert", positional, run=1), "OK")
        self.assertEqual(self.table("dan"), [("sip:dan@127.0.0.1:5060", 1, 1200)])
        self.assertNotIn("TopSecret", json.dumps(self.result("reg_list", {})))

    def test_upsert_bad_values(self) -> None:
        """Bad integers, missing keys, a registrar with a user part, CR/LF: -32602 saying why, nothing written."""
        cases = [
            (upsert_params(expiry="ten"), "Bad type for parameter 'expiry'"),
            (upsert_params(expiry=1.5), "Bad type for parameter 'expiry'"),
            (upsert_params(state=True), "Bad type for parameter 'state'"),
            (upsert_params(expiry="0"), "expiry"),
            (upsert_params(aor=""), "missing aor"),
            (upsert_params(registrar="sip:u@127.0.0.1"), "user part"),
            (upsert_params(contact="sip:dan@127.0.0.1\r\nX-Evil: 1"), ""),
        ]
        for params, word in cases:
            error = self.error("uac_registrant:upsert", params, run=0.1)
            self.assertEqual((error["code"], error["message"]), (-32602, "Invalid params"), params)
            self.assertIn(word, error["data"], params)
        self.assertEqual(self.table("dan"), [])
        params = upsert_params()
        del params["cluster_shtag"]
        self.assertEqual(self.error("reg_upsert", params)["data"], "Too few or too many parameters")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_upsert_database_unavailable(self) -> None:
        """The table cannot be written: 503 Failed Upsert, saying why."""
        self.sim.db.execute("DROP TABLE registrant")
        self.sim.db.commit()
        error = self.error("reg_upsert", upsert_params(), run=0.1)
        self.assertEqual((error["code"], error["message"]), (503, "Failed Upsert"))
        self.assertIn("database", error["data"])


class ClusterTests(MiTestBase):
    """A cluster node lists and acts on the records it holds, as its console does."""

    def setUp(self) -> None:
        super().setUp()
        service = self.service
        commands = Commands(
            service.registry, service.counters, service.admin, service.events, self.sim.reactor,
            holds=lambda r: r.account.aor == ALICE["aor"],
        )
        self.site = mi_site(commands, service.admin, self.sim.reactor, writes=True)

    def test_lists_held_records_only(self) -> None:
        """reg_list: only the records this node holds; another's record is 404 Held by another node."""
        self.assertEqual([r["AOR"] for r in self.result("reg_list", {})["Records"]], [ALICE["aor"]])
        self.assertEqual(self.result("reg_list", ALICE)["Registrant"]["AOR"], ALICE["aor"])
        error = self.error("reg_list", CAROL2)
        self.assertEqual((error["code"], error["message"]), (404, "Held by another node"))
        self.assertEqual(self.error("reg_force_register", CAROL2)["code"], 409)


#: What a write answers while writes are off.
FORBIDDEN = {"code": 403, "message": "Forbidden", "data": "MI writes are off: start the daemon with --mi-http-writes"}
#: Every command that writes, by its 3.x and 4.0 names.
WRITES = [name for n in ("reload", "enable", "disable", "force_register", "upsert", "delete") for name in (f"reg_{n}", f"uac_registrant:{n}")]


class WritesOffTests(MiTestBase):
    """mi_site's default: which and reg_list run; every other command is refused and does nothing."""

    writes = False

    def test_reads_run(self) -> None:
        """which still names every command (the clients check a name is one before sending it); reg_list answers."""
        names = self.result("which")
        self.assertEqual(len(names), 16)
        self.assertTrue(set(WRITES) <= set(names))
        self.assertEqual(self.result("which", {"command": "reg_upsert"}), [list(UPSERT_PARAMS)])
        self.assertEqual(len(self.result("reg_list", {})["Records"]), 4)
        self.assertEqual(self.result("uac_registrant:list", ALICE)["Registrant"]["AOR"], ALICE["aor"])

    def test_writes_refused(self) -> None:
        """Every write, by both names, whatever its parameters: 403 Forbidden over HTTP 200 saying how to turn writes on; nothing done."""
        db = sqlite3.connect(self.path)
        db.execute("UPDATE registrant SET expiry = 1200 WHERE username = 'alice'")  # what a reg_reload would pick up
        db.commit()
        tables = {user: self.table(user) for user in ("alice", "bob", "carol", "dan")}
        records = self.console_records()
        sent = len(self.sim.registrar.received)
        for method in WRITES:
            params = upsert_params() if method.endswith("upsert") else ALICE
            self.assertEqual(self.error(method, params, run=0.5), FORBIDDEN, method)
            self.assertEqual(self.error(method, {"nonsense": 1}), FORBIDDEN, method)
        self.assertEqual({user: self.table(user) for user in tables}, tables)
        self.assertEqual(self.console_records(), records)
        self.assertEqual(len(self.sim.registrar.received), sent)
        self.assertEqual(self.error("reg_frobnicate", {})["code"], -32601)

    def test_write_notification_does_nothing(self) -> None:
        """A write sent as a notification: 202 as ever, and nothing done."""
        response = self.post(json.dumps({"jsonrpc": "2.0", "method": "reg_disable", "params": CAROL2}), run=1)
        self.assertEqual((response.status, response.body), (202, b""))
        self.assertEqual(self.table("carol")[1][1], 0)
        self.assertEqual(self.flushLoggedErrors(), [])


def notification(method: str, params: Any) -> bytes:
    """A JSON-RPC notification as an HTTP request."""
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode()
    return b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body


DAN = {"aor": "sip:dan@test.invalid", "contact": "sip:dan@127.0.0.1:5060", "registrar": REG}


class NotificationTests(MiTestBase):
    """
    Notifications paced per connection and bounded per site, the table's
    queries finishing on a later reactor turn (as they do from the
    store's thread), so that a reload is seen running.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        users = {name: UserPolicy(password="TopSecret!") for name in ("alice", "carol", "dan")}
        self.sim = Simulation(self.path, users, hash_size=0, timer_interval=10)
        clock = self.sim.reactor
        self.sim.store = SqliteStore(self.path, self.sim.settings.table, clock, run_in_thread=lambda f, *a: task.deferLater(clock, 0, f, *a))
        self.sim.add("alice", password="TopSecret!")
        self.sim.add("carol", password="TopSecret!", binding_URI="sip:carol@127.0.0.1:5070")
        self.service = self.sim.start()
        self.addCleanup(self.service.stopService)
        self.sim.run(2)
        self.site = mi_site(self.service.commands, self.service.admin, clock, writes=True)
        self.mi: MiResource = self.site.resource.children[b"mi"]
        self.sim.add("dan", password="TopSecret!")  # what a reload picks up

    def has_dan(self) -> bool:
        return "error" not in self.rpc("reg_list", DAN)

    def test_next_request_read_when_done(self) -> None:
        """The 202 goes out at once, but the connection's next request is read only once the notification has run."""
        channel, transport = self.connect()
        ask = json.dumps({"jsonrpc": "2.0", "method": "reg_list", "params": DAN, "id": 7}).encode()
        channel.dataReceived(notification("reg_reload", {}) + b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(ask) + ask)
        self.assertEqual([r.status for r in replies(transport.value())], [202])
        self.assertEqual(self.mi.notifying, 1)
        self.sim.run(1)
        first, second = replies(transport.value())
        self.assertEqual((first.status, first.body, second.status), (202, b"", 200))
        self.assertEqual(json.loads(second.body)["result"]["Registrant"]["AOR"], DAN["aor"])  # read after the reload
        self.assertEqual(self.mi.notifying, 0)

    def test_burst_waits_unread(self) -> None:
        """A burst of notifications on one connection waits while the first runs (past 16 KiB, the connection is not read), then runs."""
        channel, transport = self.connect()
        channel.dataReceived(notification("reg_reload", {}))
        channel.dataReceived(notification("reg_reload", {}) * 199)
        self.assertEqual([r.status for r in replies(transport.value())], [202])
        self.assertEqual((transport.producerState, self.mi.notifying), ("paused", 1))
        self.sim.run(5)
        self.assertEqual([r.status for r in replies(transport.value())], [202] * 200)
        self.assertEqual((transport.producerState, self.mi.notifying), ("producing", 0))

    def test_notifications_bounded(self) -> None:
        """Past MAX_NOTIFICATIONS running on the site, a notification is answered 503 and not run; once they are done, it is taken again."""
        for _ in range(MAX_NOTIFICATIONS):
            channel, transport = self.connect()
            channel.dataReceived(notification("reg_reload", {}))
            self.assertEqual([r.status for r in replies(transport.value())], [202])
        self.assertEqual(self.mi.notifying, MAX_NOTIFICATIONS)
        channel, transport = self.connect()
        channel.dataReceived(notification("reg_disable", CAROL2))
        (busy,) = replies(transport.value())
        self.assertEqual(busy.status, 503)
        self.assertIn(b"notifications are running", busy.body)
        self.sim.run(1)
        self.assertEqual((self.mi.notifying, self.table("carol")[0][1]), (0, 0))
        transport.clear()
        channel.dataReceived(notification("reg_disable", CAROL2))
        self.sim.run(1)
        self.assertEqual([r.status for r in replies(transport.value())], [202])
        self.assertEqual(self.table("carol")[0][1], 1)

    def test_client_gone_meanwhile(self) -> None:
        """The client disconnects while its notification runs: it still runs to the end, is counted out, nothing logged."""
        channel, transport = self.connect()
        channel.dataReceived(notification("reg_reload", {}))
        channel.connectionLost(Failure(ConnectionError("gone")))
        self.sim.run(1)
        self.assertEqual((self.mi.notifying, self.site.connections), (0, 0))
        self.assertTrue(self.has_dan())
        self.assertEqual(self.flushLoggedErrors(), [])


def turn(clock: Any) -> None:
    """One reactor turn: run only the calls due when it starts (L{Clock.advance} would also run those they schedule)."""
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


class StreamingTests(SynchronousTestCase):
    """A large reg_list goes out a slice per reactor turn, as fast as the client reads."""

    def setUp(self) -> None:
        users = {f"u{i}": UserPolicy() for i in range(2000)}
        self.sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=10)
        self.sim.db.executemany(
            "INSERT INTO registrant (registrar, aor, binding_URI, expiry) VALUES (?, ?, ?, 600)",
            [(REG, f"sip:{u}@test.invalid", f"sip:{u}@127.0.0.1:5060") for u in users],
        )
        self.sim.db.commit()
        self.service = self.sim.start()
        self.addCleanup(self.service.stopService)
        self.sim.reactor.advance(0)
        self.site = mi_site(self.service.commands, self.service.admin, self.sim.reactor)
        self.transport = StringTransport()
        self.channel = self.site.buildProtocol(None)
        self.channel.makeConnection(self.transport)
        body = json.dumps({"jsonrpc": "2.0", "method": "reg_list", "params": {}, "id": "42"}).encode()
        self.patch(mi, "SLICE", 16 * 1024)
        self.channel.dataReceived(b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def test_written_in_slices(self) -> None:
        """One slice per reactor turn; the whole is one JSON-RPC answer with every record and the id."""
        turn(self.sim.reactor)
        first = len(self.transport.value())
        self.assertLess(first, 20 * 1024)
        turn(self.sim.reactor)
        self.assertGreater(len(self.transport.value()), first + 16 * 1024)
        self.assertLess(len(self.transport.value()), first + 40 * 1024)
        self.sim.reactor.advance(0)
        answer = Response(self.transport.value()).json
        self.assertEqual((answer["jsonrpc"], answer["id"], len(answer["result"]["Records"])), ("2.0", "42", 2000))

    def test_paused_while_client_does_not_read(self) -> None:
        """While the transport is full nothing more is written; after REQUEST_TIMEOUT unread the client is cut off."""
        aborted: list[bool] = []
        self.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[attr-defined]
        turn(self.sim.reactor)
        self.channel.pauseProducing()  # what the transport does when its buffer is full
        written = len(self.transport.value())
        self.sim.reactor.advance(1)
        self.assertEqual(len(self.transport.value()), written)
        self.channel.resumeProducing()
        turn(self.sim.reactor)
        self.assertGreater(len(self.transport.value()), written)
        self.channel.pauseProducing()
        self.sim.reactor.advance(REQUEST_TIMEOUT + 1)
        self.assertEqual(aborted, [True])

    def test_client_gone(self) -> None:
        """The client disconnects mid-listing: writing stops, nothing is left scheduled for it, nothing logged."""
        turn(self.sim.reactor)
        self.channel.connectionLost(Failure(ConnectionError("gone")))
        written = len(self.transport.value())
        self.sim.reactor.advance(1)
        self.assertEqual(len(self.transport.value()), written)
        self.assertEqual(self.flushLoggedErrors(), [])
