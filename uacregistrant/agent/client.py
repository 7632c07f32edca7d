# -*- test-case-name: tests.unit.agent.test_client -*-
"""
The transaction user: carries out what the registrants ask for.  It
decides the transport (the next hop's C{transport} parameter or C{sips:},
else the forced socket's, else RFC 3263), resolves the next hop, picks
the local socket (UDP) or connection (TCP/TLS), has the REGISTER rendered,
opens a client transaction, and feeds the final response (or the timeout,
or the failure) back to the registrant.  Nothing asked for TCP or TLS is
ever sent over UDP or in clear.
"""

from __future__ import annotations

from typing import Any, Callable, Final, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from uacregistrant.agent.changes import StateChanges
from uacregistrant.agent.recovery import OutageRecovery
from uacregistrant.core.account import Account
from uacregistrant.core.counters import SipCounters
from uacregistrant.core.loglimit import LogLimit
from uacregistrant.core.register import USER_AGENT, render_register
from uacregistrant.core.registrant import FAIL_OVER, Outgoing, RegState, Registrant
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.resolver import Address, SipResolver, Target
from uacregistrant.net.stream import LinkFailed, LinkKey, StreamLink, StreamPool
from uacregistrant.net.targets import TargetHealth
from uacregistrant.net.transaction_layer import DatagramSender, TransactionLayer
from uacregistrant.net.transport import SipTransport
from uacregistrant.sip.message import Response
from uacregistrant.sip.sharing import Memo
from uacregistrant.sip.tokens import token_hex
from uacregistrant.sip.uri import transport_of

_log = Logger(namespace=__name__)


class Clock(Protocol):
    """What the client reads of the reactor's clock (a protocol: this module compiles without zope's mypy plugin)."""

    def seconds(self) -> float:
        """Now, in seconds."""


#: Transports requests can go over.
SENDS_OVER: Final = frozenset({"udp", "tcp", "tls"})
#: After a connection's loss made its records register again, another loss
#: of the same connection within this many seconds leaves them to their
#: normal refresh (a peer that closes every connection must not cause a
#: register-close-register loop).
FLOW_LOSS_QUIET: Final = 120.0
#: Connections whose last loss is remembered, at most.
FLOW_LOSSES_MAX: Final = 4096
#: Target names kept interned (C{tls:IP:PORT}, shown by reg_list).
TARGET_NAMES_MAX: Final = 4096


class RouteError(Exception):
    """A record cannot be sent as its row asks; the message says why (its last_error)."""


def target_name(target: Target) -> str:
    """C{TRANSPORT:IP:PORT}, IPv6 in brackets."""
    transport, ip, port = target
    return f"{transport}:[{ip}]:{port}" if ":" in ip else f"{transport}:{ip}:{port}"


