# -*- test-case-name: tests.unit.core.test_registrant,tests.unit.agent.test_changes,tests.unit.agent.test_client -*-
"""
One registration's state machine (the seed's states 0-9).

Pure: it receives the time and the responses, and returns the requests it
wants sent (L{Outgoing}); it never touches a socket or a clock.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Final

from uacregistrant.core.account import Account
from uacregistrant.sip.digest import Challenge, ChallengeLayout, Credentials, authorization_value, choose_challenge, parse_challenges
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import Response, parse_delta_seconds, parse_name_addr, printable
from uacregistrant.sip.sharing import SharedTables, SharedValues
from uacregistrant.sip.tokens import token_hex
from uacregistrant.sip.uri import parse_uri_uncached, uris_equal


class RegState(enum.IntEnum):
    """Registration states, numbered as in OpenSIPS uac_registrant."""

    NOT_REGISTERED_STATE = 0
    REGISTERING_STATE = 1
    AUTHENTICATING_STATE = 2
    REGISTERED_STATE = 3
    REGISTER_TIMEOUT_STATE = 4
    INTERNAL_ERROR_STATE = 5
    WRONG_CREDENTIALS_STATE = 6
    REGISTRAR_ERROR_STATE = 7
    UNREGISTERING_STATE = 8
    AUTHENTICATING_UNREGISTER_STATE = 9


class Event(enum.Enum):
    """
    What moves a registrant from one state to another.

    Hashed by identity, in C (members are singletons, equal only to
    themselves): L{enum.Enum}'s C{__hash__} is a Python function, run at
    every state change (a L{TRANSITIONS} lookup).
    """

    __hash__ = object.__hash__

    #: A new attempt begins with a REGISTER (the account is enabled).
    SEND_REGISTER = "send REGISTER"
    #: A new attempt begins with an un-REGISTER (the account is disabled).
    SEND_UNREGISTER = "send un-REGISTER"
    #: A 401/407 the record can answer.
    CHALLENGED = "challenged"
    #: A 423: the REGISTER goes again with the registrar's Min-Expires.
    TOO_BRIEF = "423 Interval Too Brief"
    #: A 2xx to a REGISTER that granted time to our binding.
    GRANTED = "granted"
    #: A 2xx to an un-REGISTER.
    RELEASED = "released"
    #: Timer F fired, or a 408 came.
    TIMED_OUT = "timed out"
    #: Credentials were rejected (or there are none to answer with).
    REJECTED = "credentials rejected"
    #: Any other failure the registrar answered.
    REFUSED = "registrar error"
    #: The request could not be built or sent, or handling it failed.
    FAILED = "internal error"
    #: Nothing to register or un-register: the record rests.
    IDLE = "idle"


#: States that mean the last attempt failed.
FAILURE_STATES: Final = frozenset(
    {
        RegState.REGISTER_TIMEOUT_STATE,
        RegState.INTERNAL_ERROR_STATE,
        RegState.WRONG_CREDENTIALS_STATE,
        RegState.REGISTRAR_ERROR_STATE,
    }
)
#: States in which a transaction is outstanding.
IN_TRANSACTION: Final = frozenset(
    {
        RegState.REGISTERING_STATE,
        RegState.AUTHENTICATING_STATE,
        RegState.UNREGISTERING_STATE,
        RegState.AUTHENTICATING_UNREGISTER_STATE,
    }
)
_UNREGISTER_STATES: Final = frozenset({RegState.UNREGISTERING_STATE, RegState.AUTHENTICATING_UNREGISTER_STATE})
_REGISTER_STATES: Final = frozenset({RegState.REGISTERING_STATE, RegState.AUTHENTICATING_STATE})
#: Failures a registrar answering again may cure (see L{Registrant.retry_early}).
TIMED_OUT: Final = frozenset({RegState.REGISTER_TIMEOUT_STATE})
#: Failures another target of the same hop may cure.
FAIL_OVER: Final = frozenset({RegState.REGISTER_TIMEOUT_STATE, RegState.REGISTRAR_ERROR_STATE})
#: States in which nothing is outstanding.
AT_REST: Final = frozenset(RegState) - IN_TRANSACTION


def _transitions() -> dict[tuple[RegState, Event], RegState]:
    table: dict[tuple[RegState, Event], RegState] = {}
    for state in AT_REST:
        table[state, Event.SEND_REGISTER] = RegState.REGISTERING_STATE
        table[state, Event.SEND_UNREGISTER] = RegState.UNREGISTERING_STATE
        table[state, Event.IDLE] = RegState.NOT_REGISTERED_STATE
    for state in _REGISTER_STATES:
        table[state, Event.CHALLENGED] = RegState.AUTHENTICATING_STATE
        table[state, Event.TOO_BRIEF] = RegState.REGISTERING_STATE
        table[state, Event.GRANTED] = RegState.REGISTERED_STATE
    for state in _UNREGISTER_STATES:
        table[state, Event.CHALLENGED] = RegState.AUTHENTICATING_UNREGISTER_STATE
        table[state, Event.RELEASED] = RegState.NOT_REGISTERED_STATE
    for state in IN_TRANSACTION:
        table[state, Event.TIMED_OUT] = RegState.REGISTER_TIMEOUT_STATE
        table[state, Event.REJECTED] = RegState.WRONG_CREDENTIALS_STATE
        table[state, Event.REFUSED] = RegState.REGISTRAR_ERROR_STATE
    for state in RegState:
        # Handling a record can fail in any state; it must always land.
        table[state, Event.FAILED] = RegState.INTERNAL_ERROR_STATE
    return table


#: The only way a registrant's state changes: C{(state, event) -> new state}.
#: A pair missing here is a bug, raised as L{InvalidTransition}.
TRANSITIONS: Final[dict[tuple[RegState, Event], RegState]] = _transitions()


class InvalidTransition(Exception):
    """An event that the current state does not allow (a bug)."""
#: Stale-nonce answers allowed within one attempt.
MAX_STALE_ANSWERS: Final = 2
#: 423 follow-ups (a longer expiry asked for) allowed within one attempt.
MAX_TOO_BRIEF: Final = 2
#: Follow-up requests of any kind (digest answers, 423 retries) allowed
#: within one attempt: a hostile registrar cannot keep one going.
MAX_FOLLOW_UPS: Final = 6


@dataclass(frozen=True, slots=True)
class Policy:
    """
    Timing and randomness shared by all registrants.

    @ivar retry_base: first retry delay after a failure (seconds).
    @ivar retry_max: cap on the retry delay (seconds).
    @ivar transaction_timeout: Timer F (seconds); refreshes start at least
        this long before the registration expires when they can.
    """

    retry_base: float = 30.0
    retry_max: float = 1800.0
    transaction_timeout: float = 32.0
    rng: random.Random = field(default_factory=random.SystemRandom)
    token: Callable[[int], str] = token_hex
    #: Called each time a 200 lists no Contact of ours and the granted
    #: expiry had to be guessed (counted for reg_stats).
    expiry_guessed: Callable[[], None] = lambda: None
    #: The service's tables: status lines, granted expiries and challenge
    #: text that most records repeat are kept once.
    shared: SharedTables = field(default_factory=SharedTables)

    def backoff(self, failures: int) -> float:
        """Exponential back-off with equal jitter, capped at C{retry_max}."""
        delay = min(self.retry_max, self.retry_base * 2 ** min(failures - 1, 32))
        return float(delay / 2 + self.rng.uniform(0, delay / 2))

    def refresh_lead(self, granted: int) -> float:
        """How long before expiry a registration of C{granted} s is refreshed."""
        return min(granted / 2, max(self.transaction_timeout, granted / 10))

    def retry_after(self, seconds: int) -> float:
        """
        A registrar's C{Retry-After}, clamped to [C{retry_base}/4,
        C{retry_max}]: C{0} must not mean a retry every round trip, nor
        4294967295 never.
        """
        return float(min(self.retry_max, max(self.retry_base / 4, seconds)))


@dataclass(slots=True, init=False)
class Outgoing:
    """
    A REGISTER the registrant wants sent (never changed once made).

    Not frozen, C{__init__} written out: compiled, a dataclass's generated
    C{__init__} stays interpreted, and a frozen one sets each field through
    C{object.__setattr__} (336 against 71 ns; two are made per
    registration).

    @ivar expires: the Contact's expires value (0 un-registers).
    @ivar authorization: C{(header name, value)} pairs to include.
    """

    cseq: int
    expires: int
    authorization: tuple[tuple[str, str], ...]

    def __init__(self, cseq: int, expires: int, authorization: tuple[tuple[str, str], ...] = ()) -> None:
        self.cseq = cseq
        self.expires = expires
        self.authorization = authorization


#: Characters of last_error kept.
MAX_ERROR: Final = 300
#: A time field's "none": the times are kept as floats, not C{float | None}
#: (compiled, a float field is 8 bytes in the record; a C{float | None} one
#: points to a 24-byte box of its own).
_NONE: Final = math.nan


class _Tries:
    """
    What the current attempt has done: follow-ups, stale-nonce answers and
    423 retries, and the headers answered after a challenge.  Replaced,
    never changed: every record at rest holds the one L{_NO_TRIES}.
    """

    __slots__ = ("follow_ups", "stale", "too_brief", "answered")

    def __init__(self, follow_ups: int, stale: int, too_brief: int, answered: tuple[str, ...]) -> None:
        self.follow_ups = follow_ups
        self.stale = stale
        self.too_brief = too_brief
        self.answered = answered


#: No follow-up, no stale nonce, no 423, nothing answered.
_NO_TRIES: Final = _Tries(0, 0, 0, ())
#: Bits of L{Registrant._flags}, all here (one bit each).
_RESEND: Final = 1
_RETIRING: Final = 2
_REMOVED: Final = 4
#: The kept challenge in compact form is answered with Proxy-Authorization.
_PROXY: Final = 8
_PACED: Final = 16
#: The From-tag's bits, the low ones of L{Registrant._ids} (the Call-ID's are above).
_TAG_BITS: Final = 40
_TAG_MASK: Final = (1 << _TAG_BITS) - 1
_HEADER: Final = "Authorization"
_PROXY_HEADER: Final = "Proxy-Authorization"


#: A challenge whose parameters take more characters than this is answered
#: but not kept for credentials up front: a registrar sending huge nonces
#: must not make every registered record hold one.
KEEP_CHALLENGE_MAX: Final = 2048
#: A guessed expiry is never shorter than this (or what was asked, if less).
GUESS_FLOOR: Final = 10
#: The expiry guessed when a 200 says nothing usable about any binding.
NO_INFORMATION_GUESS: Final = 60


class _Auth:
    """
    A kept challenge: the header that answers it, the nonce count, and the
    challenge itself as its nonce and its layout (the rest: realm, qop,
    algorithm...), which the records of one registrar share (a dict of
    parameters each took some 330 bytes more per registered record).
    """

    __slots__ = ("header", "layout", "nonce", "nc")
    #: Small enough to keep after the attempt (see L{_LargeAuth}).
    small = True

    def __init__(self, header: str, layout: ChallengeLayout, nonce: str) -> None:
        self.header = header
        self.layout = layout
        self.nonce = nonce
        self.nc = 0

    def challenge(self) -> Challenge:
        """The challenge to answer (made anew for each answer)."""
        return self.layout.challenge(self.nonce)

    @staticmethod
    def of(header: str, challenge: Challenge, layouts: SharedValues[ChallengeLayout]) -> "_Auth":
        """
        An L{_Auth} (an L{_OpaqueAuth} if the challenge has an opaque), or an
        L{_LargeAuth} for a challenge over L{KEEP_CHALLENGE_MAX}, whose
        layout is not shared.
        """
        params = challenge.params
        nonce = challenge.nonce
        opaque = params.get("opaque")
        if sum(len(value) for value in params.values()) > KEEP_CHALLENGE_MAX:
            return _LargeAuth(header, challenge.layout(), nonce, opaque)
        layout = layouts.share(challenge.layout())
        if opaque is None:
            return _Auth(header, layout, nonce)
        return _OpaqueAuth(header, layout, nonce, opaque)


class _OpaqueAuth(_Auth):
    """A kept challenge with an opaque (per challenge, like its nonce)."""

    __slots__ = ("opaque",)

    def __init__(self, header: str, layout: ChallengeLayout, nonce: str, opaque: str | None) -> None:
        super().__init__(header, layout, nonce)
        self.opaque = opaque

    def challenge(self) -> Challenge:
        return self.layout.challenge(self.nonce, self.opaque)


class _LargeAuth(_OpaqueAuth):
    """A challenge answered in its attempt but not kept after it."""

    __slots__ = ()
    small = False


#: What a record keeps of its challenges (L{Registrant._auth}): none; the
#: common case, one challenge without an opaque, as its shared layout (its
#: nonce, nonce count and header in fields of the record: no object of its
#: own); or any other case, one L{_Auth} per header answered.
_Kept = ChallengeLayout | tuple[_Auth, ...] | None


class Registrant:
    """
    The live state of one account's registration.

    @ivar next_at: when the record next wants to send (refresh or retry
        time; 0 = as soon as possible), or C{None} when it waits for a
        response or has nothing to do.
    @ivar registered_until: when the binding we hold at the registrar
        expires, or C{None} if we hold none.
    """

    __slots__ = (
        "account",
        "policy",
        "_state",
        "_ids",
        "cseq",
        "expires",
        "wanted_expires",
        "_sent",
        "_next_at",
        "_until",
        "last_reply",
        "last_error",
        "failures",
        "recovered_after",
        "_flags",
        "_auth",
        "_nonce",
        "_nc",
        "_tries",
        "target",
    )

    def __init__(self, account: Account, policy: Policy) -> None:
        self.account = account
        self.policy = policy
        self._state = RegState.NOT_REGISTERED_STATE
        # Call-ID (32 hex digits) and From-tag (10) from one random token,
        # kept as one 168-bit int: 48 bytes (as 21 bytes, 56; as hex text, 93).
        self._ids = int(policy.token(21), 16)
        self.cseq = 0
        self.expires = account.expiry
        self.wanted_expires = account.expiry
        # The three times, NaN for none (see L{_NONE}).
        self._sent = _NONE
        self._next_at = 0.0 if account.enabled else _NONE
        self._until = _NONE
        self.last_reply: tuple[int, str] | None = None
        self.last_error = ""
        self.failures = 0
        #: Failures that preceded the last success (0 if none).
        self.recovered_after = 0
        # resend, retiring, removed, proxy and paced, as bits (one field, not five).
        self._flags = 0
        # Challenges kept for credentials sent up front (nc counting up):
        # see _Kept, _kept() and _keep().
        self._auth: _Kept = None
        self._nonce = ""
        self._nc = 0
        self._tries = _NO_TRIES
        #: The last target sent to, C{TRANSPORT:IP:PORT} (interned by the client), or C{""}.
        self.target = ""

    def __repr__(self) -> str:
        return f"<Registrant {self.account.aor} {self._state.name}>"

    def _move(self, event: Event) -> None:
        """Change state through L{TRANSITIONS}, the only place a state changes."""
        new = TRANSITIONS.get((self._state, event))
        if new is None:
            raise InvalidTransition(f"{event.value} in {self._state.name}")
        self._state = new

    @property
    def state(self) -> RegState:
        """The registration state; it changes only through L{TRANSITIONS}."""
        return self._state

    @property
    def next_at(self) -> float | None:
        """When the record next wants to send (see the class), or C{None}."""
        at = self._next_at
        return None if at != at else at

    @next_at.setter
    def next_at(self, value: float | None) -> None:
        self._next_at = _NONE if value is None else value

    @property
    def registered_until(self) -> float | None:
        """When the binding we hold expires (see the class), or C{None}."""
        until = self._until
        return None if until != until else until

    @registered_until.setter
    def registered_until(self, value: float | None) -> None:
        self._until = _NONE if value is None else value

    @property
    def last_register_sent(self) -> float | None:
        """When the last request went (an attempt's first or a follow-up), or C{None}."""
        sent = self._sent
        return None if sent != sent else sent

    @last_register_sent.setter
    def last_register_sent(self, value: float | None) -> None:
        self._sent = _NONE if value is None else value

    @property
    def removed(self) -> bool:
        """Whether the record has left the registry (nothing may act on it)."""
        return self._flags & _REMOVED != 0

    def mark_removed(self) -> None:
        """The registry forgot this record (called by the registry only)."""
        self._flags |= _REMOVED

    @property
    def paced(self) -> bool:
        """
        Waiting in the pacer's first-request queue (set and cleared by the
        pacer only): a flag here, not a set of 100,000 records there, whose
        lookups missed the cache at every push.
        """
        return self._flags & _PACED != 0

    @paced.setter
    def paced(self, value: bool) -> None:
        self._flags = self._flags | _PACED if value else self._flags & ~_PACED

    @property
    def resend(self) -> bool:
        """Send again as soon as the outstanding transaction ends."""
        return self._flags & _RESEND != 0

    @resend.setter
    def resend(self, value: bool) -> None:
        self._flags = self._flags | _RESEND if value else self._flags & ~_RESEND

    @property
    def retiring(self) -> bool:
        """Un-register, then forget this record."""
        return self._flags & _RETIRING != 0

    @retiring.setter
    def retiring(self, value: bool) -> None:
        self._flags = self._flags | _RETIRING if value else self._flags & ~_RETIRING

    def retry_early(self, now: float, cured: frozenset[RegState] = TIMED_OUT) -> bool:
        """
        Retry now instead of after the back-off, if the record is waiting
        one out in a state of C{cured}: a timeout when its registrar answers
        again; a timeout or a 503 when its hop has another target
        (L{FAIL_OVER}, RFC 3263 §4.3).

        @return: whether the record's send time moved.
        """
        at = self.next_at
        if self._flags & _REMOVED or self._state not in cured or at is None or at <= now:
            return False
        self.next_at = now
        return True

    @property
    def call_id(self) -> str:
        """The Call-ID of every request of this record."""
        return (self._ids >> _TAG_BITS).to_bytes(16, "big").hex()  # as f"{...:032x}", at half the cost

    def adopt(self, call_id: str, last_cseq: int) -> bool:
        """
        Continue a registration another node made (cluster take-over): its
        Call-ID, and CSeq numbers above C{last_cseq}.  A Call-ID not of
        this daemon's form (32 hex digits) is not taken.

        @return: whether the Call-ID was taken.
        """
        if len(call_id) != 32 or not all(c in "0123456789abcdef" for c in call_id):
            return False
        if call_id != self.call_id:
            # Another Call-ID (another node's, or a fresh one after CSeq
            # reached 2^31): its numbering is the one that counts.
            self._ids = int(call_id, 16) << _TAG_BITS | self._ids & _TAG_MASK
            self.cseq = last_cseq
        elif last_cseq > self.cseq:
            self.cseq = last_cseq
        return True

    def assume_bound(self, now: float) -> None:
        """
        Take it that an enabled record holds a binding (another node
        registered it), so that retiring it un-registers it.
        """
        if self.account.enabled and (self.registered_until is None or self.registered_until <= now):
            self.registered_until = now + 1

    @property
    def from_tag(self) -> str:
        """The From tag of every request of this record."""
        return (self._ids & _TAG_MASK).to_bytes(5, "big").hex()  # as f"{...:010x}"

    @property
    def enabled(self) -> bool:
        """Whether the account is enabled."""
        return self.account.enabled

    def due(self, now: float) -> bool:
        """Whether the record wants to send a request now."""
        return now >= self._next_at  # never for NaN (none)

    def start(self, now: float) -> Outgoing:
        """
        Begin a new attempt: a REGISTER if enabled, else an un-REGISTER.

        Credentials from the last accepted challenge go up front with the
        next nonce count, saving a round trip while the nonce lives.
        """
        self._tries = _NO_TRIES
        self.next_at = None
        if self.enabled:
            self._move(Event.SEND_REGISTER)
            return self._request(self.wanted_expires, now)
        self._move(Event.SEND_UNREGISTER)
        return self._request(0, now)

    def _request(self, expires: int, now: float) -> Outgoing:
        self._sent = now
        self.cseq += 1
        kept = self._auth
        if kept is None:
            return Outgoing(self.cseq, expires)
        if not isinstance(kept, tuple):
            # The compact form (see _Kept): answered from the record's own fields.
            self._nc += 1
            header = _PROXY_HEADER if self._flags & _PROXY else _HEADER
            return Outgoing(self.cseq, expires, ((header, self._answer(kept.challenge(self._nonce), self._nc)),))
        auth = []
        for state in kept:
            state.nc += 1
            auth.append((state.header, self._answer(state.challenge(), state.nc)))
        return Outgoing(self.cseq, expires, tuple(auth))

    def _kept(self) -> tuple[_Auth, ...]:
        """The kept challenges, one L{_Auth} each (made for the occasion from the compact form)."""
        auth = self._auth
        if auth is None:
            return ()
        if isinstance(auth, tuple):
            return auth
        kept = _Auth(_PROXY_HEADER if self._flags & _PROXY else _HEADER, auth, self._nonce)
        kept.nc = self._nc
        return (kept,)

    def _keep(self, kept: tuple[_Auth, ...]) -> None:
        """Keep these challenges, in the compact form if they fit it (see L{_Kept})."""
        if len(kept) == 1 and not isinstance(kept[0], _OpaqueAuth):
            only = kept[0]
            self._auth = only.layout
            self._nonce = only.nonce
            self._nc = only.nc
            self._flags = self._flags | _PROXY if only.header == _PROXY_HEADER else self._flags & ~_PROXY
            return
        self._auth = kept if kept else None
        self._nonce = ""
        self._nc = 0

    def _answer(self, challenge: Challenge, nc: int) -> str:
        account = self.account
        assert account.username is not None and account.password is not None
        return authorization_value(
            challenge,
            Credentials(account.username, account.password),
            "REGISTER",
            account.registrar,
            self.policy.token(8),
            nc,
        )

    def on_response(self, response: Response, now: float) -> Outgoing | None:
        """
        Handle a final response to the outstanding request.

        @return: a follow-up request to send at once (a digest answer, a
            retry with Min-Expires, an un-REGISTER), or C{None}.
        """
        status = response.status
        if status < 200 or self._state not in IN_TRANSACTION:
            return None
        # Through Any: compiled (mypyc), a tuple[int, str] result would be
        # unboxed and boxed again, one copy per record instead of the shared one.
        replies: SharedValues[Any] = self.policy.shared.replies
        self.last_reply = replies.share((status, response.reason))
        follow: Outgoing | None = None
        if status < 300:
            follow = self._on_success(response, now)
        elif status in (401, 407):
            follow = self._on_challenge(response, now)
        elif status == 423:
            follow = self._on_too_brief(response, now)
        elif status == 408:
            self._fail(Event.TIMED_OUT, now, f"{status} {response.reason}", response)
        else:
            self._fail(Event.REFUSED, now, f"registrar answered {status} {response.reason}", response)
        if follow is None:
            self._settle(now)
        return follow

    def on_timeout(self, now: float, target: str = "") -> None:
        """The outstanding transaction (sent to C{target}) timed out (Timer F)."""
        if self._state in IN_TRANSACTION:
            self._fail(Event.TIMED_OUT, now, f"no final response from {target} before Timer F" if target else "no final response before Timer F")
            self._settle(now)

    def on_unreachable(self, now: float, reason: str) -> None:
        """
        The outstanding request's target could not be reached: its
        connection was refused, failed TLS or broke (RFC 3263 §4.3 treats
        this as a timeout: another target may cure it).
        """
        if self._state in IN_TRANSACTION:
            self._fail(Event.TIMED_OUT, now, reason)
            self._settle(now)

    def on_send_error(self, now: float, reason: str) -> None:
        """The request could not be sent (resolution or socket error)."""
        self._fail(Event.FAILED, now, reason)
        self._settle(now)

    def on_internal_error(self, now: float, reason: str) -> None:
        """
        Something failed while handling this record (a bug, or input no
        check foresaw): INTERNAL_ERROR with the normal back-off, so the
        record always has pending work.  Only plain assignments and the
        back-off: this must not fail in turn.
        """
        self._keep(())
        self._tries = _NO_TRIES
        self._move(Event.FAILED)
        self.failures += 1
        self.last_error = printable(reason)[:MAX_ERROR]
        if not self.enabled and (self.registered_until is None or self.registered_until <= now):
            self.registered_until = None
            self.next_at = None
        else:
            self.next_at = now + self.policy.backoff(self.failures)
        self._settle(now)

    @property
    def in_transaction(self) -> bool:
        """Whether a request is outstanding."""
        return self._state in IN_TRANSACTION

    def reconfigure(self, account: Account, now: float) -> bool:
        """
        Take new configuration (same key), keeping Call-ID, CSeq and state.

        A changed enabled record registers again at once with its new data;
        a newly disabled one un-registers.  Unchanged configuration is a
        no-op, so reloads never cause a registration storm (the row id is
        not configuration: a record added by the console and later read
        from its row is unchanged; it only learns the id).

        @return: whether anything changed.
        """
        if account.enabled:
            self.retiring = False  # enabled again before it was forgotten
        if account == self.account:
            if account.row_id != self.account.row_id:
                self.account = account
            return False
        self.account = account
        self.wanted_expires = account.expiry
        self._keep(())
        self.send_soon(now)
        return True

    def send_soon(self, now: float) -> None:
        """
        Send (register, refresh, or un-register if disabled) as soon as the
        outstanding transaction, if any, ends.
        """
        if self.in_transaction:
            self.resend = True
            return
        if self.enabled or (self.registered_until is not None and self.registered_until > now):
            self.next_at = now
            return
        # Disabled with nothing to un-register: idle.
        self.registered_until = None
        self._move(Event.IDLE)
        self.next_at = None
        self.failures = 0

    def retire(self, now: float) -> None:
        """Disable for good: un-register if needed, then be forgotten."""
        self.retiring = True
        if self.enabled:
            self.reconfigure(dataclasses.replace(self.account, enabled=False), now)
        else:
            self.send_soon(now)

    @property
    def finished(self) -> bool:
        """Whether a retiring record has nothing left to send."""
        return self.retiring and self.next_at is None and not self.in_transaction

    def _settle(self, now: float) -> None:
        if self.resend and not self.in_transaction:
            self.resend = False
            self.send_soon(now)

    def _on_success(self, response: Response, now: float) -> Outgoing | None:
        self._tries = _NO_TRIES  # only meaningful within an attempt
        if isinstance(self._auth, tuple):  # the compact form is always small
            for kept in self._auth:
                if not kept.small:  # answered in this attempt, not kept after it
                    self._keep(tuple(kept for kept in self._auth if kept.small))
                    break
        if self._state in _UNREGISTER_STATES:
            self.registered_until = None
            self.failures = 0
            self._move(Event.RELEASED)
            if self.enabled:
                return self.start(now)
            self.next_at = None
            self.last_error = ""
            return None
        # A registrar may shorten what we asked for, not lengthen it (RFC 3261
        # §10.3): a longer grant is taken as what we asked, so a registrar
        # answering 4294967295 cannot make the record stop refreshing.
        granted = min(self._granted(response), self.wanted_expires)
        if granted <= 0:
            self._fail(Event.REFUSED, now, "200 OK granted no time to our binding")
            return None
        self.registered_until = now + granted
        self._move(Event.GRANTED)
        if not self.enabled:
            return self.start(now)  # disabled meanwhile: un-register what was granted
        self.expires = self.policy.shared.expiries.share(granted)
        self.recovered_after = self.failures
        self.failures = 0
        self.last_error = ""
        self.next_at = now + granted - self.policy.refresh_lead(granted)
        return None

    def _granted(self, response: Response) -> int:
        """
        The expiry granted to our binding (RFC 3261 §10.2.4): its Contact's
        expires parameter, else the Expires header.

        A registrar that rewrote our Contact (added a parameter, changed
        the host) lists none that matches: then the smallest expiry of the
        bindings plausibly ours (same user part, or the only one) is used,
        else the Expires header, else the smallest listed, else
        L{NO_INFORMATION_GUESS}; never more than we asked for, never less
        than L{GUESS_FLOOR}; and the guess is counted.  Guessing short costs
        an early refresh; guessing long would let the binding lapse.
        """
        account = self.account
        echo = f"<{account.binding_uri}>"
        try:
            contacts = response.get_all("contact")
        except SipParseError:
            contacts = []  # an unsplittable list (an open quote): nothing to match
        found = False
        plausible: list[int] = []
        listed: list[int] = []
        for value in contacts:
            try:
                contact = parse_name_addr(value)
                if contact.uri == "*":
                    continue
                expires = _expires_param(contact.params.get("expires"))
                if value.startswith(echo):  # our binding echoed as sent: no URI comparison
                    if expires is not None:
                        return expires
                    ours, user = True, None
                else:
                    binding = account.binding
                    uri = parse_uri_uncached(contact.uri)
                    ours, user = uris_equal(uri, binding), uri.user
            except SipParseError:
                continue
            if ours and not found:
                if expires is not None:
                    return expires
                found = True  # ours, without a parameter: the header says
                continue
            if expires is not None and expires > 0:
                listed.append(expires)
                if len(contacts) == 1 or (user is not None and user == account.binding.user):
                    plausible.append(expires)
        try:
            header = response.int_header("expires")
        except SipParseError:
            header = None
        if found and header is not None:
            return header
        self.policy.expiry_guessed()
        if found:
            guess = NO_INFORMATION_GUESS  # ours is listed, for how long nobody says
        elif plausible:
            guess = min(plausible)
        elif header is not None:
            guess = header
        elif listed:
            guess = min(listed)
        else:
            guess = NO_INFORMATION_GUESS
        wanted = self.wanted_expires
        return min(wanted, max(guess, min(wanted, GUESS_FLOOR))) if guess > 0 else 0

    def _on_challenge(self, response: Response, now: float) -> Outgoing | None:
        account = self.account
        header = _HEADER if response.status == 401 else _PROXY_HEADER
        if not account.has_credentials:
            self._fail(
                Event.REJECTED,
                now,
                f"{response.status} challenge but the record has no username or password",
            )
            return None
        source = "www-authenticate" if response.status == 401 else "proxy-authenticate"
        challenges: list[Challenge] = []
        try:
            for value in response.get_all(source):
                challenges.extend(parse_challenges(value, shared=self.policy.shared.text, templates=self.policy.shared.challenges))
        except SipParseError as e:
            self._fail(Event.FAILED, now, f"unparsable {source}: {e}")
            return None
        assert account.username is not None and account.password is not None
        chosen = choose_challenge(challenges, Credentials(account.username, account.password))
        if chosen is None:
            offered = ", ".join(sorted({c.algorithm for c in challenges if c.is_digest})) or "none"
            self._fail(
                Event.FAILED,
                now,
                f"no digest challenge we can answer in {response.status} (algorithms offered: {offered})",
            )
            return None
        tries = self._tries
        follow_ups, stale = tries.follow_ups, tries.stale
        if header in tries.answered:
            if not chosen.stale or stale >= MAX_STALE_ANSWERS:
                self._fail(
                    Event.REJECTED,
                    now,
                    f"credentials rejected: {response.status} {response.reason}",
                )
                return None
            stale += 1
        if follow_ups >= MAX_FOLLOW_UPS:
            self._fail(Event.REFUSED, now, f"{response.status} after {follow_ups} follow-up requests")
            return None
        self._tries = _Tries(follow_ups + 1, stale, tries.too_brief, tries.answered + (header,))
        # One kept challenge per header.
        fresh = _Auth.of(header, chosen, self.policy.shared.layouts)
        self._keep(tuple(kept for kept in self._kept() if kept.header != header) + (fresh,))
        self._move(Event.CHALLENGED)
        return self._request(0 if self._state == RegState.AUTHENTICATING_UNREGISTER_STATE else self.wanted_expires, now)

    def _on_too_brief(self, response: Response, now: float) -> Outgoing | None:
        try:
            minimum = response.int_header("min-expires")
        except SipParseError:
            minimum = None
        if minimum is None or minimum <= self.wanted_expires or self._state in _UNREGISTER_STATES:
            self._fail(
                Event.REFUSED,
                now,
                f"423 without a usable Min-Expires (got {minimum}, asked {self.wanted_expires})",
                response,
            )
            return None
        tries = self._tries
        follow_ups, too_brief = tries.follow_ups, tries.too_brief
        if too_brief >= MAX_TOO_BRIEF or follow_ups >= MAX_FOLLOW_UPS:
            self._fail(
                Event.REFUSED,
                now,
                f"423 again after {too_brief} longer expiries in this attempt (Min-Expires {minimum})",
                response,
            )
            return None
        # Credentials already accepted go again (nc + 1); a challenge to
        # them is a fresh challenge, not a rejection: nothing answered.
        self._tries = _Tries(follow_ups + 1, tries.stale, too_brief + 1, ())
        self.wanted_expires = minimum
        self._move(Event.TOO_BRIEF)
        return self._request(minimum, now)

    def _fail(self, event: Event, now: float, error: str, response: Response | None = None) -> None:
        self._keep(())
        self._tries = _NO_TRIES
        self._move(event)
        self.failures += 1
        self.last_error = printable(error)[:MAX_ERROR]
        retry_after = None
        if response is not None:
            try:
                retry_after = response.retry_after
            except SipParseError:
                retry_after = None
        if retry_after is not None:
            delay = self.policy.retry_after(retry_after)
        else:
            delay = self.policy.backoff(self.failures)
        if not self.enabled and (self.registered_until is None or self.registered_until <= now):
            # Nothing left to un-register: stop here.
            self.registered_until = None
            self.next_at = None
            return
        self.next_at = now + delay


def _expires_param(text: str | None) -> int | None:
    """A Contact's expires parameter, or C{None} if absent or not a number."""
    if text is None:
        return None
    if text.isascii() and text.isdigit() and len(text) <= 10:  # the common case, inline
        return min(int(text), 2**32 - 1)
    try:
        return parse_delta_seconds(text, "expires")
    except SipParseError:
        return None
