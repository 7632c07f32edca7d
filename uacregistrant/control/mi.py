# -*- test-case-name: tests.unit.control.test_mi,tests.integration.test_mi_clients -*-
"""
OpenSIPS's management interface as its C{mi_http} module serves it:
JSON-RPC 2.0 (L{uacregistrant.control.jsonrpc}) over HTTP C{POST /ROOT},
so that C{opensips-cli -x mi reg_list} and C{opensips-mi -t http ...
reg_list} work unchanged.

The methods are uac_registrant's, under their 3.x names (C{reg_list} ...)
and OpenSIPS 4.0's (C{uac_registrant:list} ...), plus C{which}; each does
what the console's command of the same name does (L{Commands}, L{Admin}).
Like C{mi_http}, C{POST /ROOT} asks for no credentials and every local
user reaches loopback: only C{which} and C{reg_list} run unless the site
is made with C{writes=True}; the others answer L{FORBIDDEN} (C{which}
still names them, so clients send them and print that error).

HTTP as C{mi_http} answers it: 405 for anything but POST, 400 for an
empty body, 202 and no body for a notification, otherwise 200 with a
JSON-RPC answer, errors included (the clients read no body from another
status).  Every request is bounded (L{uacregistrant.control.http}): the
body (L{MAX_BODY}, more is a 413 and the connection closes without
reading the rest), headers (Twisted's limits), idle connections
(L{REQUEST_TIMEOUT}), connections at once (L{MAX_CONNECTIONS}); a
connection's next request is read once its notification is done, and at
most L{MAX_NOTIFICATIONS} run at once (more are answered 503, not run); a
large C{reg_list} is written a slice per reactor turn, as fast as the
client reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from uacregistrant.control.admin import Admin, AdminError
from uacregistrant.control.commands import Commands, Reply, Result, failure_reply
from uacregistrant.control.formatting import json_records, record_dict
from uacregistrant.control.http import IDLE_TIMEOUT, BoundedRequest, BoundedSite, NotFound, Page, Root, plain, respond, send
from uacregistrant.control.jsonrpc import (
    ANSWER_START,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    SERVER_ERROR,
    Call,
    RpcError,
    answer,
    answer_end,
    error_answer,
    invalid_params,
    parse_body,
    parse_call,
    request_id,
)
from uacregistrant.core.registrant import Registrant
from uacregistrant.sip.numbers import parse_signed
from uacregistrant.store import StoreError, StoreValueError
from uacregistrant.store.coordinator import CoordinatorError

_log = Logger(namespace=__name__)

#: Bytes of request body accepted at most (a reg_upsert with every column is far below).
MAX_BODY = 64 * 1024
#: Seconds an HTTP connection may stay idle (and a reg_list's client may read nothing).
REQUEST_TIMEOUT = IDLE_TIMEOUT
#: HTTP connections at once, at most (more are answered 503 and closed).
MAX_CONNECTIONS = 32
#: Notifications running at once, at most (more are answered 503 and not run).
MAX_NOTIFICATIONS = 4
#: Bytes of a streamed reg_list written per reactor turn at most.
SLICE = 256 * 1024
#: The error of a write while writes are off: code, message, data.
FORBIDDEN = (403, "Forbidden", "MI writes are off: start the daemon with --mi-http-writes")

_JSON = b"application/json"
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


@dataclass(frozen=True, slots=True)
class Listing:
    """A C{reg_list} result too large to build at once: written a slice at a time."""

    records: list[Registrant]


@dataclass(frozen=True, slots=True)
class MiCommand:
    """
    One MI command: the names clients may call it by, its recipes (the
    parameter names of each accepted call), what it does, and whether it
    changes anything (runs only when writes are on).
    """

    names: tuple[str, ...]
    recipes: tuple[tuple[str, ...], ...]
    run: Callable[[Params], Any]
    writes: bool = True


def match_recipe(command: MiCommand, params: dict[str, Any] | list[Any]) -> Params:
    """
    Pick the recipe with as many parameters as were given, as OpenSIPS
    does: named parameters must be exactly its names, positional ones
    take its names in order.  Strings also accept numbers; integers also
    accept numeric strings.

    @raise RpcError: C{-32602} saying what does not match.
    """
    candidates = [recipe for recipe in command.recipes if len(recipe) == len(params)]
    if not candidates:
        raise invalid_params("Too few or too many parameters")
    if isinstance(params, dict):
        recipe = next((r for r in candidates if set(r) == set(params)), None)
        if recipe is None:
            raise invalid_params("Named parameters do not match")
        values = [params[name] for name in recipe]
    else:
        if len(candidates) > 1:
            raise invalid_params("Ambiguous call, use named parameters instead")
        recipe = candidates[0]
        values = list(params)
    return {name: _typed(name, value) for name, value in zip(recipe, values)}


def _typed(name: str, value: Any) -> str | int:
    """A parameter's value as its type wants it (a string, or an integer for L{_INTEGERS})."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise invalid_params(f"Bad type for parameter '{name}'")
    if name in _INTEGERS:
        if isinstance(value, int):
            return value
        number = parse_signed(value.strip(), max_digits=12) if isinstance(value, str) else None
        if number is None:
            raise invalid_params(f"Bad type for parameter '{name}'")
        return number
    return value if isinstance(value, str) else json.dumps(value)


