# -*- test-case-name: tests.unit.net.test_resolver,tests.unit.agent.test_client -*-
"""
RFC 3263 §4 server location, without blocking: a next-hop URI becomes
every L{Target} C{(transport, ip, port)} to try, in order (for fail-over,
RFC 3263 §4.3).

  - An IP literal is used as is: the caller's transport, else UDP (TLS
    when C{secure}), port 5060 (5061 for TLS) unless the URI has one.
  - A host with an explicit port: A/AAAA only, no NAPTR, no SRV.
  - A transport chosen by the caller: SRV C{_sip._udp}, C{_sip._tcp} or
    C{_sips._tcp}, then A/AAAA of each target; no SRV: A/AAAA at the
    default port.
  - No transport: NAPTR (C{SIP+D2U}, C{SIP+D2T}, C{SIPS+D2T}, the ones the
    daemon can send over; only C{SIPS+D2T} when C{secure}) by order then
    preference, then SRV on each replacement; nothing usable: SRV
    C{_sip._udp}, C{_sip._tcp}, C{_sips._tcp} (only C{_sips._tcp} when
    C{secure}), every answer concatenated so fail-over can cross
    transports; no SRV at all: A/AAAA at 5060 over UDP (5061 TLS).

SRV records are ordered per RFC 2782 (priority, then weighted random
selection with an injectable C{random}); a C{.} target is not offered.
Queries that do not depend on each other run in parallel.

Answers are cached for the shortest TTL of the chain, within
[L{MIN_TTL}, L{MAX_TTL}]; failures for L{NEGATIVE_TTL} (RFC 2308 in
spirit), so a bad host name is not asked again by every record using it.
While a name is being resolved, later callers for the same key share the
lookup (20,000 accounts at one registrar: one lookup).  Each
L{SipResolver} owns its caches (nothing process-wide), all bounded.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any, Callable, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.python.failure import Failure

from uacregistrant.sip.sharing import Memo
from uacregistrant.sip.uri import SipUri

#: C{(transport, ip, port)}, transport one of C{"udp"}, C{"tcp"}, C{"tls"}.
Target = tuple[str, str, int]
#: C{(ip, port)}: a target's network address.
Address = tuple[str, int]
#: What a resolution depends on: C{(host, port, transport, secure)}.
_Key = tuple[str, int | None, str | None, bool]
#: A host's C{(ip, ttl)} pairs, and why there are none (else C{""}).
_Addresses = tuple[list[tuple[str, int]], str]

MIN_TTL = 30
MAX_TTL = 3600
#: How long a failed resolution is remembered (seconds).
NEGATIVE_TTL = 30
#: Per-query retry timeouts (seconds): a registration should not wait a minute for DNS.
LOOKUP_TIMEOUT = (1, 3, 6)
#: Hosts whose IP-literal check a resolver remembers (next hops: registrars, proxies).
LITERALS_MAX = 4096
#: Keys kept in each cache (answers, failures); the oldest goes first.
CACHE_MAX = 4096
#: The most targets one resolution returns (and SRV target hosts it looks up).
TARGETS_MAX = 16
#: The most records of one SRV answer considered.
SRV_RECORDS_MAX = 64
#: The most NAPTR records followed.
NAPTR_MAX = 8
#: The longest L{ResolutionError} message.
MESSAGE_MAX = 200

#: Every transport the resolver knows.
TRANSPORTS = frozenset({"udp", "tcp", "tls"})
#: NAPTR services (lower-case) → transport (RFC 3263 §4.1).
_SERVICES = {"sip+d2u": "udp", "sip+d2t": "tcp", "sips+d2t": "tls"}
#: SRV queries without NAPTR, in the order they are preferred.
_SRV_ORDER = ("udp", "tcp", "tls")


def default_port(transport: str) -> int:
    """5061 for TLS, else 5060 (RFC 3261 §19.1.2)."""
    return 5061 if transport == "tls" else 5060


def srv_name(transport: str, host: str) -> str:
    """The SRV name for C{transport} at C{host}: C{_sips._tcp.HOST} for TLS, else C{_sip._TRANSPORT.HOST}."""
    return f"_sips._tcp.{host}" if transport == "tls" else f"_sip._{transport}.{host}"


def _ip_literal(host: str) -> str:
    """The normalised address if C{host} is an IP literal, else C{""}."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