class RegistrationClient:
    """
    The transaction user for every registrant.

    Every step it takes for a record (start an attempt, send, a response,
    a timeout, a lookup's result) runs inside one guard: an exception no
    check foresaw puts the record in INTERNAL_ERROR with the normal
    back-off, so no record is ever left with no pending work.

    @param changes: told of every state change.
    @param reschedule: called with a registrant whose next send time may
        have changed (the scheduler re-examines it).
    @param queue_follow_up: called with a registrant whose follow-up
        request (a digest answer, a 423 retry) is ready: the pacer sends it
        through L{send_follow_up}, paced like any other request.
    """

    def __init__(
        self,
        clock: IReactorTime,
        transactions: TransactionLayer,
        resolver: SipResolver,
        transports: dict[str, SipTransport],
        counters: SipCounters,
        changes: StateChanges,
        reschedule: Callable[[Registrant], None],
        queue_follow_up: Callable[[Registrant], None],
        user_agent: str = USER_AGENT,
        branch_token: Callable[[int], str] = token_hex,
        streams: StreamPool | None = None,
        stream_sockets: tuple[SocketSpec, ...] = (),
        may_send: Callable[[Registrant], bool] | None = None,
        may_continue: Callable[[Registrant, int], bool] | None = None,
    ) -> None:
        self._clock: Clock = clock
        #: Whether a record may start an attempt from this node now (a cluster node: its slot held, its lease valid).
        self.may_send = may_send
        #: Whether request CSeq N of an attempt under way may go now (checked right before sending).
        self.may_continue = may_continue
        self.counters = counters
        self._transactions = transactions
        self._resolver = resolver
        self._transports = transports
        self._streams = streams
        # The first UDP listen socket of each address family (IPv6: True).
        self._by_family: dict[bool, SipTransport] = {}
        for transport in transports.values():
            self._by_family.setdefault(":" in transport.spec.host, transport)
        self._stream_sockets = {spec.name: spec for spec in stream_sockets}
        # The first stream socket of each (transport, family), then of each family.
        self._stream_by: dict[tuple[str, bool], SocketSpec] = {}
        for spec in stream_sockets:
            self._stream_by.setdefault((spec.transport, spec.ipv6), spec)
            self._stream_by.setdefault(("", spec.ipv6), spec)
        # Records registered over each link, to re-register when it breaks.
        self._flows: dict[LinkKey, set[Registrant]] = {}
        self._flow_of: dict[Registrant, LinkKey] = {}
        self._flow_losses: dict[LinkKey, float] = {}
        self._target_names: Memo[Target, str] = Memo(TARGET_NAMES_MAX)
        # One (IP, port) tuple per target: every transaction to it holds
        # the same one (a completed one until Timer K: 56 bytes each).
        self._addresses: Memo[Target, Any] = Memo(TARGET_NAMES_MAX)
        self.user_agent = user_agent
        self._branch_token = branch_token
        self._changes = changes
        self._reschedule = reschedule
        self._queue_follow_up = queue_follow_up
        # Follow-up requests waiting for the pacer, by record.
        self._follow_ups: dict[Registrant, Outgoing] = {}
        self.recovery = OutageRecovery(clock, counters, reschedule)
        #: Targets that timed out or refused service, avoided for a while.
        self.health: TargetHealth[Target] = TargetHealth()
        self._error_log: LogLimit[str] = LogLimit()

    def transport_for(self, account: Account, address: Address) -> SipTransport | None:
        """
        The socket a record sends to C{address} from: its forced socket, else
        the first listen socket of the address's family; C{None} if that
        socket cannot reach the address (the other family).
        """
        ipv6 = ":" in address[0]
        if account.forced_socket is not None:
            transport = self._transports[account.forced_socket]
            return transport if (":" in transport.spec.host) == ipv6 else None
        return self._by_family.get(ipv6)

    def send(self, registrant: Registrant) -> None:
        """Start a new attempt for a due record (the pacer calls this)."""
        self._guarded(registrant, "starting an attempt", self._send, registrant)

    def send_follow_up(self, registrant: Registrant) -> None:
        """Send a record's waiting follow-up, if it still has one (the pacer's first lane)."""
        out = self._follow_ups.pop(registrant, None)
        if out is not None and self._current(registrant, out.cseq):
            self._guarded(registrant, "sending a follow-up", self._dispatch, registrant, out)

    def forget(self, registrant: Registrant) -> None:
        """A record is gone: drop everything kept about it."""
        self._follow_ups.pop(registrant, None)
        self.recovery.forget(registrant)
        self._leave_flow(registrant)

    def _leave_flow(self, registrant: Registrant) -> None:
        key = self._flow_of.pop(registrant, None)
        if key is not None:
            members = self._flows.get(key)
            if members is not None:
                members.discard(registrant)
                if not members:
                    del self._flows[key]

    def _join_flow(self, registrant: Registrant, link: StreamLink) -> None:
        if self._flow_of.get(registrant) == link.key:
            return
        self._leave_flow(registrant)
        self._flow_of[registrant] = link.key
        self._flows.setdefault(link.key, set()).add(registrant)

    def link_lost(self, link: StreamLink, reason: str) -> None:
        """
        An open connection broke: the records registered over it register
        again now over a new one (RFC 5626 §4.4.1), unless the same
        connection broke less than L{FLOW_LOSS_QUIET} seconds ago.
        """
        members = self._flows.pop(link.key, set())
        for registrant in members:
            self._flow_of.pop(registrant, None)
        now = self._clock.seconds()
        losses = self._flow_losses
        last = losses.get(link.key)
        if last is not None and now - last < FLOW_LOSS_QUIET:
            _log.info("{link} broke again within {quiet:g}s: its records keep their refresh times", link=link.name, quiet=FLOW_LOSS_QUIET)
            return
        if link.key not in losses and len(losses) >= FLOW_LOSSES_MAX:
            for key in [k for k, at in losses.items() if now - at >= FLOW_LOSS_QUIET]:
                del losses[key]
        if len(losses) < FLOW_LOSSES_MAX or link.key in losses:
            losses[link.key] = now
        again = 0
        for registrant in members:
            if not registrant.removed and not registrant.in_transaction and registrant.state == RegState.REGISTERED_STATE:
                registrant.send_soon(now)
                self._reschedule(registrant)
                again += 1
        if again:
            _log.info("{count} records registered over {link} register again", count=again, link=link.name)

    def _send(self, registrant: Registrant) -> None:
        if registrant.in_transaction or registrant.removed:
            return  # already under way (or gone): nothing to start
        if self.may_send is not None and not self.may_send(registrant):
            return  # another node's, or this node's lease is not safe: the cluster wakes it when it may
        before = registrant.state
        out = registrant.start(self._clock.seconds())
        self._changed(registrant, before)
        self._dispatch(registrant, out)

    @property
    def follow_ups_waiting(self) -> int:
        """Follow-up requests waiting for the pacer."""
        return len(self._follow_ups)

    def route(self, account: Account) -> tuple[str | None, bool]:
        """
        The transport a record's requests must use (C{None}: let RFC 3263
        choose) and whether they must be secure (C{sips:}).

        @raise RouteError: if the row asks for what cannot be done.
        """
        hop = account.next_hop
        # Without a proxy the registrar is the hop: its scheme is checked below.
        sips_request = account.proxy is not None and account.registrar[:5].lower() == "sips:"
        secure = sips_request or hop.scheme == "sips"
        explicit = transport_of(hop, sips_request) if secure or "transport" in hop.params else None
        if explicit is not None and explicit not in SENDS_OVER:
            raise RouteError(f"{hop} needs {explicit.upper()}, which this daemon does not send; not sent")
        forced = self.forced_spec(account)
        if forced is not None:
            if explicit is not None and explicit != forced.transport:
                raise RouteError(f"{hop} needs {explicit.upper()} but the forced socket {forced.name} is {forced.transport.upper()}; not sent")
            return forced.transport, secure
        return explicit, secure

    def forced_spec(self, account: Account) -> SocketSpec | None:
        """The record's forced socket, if it has one."""
        name = account.forced_socket
        if name is None:
            return None
        udp = self._transports.get(name)
        return udp.spec if udp is not None else self._stream_sockets.get(name)

    def _dispatch(self, registrant: Registrant, out: Outgoing) -> None:
        account = registrant.account
        hop = account.next_hop
        try:
            transport, secure = self.route(account)
        except RouteError as e:
            # Never fall back to UDP or clear text: the record fails, saying why.
            self._fail(registrant, str(e))
            return
        targets = self._resolver.cached_targets(hop, transport, secure)
        if targets is not None:
            self._transmit(registrant, out, self.health.choose(targets, self._clock.seconds()))
            return
        d = self._resolver.resolve_targets(hop, transport, secure)

        def resolved(targets: list[Target]) -> None:
            if self._current(registrant, out.cseq):
                target = self.health.choose(targets, self._clock.seconds())
                self._guarded(registrant, "sending after a lookup", self._transmit, registrant, out, target)

        def failed(reason: Failure) -> None:
            if self._current(registrant, out.cseq):
                self._guarded(
                    registrant,
                    "a failed lookup",
                    self._fail,
                    registrant,
                    f"cannot resolve {hop.host}: {reason.getErrorMessage()}",
                )

        d.addCallbacks(resolved, failed)
        d.addErrback(lambda f: _log.failure("a lookup's callback failed", f))

    @staticmethod
    def _current(registrant: Registrant, cseq: int) -> bool:
        """Whether a callback for request C{cseq} still concerns the record."""
        return not registrant.removed and registrant.cseq == cseq and registrant.in_transaction

    def _transmit(self, registrant: Registrant, out: Outgoing, target: Target) -> None:
        name = self._target_names.get(target)
        registrant.target = name if name is not None else self._target_names.keep(target, target_name(target))
        if target[0] == "udp":
            self._send_datagram(registrant, out, target)
        else:
            self._send_on_stream(registrant, out, target)

    def _send_datagram(self, registrant: Registrant, out: Outgoing, target: Target) -> None:
        account = registrant.account
        address = self._address(target)
        transport = self.transport_for(account, address)
        if transport is None:
            self._fail(registrant, self._no_socket(account, address[0], "no UDP --listen socket"))
            return
        self._start(registrant, out, target, transport, (transport.via_host(address[0]), transport.spec.port), "UDP")

    @staticmethod
    def _no_socket(account: Account, ip: str, none: str) -> str:
        """Why a record cannot reach C{ip}: its forced socket, or every socket (C{none}), is of the other family."""
        family = "IPv6" if ":" in ip else "IPv4"
        where = f"its forced socket {account.forced_socket} is not" if account.forced_socket else f"{none} is"
        return f"{account.next_hop.host} is at {family} address {ip} but {where} {family}; not sent"

    def local_for(self, account: Account, target: Target) -> SocketSpec | None:
        """
        The socket whose address a connection to C{target} goes from: the
        forced socket; else the first stream socket of that transport and
        family; else of that family; else the first UDP socket of the family.
        """
        forced = self.forced_spec(account)
        if forced is not None:
            return forced
        ipv6 = ":" in target[1]
        spec = self._stream_by.get((target[0], ipv6)) or self._stream_by.get(("", ipv6))
        if spec is None:
            udp = self._by_family.get(ipv6)
            spec = udp.spec if udp is not None else None
        return spec

    def _send_on_stream(self, registrant: Registrant, out: Outgoing, target: Target) -> None:
        account = registrant.account
        transport, ip, port = target
        local = self.local_for(account, target)
        if self._streams is None or local is None or local.ipv6 != (":" in ip):
            self._fail(registrant, self._no_socket(account, ip, "no --listen socket"))
            return
        try:
            link = self._streams.link(transport, (ip, port), local, account.next_hop.host)
        except LinkFailed as e:
            self._connection_failed(registrant, out.cseq, target, str(e))
            return
        cseq = out.cseq

        def ready(link: StreamLink) -> None:
            if self._current(registrant, cseq):
                self._guarded(registrant, "sending on a connection", self._start, registrant, out, target, link, link.via(), transport.upper())

        def failed(reason: str) -> None:
            if self._current(registrant, cseq):
                self._guarded(
                    registrant, "a failed connection", self._connection_failed, registrant, cseq, target, f"connection to {link.name} failed: {reason}"
                )

        link.when_open(ready, failed)

    def _connection_failed(self, registrant: Registrant, cseq: int, target: Target, reason: str) -> None:
        """A connection could not be opened: RFC 3263 §4.3 counts it as the target failing."""
        now = self._clock.seconds()
        self.health.failed(target, now)
        before = registrant.state
        registrant.on_unreachable(now, reason)
        self._fail_over(registrant, target, now)
        self._changed(registrant, before)
        self._reschedule(registrant)

    def _start(self, registrant: Registrant, out: Outgoing, target: Target, sender: DatagramSender, via: tuple[str, int], via_transport: str) -> None:
        if self.may_continue is not None and not self.may_continue(registrant, out.cseq):
            # A cluster node whose lease or slot ended while this request
            # waited (a lookup, a connection): not sent, not left waiting.
            self._fail(registrant, "not sent: this node may no longer send for it (cluster)")
            return
        account = registrant.account
        address = self._address(target)
        branch = "z9hG4bK" + self._branch_token(10)
        data = render_register(account, registrant.call_id, registrant.from_tag, out, via, branch, self.user_agent, via_transport)
        sent = self._clock.seconds()
        cseq = out.cseq
        try:
            self._transactions.start(
                sender,
                address,
                data,
                branch,
                cseq,
                lambda response: self._guarded(registrant, "handling a response", self._on_final, registrant, cseq, response, target, sender),
                lambda reason: self._guarded(registrant, "handling a timeout", self._on_timeout, registrant, cseq, target, sent, reason),
                reliable=via_transport != "UDP",
            )
        except OSError as e:
            self.counters.send_errors += 1
            self._fail(registrant, f"sending to {target_name(target)} failed: {e}")

    def _address(self, target: Target) -> Any:
        """
        The target's C{(IP, port)}, one tuple per target (up to
        L{TARGET_NAMES_MAX} targets).  Typed C{Any} on purpose: compiled,
        a C{tuple[str, int]} result would be unboxed and boxed again, one
        new tuple per transaction instead of the shared one.
        """
        address = self._addresses.get(target)
        return address if address is not None else self._addresses.keep(target, (target[1], target[2]))

    def _on_final(self, registrant: Registrant, cseq: int, response: Response, target: Target, sender: DatagramSender) -> None:
        now = self._clock.seconds()
        address = self._address(target)
        self.recovery.answered(address, now)
        unavailable = response.status == 503 and not response.has("retry-after")
        if unavailable:
            self.health.failed(target, now)  # RFC 3263 §4.3: try the next target
        else:
            self.health.answered(target)
        if not self._current(registrant, cseq):
            return
        before = registrant.state
        held_until = registrant.registered_until
        follow = registrant.on_response(response, now)
        if unavailable and follow is None:
            self._fail_over(registrant, target, now)
        if isinstance(sender, StreamLink) and registrant.state == RegState.REGISTERED_STATE:
            self._join_flow(registrant, sender)
        if held_until is not None and now > held_until and registrant.state == RegState.REGISTERED_STATE:
            self.counters.lapsed_registrations += 1
        self._changed(registrant, before)
        if follow is not None:
            self._follow_ups[registrant] = follow
            self._queue_follow_up(registrant)
        else:
            self._reschedule(registrant)

    def _on_timeout(self, registrant: Registrant, cseq: int, target: Target, sent: float, broken: str | None) -> None:
        if not self._current(registrant, cseq):
            return
        if broken is not None:
            # The connection broke under the transaction: a transport failure (RFC 3263 §4.3).
            self._connection_failed(registrant, cseq, target, broken)
            return
        before = registrant.state
        now = self._clock.seconds()
        address = self._address(target)
        registrant.on_timeout(now, target_name(target))
        if not self.recovery.answered_since(address, sent):
            # Nobody heard from it since: the target is down, not this record.
            self.health.failed(target, now)
            self._fail_over(registrant, target, now)
        self.recovery.timed_out(registrant, address, sent)
        self._changed(registrant, before)
        self._reschedule(registrant)

    def _fail_over(self, registrant: Registrant, failed: Target, now: float) -> None:
        """Retry at once if the next hop has another target that is not avoided (else the back-off holds)."""
        try:
            transport, secure = self.route(registrant.account)
        except RouteError:
            return
        targets = self._resolver.cached_targets(registrant.account.next_hop, transport, secure)
        if targets is not None and self.health.alternative(targets, failed, now) is not None:
            if registrant.retry_early(now, FAIL_OVER):
                self.counters.fail_overs += 1

    def _fail(self, registrant: Registrant, reason: str) -> None:
        before = registrant.state
        registrant.on_send_error(self._clock.seconds(), reason)
        self._changed(registrant, before)
        self._reschedule(registrant)

    def recover_stuck(self, registrant: Registrant, waited: float) -> None:
        """
        A record has waited C{waited} seconds in a transaction state with
        nothing left to end it (the walker's last-resort check).
        """
        self._internal_error(registrant, f"no response, timeout or lookup result after {waited:.0f}s", None)

    def _guarded(self, registrant: Registrant, what: str, step: Callable[..., None], *args: object) -> None:
        """Run one step for C{registrant}; an exception ends in INTERNAL_ERROR."""
        try:
            step(*args)
        except Exception:
            self._internal_error(registrant, what, Failure())

    def _internal_error(self, registrant: Registrant, what: str, failure: Failure | None) -> None:
        self.counters.internal_errors += 1
        if failure is not None:
            reason = f"internal error {what}: {failure.type.__name__ if failure.type else 'error'}: {failure.getErrorMessage()}"[:300]
            held = self._error_log.allow(what, self._clock.seconds())
            if held is not None:
                _log.failure("{what} for {aor} failed ({held} more like it not logged)", failure, what=what, aor=registrant.account.aor, held=held)
        else:
            reason = f"internal error: {what}"
        try:
            self._follow_ups.pop(registrant, None)
            before = registrant.state
            registrant.on_internal_error(self._clock.seconds(), reason)
            self._changed(registrant, before)
            self._reschedule(registrant)
        except Exception:
            _log.failure("recovering {aor} from an internal error failed", aor=registrant.account.aor)

    def _changed(self, registrant: Registrant, before: RegState) -> None:
        self._changes.publish(registrant, before, self._clock.seconds())
