"""
A real registrant behind the real transaction layer, for fuzzing: the
fuzz harness (atheris) and the property tests (hypothesis) feed it
datagrams and check that the record always has pending work.

Nothing here is a stand-in: the client, transaction layer, transport,
pacer, timers and state machine are the daemon's own, on a fake clock;
only the socket is a sink that keeps what was sent.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.names.resolve import ResolverChain

from uacregistrant.agent.changes import StateChanges
from uacregistrant.agent.client import RegistrationClient
from uacregistrant.core.account import Account
from uacregistrant.core.counters import SipCounters
from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.resolver import SipResolver
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.net.transport import SipTransport
from uacregistrant.schedule.timers import TimerQueue
from uacregistrant.schedule.pacer import Pacer
from uacregistrant.sip.digest import parse_challenges
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import Response, parse_message, parse_name_addr
from uacregistrant.sip.sharing import SharedTables

#: The registrar's address: datagrams come from here.
REGISTRAR = ("127.0.0.1", 5080)
#: Segments of one input, each delivered as a datagram in turn.
SEPARATOR = b"\x00||\x00"
#: Replaced in each segment by the live transaction's branch and CSeq, so
#: that mutated inputs reach the state machine and not only the filters.
BRANCH = b"$BRANCH"
CSEQ = b"$CSEQ"


class _SinkPort:
    """A bound UDP port that counts what is written to it (nothing reads it back)."""

    def __init__(self) -> None:
        self.sent_count = 0

    def write(self, data: bytes, addr: Any) -> None:
        self.sent_count += 1

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", 5060)


class Wedged(AssertionError):
    """A record in a transaction state with nothing left that could end it."""


class RegistrantScenario:
    """One record registering at 127.0.0.1:5080, fed the datagrams given."""

    def __init__(self) -> None:
        self.clock = clock = Clock()
        self.counters = SipCounters()
        timers = TimerQueue(clock)
        self.transactions = TransactionLayer(clock, self.counters, t1=0.5, timers=timers)
        self.transport = SipTransport(SocketSpec("127.0.0.1", 5060), self.transactions, self.counters, clock)
        self.transport.makeConnection(_SinkPort())  # type: ignore[arg-type]
        self._branches = 0
        self.client = RegistrationClient(
            clock,
            self.transactions,
            SipResolver(ResolverChain([]), clock),
            {self.transport.spec.name: self.transport},
            self.counters,
            changes=StateChanges(),
            reschedule=lambda registrant: None,
            queue_follow_up=lambda registrant: self.pacer.push_follow_up(registrant),
            branch_token=self._branch,
        )
        self.pacer = Pacer(clock, 1000, self.client.send, send_follow_up=self.client.send_follow_up)
        policy = Policy(retry_base=30, retry_max=1800, transaction_timeout=32, rng=random.Random(0), token=lambda n: "ab" * n)
        account = Account(
            row_id=1,
            aor="sip:alice@example.com",
            registrar=f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}",
            binding_uri="sip:alice@127.0.0.1:5060",
            expiry=3600,
            username="alice",
            password="secret",
        )
        self.registrant = Registrant(account, policy)
        self.client.send(self.registrant)

    def _branch(self, nbytes: int) -> str:
        self._branches += 1
        return f"fuzz{self._branches}"

    @property
    def branch(self) -> bytes:
        return f"z9hG4bKfuzz{self._branches}".encode()

    def feed(self, data: bytes) -> None:
        """Deliver each segment of C{data} (placeholders filled in), checking after each."""
        for segment in data.split(SEPARATOR)[:6]:
            segment = segment.replace(BRANCH, self.branch).replace(CSEQ, str(self.registrant.cseq).encode())
            self.transport.datagramReceived(segment, REGISTRAR)
            self.clock.advance(0.01)  # the pacer sends any follow-up
            self.check()
        self.clock.advance(40)  # past Timer F of whatever is outstanding
        self.check()
        if self.registrant.in_transaction:
            raise Wedged(f"{self.registrant.state.name} 40 s after the last datagram")

    def check(self) -> None:
        """The invariant: pending work, and nothing unexpected raised."""
        r = self.registrant
        if self.counters.internal_errors:
            raise AssertionError(f"internal error: {r.last_error}")
        if r.in_transaction:
            if not len(self.transactions) and not self.client.follow_ups_waiting:
                raise Wedged(f"{r.state.name} with no transaction and no follow-up")
        elif r.next_at is None:
            raise Wedged(f"{r.state.name} with nothing scheduled")


#: The harness's own tables, kept across inputs so that their lookups are fuzzed too.
_TABLES = SharedTables()


def touch_everything(data: bytes) -> None:
    """Parse and read everything a registrant reads; only SipParseError may escape."""
    try:
        message = parse_message(data, names=_TABLES.names)
        for value in message.get_all("contact"):
            parse_name_addr(value, names=_TABLES.names)
        for value in message.get_all("www-authenticate") + message.get_all("proxy-authenticate"):
            parse_challenges(value, shared=_TABLES.text)
        message.int_header("expires")
        message.int_header("min-expires")
        if isinstance(message, Response):
            message.retry_after
    except SipParseError:
        pass


def response(status: str, headers: str = "") -> bytes:
    """A response to the live transaction (placeholders for branch and CSeq)."""
    return (
        f"SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;rport=5060;branch=$BRANCH\r\n"
        "To: <sip:alice@example.com>;tag=1\r\nFrom: <sip:alice@example.com>;tag=2\r\nCall-ID: c\r\n"
        f"CSeq: $CSEQ REGISTER\r\n{headers}Content-Length: 0\r\n\r\n"
    ).encode()


CHALLENGE = 'WWW-Authenticate: Digest realm="r", nonce="n", qop="auth,auth-int", algorithm=MD5, opaque="o"\r\n'
#: Seeds: each a whole exchange, segments separated by SEPARATOR.
SEEDS = [
    SEPARATOR.join([response("401 Unauthorized", CHALLENGE), response("200 OK", "Contact: <sip:alice@127.0.0.1:5060>;expires=600\r\n")]),
    SEPARATOR.join([response("407 Proxy Authentication Required", CHALLENGE.replace("WWW", "Proxy").replace("MD5", "SHA-256")),
                    response("423 Interval Too Brief", "Min-Expires: 7200\r\n"), response("200 OK", "Expires: 60\r\n")]),
    SEPARATOR.join([response("401 Unauthorized", CHALLENGE), response("401 Unauthorized", CHALLENGE.replace('"n"', '"m", stale=true'))]),
    response("503 Service Unavailable", "Retry-After: 5 (x);duration=3\r\n"),
    response("200 OK", 'm: "A, B" <sip:alice@192.0.2.1:5060;ob>;expires=120, <sip:b@192.0.2.2>;expires=60\r\n'),
    response("100 Trying") + SEPARATOR + response("302 Moved", "Contact: <sip:x@h>\r\n"),
]
