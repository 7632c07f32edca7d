"""
Tests for L{uacregistrant.net.resolver}: RFC 3263 server location on a
fake DNS resolver (no network) whose answers, failures and timing each
test sets.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, cast

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.net import resolver as module
from uacregistrant.net.resolver import MAX_TTL, MIN_TTL, NEGATIVE_TTL, ResolutionError, SipResolver, Target, rfc2782_order
from uacregistrant.sip.uri import parse_uri

_METHODS = {
    "lookupNamingAuthorityPointer": dns.NAPTR,
    "lookupService": dns.SRV,
    "lookupAddress": dns.A,
    "lookupIPV6Address": dns.AAAA,
}
_NAMES = {dns.NAPTR: "NAPTR", dns.SRV: "SRV", dns.A: "A", dns.AAAA: "AAAA"}


class FakeDNS:
    """
    An C{IResolver} answering the four lookups the resolver makes from
    C{records}; C{errors} fail a query; with C{hold} set, queries wait in
    C{held} until the test fires them.  Every query is logged in C{queries}
    as C{(type name, name)}.
    """

    def __init__(self) -> None:
        self.records: dict[tuple[int, str], list[dns.RRHeader]] = {}
        self.errors: dict[tuple[int, str], Exception] = {}
        self.queries: list[tuple[str, str]] = []
        self.hold = False
        self.held: list[tuple[tuple[int, str], defer.Deferred[Any]]] = []

    def add(self, rtype: int, name: str, payload: Any, ttl: int = 300) -> None:
        self.records.setdefault((rtype, name), []).append(dns.RRHeader(name.encode(), rtype, payload=payload, ttl=ttl))

    def a(self, name: str, *ips: str, ttl: int = 300) -> None:
        for ip in ips:
            self.add(dns.A, name, dns.Record_A(ip), ttl)

    def aaaa(self, name: str, *ips: str, ttl: int = 300) -> None:
        for ip in ips:
            self.add(dns.AAAA, name, dns.Record_AAAA(ip), ttl)

    def srv(self, name: str, priority: int, weight: int, port: int, target: str, ttl: int = 300) -> None:
        self.add(dns.SRV, name, dns.Record_SRV(priority, weight, port, target.encode()), ttl)

    def naptr(self, name: str, order: int, preference: int, service: str, replacement: str, flags: str = "s", ttl: int = 300) -> None:
        record = dns.Record_NAPTR(order, preference, flags.encode(), service.encode(), b"", replacement.encode())
        self.add(dns.NAPTR, name, record, ttl)

    def answer(self, key: tuple[int, str]) -> defer.Deferred[Any]:
        if key in self.errors:
            return defer.fail(self.errors[key])
        return defer.succeed((list(self.records.get(key, [])), [], []))

    def release(self) -> None:
        """Answer every held query, and those they lead to."""
        while self.held:
            held, self.held = self.held, []
            for key, d in held:
                self.answer(key).chainDeferred(d)

    def of(self, rtype: int) -> list[str]:
        """The names asked for records of C{rtype}, in order."""
        return [name for kind, name in self.queries if kind == _NAMES[rtype]]

    def __getattr__(self, method: str) -> Callable[..., defer.Deferred[Any]]:
        rtype = _METHODS[method]

        def lookup(name: str, timeout: Any = None) -> defer.Deferred[Any]:
            self.queries.append((_NAMES[rtype], name))
            if self.hold:
                d: defer.Deferred[Any] = defer.Deferred()
                self.held.append(((rtype, name), d))
                return d
            return self.answer((rtype, name))

        return lookup


class Draws:
    """A deterministic C{random()}: the given values, in turn."""

    def __init__(self, *values: float) -> None:
        self._values: Iterator[float] = iter(values)

    def __call__(self) -> float:
        return next(self._values)


class ResolverTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = FakeDNS()
        self.resolver = self.make()

    def make(self, **kwargs: Any) -> SipResolver:
        return SipResolver(cast(IResolver, self.dns), self.clock, **kwargs)

    def resolve(self, uri: str, transport: str | None = None, secure: bool = False, resolver: SipResolver | None = None) -> list[Target]:
        return self.successResultOf((resolver or self.resolver).resolve_targets(parse_uri(uri), transport, secure))

    def failed(self, uri: str, transport: str | None = None, secure: bool = False, resolver: SipResolver | None = None) -> str:
        failure = self.failureResultOf((resolver or self.resolver).resolve_targets(parse_uri(uri), transport, secure), ResolutionError)
        return str(failure.getErrorMessage())


class LiteralTests(ResolverTestCase):
    def test_ipv4_each_transport(self) -> None:
        """An IPv4 literal is the target: the caller's transport, else UDP; 5060, 5061 for TLS, or the URI's port."""
        uri = parse_uri("sip:192.0.2.1")
        self.assertEqual(
            [self.resolver.cached_targets(uri, transport) for transport in (None, "udp", "tcp", "tls")],
            [[("udp", "192.0.2.1", 5060)], [("udp", "192.0.2.1", 5060)], [("tcp", "192.0.2.1", 5060)], [("tls", "192.0.2.1", 5061)]],
        )
        self.assertEqual(self.resolve("sip:192.0.2.1:5070", "tls"), [("tls", "192.0.2.1", 5070)])
        self.assertEqual(self.dns.queries, [])

    def test_ipv6_and_secure(self) -> None:
        """An IPv6 literal is normalised; secure without a transport means TLS on 5061."""
        self.assertEqual(self.resolve("sips:[2001:DB8::1]", secure=True), [("tls", "2001:db8::1", 5061)])
        self.assertEqual(self.resolve("sips:[2001:db8::1]:5071", secure=True), [("tls", "2001:db8::1", 5071)])
        self.assertEqual(self.resolve("sip:[::1]", "tcp"), [("tcp", "::1", 5060)])
        self.assertEqual(self.dns.queries, [])

    def test_no_resolver_made_for_literals(self) -> None:
        """The DNS resolver is made on the first lookup, not for IP literals."""
        made: list[FakeDNS] = []

        def factory() -> IResolver:
            made.append(self.dns)
            return cast(IResolver, self.dns)

        resolver = SipResolver(factory, self.clock)
        self.resolve("sip:192.0.2.1", resolver=resolver)
        self.assertEqual(made, [])
        self.dns.a("plain.test", "192.0.2.9")
        self.resolve("sip:plain.test:5060", resolver=resolver)
        self.resolve("sip:plain.test:5070", resolver=resolver)
        self.assertEqual(len(made), 1)

    def test_literal_checks_owned_and_bounded(self) -> None:
        """Each resolver remembers its own hosts' IP-literal checks, at most LITERALS_MAX of them."""
        self.patch(module, "LITERALS_MAX", 2)
        small = self.make()
        for host in ("192.0.2.1", "plain.test", "[2001:DB8::1]", "other.test"):
            small.cached_targets(parse_uri(f"sip:{host}"))
        self.assertEqual(small.cached_targets(parse_uri("sip:[2001:DB8::1]:5070")), [("udp", "2001:db8::1", 5070)])
        self.assertEqual(len(small._literals), 2)
        self.assertEqual(len(self.resolver._literals), 0)  # another resolver's: untouched


