# -*- test-case-name: tests.unit.control.test_mi,tests.integration.test_mi_clients -*-
"""
OpenSIPS's management interface as its C{mi_http} module serves it:
JSON-RPC 2.0 over HTTP C{POST /ROOT}, so that C{opensips-cli -x mi
reg_list} and C{opensips-mi -t http ... reg_list} work unchanged.

The methods are uac_registrant's, under their 3.x names (C{reg_list} ...)
and OpenSIPS 4.0's (C{uac_registrant:list} ...), plus C{which}; each does
what the console's command of the same name does (L{Commands}, L{Admin}).

HTTP as C{mi_http} answers it: 405 for anything but POST, 400 for an
empty body, 202 and no body for a notification, otherwise 200 with a
JSON-RPC answer, errors included (the clients read no body from another
status).  Every request is bounded: the body (L{MAX_BODY}, more is a 413
and the connection closes without reading the rest), headers (Twisted's
limits), idle connections (L{REQUEST_TIMEOUT}), connections at once
(L{MAX_CONNECTIONS}); a large C{reg_list} is written a slice per reactor
turn, as fast as the client reads.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from uacregistrant.control.admin import Admin, AdminError
from uacregistrant.control.commands import Commands, Reply, Result, failure_reply
from uacregistrant.control.formatting import json_records, record_dict
from uacregistrant.core.registrant import Registrant
from uacregistrant.sip.numbers import parse_signed
from uacregistrant.store import StoreError, StoreValueError
from uacregistrant.store.coordinator import CoordinatorError

_log = Logger()

#: Bytes of request body accepted at most (a reg_upsert with every column is far below).
MAX_BODY = 64 * 1024
#: Seconds an HTTP connection may stay idle.
REQUEST_TIMEOUT = 60
#: HTTP connections at once, at most (more are answered 503 and closed).
MAX_CONNECTIONS = 32
#: Bytes of a streamed reg_list written per reactor turn at most.
SLICE = 256 * 1024

# JSON-RPC 2.0's codes, with OpenSIPS's messages.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SERVER_ERROR = -32000

_KEY = ("aor", "contact", "registrar")
#: uac_registrant:upsert's parameters, all required, in OpenSIPS's order.
UPSERT_PARAMS = (
    "aor",
    "contact",
    "registrar",
    "proxy",
    "third_party_registrant",
    "username",
    "password",
    "binding_params",
    "expiry",
    "forced_socket",
    "cluster_shtag",
    "state",
)
#: Parameters that are integers (a JSON number or a numeric string).
_INTEGERS = frozenset({"expiry", "state"})

Params = dict[str, Union[str, int]]


class MiError(Exception):
    """A JSON-RPC error: C{code}, C{message} and, when there is more to say, C{data}."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_json(self) -> dict[str, Any]:
        """The error object of a JSON-RPC answer."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            error["data"] = self.data
        return error


def _invalid_params(data: str) -> MiError:
    return MiError(INVALID_PARAMS, "Invalid params", data)


@dataclass(frozen=True, slots=True)
class Listing:
    """A C{reg_list} result too large to build at once: written a slice at a time."""

    records: list[Registrant]


@dataclass(frozen=True, slots=True)
class MiCommand:
    """
    One MI command: the names clients may call it by, its recipes (the
    parameter names of each accepted call) and what it does.
    """

    names: tuple[str, ...]
    recipes: tuple[tuple[str, ...], ...]
    run: Callable[[Params], Any]


def match_recipe(command: MiCommand, params: dict[str, Any] | list[Any]) -> Params:
    """
    Pick the recipe with as many parameters as were given, as OpenSIPS
    does: named parameters must be exactly its names, positional ones
    take its names in order.  Strings also accept numbers; integers also
    accept numeric strings.

    @raise MiError: C{-32602} saying what does not match.
    """
    candidates = [recipe for recipe in command.recipes if len(recipe) == len(params)]
    if not candidates:
        raise _invalid_params("Too few or too many parameters")
    if isinstance(params, dict):
        recipe = next((r for r in candidates if set(r) == set(params)), None)
        if recipe is None:
            raise _invalid_params("Named parameters do not match")
        values = [params[name] for name in recipe]
    else:
        if len(candidates) > 1:
            raise _invalid_params("Ambiguous call, use named parameters instead")
        recipe = candidates[0]
        values = list(params)
    return {name: _typed(name, value) for name, value in zip(recipe, values)}


def _typed(name: str, value: Any) -> str | int:
    """A parameter's value as its type wants it (a string, or an integer for L{_INTEGERS})."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _invalid_params(f"Bad type for parameter '{name}'")
    if name in _INTEGERS:
        if isinstance(value, int):
            return value
        number = parse_signed(value.strip(), max_digits=12) if isinstance(value, str) else None
        if number is None:
            raise _invalid_params(f"Bad type for parameter '{name}'")
        return number
    return value if isinstance(value, str) else json.dumps(value)


