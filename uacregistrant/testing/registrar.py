# -*- test-case-name: tests.unit.app.test_simulation,tests.integration.test_demo -*-
"""
A test registrar on loopback that checks digest answers for real.

Used by the demo and the integration tests.  Each user (the To URI's user
part) has a L{UserPolicy} saying how the registrar treats it: which
challenge (401 or 407, which algorithms), whether it demands a longer
expiry (423), fails with a fixed code, stays silent, drops the first
requests, or says a nonce is stale.  Some policies play a hostile or
careless registrar: one that raises Min-Expires on every 423, adds headers
of its own to every answer, or rewrites the Contact it was sent.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from uacregistrant.sip.digest import parse_authorization, verify_authorization
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import Request, parse_delta_seconds, parse_message, parse_name_addr, quote_string, render_response
from uacregistrant.sip.sharing import Names
from uacregistrant.sip.uri import parse_uri

_log = Logger(namespace=__name__)


@dataclass
class UserPolicy:
    """How the registrar treats one user."""

    password: str | None = None
    username: str | None = None
    algorithms: tuple[str, ...] = ("MD5",)
    challenge: int = 401
    qop: str = "auth"
    min_expires: int | None = None
    max_expires: int | None = None
    reply: int | None = None
    retry_after: int | None = None
    silent: bool = False
    drop_first: int = 0
    stale_once: bool = False
    extra_bindings: int = 0
    delay: float = 0.0
    #: Answer every REGISTER with 423 and a Min-Expires above what it asked.
    escalate_min_expires: bool = False
    #: Headers added to every answer, as C{[name, value]} pairs.
    headers: tuple[tuple[str, str], ...] = ()
    #: Keep and list the binding with this appended to its URI (a
    #: registrar rewriting the Contact), and send no Expires header.
    rewrite_contact: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UserPolicy":
        """Build from JSON-style data (algorithms as a list or a comma string)."""
        data = dict(data)
        algorithms = data.pop("algorithms", data.pop("algorithm", ("MD5",)))
        if isinstance(algorithms, str):
            algorithms = tuple(a.strip() for a in algorithms.split(","))
        headers = tuple((str(name), str(value)) for name, value in data.pop("headers", ()))
        return cls(algorithms=tuple(algorithms), headers=headers, **data)


@dataclass
class Binding:
    """A binding the registrar holds."""

    contact: str
    expires_at: float
    call_id: str
    cseq: int


@dataclass
class Received:
    """One REGISTER as received, for the tests to inspect."""

    time: float
    user: str
    call_id: str
    cseq: int
    expires: int | None
    authorized: bool
    source: tuple[str, int]
    raw: bytes = field(repr=False)


class TestRegistrar(DatagramProtocol):
    """
    The registrar.

    @ivar bindings: C{(aor, contact) -> Binding}.
    @ivar received: every REGISTER that reached the policy logic.
    """

    def __init__(
        self,
        clock: IReactorTime,
        users: dict[str, UserPolicy],
        realm: str = "test.invalid",
        default_delay: float = 0.0,
    ) -> None:
        self.clock = clock
        self.users = users
        self.realm = realm
        self.default_delay = default_delay
        self.bindings: dict[tuple[str, str], Binding] = {}
        self.received: list[Received] = []
        self._secret = os.urandom(16)
        self._seen: dict[str, int] = {}
        self._stale_sent: set[str] = set()
        #: Name spellings this registrar has seen (its own, bounded).
        self._names = Names()

    # Nonces are self-verifying: time.hmac
    def _nonce(self) -> str:
        stamp = f"{self.clock.seconds():.6f}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:16]
        return f"{stamp}.{mac}"

    def _nonce_ok(self, nonce: str) -> bool:
        stamp, _, mac = nonce.rpartition(".")
        good = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:16]
        return hmac.compare_digest(mac, good)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Answer a REGISTER according to the user's policy."""
        try:
            message = parse_message(datagram, names=self._names)
        except SipParseError:
            return
        if not isinstance(message, Request) or message.method != "REGISTER":
            return
        try:
            self._handle(message, (addr[0], addr[1]), datagram)
        except SipParseError as e:
            self._reply(message, addr, 400, "Bad Request", [("Warning", f'399 registrar "{e}"')], 0.0)

    def _handle(self, request: Request, addr: tuple[str, int], raw: bytes) -> None:
        to = parse_name_addr(request.get("to") or "")
        aor = parse_uri(to.uri)
        user = aor.user or ""
        policy = self.users.get(user)
        contacts = [parse_name_addr(v, names=self._names) for v in request.get_all("contact")]
        expires = None
        if contacts and contacts[0].uri != "*":
            value = contacts[0].params.get("expires")
            expires = parse_delta_seconds(value, "expires") if value is not None else request.int_header("expires")
        header = "authorization"
        if policy is not None and policy.challenge == 407:
            header = "proxy-authorization"
        credentials = request.get(header)
        number, _ = request.cseq
        self.received.append(
            Received(self.clock.seconds(), user, request.call_id, number, expires, credentials is not None, addr, raw)
        )
        _log.info(
            "REGISTER user={user} call_id={call_id} cseq={cseq} expires={expires} authorized={authorized} source={source}",
            source=f"{addr[0]}:{addr[1]}",
            user=user,
            call_id=request.call_id,
            cseq=number,
            expires=expires,
            authorized=credentials is not None,
        )
        if policy is None:
            self._reply(request, addr, 404, "Not Found", [], self.default_delay)
            return
        delay = policy.delay or self.default_delay
        if policy.silent:
            return
        count = self._seen.get(request.call_id + str(number), 0)
        self._seen[request.call_id + str(number)] = count + 1
        if count < policy.drop_first:
            return
        if policy.reply is not None:
            extra = [("Retry-After", str(policy.retry_after))] if policy.retry_after is not None else []
            self._reply(request, addr, policy.reply, _REASONS.get(policy.reply, "Failure"), extra, delay)
            return
        if policy.escalate_min_expires:
            asked = expires if expires is not None else 3600
            self._reply(request, addr, 423, "Interval Too Brief", [("Min-Expires", str(asked + 1))], delay)
            return
        if policy.min_expires is not None and expires and expires < policy.min_expires:
            self._reply(request, addr, 423, "Interval Too Brief", [("Min-Expires", str(policy.min_expires))], delay)
            return
        if policy.password is not None:
            verdict = self._check(request, credentials, policy, user)
            if verdict is not None:
                self._challenge(request, addr, policy, delay, stale=verdict == "stale")
                return
        self._accept(request, addr, str(aor), contacts, expires, policy, delay)

    def _policy_headers(self, request: Request) -> list[tuple[str, str]]:
        to = parse_name_addr(request.get("to") or "")
        policy = self.users.get(parse_uri(to.uri).user or "")
        return list(policy.headers) if policy is not None else []

    def _check(self, request: Request, credentials: str | None, policy: UserPolicy, user: str) -> str | None:
        """C{None} if the credentials are good, else C{"challenge"} or C{"stale"}."""
        if credentials is None:
            return "challenge"
        try:
            params = parse_authorization(credentials)
        except SipParseError:
            return "challenge"
        assert policy.password is not None
        if (
            params.get("username") != (policy.username or user)
            or params.get("realm") != self.realm
            or params.get("algorithm", "MD5").upper() not in (a.upper() for a in policy.algorithms)
            or not self._nonce_ok(params.get("nonce", ""))
            or not verify_authorization(params, policy.password, "REGISTER")
        ):
            return "challenge"
        if policy.stale_once and request.call_id not in self._stale_sent:
            self._stale_sent.add(request.call_id)
            return "stale"
        return None

    def _challenge(self, request: Request, addr: tuple[str, int], policy: UserPolicy, delay: float, stale: bool) -> None:
        nonce = self._nonce()
        name = "WWW-Authenticate" if policy.challenge == 401 else "Proxy-Authenticate"
        extra = []
        for algorithm in policy.algorithms:
            value = f"Digest realm={quote_string(self.realm)}, nonce={quote_string(nonce)}, algorithm={algorithm}"
            if policy.qop:
                value += f", qop={quote_string(policy.qop)}"
            if stale:
                value += ", stale=true"
            extra.append((name, value))
        reason = "Unauthorized" if policy.challenge == 401 else "Proxy Authentication Required"
        self._reply(request, addr, policy.challenge, reason, extra, delay)

    def _accept(
        self,
        request: Request,
        addr: tuple[str, int],
        aor: str,
        contacts: list[Any],
        expires: int | None,
        policy: UserPolicy,
        delay: float,
    ) -> None:
        now = self.clock.seconds()
        number, _ = request.cseq
        for contact in contacts:
            held = self.bindings.get((aor, contact.uri))
            if held is not None and held.call_id == request.call_id and number <= held.cseq:
                # RFC 3261 §10.3 step 7, as Kamailio and OpenSIPS answer it.
                self._reply(request, addr, 400, "Bad Request", [("P-Registrar-Error", "Invalid CSeq number")], delay)
                return
        for contact in contacts:
            if policy.rewrite_contact and contact.uri != "*":
                contact = type(contact)(contact.uri + policy.rewrite_contact, contact.params, contact.display)
            if contact.uri == "*":
                for key in [k for k in self.bindings if k[0] == aor]:
                    del self.bindings[key]
                continue
            wanted = expires if expires is not None else 3600
            if policy.max_expires is not None:
                wanted = min(wanted, policy.max_expires)
            if wanted == 0:
                self.bindings.pop((aor, contact.uri), None)
            else:
                self.bindings[(aor, contact.uri)] = Binding(contact.uri, now + wanted, request.call_id, number)
        extra = []
        for i in range(policy.extra_bindings):
            extra.append(("Contact", f"<sip:other{i}@192.0.2.{i + 1}:5060>;expires=77"))
        for (key_aor, uri), binding in self.bindings.items():
            if key_aor == aor:
                remaining = max(0, int(binding.expires_at - now + 0.5))
                extra.append(("Contact", f"<{uri}>;expires={remaining}"))
        self._reply(request, addr, 200, "OK", extra, delay)

    def _reply(
        self,
        request: Request,
        addr: tuple[str, int],
        status: int,
        reason: str,
        extra: list[tuple[str, str]],
        delay: float,
    ) -> None:
        extra = extra + self._policy_headers(request)
        data = render_response(request, status, reason, extra, to_tag="reg" + request.call_id[:6])
        if delay > 0:
            self.clock.callLater(delay, self._send, data, addr)
        else:
            self._send(data, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.write(data, addr)


_REASONS = {
    302: "Moved Temporarily",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    500: "Server Internal Error",
    503: "Service Unavailable",
    603: "Decline",
}


def main(argv: list[str] | None = None) -> int:
    """Run the test registrar on loopback until interrupted."""
    parser = argparse.ArgumentParser(prog="uacregistrant-test-registrar", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:5080", help="HOST:PORT (loopback only)")
    parser.add_argument("--users", required=True, help="JSON file: {user: {password, algorithms, challenge, ...}}")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    options = parser.parse_args(argv)
    host, _, port = options.listen.rpartition(":")
    if not (host.startswith("127.") or host in ("::1", "[::1]", "localhost")):
        print("uacregistrant-test-registrar: listens on loopback only", file=sys.stderr)
        return 2
    with open(options.users) as f:
        users = {name: UserPolicy.from_dict(data) for name, data in json.load(f).items()}
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    registrar = TestRegistrar(reactor, users, default_delay=options.delay)
    listening = reactor.listenUDP(int(port), registrar, interface=host.strip("[]"))
    if options.port_file:
        with open(options.port_file + ".tmp", "w") as f:
            f.write(str(listening.getHost().port))
        os.replace(options.port_file + ".tmp", options.port_file)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