class ExplicitPortTests(ResolverTestCase):
    def test_address_records_only(self) -> None:
        """With a port, only A/AAAA are asked (no NAPTR, no SRV); UDP, TLS when secure, else the caller's."""
        self.dns.naptr("reg.test", 10, 10, "SIP+D2T", "_sip._tcp.reg.test")
        self.dns.srv("_sip._udp.reg.test", 10, 0, 5070, "other.test")
        self.dns.a("reg.test", "192.0.2.9")
        self.assertEqual(self.resolve("sip:reg.test:6000"), [("udp", "192.0.2.9", 6000)])
        self.assertEqual(self.resolve("sips:reg.test:6001", secure=True), [("tls", "192.0.2.9", 6001)])
        self.assertEqual(self.resolve("sip:reg.test:6002", "tcp"), [("tcp", "192.0.2.9", 6002)])
        self.assertEqual(self.dns.of(dns.NAPTR) + self.dns.of(dns.SRV), [])

    def test_srv_only_host_fails(self) -> None:
        """A host with SRV records but no address fails with a port: SRV is not used."""
        self.dns.srv("_sip._udp.reg.test", 10, 0, 5070, "primary.test")
        self.dns.a("primary.test", "192.0.2.7")
        self.assertIn("no A or AAAA record for reg.test", self.failed("sip:reg.test:5999"))