def _failed_reply(reply: Reply) -> MiError:
    """A console refusal as a JSON-RPC error: its code, its reason, its detail as data."""
    return MiError(reply.code, reply.reason, "; ".join(reply.body) or None)


def _ok(result: Result) -> Any:
    """C{"OK"} for a console command that succeeded, else its refusal as an L{MiError}."""

    def check(reply: Reply) -> str:
        if reply.code != 200:
            raise _failed_reply(reply)
        return "OK"

    if isinstance(result, defer.Deferred):
        return result.addCallback(check)
    return check(result)


class MiMethods:
    """
    The MI's commands over the console's: what each name does, with
    which parameters.

    @ivar commands: every L{MiCommand}, by each of its names.
    """

    def __init__(self, commands: Commands, admin: Admin) -> None:
        self._commands = commands
        self._admin = admin
        table = [
            MiCommand(("which", "core:which"), ((), ("command",)), self.which),
            MiCommand(("reg_list", "uac_registrant:list"), ((), _KEY), self.reg_list),
            MiCommand(("reg_reload", "uac_registrant:reload"), ((), _KEY), self.reg_reload),
            MiCommand(("reg_enable", "uac_registrant:enable"), (_KEY,), self._console("reg_enable")),
            MiCommand(("reg_disable", "uac_registrant:disable"), (_KEY,), self._console("reg_disable")),
            MiCommand(("reg_force_register", "uac_registrant:force_register"), (_KEY,), self._console("reg_force_register")),
            MiCommand(("reg_upsert", "uac_registrant:upsert"), (UPSERT_PARAMS,), self.reg_upsert),
            MiCommand(("reg_delete", "uac_registrant:delete"), (_KEY,), self._console("reg_delete")),
        ]
        self.commands: dict[str, MiCommand] = {name: command for command in table for name in command.names}

    def lookup(self, method: str) -> MiCommand:
        """
        The command called C{method}.

        @raise MiError: C{-32601} for an unknown name.
        """
        command = self.commands.get(method)
        if command is None:
            raise MiError(METHOD_NOT_FOUND, "Method not found")
        return command

    def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        """
        Run C{method}: its result (a JSON value, a L{Listing}, or a
        Deferred firing with one), or an L{MiError}.
        """
        command = self.lookup(method)
        return command.run(match_recipe(command, params))

    def which(self, params: Params) -> Any:
        """
        Every name a client may call (opensips-cli checks a command is
        one before sending it), or one command's recipes, or (a name
        ending in C{:}) that module's commands.
        """
        if not params:
            return list(self.commands)
        name = str(params["command"])
        if name.endswith(":") and any(known.startswith(name) for known in self.commands):
            return [known for known in self.commands if known.startswith(name)]
        command = self.commands.get(name)
        if command is None:
            raise MiError(404, "unknown MI command")
        return [list(recipe) for recipe in command.recipes]

    def _find(self, params: Params) -> Registrant:
        """The record named by aor, contact (its binding) and registrar, held by this node."""
        registrant = self._admin.find([str(params["aor"]), str(params["contact"]), str(params["registrar"])])
        if not self._commands.held(registrant):
            raise MiError(404, "Held by another node", f"{registrant.account.aor} is registered by another node of the cluster (see reg_cluster)")
        return registrant

    def reg_list(self, params: Params) -> Any:
        """Every record this node lists, or the one named."""
        if not params:
            return Listing(self._commands.listed())
        return {"Registrant": record_dict(self._find(params))}

    def reg_reload(self, params: Params) -> defer.Deferred[str]:
        """Re-read the whole table, or one row (C{404} when the table has no such row)."""
        args = [str(params[name]) for name in _KEY] if params else []
        return defer.maybeDeferred(self._admin.reload, args).addCallback(lambda _: "OK")

    def _console(self, name: str) -> Callable[[Params], Any]:
        """Run the console's command C{name} on the record named by the parameters."""

        def run(params: Params) -> Any:
            return _ok(self._commands.call(name, [str(params[key]) for key in _KEY]))

        return run

    def reg_upsert(self, params: Params) -> defer.Deferred[str]:
        """
        Add or replace one record, in the table and in memory: C{-32602}
        for a bad value, C{503 "Failed Upsert"} when it cannot be written.
        """
        pairs = [f"{name}={value}" for name, value in params.items()]
        return defer.maybeDeferred(self._admin.upsert, pairs).addCallbacks(lambda _: "OK", _upsert_failed)