def _domain(name: object) -> str:
    """A C{dns.Name} (or its bytes) as lower-case text without the final dot; C{""} for the root."""
    raw = getattr(name, "name", name)
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    return text.rstrip(".").lower()


def _text(value: object) -> str:
    """A C{dns.Charstr} (or its bytes) as text."""
    raw = getattr(value, "string", value)
    return raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)


def _reason(failure: Failure) -> str:
    """Why a query failed, in a word or two."""
    exc = failure.value
    if isinstance(exc, dns_error.DNSServerError):
        return "server failure"
    if isinstance(exc, dns_error.DNSQueryRefusedError):
        return "refused"
    if isinstance(exc, dns_error.DNSFormatError):
        return "format error"
    if isinstance(exc, dns_error.DNSNotImplementedError):
        return "not implemented"
    if isinstance(exc, dns_error.DNSUnknownError):
        return "unknown error"
    if isinstance(exc, (dns_error.DomainError, dns_error.AuthoritativeDomainError)):
        return "NXDOMAIN"
    if isinstance(exc, defer.TimeoutError):  # DNSQueryTimeoutError included
        return "timeout"
    return type(exc).__name__


def _bounded(message: str) -> str:
    """C{message}, cut to L{MESSAGE_MAX} characters."""
    return message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 1] + "…"


def rfc2782_order(records: list[Any], random: Callable[[], float]) -> list[Any]:
    """
    SRV records in the order to try them (RFC 2782 "Usage rules"): lowest
    priority first; within a priority, weight-0 records first, then pick
    repeatedly the first record whose running weight sum reaches
    C{random() * total}.

    @param records: C{RRHeader}s with C{Record_SRV} payloads.
    """
    ordered: list[Any] = []
    for priority in sorted({record.payload.priority for record in records}):
        left = [r for r in records if r.payload.priority == priority]
        left.sort(key=lambda r: r.payload.weight != 0)  # stable: weight-0 first
        while left:
            total = sum(r.payload.weight for r in left)
            threshold = random() * total
            running = 0
            chosen = len(left) - 1
            for index, record in enumerate(left):
                running += record.payload.weight
                if running >= threshold:
                    chosen = index
                    break
            ordered.append(left.pop(chosen))
    return ordered


class ResolutionError(Exception):
    """No target could be found for a URI; the message says what failed."""


