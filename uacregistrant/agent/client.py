# -*- test-case-name: tests.unit.agent.test_client -*-
"""
The transaction user: carries out what the registrants ask for.  It
resolves the next hop, has the REGISTER rendered, opens a client
transaction on the record's socket, and feeds the final response (or the
timeout, or the failure) back to the registrant.
"""

from __future__ import annotations

from typing import Callable

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
from uacregistrant.net.resolver import Address, SipResolver
from uacregistrant.net.targets import TargetHealth
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.net.transport import SipTransport
from uacregistrant.sip.message import Response
from uacregistrant.sip.uri import transport_of
from uacregistrant.sip.tokens import token_hex

_log = Logger()

#: Transports requests can go over (TCP and TLS arrive with stream transports).
SENDS_OVER = frozenset({"udp"})


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
    ) -> None:
        self._clock = clock
        self.counters = counters
        self._transactions = transactions
        self._resolver = resolver
        self._transports = transports
        # The first listen socket of each address family (IPv6: True).
        self._by_family: dict[bool, SipTransport] = {}
        for transport in transports.values():
            self._by_family.setdefault(":" in transport.spec.host, transport)
        self.user_agent = user_agent
        self._branch_token = branch_token
        self._changes = changes
        self._reschedule = reschedule
        self._queue_follow_up = queue_follow_up
        # Follow-up requests waiting for the pacer, by record.
        self._follow_ups: dict[Registrant, Outgoing] = {}
        self.recovery = OutageRecovery(clock, counters, reschedule)
        #: Targets that timed out or refused service, avoided for a while.
        self.health = TargetHealth()
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

    def _send(self, registrant: Registrant) -> None:
        if registrant.in_transaction or registrant.removed:
            return  # already under way (or gone): nothing to start
        before = registrant.state
        out = registrant.start(self._clock.seconds())
        self._changed(registrant, before)
        self._dispatch(registrant, out)

    @property
    def follow_ups_waiting(self) -> int:
        """Follow-up requests waiting for the pacer."""
        return len(self._follow_ups)

    def _dispatch(self, registrant: Registrant, out: Outgoing) -> None:
        account = registrant.account
        hop = account.next_hop
        # Without a proxy the registrar is the hop: its scheme is checked below.
        sips_request = account.proxy is not None and account.registrar[:5].lower() == "sips:"
        if sips_request or hop.scheme == "sips" or "transport" in hop.params:
            transport = transport_of(hop, sips_request)
            if transport not in SENDS_OVER:
                # Never fall back to UDP in clear for a row that asked for
                # TCP or TLS: the record fails, saying why.
                self._fail(registrant, f"{hop} needs {transport.upper()}, which this daemon does not send yet (UDP only); not sent")
                return
        targets = self._resolver.cached_targets(hop)
        if targets is not None:
            self._transmit(registrant, out, self.health.choose(targets, self._clock.seconds()))
            return
        d = self._resolver.resolve_targets(hop)

        def resolved(targets: list[Address]) -> None:
            if self._current(registrant, out.cseq):
                address = self.health.choose(targets, self._clock.seconds())
                self._guarded(registrant, "sending after a lookup", self._transmit, registrant, out, address)

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

    def _transmit(self, registrant: Registrant, out: Outgoing, address: Address) -> None:
        account = registrant.account
        transport = self.transport_for(account, address)
        if transport is None:
            family = "IPv6" if ":" in address[0] else "IPv4"
            where = f"its forced socket {account.forced_socket} is not" if account.forced_socket else "no --listen socket is"
            self._fail(registrant, f"{account.next_hop.host} is at {family} address {address[0]} but {where} {family}; not sent")
            return
        branch = "z9hG4bK" + self._branch_token(10)
        data = render_register(
            account,
            registrant.call_id,
            registrant.from_tag,
            out,
            (transport.via_host(address[0]), transport.spec.port),
            branch,
            self.user_agent,
        )
        sent = self._clock.seconds()
        cseq = out.cseq
        try:
            self._transactions.start(
                transport,
                address,
                data,
                branch,
                cseq,
                lambda response: self._guarded(registrant, "handling a response", self._on_final, registrant, cseq, response, address),
                lambda: self._guarded(registrant, "handling a timeout", self._on_timeout, registrant, cseq, address, sent),
            )
        except OSError as e:
            self._fail(registrant, f"sending to {address[0]}:{address[1]} failed: {e}")

    def _on_final(self, registrant: Registrant, cseq: int, response: Response, address: Address) -> None:
        now = self._clock.seconds()
        self.recovery.answered(address, now)
        unavailable = response.status == 503 and not response.has("retry-after")
        if unavailable:
            self.health.failed(address, now)  # RFC 3263 §4.3: try the next target
        else:
            self.health.answered(address)
        if not self._current(registrant, cseq):
            return
        before = registrant.state
        held_until = registrant.registered_until
        follow = registrant.on_response(response, now)
        if unavailable and follow is None:
            self._fail_over(registrant, address, now)
        if held_until is not None and now > held_until and registrant.state == RegState.REGISTERED_STATE:
            self.counters.lapsed_registrations += 1
        self._changed(registrant, before)
        if follow is not None:
            self._follow_ups[registrant] = follow
            self._queue_follow_up(registrant)
        else:
            self._reschedule(registrant)

    def _on_timeout(self, registrant: Registrant, cseq: int, address: Address, sent: float) -> None:
        if not self._current(registrant, cseq):
            return
        before = registrant.state
        now = self._clock.seconds()
        registrant.on_timeout(now, f"{address[0]}:{address[1]}")
        if not self.recovery.answered_since(address, sent):
            # Nobody heard from it since: the target is down, not this record.
            self.health.failed(address, now)
            self._fail_over(registrant, address, now)
        self.recovery.timed_out(registrant, address, sent)
        self._changed(registrant, before)
        self._reschedule(registrant)

    def _fail_over(self, registrant: Registrant, failed: Address, now: float) -> None:
        """Retry at once if the next hop has another target that is not avoided (else the back-off holds)."""
        targets = self._resolver.cached_targets(registrant.account.next_hop)
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