def _upsert_failed(failure: Failure) -> Failure:
    """An upsert's failure as OpenSIPS reports it."""
    error: Any = failure.value
    if failure.check(AdminError) and error.code == 400 or failure.check(StoreValueError):
        detail = "; ".join(error.detail) if isinstance(error, AdminError) else str(error)
        return Failure(_invalid_params(detail or str(error)))
    if failure.check(AdminError):
        return Failure(MiError(503, "Failed Upsert", "; ".join([error.reason, *error.detail])))
    if failure.check(StoreError, CoordinatorError):
        return Failure(MiError(503, "Failed Upsert", f"database unavailable: {failure.getErrorMessage()}"))
    return failure


def error_of(failure: Failure) -> MiError:
    """Any failure as a JSON-RPC error (an unexpected one is logged, never shown as a traceback)."""
    if failure.check(MiError):
        error: MiError = failure.value  # type: ignore[assignment]
        return error
    return _failed_reply(failure_reply(failure))


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("number out of range")
    return number


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes) -> Any:
    """
    The JSON document in C{body}.

    @raise MiError: C{-32700} for anything that is not JSON (bad UTF-8,
        NaN, numbers out of range, nesting too deep).
    """
    try:
        return json.loads(body.decode("utf-8"), parse_float=_finite_float, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise MiError(PARSE_ERROR, "Parse error") from None


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


@dataclass(frozen=True, slots=True)
class Call:
    """A valid JSON-RPC request: the method, its parameters, its id, and whether it wants an answer."""

    method: str
    params: dict[str, Any] | list[Any]
    id: Any
    notification: bool


def parse_call(document: Any) -> Call:
    """
    Check a JSON-RPC 2.0 request (no batches); C{params} absent, C{{}}
    or C{[]} is no parameters.

    @raise MiError: C{-32600} (answered with L{request_id}'s id).
    """
    if not isinstance(document, dict):
        raise MiError(INVALID_REQUEST, "Invalid Request", "a JSON-RPC request is one object (no batches)")
    if not _valid_id(document.get("id")):
        raise MiError(INVALID_REQUEST, "Invalid Request", "id must be a string, a number or null")
    if document.get("jsonrpc") != "2.0":
        raise MiError(INVALID_REQUEST, "Invalid Request", 'jsonrpc must be "2.0"')
    method = document.get("method")
    if not isinstance(method, str):
        raise MiError(INVALID_REQUEST, "Invalid Request", "method must be a string")
    params = document.get("params", [])
    if not isinstance(params, (dict, list)):
        raise MiError(INVALID_REQUEST, "Invalid Request", "params must be an object or an array")
    return Call(method, params, document.get("id"), "id" not in document)


def request_id(document: Any) -> Any:
    """The id to answer an invalid request with: its own if usable, else null."""
    if isinstance(document, dict) and _valid_id(document.get("id")):
        return document.get("id")
    return None


def answer(result: Any, request_id: Any) -> bytes:
    """A JSON-RPC success, compact."""
    return json.dumps({"jsonrpc": "2.0", "result": result, "id": request_id}, separators=(",", ":")).encode("ascii")


def error_answer(error: MiError, request_id: Any) -> bytes:
    """A JSON-RPC error, compact."""
    return json.dumps({"jsonrpc": "2.0", "error": error.as_json(), "id": request_id}, separators=(",", ":")).encode("ascii")


class MiResource(Resource):
    """C{POST /ROOT}: one JSON-RPC request per HTTP request (nothing below it)."""

    def __init__(self, methods: MiMethods, clock: IReactorTime) -> None:
        super().__init__()
        self._methods = methods
        self._clock = clock

    def getChild(self, path: bytes, request: Request) -> IResource:
        """Nothing below the MI's path."""
        return _NOT_FOUND

    def render(self, request: Request) -> bytes | int:
        """Answer one request; an unexpected exception is a JSON-RPC error (logged), never a traceback."""
        try:
            return self._render(request)
        except Exception:
            _log.failure("MI request failed")
            return _plain(request, 200, error_answer(MiError(SERVER_ERROR, "Server error", "internal error: see the daemon's log"), None))

    def _render(self, request: Request) -> bytes | int:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return _plain(request, 405, b"405 Method Not Allowed: POST a JSON-RPC 2.0 request\n", b"text/plain; charset=utf-8")
        assert request.content is not None
        body = request.content.read(MAX_BODY + 1)
        if not body:
            return _plain(request, 400, b"400 Bad Request: empty body (POST a JSON-RPC 2.0 request)\n", b"text/plain; charset=utf-8")
        if len(body) > MAX_BODY:
            return _plain(request, 413, _too_large())
        document: Any = None
        try:
            document = parse_body(body)
            call = parse_call(document)
        except MiError as e:
            return _plain(request, 200, error_answer(e, request_id(document)))
        if call.notification:
            self._notify(call)
            return _plain(request, 202, b"", None)
        _Answer(request, call.id, self._clock).run(self._methods, call)
        return NOT_DONE_YET

    def _notify(self, call: Call) -> None:
        """A notification: run it, answer nothing (an unexpected failure is still logged)."""
        d = defer.maybeDeferred(self._methods.call, call.method, call.params)
        d.addErrback(error_of)


class _Answer:
    """Writes one call's answer, once, unless the client has gone."""

    def __init__(self, request: Request, request_id: Any, clock: IReactorTime) -> None:
        self._request = request
        self._id = request_id
        self._clock = clock
        self._gone = False
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, failure: Failure) -> None:
        self._gone = True

    def run(self, methods: MiMethods, call: Call) -> None:
        d = defer.maybeDeferred(methods.call, call.method, call.params)
        d.addCallbacks(self._result, self._failed)
        d.addErrback(lambda f: _log.failure("writing an MI answer failed", f))

    def _result(self, result: Any) -> None:
        if self._gone:
            return
        if isinstance(result, Listing):
            _ListingWriter(self._request, result, self._id, self._clock).start()
            return
        self._send(answer(result, self._id))

    def _failed(self, failure: Failure) -> None:
        error = error_of(failure)
        if not self._gone:
            self._send(error_answer(error, self._id))

    def _send(self, payload: bytes) -> None:
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(payload)).encode("ascii"))
        request.write(payload)
        request.finish()