class TransportGivenTests(ResolverTestCase):
    def test_srv_name_per_transport(self) -> None:
        """A transport chosen by the caller: SRV _sip._udp, _sip._tcp or _sips._tcp, no NAPTR."""
        for name, port in (("_sip._udp.reg.test", 5070), ("_sip._tcp.reg.test", 5071), ("_sips._tcp.reg.test", 5072)):
            self.dns.srv(name, 10, 0, port, "primary.test")
        self.dns.a("primary.test", "192.0.2.7")
        self.assertEqual(self.resolve("sip:reg.test", "udp"), [("udp", "192.0.2.7", 5070)])
        self.assertEqual(self.resolve("sip:reg.test", "tcp"), [("tcp", "192.0.2.7", 5071)])
        self.assertEqual(self.resolve("sips:reg.test", "tls", secure=True), [("tls", "192.0.2.7", 5072)])
        self.assertEqual(self.dns.of(dns.SRV), ["_sip._udp.reg.test", "_sip._tcp.reg.test", "_sips._tcp.reg.test"])
        self.assertEqual(self.dns.of(dns.NAPTR), [])

    def test_no_srv_default_port(self) -> None:
        """No SRV record for the transport: A/AAAA of the host at 5060, 5061 for TLS."""
        self.dns.a("plain.test", "192.0.2.9")
        self.assertEqual(self.resolve("sip:plain.test", "tcp"), [("tcp", "192.0.2.9", 5060)])
        self.assertEqual(self.resolve("sip:plain.test", "tls"), [("tls", "192.0.2.9", 5061)])

    def test_srv_failure_falls_back(self) -> None:
        """An SRV query that fails counts as no SRV."""
        self.dns.errors[(dns.SRV, "_sip._tcp.plain.test")] = dns_error.DNSServerError()
        self.dns.a("plain.test", "192.0.2.9")
        self.assertEqual(self.resolve("sip:plain.test", "tcp"), [("tcp", "192.0.2.9", 5060)])

    def test_every_srv_target_in_order(self) -> None:
        """Every SRV target, lowest priority first, each at its port."""
        self.dns.srv("_sip._udp.reg.test", 20, 0, 5090, "backup.test")
        self.dns.srv("_sip._udp.reg.test", 10, 0, 5070, "primary.test")
        self.dns.a("primary.test", "192.0.2.7")
        self.dns.a("backup.test", "192.0.2.8")
        self.assertEqual(self.resolve("sip:reg.test", "udp"), [("udp", "192.0.2.7", 5070), ("udp", "192.0.2.8", 5090)])

    def test_srv_targets_without_address(self) -> None:
        """SRV records whose targets have no address: an error naming them, not the host's own A record."""
        self.dns.srv("_sip._udp.reg.test", 10, 0, 5070, "primary.test")
        self.dns.srv("_sip._udp.reg.test", 20, 0, 5070, "backup.test")
        self.dns.errors[(dns.A, "backup.test")] = dns_error.DNSQueryTimeoutError(5)
        self.dns.a("reg.test", "192.0.2.9")
        self.assertEqual(
            self.failed("sip:reg.test", "udp"),
            "no A or AAAA record for the SRV targets of reg.test (primary.test: A: no answer; AAAA: no answer;"
            " backup.test: A: timeout; AAAA: no answer)",
        )


