"""Tests for L{uacregistrant.net.incoming}: the stateless answers to peers' requests."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.counters import SipCounters
from uacregistrant.core.register import USER_AGENT
from uacregistrant.net.incoming import KNOWN_METHODS, RequestAnswerer, TokenBuckets
from uacregistrant.sip.errors import SipRenderError
from uacregistrant.sip.message import Request, Response, parse_message, parse_name_addr

SOURCE = ("192.0.2.7", 5060)

VIAS = ("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKfirst", "SIP/2.0/UDP proxy.invalid;branch=z9hG4bKsecond")


def request(
    method: str = "OPTIONS",
    to: str = "<sip:alice@192.0.2.1:5060>",
    extra: str = "",
    uri: str = "sip:alice@192.0.2.1:5060",
    via: str = VIAS[0],
) -> Request:
    """A parsed request as a registrar pings with."""
    message = parse_message(
        (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: {via}\r\n"
            f"Via: {VIAS[1]}\r\n"
            f"To: {to}\r\n"
            "From: <sip:ping@registrar.invalid>;tag=f1\r\n"
            "Call-ID: ping-1@registrar.invalid\r\n"
            f"CSeq: 17 {method}\r\n"
            "Max-Forwards: 70\r\n"
            f"{extra}"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(message, Request)
    return message


class AnswerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = SipCounters()
        self.answerer = RequestAnswerer(self.clock, self.counters)

    def answer(self, req: Request, source: tuple[str, int] = SOURCE) -> Response:
        data = self.answerer.answer(req, source)
        assert data is not None
        response = parse_message(data)
        assert isinstance(response, Response)
        return response

    def test_options(self) -> None:
        """OPTIONS gets a 200 with Allow: OPTIONS, an empty Accept, Server and no body."""
        response = self.answer(request())
        self.assertEqual((response.status, response.reason), (200, "OK"))
        self.assertEqual(response.get_all("allow"), ["OPTIONS"])
        self.assertEqual(response.get_all("accept"), [""])
        self.assertEqual(response.get("server"), USER_AGENT)
        self.assertEqual((response.get("content-length"), response.body), ("0", b""))
        self.assertFalse(response.has("supported"))
        self.assertEqual((self.counters.requests_answered, self.counters.dropped_requests), (1, 0))

    def test_exact_bytes(self) -> None:
        """The whole answer, byte for byte: the request's headers copied, a To tag added."""
        self.answerer.user_agent = "ua/1"
        self.answerer.to_tag = "tt"
        self.assertEqual(
            self.answerer.answer(request(), SOURCE),
            b"SIP/2.0 200 OK\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKfirst\r\n"
            b"Via: SIP/2.0/UDP proxy.invalid;branch=z9hG4bKsecond\r\n"
            b"From: <sip:ping@registrar.invalid>;tag=f1\r\n"
            b"To: <sip:alice@192.0.2.1:5060>;tag=tt\r\n"
            b"Call-ID: ping-1@registrar.invalid\r\n"
            b"CSeq: 17 OPTIONS\r\n"
            b"Allow: OPTIONS\r\n"
            b"Accept: \r\n"
            b"Server: ua/1\r\n"
            b"Content-Length: 0\r\n\r\n",
        )

    def test_copies_dialog_headers(self) -> None:
        """Every Via in order (also several in one header line), From, Call-ID and CSeq are copied."""
        req = parse_message(
            b"OPTIONS sip:x@h SIP/2.0\r\n"
            b"v: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa, SIP/2.0/TCP b.invalid;branch=z9hG4bKb\r\n"
            b"Via: SIP/2.0/UDP c.invalid:5070;branch=z9hG4bKc;received=198.51.100.1\r\n"
            b"t: <sip:x@h>\r\nf: \"Reg\" <sip:r@h>;tag=9\r\ni: abc\r\nCSeq: 4294 OPTIONS\r\n\r\n"
        )
        assert isinstance(req, Request)
        response = self.answer(req)
        self.assertEqual(
            response.get_all("via"),
            ["SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa", "SIP/2.0/TCP b.invalid;branch=z9hG4bKb",
             "SIP/2.0/UDP c.invalid:5070;branch=z9hG4bKc;received=198.51.100.1"],
        )
        self.assertEqual((response.get("from"), response.call_id, response.cseq), ('"Reg" <sip:r@h>;tag=9', "abc", (4294, "OPTIONS")))

    def test_top_via_stamped(self) -> None:
        """The top Via gets received when its sent-by is not the source, and a valueless rport the source port."""
        response = self.answer(request(via="SIP/2.0/UDP registrar.invalid;rport;branch=z9hG4bK1"), ("198.51.100.9", 40000))
        self.assertEqual(response.get_all("via")[0], "SIP/2.0/UDP registrar.invalid;rport=40000;branch=z9hG4bK1;received=198.51.100.9")
        self.assertEqual(response.get_all("via")[1], VIAS[1])
        self.assertEqual(self.answer(request(), ("192.0.2.8", 5060)).get_all("via")[0], VIAS[0] + ";received=192.0.2.8")

    def test_request_uri_does_not_matter(self) -> None:
        """OPTIONS to any user, any URI, gets its 200."""
        for uri in ("sip:nobody@203.0.113.1", "sips:x@y.invalid;transport=tcp", "tel:+15551234"):
            self.assertEqual(self.answer(request(uri=uri)).status, 200)

    def test_to_tag_added_once(self) -> None:
        """A To without a tag gets one, the same for a retransmission; a To with a tag keeps its own."""
        first, again = self.answer(request()), self.answer(request())
        self.assertEqual(first.get("to"), again.get("to"))
        self.assertEqual(parse_name_addr(first.get("to") or "").params["tag"], self.answerer.to_tag)
        self.assertEqual(len(self.answerer.to_tag), 16)
        tagged = self.answer(request(to="<sip:alice@192.0.2.1>;tag=theirs"))
        self.assertEqual(tagged.get("to"), "<sip:alice@192.0.2.1>;tag=theirs")

    def test_ack_silent(self) -> None:
        """An ACK is never answered; it is counted as dropped and takes no token."""
        answerer = RequestAnswerer(self.clock, self.counters, burst=1)
        self.assertIsNone(answerer.answer(request("ACK"), SOURCE))
        self.assertEqual((self.counters.dropped_requests, self.counters.requests_answered), (1, 0))
        self.assertIsNotNone(answerer.answer(request(), SOURCE))

    def test_cancel(self) -> None:
        """A CANCEL matches no transaction: 481."""
        response = self.answer(request("CANCEL"))
        self.assertEqual((response.status, response.reason), (481, "Call/Transaction Does Not Exist"))
        self.assertEqual((response.cseq, response.has("allow")), ((17, "CANCEL"), False))

    def test_known_methods(self) -> None:
        """Methods we understand but do not accept: 405 with Allow: OPTIONS."""
        for method in sorted(KNOWN_METHODS):
            response = self.answer(request(method))
            expected = (405, "Method Not Allowed", ["OPTIONS"])
            self.assertEqual((response.status, response.reason, response.get_all("allow")), expected, method)
            self.assertEqual(response.cseq, (17, method))
        self.assertEqual(self.counters.requests_answered, len(KNOWN_METHODS))

    def test_unknown_methods(self) -> None:
        """An unknown method, or a known one in other case (methods are case-sensitive), is 501 Not Implemented."""
        for method in ("FROBNICATE", "options", "Invite"):
            response = self.answer(request(method))
            self.assertEqual((response.status, response.reason, response.has("allow")), (501, "Not Implemented", False), method)

    def test_require(self) -> None:
        """An OPTIONS requiring an extension gets 420 with the tags Unsupported (RFC 3261 §8.2.2.3)."""
        response = self.answer(request(extra="Require: 100rel, foo\r\n"))
        self.assertEqual((response.status, response.get("unsupported")), (420, "100rel, foo"))

    def test_missing_headers_dropped(self) -> None:
        """A request lacking any header a response copies is not answered, and counted as dropped."""
        for missing in ("via", "from", "to", "call-id", "cseq"):
            req = request()
            req = Request([(n, v) for n, v in req.headers if n != missing], b"", method="OPTIONS", uri=req.uri)
            self.assertIsNone(self.answerer.answer(req, SOURCE), missing)
        self.assertEqual((self.counters.dropped_requests, self.counters.requests_answered), (5, 0))

    def test_unrenderable_dropped(self) -> None:
        """A value that would carry a CR or LF onto the wire, or a To that is not a name-addr, is dropped."""
        for headers in ([("call-id", "a\r\nX-Injected: 1")], [("to", "not a uri")], [("via", "garbage")]):
            req = request()
            names = {n for n, _ in headers}
            req = Request([(n, v) for n, v in req.headers if n not in names] + headers, b"", method="OPTIONS", uri=req.uri)
            self.assertIsNone(self.answerer.answer(req, SOURCE), headers)
        self.assertEqual((self.counters.dropped_requests, self.counters.requests_answered), (3, 0))

    def test_user_agent(self) -> None:
        """An empty user agent omits Server; one with a CR or LF is refused."""
        self.answerer.user_agent = ""
        self.assertFalse(self.answer(request()).has("server"))
        self.assertEqual(self.answer(request("BYE")).has("server"), False)
        self.assertRaises(SipRenderError, setattr, self.answerer, "user_agent", "x\r\nX-Injected: 1")
        self.assertEqual(RequestAnswerer(self.clock, self.counters, user_agent="me/2").user_agent, "me/2")


class RateLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = SipCounters()
        self.answerer = RequestAnswerer(self.clock, self.counters, rate=2.0, burst=4, sources_max=3)
        self.ping = request()

    def answered(self, ip: str, n: int = 1) -> int:
        return sum(self.answerer.answer(self.ping, (ip, 5060)) is not None for _ in range(n))

    def test_burst_then_refill(self) -> None:
        """A burst is answered, then the rest is limited; tokens come back at the rate, up to the burst."""
        self.assertEqual(self.answered("192.0.2.1", 10), 4)
        self.assertEqual((self.counters.requests_answered, self.counters.requests_rate_limited), (4, 6))
        self.clock.advance(0.4)
        self.assertEqual(self.answered("192.0.2.1", 5), 0)
        self.clock.advance(0.1)  # 0.5 s: one token
        self.assertEqual(self.answered("192.0.2.1", 5), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.answered("192.0.2.1", 5), 2)
        self.clock.advance(3600)
        self.assertEqual(self.answered("192.0.2.1", 10), 4)

    def test_per_source_ip(self) -> None:
        """Each source IP has its own bucket; ports of the same IP share one."""
        self.assertEqual(self.answered("192.0.2.1", 10), 4)
        self.assertEqual(self.answered("192.0.2.2", 10), 4)
        self.assertIsNone(self.answerer.answer(self.ping, ("192.0.2.1", 5999)))

    def test_limited_counts_nothing_else(self) -> None:
        """A request over the limit is counted only as rate-limited."""
        self.answered("192.0.2.1", 5)
        self.assertEqual((self.counters.requests_rate_limited, self.counters.dropped_requests, self.counters.requests_answered), (1, 0, 4))

    def test_sources_bounded_lru(self) -> None:
        """Past sources_max sources the least recently used is forgotten (it starts again with a full bucket)."""
        for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            self.assertEqual(self.answered(ip, 4), 4)
        self.assertEqual(self.answered("192.0.2.1", 1), 0)  # .1 is now the most recently used
        self.assertEqual(self.answered("192.0.2.4", 1), 1)  # evicts .2
        self.assertEqual(self.answerer.sources, 3)
        self.assertEqual(self.answered("192.0.2.1", 1), 0)  # still held, still empty
        self.assertEqual(self.answered("192.0.2.3", 1), 0)
        self.assertEqual(self.answered("192.0.2.2", 5), 4)  # forgotten: a full bucket again

    def test_many_sources(self) -> None:
        """Ten thousand sources hold at most sources_max buckets."""
        answerer = RequestAnswerer(self.clock, self.counters, sources_max=100)
        for i in range(10000):
            answerer.answer(self.ping, (f"10.0.{i // 256}.{i % 256}", 5060))
        self.assertEqual((answerer.sources, self.counters.requests_answered), (100, 10000))

    def test_clock_backwards(self) -> None:
        """A clock that steps back gives no tokens, and none once it catches up."""
        buckets = TokenBuckets(rate=1.0, burst=2, size=10)
        self.assertEqual([buckets.take("a", 100.0) for _ in range(3)], [True, True, False])
        self.assertFalse(buckets.take("a", 50.0))
        self.assertFalse(buckets.take("a", 100.5))
        self.assertTrue(buckets.take("a", 101.0))