@implementer(IPushProducer)
class _ListingWriter:
    """
    C{{"jsonrpc":"2.0","result":{"Records":[...]},"id":ID}} written a
    slice per reactor turn, pausing while the client does not read (and
    cutting it off if it reads nothing for L{REQUEST_TIMEOUT}: HTTP's own
    idle timeout is off while a request is answered).
    """

    def __init__(self, request: Request, listing: Listing, request_id: Any, clock: IReactorTime) -> None:
        self._request = request
        self._clock = clock
        self._chunks: Iterator[str] = json_records(listing.records)
        self._end = ',"id":' + json.dumps(request_id) + "}"
        self._paused = False
        self._done = False
        self._next: IDelayedCall | None = None
        self._stall: IDelayedCall | None = None

    def start(self) -> None:
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.notifyFinish().addBoth(self._finished)
        request.registerProducer(self, True)
        request.write(b'{"jsonrpc":"2.0","result":')
        self._schedule()

    def _finished(self, result: object) -> None:
        """Written, or the client has gone: nothing more to write."""
        self.stopProducing()

    def _schedule(self) -> None:
        if self._next is None and not self._paused and not self._done:
            self._next = self._clock.callLater(0, self._slice)

    def _slice(self) -> None:
        self._next = None
        if self._done:
            return
        pieces: list[str] = []
        size = 0
        for chunk in self._chunks:
            pieces.append(chunk)
            size += len(chunk)
            if size >= SLICE:
                self._request.write("".join(pieces).encode("utf-8"))
                self._schedule()
                return
        pieces.append(self._end)
        self._done = True
        request = self._request
        request.write("".join(pieces).encode("utf-8"))
        request.unregisterProducer()
        request.finish()

    def pauseProducing(self) -> None:
        """The client is not reading: stop until it does, or cut it off after L{REQUEST_TIMEOUT}."""
        self._paused = True
        self._cancel()
        if not self._done and self._stall is None:
            self._stall = self._clock.callLater(REQUEST_TIMEOUT, self._stalled)

    def resumeProducing(self) -> None:
        """The client has read: carry on."""
        self._paused = False
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        self._schedule()

    def stopProducing(self) -> None:
        """Written, or the connection is gone."""
        self._done = True
        self._cancel()
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _cancel(self) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _stalled(self) -> None:
        """The client has read nothing for that long: it keeps a connection for nothing."""
        self._stall = None
        self._done = True
        transport = self._request.channel.transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif transport is not None:
            transport.loseConnection()


