"""
Tests for L{uacregistrant.net.resolver}, answered by a real twisted.names
authority built from a zone file (no network).
"""

from twisted.internet.task import Clock
from twisted.names.authority import PySourceAuthority
from twisted.names.resolve import ResolverChain
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.net.resolver import ResolutionError, SipResolver
from uacregistrant.sip.uri import parse_uri

ZONE = """
zone = [
    SOA('sip.test', mname='ns.sip.test', rname='root.sip.test', serial=1, refresh=60, retry=60, expire=60, minimum=60),
    SRV('_sip._udp.sip.test', 20, 0, 5090, 'backup.sip.test'),
    SRV('_sip._udp.sip.test', 10, 0, 5070, 'primary.sip.test'),
    A('primary.sip.test', '127.0.0.7'),
    A('backup.sip.test', '127.0.0.8'),
    A('plain.sip.test', '127.0.0.9', ttl=45),
    A('dual.sip.test', '127.0.0.10'),
    AAAA('dual.sip.test', '::1'),
    AAAA('six.sip.test', '::1'),
]
"""


class ResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ZONE)
        self.clock = Clock()
        self.resolver = SipResolver(ResolverChain([PySourceAuthority(path)]), self.clock)

    def resolve(self, uri: str) -> tuple[str, int]:
        return self.successResultOf(self.resolver.resolve_targets(parse_uri(uri)))[0]

    def test_ip_literals_need_no_lookup(self) -> None:
        """IP literals resolve at once, default port 5060."""
        self.assertEqual(self.resolver.cached_targets(parse_uri("sip:192.0.2.1")), [("192.0.2.1", 5060)])
        self.assertEqual(self.resolve("sip:[::1]:5080"), ("::1", 5080))

    def test_srv_by_priority(self) -> None:
        """A bare host name uses SRV _sip._udp, lowest priority first."""
        self.assertEqual(self.resolve("sip:sip.test"), ("127.0.0.7", 5070))

    def test_every_srv_target_for_fail_over(self) -> None:
        """All SRV targets come back in priority order, cached together."""
        uri = parse_uri("sip:sip.test")
        self.assertEqual(self.successResultOf(self.resolver.resolve_targets(uri)), [("127.0.0.7", 5070), ("127.0.0.8", 5090)])
        self.assertEqual(self.resolver.cached_targets(uri), [("127.0.0.7", 5070), ("127.0.0.8", 5090)])

    def test_explicit_port_skips_srv(self) -> None:
        """With a port, only A/AAAA are asked; without SRV records, A on 5060."""
        # sip.test has SRV records but no A record: with a port, SRV is not used.
        self.failureResultOf(self.resolver.resolve_targets(parse_uri("sip:sip.test:5999")), ResolutionError)
        self.assertEqual(self.resolve("sip:plain.sip.test"), ("127.0.0.9", 5060))
        self.assertEqual(self.resolve("sip:plain.sip.test:6000"), ("127.0.0.9", 6000))
        self.assertEqual(self.resolve("sip:six.sip.test:6000"), ("::1", 6000))

    def test_families_of_the_sockets(self) -> None:
        """Only the families the daemon has sockets for are looked up: IPv6-only asks AAAA, IPv4-only asks A."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ZONE)
        chain = ResolverChain([PySourceAuthority(path)])
        both = self.resolve("sip:dual.sip.test")
        only6 = self.successResultOf(SipResolver(chain, self.clock, ipv4=False).resolve_targets(parse_uri("sip:dual.sip.test")))[0]
        only4 = SipResolver(chain, self.clock, ipv6=False)
        self.assertEqual((both, only6), (("127.0.0.10", 5060), ("::1", 5060)))
        failure = self.failureResultOf(only4.resolve_targets(parse_uri("sip:six.sip.test")), ResolutionError)
        self.assertIn("no A record for six.sip.test", failure.getErrorMessage())

    def test_cache_for_ttl(self) -> None:
        """Answers are cached for their TTL (at least 30 s)."""
        uri = parse_uri("sip:plain.sip.test")
        self.assertIsNone(self.resolver.cached_targets(uri))
        self.resolve("sip:plain.sip.test")
        self.assertEqual(self.resolver.cached_targets(uri), [("127.0.0.9", 5060)])
        self.clock.advance(46)
        self.assertIsNone(self.resolver.cached_targets(uri))

    def test_unknown_host(self) -> None:
        """A name without records fails with ResolutionError."""
        self.failureResultOf(self.resolver.resolve_targets(parse_uri("sip:nowhere.sip.test")), ResolutionError)

    def test_literal_checks_owned_and_bounded(self) -> None:
        """Each resolver remembers its own hosts' IP-literal checks, at most LITERALS_MAX of them."""
        from uacregistrant.net import resolver as module

        self.patch(module, "LITERALS_MAX", 2)
        small = SipResolver(ResolverChain([]), self.clock)
        for host in ("192.0.2.1", "plain.sip.test", "2001:DB8::1", "other.sip.test"):
            small.cached_targets(parse_uri(f"sip:{host}" if ":" not in host else f"sip:[{host}]"))
        self.assertEqual(small.cached_targets(parse_uri("sip:[2001:DB8::1]:5070")), [("2001:db8::1", 5070)])
        self.assertEqual(len(small._literals), 2)
        self.assertEqual(len(self.resolver._literals), 0)  # another resolver's: untouched
