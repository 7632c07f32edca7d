# -*- test-case-name: tests.unit.net.test_resolver,tests.unit.agent.test_client -*-
"""
RFC 3263 server location for UDP, without blocking: an IP literal is used
as is; a host with an explicit port is looked up as A, then AAAA; a bare
host name is looked up as SRV C{_sip._udp} (every target, in priority
then weight order, for fail-over), then A/AAAA on port 5060.  Answers
are cached for their TTL.  Each L{SipResolver} owns
its caches (nothing process-wide): the answers, and which hosts are IP
literals.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.names import dns

from uacregistrant.sip.sharing import Memo
from uacregistrant.sip.uri import SipUri

Address = tuple[str, int]
MIN_TTL = 30
MAX_TTL = 3600
#: Per-query retry timeouts (seconds): a registration should not wait a minute for DNS.
LOOKUP_TIMEOUT = (1, 3, 6)
#: Hosts whose IP-literal check a resolver remembers (next hops: registrars, proxies).
LITERALS_MAX = 4096


def _ip_literal(host: str) -> str:
    """The normalised address if C{host} is an IP literal, else C{""}."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


class ResolutionError(Exception):
    """No address could be found for a URI."""


class SipResolver:
    """Resolves next-hop URIs to C{(ip, port)}; caches answers."""

    def __init__(
        self,
        resolver: IResolver | Callable[[], IResolver],
        clock: IReactorTime,
        ipv4: bool = True,
        ipv6: bool = True,
    ) -> None:
        """
        @param ipv4: look up A records (the daemon has an IPv4 socket).
        @param ipv6: look up AAAA records (the daemon has an IPv6 socket);
            with both, A is tried first.
        """
        self._families = tuple(family for family, wanted in ((dns.A, ipv4), (dns.AAAA, ipv6)) if wanted)
        self._make_resolver = resolver if callable(resolver) and not IResolver.providedBy(resolver) else None
        self._resolver_given = None if self._make_resolver is not None else cast(IResolver, resolver)
        self._clock = clock
        self._cache: dict[tuple[str, int | None], tuple[list[Address], float]] = {}
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

    def cached_targets(self, uri: SipUri) -> list[Address] | None:
        """Every target, in the order to try them, if known without a lookup; else C{None}."""
        host = uri.host
        literal = self._literals.get(host)
        if literal is None:
            literal = self._literals.keep(host, _ip_literal(host))
        if literal:
            return [(literal, uri.port or 5060)]
        entry = self._cache.get((uri.host, uri.port))
        if entry is not None and entry[1] > self._clock.seconds():
            return entry[0]
        return None

    def resolve_targets(self, uri: SipUri) -> defer.Deferred[list[Address]]:
        """Every target in the order to try them (never empty); fails with L{ResolutionError}."""
        known = self.cached_targets(uri)
        if known is not None:
            return defer.succeed(known)
        return defer.ensureDeferred(self._lookup(uri))

    async def _lookup(self, uri: SipUri) -> list[Address]:
        host, port = uri.host, uri.port
        if port is None:
            try:
                answers, _, _ = await cast(Any, self._resolver).lookupService(f"_sip._udp.{host}", LOOKUP_TIMEOUT)
            except Exception:  # no SRV (or no answer): fall back to A/AAAA
                answers = []
            records = [a for a in answers if a.type == dns.SRV]
            records.sort(key=lambda a: (a.payload.priority, -a.payload.weight))
            targets: list[Address] = []
            ttl_left = MAX_TTL
            for record in records:
                target = str(record.payload.target)
                if target in ("", "."):
                    continue
                try:
                    ip, ttl = await self._address(target)
                except ResolutionError:
                    continue
                address = (ip, int(record.payload.port))
                if address not in targets:
                    targets.append(address)
                ttl_left = min(ttl_left, ttl, record.ttl)
            if targets:
                self._remember(uri, targets, ttl_left)
                return targets
        ip, ttl = await self._address(host)
        targets = [(ip, port or 5060)]
        self._remember(uri, targets, ttl)
        return targets

    async def _address(self, host: str) -> tuple[str, int]:
        for rtype in self._families:
            lookup = self._resolver.lookupAddress if rtype == dns.A else self._resolver.lookupIPV6Address
            try:
                answers, _, _ = await cast(Any, lookup)(host, LOOKUP_TIMEOUT)
            except Exception:
                continue
            for answer in answers:
                if answer.type == rtype:
                    payload = cast(Any, answer.payload)
                    if rtype == dns.A:
                        return payload.dottedQuad(), int(answer.ttl)
                    return str(ipaddress.IPv6Address(payload.address)), int(answer.ttl)
        wanted = " or ".join("A" if rtype == dns.A else "AAAA" for rtype in self._families)
        raise ResolutionError(f"no {wanted} record for {host}")

    def _remember(self, uri: SipUri, targets: list[Address], ttl: int) -> None:
        ttl = max(MIN_TTL, min(MAX_TTL, ttl))
        self._cache[(uri.host, uri.port)] = (targets, self._clock.seconds() + ttl)