class _Resolution:
    """
    One resolution of one key: the shortest TTL seen, each SRV name and
    each host's addresses asked once.
    """

    def __init__(self, owner: SipResolver) -> None:
        self._owner = owner
        self.ttl = MAX_TTL
        self._hosts: dict[str, defer.Deferred[_Addresses]] = {}
        #: SRV name → its records, and why there are none.
        self._srv: dict[str, tuple[list[Any], str]] = {}

    def saw(self, ttl: int) -> None:
        """Count a record used in the chain towards the TTL."""
        self.ttl = min(self.ttl, int(ttl))

    async def run(self, host: str, port: int | None, transport: str | None, secure: bool) -> list[Target]:
        """Every target for the key, in order; raises L{ResolutionError}."""
        if port is not None:
            return await self._at_host(host, transport or ("tls" if secure else "udp"), port)
        if transport is not None:
            return await self._by_srv(host, [(transport, srv_name(transport, host))], fallback=transport)
        owner = self._owner
        plan = await self._naptr(host, secure)
        if plan:
            targets, _ = await self._follow(host, plan)
            if targets:
                return targets
        wanted = ("tls",) if secure else tuple(t for t in _SRV_ORDER if t in owner._transports)
        if secure:
            fallback = "tls"
        else:
            fallback = next((t for t in ("udp", "tcp") if t in owner._transports), "tls" if "tls" in owner._transports else "udp")
        plan = [(t, srv_name(t, host)) for t in wanted if t in owner._transports]
        return await self._by_srv(host, plan, fallback)

    async def _by_srv(self, host: str, plan: list[tuple[str, str]], fallback: str) -> list[Target]:
        """SRV on each of C{plan}, or A/AAAA of C{host} over C{fallback} when none has records."""
        targets, problem = await self._follow(host, plan)
        if targets:
            return targets
        if problem:
            raise ResolutionError(_bounded(problem))
        return await self._at_host(host, fallback, default_port(fallback))

    async def _naptr(self, host: str, secure: bool) -> list[tuple[str, str]]:
        """The C{(transport, SRV name)} of the usable NAPTR records of C{host}, in order (none on failure)."""
        records, _ = await self._owner._query("lookupNamingAuthorityPointer", host, dns.NAPTR)
        usable: list[tuple[int, int, str, str, int]] = []
        for record in records:
            naptr = record.payload
            transport = _SERVICES.get(_text(naptr.service).lower())
            replacement = _domain(naptr.replacement)
            if (
                transport is None
                or transport not in self._owner._transports
                or (secure and transport != "tls")
                or _text(naptr.flags).lower() != "s"
                or not replacement
            ):
                continue
            usable.append((int(naptr.order), int(naptr.preference), transport, replacement, int(record.ttl)))
        usable.sort(key=lambda u: (u[0], u[1]))
        plan: list[tuple[str, str]] = []
        for _, _, transport, replacement, ttl in usable[:NAPTR_MAX]:
            if (transport, replacement) not in plan:
                plan.append((transport, replacement))
                self.saw(ttl)
        return plan

    async def _follow(self, host: str, plan: list[tuple[str, str]]) -> tuple[list[Target], str]:
        """
        SRV on every name of C{plan} (in parallel), then A/AAAA of their
        targets (in parallel): the targets in plan then RFC 2782 order,
        and, when there are none although some SRV records were found,
        why (else C{""}).
        """
        owner = self._owner
        answers = self._srv
        queries = {
            name: defer.ensureDeferred(owner._query("lookupService", name, dns.SRV)) for _, name in plan if name not in answers
        }
        for name, query in queries.items():
            answers[name] = await query
        entries: list[tuple[str, str, int, int]] = []  # (transport, target host, port, SRV TTL)
        found = False
        for transport, name in plan:
            records, _ = answers[name]
            found = found or bool(records)
            for record in rfc2782_order(records[:SRV_RECORDS_MAX], owner._random):
                target = _domain(record.payload.target)
                if target and len(entries) < TARGETS_MAX:
                    entries.append((transport, target, int(record.payload.port), int(record.ttl)))
        if not found:
            return [], ""
        if not entries:
            return [], f"SIP service not offered by {host} (SRV target \".\")"
        for _, target, _, _ in entries:
            self._start(target)  # every lookup before waiting for one
        targets: list[Target] = []
        problems: list[str] = []
        for transport, target, port, ttl in entries:
            addresses, reasons = await self._addresses(target)
            if reasons:
                problems.append(f"{target}: {reasons}")
            for ip, address_ttl in addresses:
                item = (transport, ip, port)
                if item not in targets and len(targets) < TARGETS_MAX:
                    targets.append(item)
                    self.saw(ttl)
                    self.saw(address_ttl)
        if targets:
            return targets, ""
        return [], f"no {owner._families_text} record for the SRV targets of {host} ({'; '.join(dict.fromkeys(problems))})"

    async def _at_host(self, host: str, transport: str, port: int) -> list[Target]:
        """C{host}'s addresses as targets; raises L{ResolutionError}."""
        addresses, reasons = await self._addresses(host)
        if not addresses:
            raise ResolutionError(_bounded(f"no {self._owner._families_text} record for {host} ({reasons})"))
        for _, ttl in addresses:
            self.saw(ttl)
        return [(transport, ip, port) for ip, _ in addresses]

    def _start(self, host: str) -> None:
        """Start looking up C{host}'s addresses, unless this resolution already has."""
        if host not in self._hosts:
            self._hosts[host] = defer.ensureDeferred(self._owner._addresses(host))

    def _addresses(self, host: str) -> defer.Deferred[_Addresses]:
        """
        C{host}'s addresses (see L{SipResolver._addresses}), asked once per
        resolution; each caller gets its own Deferred (awaiting consumes a
        Deferred's result).
        """
        self._start(host)
        mine: defer.Deferred[_Addresses] = defer.Deferred()

        def relay(result: _Addresses | Failure) -> _Addresses | None:
            if isinstance(result, Failure):
                mine.errback(result)  # handed on: the shared result becomes None
                return None
            mine.callback(result)
            return result

        self._hosts[host].addBoth(relay)
        return mine


