# -*- test-case-name: tests.unit.net.test_incoming -*-
"""
Stateless answers to the requests peers send us (RFC 3261 §8.2).

A registrar pings the source of a REGISTER with OPTIONS (Kamailio's
nathelper, Asterisk's qualify) and drops the binding when nothing
answers.  An OPTIONS gets a C{200 OK}; a CANCEL a C{481} (there is never
a transaction to cancel, §9.2); a method RFC 3261 or its extensions
define a C{405}, any other a C{501} (§8.2.1); an ACK never anything.

Answers are limited per source address by a token bucket, and the
buckets are bounded in number: a flood of requests, forged sources or
not, costs bounded memory and answers.
"""

from __future__ import annotations

import secrets

from twisted.internet.interfaces import IReactorTime

from uacregistrant.core.counters import SipCounters
from uacregistrant.core.register import USER_AGENT
from uacregistrant.sip.errors import SipParseError, SipRenderError
from uacregistrant.sip.message import Request, is_token, render_response, stamp_via

#: The methods this daemon accepts as a server: listed in Allow.
ALLOW = "OPTIONS"
#: Methods defined by RFC 3261 and its extensions that the daemon
#: understands but does not accept: answered C{405} (§21.4.6).
KNOWN_METHODS = frozenset(
    {"INVITE", "BYE", "REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "INFO", "PRACK", "UPDATE", "REFER", "PUBLISH"}
)
#: Headers without which a request cannot be answered (§8.2.6.2).
_REQUIRED = ("via", "from", "to", "call-id", "cseq")


class TokenBuckets:
    """
    A token bucket per key (C{rate} tokens a second, up to C{burst}),
    for at most C{size} keys: the least recently used is forgotten first
    (a forgotten key starts again with a full bucket).
    """

    def __init__(self, rate: float, burst: int, size: int) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        # key -> (tokens, time of the last update); in order of last use, oldest first.
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        """Take a token from C{key}'s bucket at time C{now}; C{False} if it is empty."""
        buckets = self._buckets
        entry = buckets.pop(key, None)
        if entry is None:
            tokens, last = float(self.burst), now
            if buckets and len(buckets) >= self.size:
                del buckets[next(iter(buckets))]
        else:
            tokens, last = entry
            if now > last:
                tokens = min(float(self.burst), tokens + (now - last) * self.rate)
                last = now
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        # Re-inserted at the end: the dict stays in order of last use.
        buckets[key] = (tokens, last)
        return allowed


class RequestAnswerer:
    """
    Renders the stateless answer to a request from a peer, or says that
    none must be sent; counts what it did in the L{SipCounters}.

    @param rate: answers per second per source address, and C{burst} the
        most at once: high, because a registrar pinging the source of
        every contact (nathelper, qualify) sends thousands of OPTIONS from
        one address; an answer is never larger than its request, so a
        forged source gains no amplification.
    @ivar to_tag: the tag added to a To without one: the same for every
        answer of this daemon, so a retransmitted request gets the same
        answer (§8.2.6.2, §19.3: random, 64 bits).
    """

    def __init__(
        self,
        clock: IReactorTime,
        counters: SipCounters,
        user_agent: str = USER_AGENT,
        rate: float = 1000.0,
        burst: int = 2000,
        sources_max: int = 4096,
    ) -> None:
        self._clock = clock
        self._counters = counters
        self.user_agent = user_agent
        self._buckets = TokenBuckets(rate, burst, sources_max)
        self.to_tag = secrets.token_hex(8)

    @property
    def user_agent(self) -> str:
        """The Server header's value; C{""} for none."""
        return self._user_agent

    @user_agent.setter
    def user_agent(self, value: str) -> None:
        if "\r" in value or "\n" in value:
            raise SipRenderError(f"CR or LF in the user agent {value[:40]!r}")
        self._user_agent = value

    @property
    def sources(self) -> int:
        """How many sources' rate limits are held."""
        return len(self._buckets)

    def answer(self, request: Request, source: tuple[str, int]) -> bytes | None:
        """
        The response to send back to C{source} (the request's source IP
        address and port), or C{None} when none must be sent: an ACK, a
        request lacking what a response copies, or over the rate limit.
        """
        counters = self._counters
        method = request.method
        if method == "ACK" or not all(request.get(name) for name in _REQUIRED):
            counters.dropped_requests += 1
            return None
        if not self._buckets.take(source[0], self._clock.seconds()):
            counters.requests_rate_limited += 1
            return None
        status, reason, extra = self._verdict(request)
        if self._user_agent:
            extra.append(("Server", self._user_agent))
        vias = request.get_all("via")
        try:
            vias[0] = stamp_via(vias[0], source[0], source[1])
            data = render_response(request, status, reason, extra, to_tag=self.to_tag, vias=vias)
        except (SipParseError, SipRenderError):
            counters.dropped_requests += 1
            return None
        counters.requests_answered += 1
        return data

    def _verdict(self, request: Request) -> tuple[int, str, list[tuple[str, str]]]:
        """The status, reason phrase and headers of the answer to C{request}."""
        method = request.method  # case-sensitive (§7.1): "options" is not OPTIONS
        if method == "OPTIONS":
            unsupported = [tag for tag in request.get_all("require") if is_token(tag)]
            if unsupported:
                # No extension is supported (§8.2.2.3).
                return 420, "Bad Extension", [("Unsupported", ", ".join(unsupported))]
            # Accept: absent means application/sdp (§20.1), and §11.2 wants it
            # present; empty says that no body of any type is accepted.
            return 200, "OK", [("Allow", ALLOW), ("Accept", "")]
        if method == "CANCEL":
            return 481, "Call/Transaction Does Not Exist", []
        if method in KNOWN_METHODS:
            return 405, "Method Not Allowed", [("Allow", ALLOW)]
        return 501, "Not Implemented", []