class NaptrTests(ResolverTestCase):
    def setUp(self) -> None:
        super().setUp()
        for transport, port in (("udp", 5070), ("tcp", 5071)):
            self.dns.srv(f"_sip._{transport}.reg.test", 10, 0, port, f"{transport}.reg.test")
        self.dns.srv("_sips._tcp.reg.test", 10, 0, 5072, "tls.reg.test")
        self.dns.a("udp.reg.test", "192.0.2.1")
        self.dns.a("tcp.reg.test", "192.0.2.2")
        self.dns.a("tls.reg.test", "192.0.2.3")

    def test_order_then_preference(self) -> None:
        """NAPTR records are followed by order, then preference; their targets concatenated."""
        self.dns.naptr("reg.test", 20, 10, "SIP+D2U", "_sip._udp.reg.test")
        self.dns.naptr("reg.test", 10, 50, "SIP+D2T", "_sip._tcp.reg.test")
        self.dns.naptr("reg.test", 10, 20, "SIPS+D2T", "_sips._tcp.reg.test")
        self.assertEqual(
            self.resolve("sip:reg.test"),
            [("tls", "192.0.2.3", 5072), ("tcp", "192.0.2.2", 5071), ("udp", "192.0.2.1", 5070)],
        )
        self.assertEqual(self.dns.of(dns.NAPTR), ["reg.test"])
        self.assertEqual(self.dns.of(dns.SRV), ["_sips._tcp.reg.test", "_sip._tcp.reg.test", "_sip._udp.reg.test"])

    def test_replacement_followed(self) -> None:
        """The replacement is the SRV name, wherever it points."""
        self.dns.naptr("reg.test", 10, 10, "sip+d2t", "_sip._tcp.elsewhere.test", flags="S")
        self.dns.srv("_sip._tcp.elsewhere.test", 10, 0, 6000, "far.test")
        self.dns.a("far.test", "198.51.100.1")
        self.assertEqual(self.resolve("sip:reg.test"), [("tcp", "198.51.100.1", 6000)])

    def test_filtered_by_transports(self) -> None:
        """Services the daemon cannot send over, unknown services and other flags are skipped."""
        self.dns.naptr("reg.test", 10, 10, "SIPS+D2T", "_sips._tcp.reg.test")
        self.dns.naptr("reg.test", 10, 20, "SIP+D2T", "_sip._tcp.reg.test")
        self.dns.naptr("reg.test", 10, 30, "SIP+D2S", "_sip._sctp.reg.test")
        self.dns.naptr("reg.test", 10, 40, "SIP+D2U", "_sip._udp.reg.test", flags="u")
        self.dns.naptr("reg.test", 10, 50, "SIP+D2U", "_sip._udp.reg.test")
        udp_tcp = self.make(transports=frozenset({"udp", "tcp"}))
        self.assertEqual(self.resolve("sip:reg.test", resolver=udp_tcp), [("tcp", "192.0.2.2", 5071), ("udp", "192.0.2.1", 5070)])
        self.assertNotIn("_sip._sctp.reg.test", self.dns.of(dns.SRV))

    def test_secure_keeps_sips(self) -> None:
        """A secure request keeps only SIPS+D2T."""
        self.dns.naptr("reg.test", 10, 10, "SIP+D2U", "_sip._udp.reg.test")
        self.dns.naptr("reg.test", 20, 10, "SIPS+D2T", "_sips._tcp.reg.test")
        self.assertEqual(self.resolve("sips:reg.test", secure=True), [("tls", "192.0.2.3", 5072)])
        self.assertEqual(self.dns.of(dns.SRV), ["_sips._tcp.reg.test"])

    def test_duplicates_dropped(self) -> None:
        """A target reached twice is listed once."""
        self.dns.naptr("reg.test", 10, 10, "SIP+D2U", "_sip._udp.reg.test")
        self.dns.naptr("reg.test", 10, 20, "SIP+D2U", "_sip._udp.alias.test")
        self.dns.srv("_sip._udp.alias.test", 10, 0, 5070, "udp.reg.test")
        self.assertEqual(self.resolve("sip:reg.test"), [("udp", "192.0.2.1", 5070)])
        self.assertEqual(self.dns.of(dns.A), ["udp.reg.test"])  # one lookup per host

    def test_unusable_naptr_falls_back_to_srv(self) -> None:
        """NAPTR records leading nowhere: the SRV queries as without NAPTR."""
        self.dns.naptr("reg.test", 10, 10, "SIP+D2T", "_sip._tcp.gone.test")
        self.dns.naptr("reg.test", 10, 20, "SIP+D2T", "_sip._tcp.reg.test")
        del self.dns.records[(dns.A, "tcp.reg.test")]
        self.assertEqual(self.resolve("sip:reg.test"), [("udp", "192.0.2.1", 5070), ("tls", "192.0.2.3", 5072)])
        self.assertEqual(
            self.dns.of(dns.SRV), ["_sip._tcp.gone.test", "_sip._tcp.reg.test", "_sip._udp.reg.test", "_sips._tcp.reg.test"]
        )  # each name asked once

    def test_bounded(self) -> None:
        """At most NAPTR_MAX records are followed and TARGETS_MAX targets returned."""
        self.patch(module, "NAPTR_MAX", 2)
        self.patch(module, "TARGETS_MAX", 3)
        for index in range(5):
            self.dns.naptr("big.test", 10, index, "SIP+D2U", f"_sip._udp.s{index}.big.test")
            self.dns.srv(f"_sip._udp.s{index}.big.test", 10, 0, 5060, f"h{index}.big.test")
            self.dns.a(f"h{index}.big.test", f"192.0.2.{10 + 2 * index}", f"192.0.2.{11 + 2 * index}")
        self.assertEqual(
            self.resolve("sip:big.test"),
            [("udp", "192.0.2.10", 5060), ("udp", "192.0.2.11", 5060), ("udp", "192.0.2.12", 5060)],
        )
        self.assertEqual(self.dns.of(dns.SRV), ["_sip._udp.s0.big.test", "_sip._udp.s1.big.test"])