class SipResolver:
    """Resolves next-hop URIs to L{Target}s (RFC 3263); caches answers and failures, shares lookups in flight."""

    def __init__(
        self,
        resolver: IResolver | Callable[[], IResolver],
        clock: IReactorTime,
        ipv4: bool = True,
        ipv6: bool = True,
        transports: frozenset[str] = TRANSPORTS,
        random: Callable[[], float] = random.random,
    ) -> None:
        """
        @param resolver: the DNS resolver, or a function making it on the
            first lookup.
        @param ipv4: look up A records (the daemon has an IPv4 socket).
        @param ipv6: look up AAAA records (the daemon has an IPv6 socket);
            with both, IPv4 addresses come first.
        @param transports: the transports the daemon can send over: NAPTR
            and SRV answers for others are skipped when the caller leaves
            the transport to RFC 3263.
        @param random: uniform in [0, 1), for RFC 2782 weighted selection.
        """
        self._families = tuple(family for family, wanted in ((dns.A, ipv4), (dns.AAAA, ipv6)) if wanted)
        self._families_text = " or ".join("A" if family == dns.A else "AAAA" for family in self._families) or "address"
        self._transports = transports
        self._random = random
        self._make_resolver = resolver if callable(resolver) and not IResolver.providedBy(resolver) else None
        self._resolver_given = None if self._make_resolver is not None else cast(IResolver, resolver)
        self._clock = clock
        #: Key → (targets, expiry).
        self._cache: dict[_Key, tuple[tuple[Target, ...], float]] = {}
        #: Key → (message, expiry) of a failed resolution.
        self._failed: dict[_Key, tuple[str, float]] = {}
        #: Key → the callers waiting for the lookup in flight.
        self._pending: dict[_Key, list[defer.Deferred[list[Target]]]] = {}
        #: Host → its normalised address if an IP literal, else C{""}
        #: (checked for every request sent): pure memoization, bounded.
        self._literals: Memo[str, str] = Memo(LITERALS_MAX)

    @property
    def _resolver(self) -> IResolver:
        """The DNS resolver, made on the first lookup (reading resolv.conf is I/O a service build must not do)."""
        if self._resolver_given is None:
            assert self._make_resolver is not None
            self._resolver_given = self._make_resolver()
        return self._resolver_given

    def _literal(self, uri: SipUri, transport: str | None, secure: bool) -> list[Target] | None:
        """The one target of an IP-literal URI, else C{None}."""
        host = uri.host
        literal = self._literals.get(host)
        if literal is None:
            literal = self._literals.keep(host, _ip_literal(host))
        if not literal:
            return None
        chosen = transport.lower() if transport else ("tls" if secure else "udp")
        return [(chosen, literal, uri.port or default_port(chosen))]

    def cached_targets(self, uri: SipUri, transport: str | None = None, secure: bool = False) -> list[Target] | None:
        """
        Every target, in the order to try them, if known without a lookup
        (an IP literal, or a cached answer); else C{None} (a cached failure
        too).

        @param transport: the transport the caller has chosen (the URI's
            C{transport} parameter, C{sips:}, a forced socket), or C{None}
            to choose by RFC 3263.
        @param secure: only TLS will do (a C{sips:} URI): with no
            C{transport}, only TLS targets, 5061 by default.  A C{transport}
            given wins (the caller maps C{sips:} to TLS).
        """
        literal = self._literal(uri, transport, secure)
        if literal is not None:
            return literal
        key = (uri.host, uri.port, transport.lower() if transport else None, secure)
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[1] > self._clock.seconds():
            return list(entry[0])
        del self._cache[key]
        return None

    def resolve_targets(self, uri: SipUri, transport: str | None = None, secure: bool = False) -> defer.Deferred[list[Target]]:
        """
        Every target in the order to try them (never empty); fails with
        L{ResolutionError}, at once while a failure for the same key is
        remembered.  Each caller gets its own Deferred and list.

        @param transport: as for L{cached_targets}.
        @param secure: as for L{cached_targets}.
        """
        known = self.cached_targets(uri, transport, secure)
        if known is not None:
            return defer.succeed(known)
        key = (uri.host, uri.port, transport.lower() if transport else None, secure)
        failed = self._failed.get(key)
        if failed is not None:
            if failed[1] > self._clock.seconds():
                return defer.fail(ResolutionError(failed[0]))
            del self._failed[key]
        mine: defer.Deferred[list[Target]] = defer.Deferred()
        waiting = self._pending.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._pending[key] = [mine]
        resolution = _Resolution(self)
        lookup = defer.ensureDeferred(resolution.run(*key))
        lookup.addBoth(self._settle, key, resolution)
        return mine

    def _settle(self, result: list[Target] | Failure, key: _Key, resolution: _Resolution) -> None:
        """Remember the outcome of the lookup for C{key}, then answer everyone waiting for it."""
        waiting = self._pending.pop(key, [])
        now = self._clock.seconds()
        if isinstance(result, Failure):
            error = result.value
            message = str(error) if isinstance(error, ResolutionError) else _bounded(f"resolving {key[0]} failed: {error!r}")
            _put(self._failed, key, (message, now + NEGATIVE_TTL))
            for d in waiting:
                if not d.called:  # a caller may have cancelled
                    d.errback(ResolutionError(message))
            return
        _put(self._cache, key, (tuple(result), now + max(MIN_TTL, min(MAX_TTL, resolution.ttl))))
        for d in waiting:
            if not d.called:
                d.callback(list(result))

    async def _query(self, method: str, name: str, rtype: int) -> tuple[list[Any], str]:
        """The answers of type C{rtype} to one query, and why there are none (else C{""}); never fails."""
        try:
            answers, _, _ = await getattr(cast(Any, self._resolver), method)(name, LOOKUP_TIMEOUT)
        except Exception:
            return [], _reason(Failure())
        records = [answer for answer in answers if answer.type == rtype]
        return records, "" if records else "no answer"

    async def _addresses(self, host: str) -> _Addresses:
        """C{host}'s C{(ip, ttl)}, A first, and why there are none (else C{""})."""
        queries = [
            (family, defer.ensureDeferred(self._query("lookupAddress" if family == dns.A else "lookupIPV6Address", host, family)))
            for family in self._families
        ]
        addresses: list[tuple[str, int]] = []
        reasons: list[str] = []
        for family, query in queries:
            records, reason = await query
            reasons.append(f"{'A' if family == dns.A else 'AAAA'}: {reason}")
            for record in records:
                payload = record.payload
                ip = payload.dottedQuad() if family == dns.A else str(ipaddress.IPv6Address(payload.address))
                if len(addresses) < TARGETS_MAX and all(ip != known for known, _ in addresses):
                    addresses.append((ip, int(record.ttl)))
        if addresses:
            return addresses, ""
        return [], "; ".join(reasons) if reasons else "no address family to look up"


def _put(cache: dict[_Key, Any], key: _Key, value: Any) -> None:
    """Keep C{value} for C{key} as the newest entry of C{cache}, dropping the oldest past L{CACHE_MAX}."""
    cache.pop(key, None)
    while len(cache) >= CACHE_MAX:
        del cache[next(iter(cache))]
    cache[key] = value