def _plain(request: Request, code: int, body: bytes, content_type: bytes | None = b"application/json") -> bytes:
    request.setResponseCode(code)
    if content_type is not None:
        request.setHeader(b"content-type", content_type)
    return body


def _too_large() -> bytes:
    return error_answer(MiError(INVALID_REQUEST, "Invalid Request", f"request body over {MAX_BODY} bytes"), None)


class _MiRequest(Request):
    """
    A request whose body is kept in memory up to L{MAX_BODY} bytes; a
    longer one is answered 413 at once and the connection closed, the
    rest never read.
    """

    _refused = False

    def gotLength(self, length: int | None) -> None:
        """Keep the body in memory (never a temporary file); refuse a declared length over the bound."""
        self.content = io.BytesIO()
        if length is not None and length > MAX_BODY:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a chunk, unless the body grows past the bound."""
        if self._refused:
            return
        assert self.content is not None
        if self.content.tell() + len(data) > MAX_BODY:
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        body = _too_large()
        transport = self.channel.transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n\r\n" + body
        )
        transport.loseConnection()

    def process(self) -> None:
        """Answer, unless the body was refused (answered already)."""
        if not self._refused:
            super().process()


class _Busy(Protocol):
    """Says the MI is busy and hangs up (too many connections at once)."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.loseConnection()


class _MiChannel(HTTPChannel):
    """An HTTP connection that its site counts while it lasts."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Count this connection out."""
        super().connectionLost(reason)
        site = getattr(self, "site", None)
        if isinstance(site, MiSite):
            site.connections -= 1


_NOT_FOUND = notFound("No such resource", "The MI answers POST requests at its root path only.")


class _Root(Resource):
    """The site's root: the MI at C{/ROOT}, nothing anywhere else."""

    def __init__(self, root: bytes, mi: IResource) -> None:
        super().__init__()
        self.putChild(root, mi)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return _NOT_FOUND

    def render(self, request: Request) -> bytes:
        page: bytes = _NOT_FOUND.render(request)
        return page


class MiSite(Site):
    """
    The MI's HTTP site: no tracebacks shown, no access log, at most
    C{max_connections} connections, idle ones closed.

    @ivar connections: the connections open now.
    """

    noisy = False
    displayTracebacks = False
    protocol = _MiChannel  # type: ignore[assignment]

    def __init__(self, resource: IResource, clock: IReactorTime, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(resource, requestFactory=_MiRequest, timeout=REQUEST_TIMEOUT, reactor=clock)
        self.max_connections = max_connections
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        """An HTTP channel, or a 503 when too many are open."""
        if self.connections >= self.max_connections:
            return _Busy()
        channel = super().buildProtocol(addr)
        self.connections += 1
        return channel

    def startFactory(self) -> None:
        """No access log (nor its once-a-second clock)."""

    def stopFactory(self) -> None:
        """Nothing to close."""

    def log(self, request: Any) -> None:
        """No access log."""


def mi_site(commands: Commands, admin: Admin, clock: IReactorTime, root: str = "mi") -> MiSite:
    """
    The MI over HTTP at C{POST /root}, over the console's C{commands}
    and C{admin}; listen on it with any TCP endpoint.
    """
    return MiSite(_Root(root.encode("ascii"), MiResource(MiMethods(commands, admin), clock)), clock)