def _failed_reply(reply: Reply) -> RpcError:
    """A console refusal as a JSON-RPC error: its code, its reason, its detail as data."""
    return RpcError(reply.code, reply.reason, "; ".join(reply.body) or None)


def _ok(result: Result) -> Any:
    """C{"OK"} for a console command that succeeded, else its refusal as an L{RpcError}."""

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

    @param writes: run the commands that change anything (else they
        answer L{FORBIDDEN} and do nothing).
    @ivar commands: every L{MiCommand}, by each of its names.
    """

    def __init__(self, commands: Commands, admin: Admin, writes: bool = False) -> None:
        self._commands = commands
        self._admin = admin
        self.writes = writes
        table = [
            MiCommand(("which", "core:which"), ((), ("command",)), self.which, writes=False),
            MiCommand(("reg_list", "uac_registrant:list"), ((), _KEY), self.reg_list, writes=False),
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

        @raise RpcError: C{-32601} for an unknown name.
        """
        command = self.commands.get(method)
        if command is None:
            raise RpcError(METHOD_NOT_FOUND, "Method not found")
        return command

    def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        """
        Run C{method}: its result (a JSON value, a L{Listing}, or a
        Deferred firing with one), or an L{RpcError} (L{FORBIDDEN} for a
        command that writes while writes are off: nothing is done).
        """
        command = self.lookup(method)
        if command.writes and not self.writes:
            raise RpcError(*FORBIDDEN)
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
            raise RpcError(404, "unknown MI command")
        return [list(recipe) for recipe in command.recipes]

    def _find(self, params: Params) -> Registrant:
        """The record named by aor, contact (its binding) and registrar, held by this node."""
        registrant = self._admin.find([str(params["aor"]), str(params["contact"]), str(params["registrar"])])
        if not self._commands.held(registrant):
            raise RpcError(404, "Held by another node", f"{registrant.account.aor} is registered by another node of the cluster (see reg_cluster)")
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
        return Failure(invalid_params(detail or str(error)))
    if failure.check(AdminError):
        return Failure(RpcError(503, "Failed Upsert", "; ".join([error.reason, *error.detail])))
    if failure.check(StoreError, CoordinatorError):
        return Failure(RpcError(503, "Failed Upsert", f"database unavailable: {failure.getErrorMessage()}"))
    return failure


def error_of(failure: Failure) -> RpcError:
    """Any failure as a JSON-RPC error (an unexpected one is logged, never shown as a traceback)."""
    if failure.check(RpcError):
        error: RpcError = failure.value  # type: ignore[assignment]
        return error
    return _failed_reply(failure_reply(failure))


_NOT_FOUND = NotFound("404 Not Found: the MI answers POST requests at its root path only")