class SrvWithoutNaptrTests(ResolverTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.dns.srv("_sip._udp.reg.test", 10, 0, 5070, "udp.reg.test")
        self.dns.srv("_sip._tcp.reg.test", 10, 0, 5071, "tcp.reg.test")
        self.dns.srv("_sips._tcp.reg.test", 10, 0, 5072, "tls.reg.test")
        self.dns.a("udp.reg.test", "192.0.2.1")
        self.dns.a("tcp.reg.test", "192.0.2.2")
        self.dns.a("tls.reg.test", "192.0.2.3")

    def test_preference_and_concatenation(self) -> None:
        """No NAPTR: _sip._udp, _sip._tcp, _sips._tcp, all that answered, in that order."""
        self.dns.errors[(dns.NAPTR, "reg.test")] = dns_error.DNSNameError()
        self.assertEqual(
            self.resolve("sip:reg.test"),
            [("udp", "192.0.2.1", 5070), ("tcp", "192.0.2.2", 5071), ("tls", "192.0.2.3", 5072)],
        )
        self.assertEqual(self.dns.of(dns.SRV), ["_sip._udp.reg.test", "_sip._tcp.reg.test", "_sips._tcp.reg.test"])

    def test_only_supported_transports(self) -> None:
        """Only the transports the daemon can send over are asked."""
        tcp_only = self.make(transports=frozenset({"tcp"}))
        self.assertEqual(self.resolve("sip:reg.test", resolver=tcp_only), [("tcp", "192.0.2.2", 5071)])
        self.assertEqual(self.dns.of(dns.SRV), ["_sip._tcp.reg.test"])

    def test_secure_asks_sips_only(self) -> None:
        """Secure: only _sips._tcp."""
        self.assertEqual(self.resolve("sips:reg.test", secure=True), [("tls", "192.0.2.3", 5072)])
        self.assertEqual(self.dns.of(dns.SRV), ["_sips._tcp.reg.test"])

    def test_missing_ones_skipped(self) -> None:
        """A transport whose SRV query fails is left out."""
        del self.dns.records[(dns.SRV, "_sip._udp.reg.test")]
        self.dns.errors[(dns.SRV, "_sip._tcp.reg.test")] = dns_error.DNSServerError()
        self.assertEqual(self.resolve("sip:reg.test"), [("tls", "192.0.2.3", 5072)])

    def test_no_srv_at_all(self) -> None:
        """No NAPTR, no SRV: A/AAAA of the host at 5060 over UDP, 5061 over TLS when secure."""
        self.dns.a("plain.test", "192.0.2.9")
        self.assertEqual(self.resolve("sip:plain.test"), [("udp", "192.0.2.9", 5060)])
        self.assertEqual(self.resolve("sips:plain.test", secure=True), [("tls", "192.0.2.9", 5061)])

    def test_not_offered(self) -> None:
        """A "." target is not offered: skipped, and an error when it is all there is."""
        self.dns.srv("_sip._udp.dot.test", 10, 0, 5060, ".")
        self.dns.srv("_sip._udp.dot.test", 20, 0, 5070, "udp.reg.test")
        self.assertEqual(self.resolve("sip:dot.test"), [("udp", "192.0.2.1", 5070)])
        self.dns.srv("_sip._udp.none.test", 0, 0, 0, ".")
        self.dns.a("none.test", "192.0.2.9")
        self.assertEqual(self.failed("sip:none.test", "udp"), 'SIP service not offered by none.test (SRV target ".")')


class Rfc2782Tests(ResolverTestCase):
    @staticmethod
    def records(*specs: tuple[int, int, str]) -> list[dns.RRHeader]:
        return [dns.RRHeader(b"x", dns.SRV, payload=dns.Record_SRV(p, w, 5060, t.encode())) for p, w, t in specs]

    @staticmethod
    def targets(records: list[dns.RRHeader]) -> list[str]:
        return [str(cast(dns.Record_SRV, record.payload).target) for record in records]

    def test_weighted_selection(self) -> None:
        """Within a priority, the first record whose running weight sum reaches random() × total, repeatedly."""
        records = self.records((10, 10, "a"), (10, 20, "b"), (10, 70, "c"), (5, 0, "first"))
        # 0.5 × 100 = 50 → c (10, 30, 100); then 0.2 × 30 = 6 → a; then b.
        self.assertEqual(self.targets(rfc2782_order(records, Draws(0.0, 0.5, 0.2, 0.9))), ["first", "c", "a", "b"])
        self.assertEqual(self.targets(rfc2782_order(records, Draws(0.0, 0.05, 0.1, 0.0))), ["first", "a", "b", "c"])

    def test_weight_zero_first(self) -> None:
        """Weight-0 records come first in their priority (chosen only by a draw of 0)."""
        records = self.records((10, 50, "heavy"), (10, 0, "zero"))
        self.assertEqual(self.targets(rfc2782_order(records, Draws(0.0, 0.0))), ["zero", "heavy"])
        self.assertEqual(self.targets(rfc2782_order(records, Draws(0.3, 0.0))), ["heavy", "zero"])

    def test_resolver_uses_injected_random(self) -> None:
        """The resolver orders SRV answers with its random()."""
        self.dns.srv("_sip._udp.reg.test", 10, 25, 5070, "a.test")
        self.dns.srv("_sip._udp.reg.test", 10, 75, 5071, "b.test")
        self.dns.a("a.test", "192.0.2.1")
        self.dns.a("b.test", "192.0.2.2")
        heavy = self.make(random=Draws(0.9, 0.0))
        light = self.make(random=Draws(0.1, 0.0))
        self.assertEqual(self.resolve("sip:reg.test", "udp", resolver=heavy), [("udp", "192.0.2.2", 5071), ("udp", "192.0.2.1", 5070)])
        self.assertEqual(self.resolve("sip:reg.test", "udp", resolver=light), [("udp", "192.0.2.1", 5070), ("udp", "192.0.2.2", 5071)])


class FamilyTests(ResolverTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.dns.a("dual.test", "192.0.2.10")
        self.dns.aaaa("dual.test", "2001:db8::10")
        self.dns.aaaa("six.test", "2001:db8::6")

    def test_both(self) -> None:
        """With both families, every address: IPv4 first."""
        self.assertEqual(self.resolve("sip:dual.test"), [("udp", "192.0.2.10", 5060), ("udp", "2001:db8::10", 5060)])

    def test_ipv6_only(self) -> None:
        """An IPv6-only daemon asks AAAA only."""
        only6 = self.make(ipv4=False)
        self.assertEqual(self.resolve("sip:dual.test:5060", resolver=only6), [("udp", "2001:db8::10", 5060)])
        self.assertEqual(self.dns.of(dns.A), [])

    def test_ipv4_only(self) -> None:
        """An IPv4-only daemon asks A only, and says so when there is none."""
        only4 = self.make(ipv6=False)
        self.assertEqual(self.failed("sip:six.test:5060", resolver=only4), "no A record for six.test (A: no answer)")
        self.assertEqual(self.dns.of(dns.AAAA), [])


class CacheTests(ResolverTestCase):
    def test_cache_for_ttl(self) -> None:
        """Answers are cached for their TTL; each caller gets its own list."""
        self.dns.a("plain.test", "192.0.2.9", ttl=45)
        uri = parse_uri("sip:plain.test")
        self.assertIsNone(self.resolver.cached_targets(uri))
        self.resolve("sip:plain.test")
        cached = self.resolver.cached_targets(uri)
        assert cached is not None
        cached.clear()
        self.assertEqual(self.resolver.cached_targets(uri), [("udp", "192.0.2.9", 5060)])
        self.clock.advance(44)
        self.assertIsNotNone(self.resolver.cached_targets(uri))
        self.clock.advance(1)
        self.assertIsNone(self.resolver.cached_targets(uri))

    def test_key(self) -> None:
        """The cache key is (host, port, transport, secure)."""
        self.dns.a("plain.test", "192.0.2.9")
        self.resolve("sip:plain.test", "tcp")
        uri = parse_uri("sip:plain.test")
        self.assertEqual(self.resolver.cached_targets(uri, "tcp"), [("tcp", "192.0.2.9", 5060)])
        self.assertIsNone(self.resolver.cached_targets(uri))
        self.assertIsNone(self.resolver.cached_targets(uri, "tcp", secure=True))
        self.assertIsNone(self.resolver.cached_targets(parse_uri("sip:plain.test:5060"), "tcp"))

    def ttl_of(self, uri: str, transport: str | None = None) -> float:
        self.resolve(uri, transport)
        return self.resolver._cache[(parse_uri(uri).host, parse_uri(uri).port, transport, False)][1] - self.clock.seconds()

    def test_ttl_minimum_of_chain(self) -> None:
        """The TTL is the shortest of the NAPTR, SRV and address records used."""
        self.dns.naptr("reg.test", 10, 10, "SIP+D2U", "_sip._udp.reg.test", ttl=900)
        self.dns.srv("_sip._udp.reg.test", 10, 0, 5070, "a.test", ttl=600)
        self.dns.a("a.test", "192.0.2.1", ttl=300)
        self.assertEqual(self.ttl_of("sip:reg.test"), 300)
        self.dns.naptr("other.test", 10, 10, "SIP+D2U", "_sip._udp.other.test", ttl=120)
        self.dns.srv("_sip._udp.other.test", 10, 0, 5070, "a.test", ttl=600)
        self.assertEqual(self.ttl_of("sip:other.test"), 120)
        self.dns.srv("_sip._tcp.reg.test", 10, 0, 5070, "a.test", ttl=200)
        self.assertEqual(self.ttl_of("sip:reg.test", "tcp"), 200)

    def test_ttl_clamped(self) -> None:
        """TTLs are clamped to [MIN_TTL, MAX_TTL]."""
        self.dns.a("short.test", "192.0.2.1", ttl=1)
        self.dns.a("long.test", "192.0.2.2", ttl=86400)
        self.assertEqual((self.ttl_of("sip:short.test"), self.ttl_of("sip:long.test")), (MIN_TTL, MAX_TTL))

    def test_bounded(self) -> None:
        """At most CACHE_MAX keys are kept; the oldest goes first."""
        self.patch(module, "CACHE_MAX", 2)
        for name in ("a", "b", "c"):
            self.dns.a(f"{name}.test", "192.0.2.1")
            self.resolve(f"sip:{name}.test")
        self.assertEqual(sorted(key[0] for key in self.resolver._cache), ["b.test", "c.test"])
        self.assertIsNone(self.resolver.cached_targets(parse_uri("sip:a.test")))


class InFlightTests(ResolverTestCase):
    def test_one_lookup_for_many_callers(self) -> None:
        """Callers asking while a lookup runs share it: one set of queries for all of them."""
        self.dns.srv("_sip._udp.reg.test", 10, 0, 5070, "a.test")
        self.dns.a("a.test", "192.0.2.1")
        self.dns.hold = True
        uri = parse_uri("sip:reg.test")
        waiting = [self.resolver.resolve_targets(uri) for _ in range(1000)]
        self.assertEqual(self.dns.queries, [("NAPTR", "reg.test")])
        self.dns.release()
        self.assertEqual(len(self.dns.queries), 6)  # NAPTR, 3 SRV, A, AAAA
        results = [self.successResultOf(d) for d in waiting]
        self.assertEqual(results, [[("udp", "192.0.2.1", 5070)]] * 1000)
        self.assertEqual(len({id(result) for result in results}), 1000)

    def test_callers_independent(self) -> None:
        """One caller's callbacks (a changed list, an exception, a cancel) do not reach another."""
        self.dns.a("plain.test", "192.0.2.9")
        self.dns.hold = True
        uri = parse_uri("sip:plain.test")
        first, second, third = (self.resolver.resolve_targets(uri) for _ in range(3))
        first.addCallback(lambda targets: targets.clear())
        second.addCallback(lambda targets: 1 / 0)
        third.cancel()
        self.failureResultOf(third, defer.CancelledError)
        self.dns.release()
        self.assertIsNone(self.successResultOf(first))
        self.failureResultOf(second, ZeroDivisionError)
        self.assertEqual(self.successResultOf(self.resolver.resolve_targets(uri)), [("udp", "192.0.2.9", 5060)])

    def test_shared_failure(self) -> None:
        """A failed lookup fails every caller waiting for it."""
        self.dns.hold = True
        self.dns.errors[(dns.A, "bad.test")] = dns_error.DNSNameError()
        uri = parse_uri("sip:bad.test:5060")
        waiting = [self.resolver.resolve_targets(uri) for _ in range(3)]
        self.dns.release()
        for d in waiting:
            self.failureResultOf(d, ResolutionError)
        self.assertEqual(self.dns.of(dns.A), ["bad.test"])


class NegativeCacheTests(ResolverTestCase):
    def test_failure_remembered(self) -> None:
        """A failed resolution fails at once for NEGATIVE_TTL seconds, then is asked again."""
        self.dns.errors[(dns.A, "bad.test")] = dns_error.DNSNameError()
        self.dns.errors[(dns.AAAA, "bad.test")] = dns_error.DNSNameError()
        first = self.failed("sip:bad.test")
        asked = len(self.dns.queries)
        self.assertIsNone(self.resolver.cached_targets(parse_uri("sip:bad.test")))
        self.clock.advance(NEGATIVE_TTL - 1)
        self.assertEqual(self.failed("sip:bad.test"), first)
        self.assertEqual(len(self.dns.queries), asked)
        self.clock.advance(1)
        del self.dns.errors[(dns.A, "bad.test")]
        self.dns.a("bad.test", "192.0.2.1")
        self.assertEqual(self.resolve("sip:bad.test"), [("udp", "192.0.2.1", 5060)])
        self.assertGreater(len(self.dns.queries), asked)

    def test_other_keys_not_affected(self) -> None:
        """A failure is remembered for its key only."""
        self.dns.a("plain.test", "192.0.2.9")
        self.dns.errors[(dns.SRV, "_sip._tcp.plain.test")] = dns_error.DNSServerError()
        self.dns.errors[(dns.A, "plain.test")] = dns_error.DNSServerError()
        self.failed("sip:plain.test", "tcp")
        del self.dns.errors[(dns.A, "plain.test")]
        self.assertEqual(self.resolve("sip:plain.test:5060"), [("udp", "192.0.2.9", 5060)])


class ErrorMessageTests(ResolverTestCase):
    def test_reasons(self) -> None:
        """Each query's failure is named."""
        cases = [
            (dns_error.DNSNameError(), "NXDOMAIN"),
            (dns_error.DNSServerError(), "server failure"),
            (dns_error.DNSQueryRefusedError(), "refused"),
            (defer.TimeoutError(), "timeout"),
            (dns_error.DNSQueryTimeoutError(3), "timeout"),
        ]
        for index, (error, reason) in enumerate(cases):
            host = f"h{index}.test"
            self.dns.errors[(dns.A, host)] = error
            self.assertEqual(self.failed(f"sip:{host}:5060"), f"no A or AAAA record for {host} (A: {reason}; AAAA: no answer)")

    def test_unknown_host(self) -> None:
        """A name without any record: the whole chain falls through to the address lookup."""
        self.dns.errors[(dns.A, "nowhere.test")] = dns_error.DNSNameError()
        self.dns.errors[(dns.AAAA, "nowhere.test")] = dns_error.DNSNameError()
        self.assertEqual(self.failed("sip:nowhere.test"), "no A or AAAA record for nowhere.test (A: NXDOMAIN; AAAA: NXDOMAIN)")

    def test_bounded(self) -> None:
        """Messages stay short."""
        for index in range(16):
            self.dns.srv("_sip._udp.many.test", 10, 0, 5060, f"target-with-a-long-name-{index}.test")
        message = self.failed("sip:many.test", "udp")
        self.assertEqual(len(message), module.MESSAGE_MAX)
        self.assertTrue(message.startswith("no A or AAAA record for the SRV targets of many.test (target-with"))

    def test_unexpected_error(self) -> None:
        """An unexpected exception from the DNS resolver is still a ResolutionError."""
        self.dns.errors[(dns.A, "odd.test")] = RuntimeError("boom")
        self.assertEqual(self.failed("sip:odd.test:5060"), "no A or AAAA record for odd.test (A: RuntimeError; AAAA: no answer)")