class MiResource(Page):
    """
    C{POST /ROOT}: one JSON-RPC request per HTTP request (nothing below it).

    @param max_notifications: notifications running at once, at most.
    @ivar notifying: the notifications running now.
    """

    methods = (b"POST",)
    not_allowed = "405 Method Not Allowed: POST a JSON-RPC 2.0 request"
    not_found = _NOT_FOUND

    def __init__(self, methods: MiMethods, clock: IReactorTime, max_notifications: int = MAX_NOTIFICATIONS) -> None:
        super().__init__()
        self._methods = methods
        self._clock = clock
        self._max_notifications = max_notifications
        self.notifying = 0

    def render_POST(self, request: Request) -> bytes | int:
        """Answer one request; an unexpected exception is a JSON-RPC error (logged), never a traceback."""
        try:
            return self._post(request)
        except Exception:
            _log.failure("MI request failed")
            return respond(request, 200, error_answer(RpcError(SERVER_ERROR, "Server error", "internal error: see the daemon's log"), None), _JSON)

    def _post(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read(MAX_BODY)  # MiRequest keeps no more
        if not body:
            return plain(request, 400, "400 Bad Request: empty body (POST a JSON-RPC 2.0 request)")
        document: Any = None
        try:
            document = parse_body(body)
            call = parse_call(document)
        except RpcError as e:
            return respond(request, 200, error_answer(e, request_id(document)), _JSON)
        if call.notification:
            return self._notify(request, call)
        _Answer(request, call.id, self._clock).run(self._methods, call)
        return NOT_DONE_YET

    def _notify(self, request: Request, call: Call) -> bytes | int:
        """
        A notification: answered 202 at once, run, and the request ended
        (so the connection's next one read) only when it is done; 503 and
        not run while L{MAX_NOTIFICATIONS} run already.  Its errors are
        answered to nobody (an unexpected one is still logged).
        """
        if self.notifying >= self._max_notifications:
            return plain(request, 503, f"503 Service Unavailable: {self.notifying} MI notifications are running; send it again later")
        respond(request, 202, b"", None)
        request.setHeader(b"content-length", b"0")
        request.write(b"")
        self.notifying += 1
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def done(_: object) -> None:
            self.notifying -= 1
            if not gone:
                request.finish()

        d = defer.maybeDeferred(self._methods.call, call.method, call.params)
        d.addErrback(error_of).addBoth(done).addErrback(lambda f: _log.failure("ending an MI notification failed", f))
        return NOT_DONE_YET


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
        send(self._request, 200, answer(result, self._id), _JSON)

    def _failed(self, failure: Failure) -> None:
        error = error_of(failure)
        if not self._gone:
            send(self._request, 200, error_answer(error, self._id), _JSON)


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
        self._end = answer_end(request_id)
        self._paused = False
        self._done = False
        self._next: IDelayedCall | None = None
        self._stall: IDelayedCall | None = None

    def start(self) -> None:
        request = self._request
        respond(request, 200, b"", _JSON)
        request.notifyFinish().addBoth(self._finished)
        request.registerProducer(self, True)
        request.write(ANSWER_START)
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


class MiRequest(BoundedRequest):
    """A request whose body is kept up to L{MAX_BODY} bytes; past it, a JSON-RPC error answered 413."""

    max_body = MAX_BODY

    def too_large(self) -> tuple[bytes, bytes]:
        return _JSON, error_answer(RpcError(INVALID_REQUEST, "Invalid Request", f"request body over {self.max_body} bytes"), None)


class MiSite(BoundedSite):
    """The MI's HTTP site: at most C{max_connections} connections, bodies up to L{MAX_BODY}, idle ones closed."""

    def __init__(self, resource: IResource, clock: IReactorTime, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(resource, clock, MiRequest, max_connections, REQUEST_TIMEOUT)


def mi_site(commands: Commands, admin: Admin, clock: IReactorTime, root: str = "mi", writes: bool = False) -> MiSite:
    """
    The MI over HTTP at C{POST /root}, over the console's C{commands}
    and C{admin}; listen on it with any TCP endpoint.

    @param writes: run the commands that change anything (the daemon's
        C{--mi-http-writes}); else only C{which} and C{reg_list} run.
    """
    mi = MiResource(MiMethods(commands, admin, writes), clock)
    return MiSite(Root({root.encode("ascii"): mi}, _NOT_FOUND), clock)
