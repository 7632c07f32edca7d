"""Tests for L{uacregistrant.sip.message}."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip import message as message_module
from uacregistrant.sip.errors import SipParseError, SipRenderError
from uacregistrant.sip.message import (
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    parse_message,
    parse_name_addr,
    parse_params,
    parse_via,
    quote_string,
    render_request,
    render_response,
    split_list,
    stamp_via,
    unquote_string,
)
from uacregistrant.sip.sharing import Names
from uacregistrant.sip.uri import parse_uri_uncached

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"v: SIP/2.0/UDP 127.0.0.1:5060;rport=5060;branch=z9hG4bKabc;received=127.0.0.1\r\n"
    b"Via: SIP/2.0/UDP proxy.invalid;branch=z9hG4bKother\r\n"
    b"To: <sip:alice@example.com>;tag=xyz\r\n"
    b"f: <sip:alice@example.com>;tag=1\r\n"
    b"i: call-1\r\n"
    b"CSeq:   7   REGISTER\r\n"
    b'm: "Alice, Home" <sip:alice@192.0.2.1:5060;ob>;expires=120, <sip:alice@10.0.0.1>\r\n'
    b"Contact: sip:alice@192.0.2.9;expires=60\r\n"
    b"Expires: 3600\r\n"
    b"Retry-After: 18 (lunch);duration=30\r\n"
    b"X-Folded: one\r\n  two\r\n"
    b"l: 0\r\n\r\n"
)


class ParseTests(SynchronousTestCase):
    def test_response(self) -> None:
        """Compact forms, folding, list splitting and the registrant's headers."""
        message = parse_message(OK)
        assert isinstance(message, Response)
        self.assertEqual((message.status, message.reason), (200, "OK"))
        self.assertEqual(message.top_via.branch, "z9hG4bKabc")
        self.assertEqual(message.cseq, (7, "REGISTER"))
        self.assertEqual(message.call_id, "call-1")
        self.assertEqual(message.int_header("expires"), 3600)
        self.assertEqual(message.retry_after, 18)
        self.assertEqual(message.get("x-folded"), "one two")
        contacts = [parse_name_addr(c) for c in message.get_all("contact")]
        self.assertEqual([c.uri for c in contacts], ["sip:alice@192.0.2.1:5060;ob", "sip:alice@10.0.0.1", "sip:alice@192.0.2.9"])
        self.assertEqual(contacts[0].display, "Alice, Home")
        self.assertEqual(contacts[0].params, {"expires": "120"})
        self.assertEqual(contacts[2].params, {"expires": "60"})

    def test_request(self) -> None:
        """Requests parse too (the test registrar needs them)."""
        data = render_request(
            "REGISTER",
            "sip:example.com",
            [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("CSeq", "1 REGISTER"), ("To", "<sip:a@example.com>"),
             ("From", "<sip:a@example.com>;tag=1"), ("Call-ID", "c")],
        )
        message = parse_message(data)
        assert isinstance(message, Request)
        self.assertEqual((message.method, message.uri), ("REGISTER", "sip:example.com"))
        self.assertEqual(message.get("content-length"), "0")

    def test_bare_lf(self) -> None:
        """Bare LF line ends are tolerated."""
        message = parse_message(OK.replace(b"\r\n", b"\n"))
        assert isinstance(message, Response)
        self.assertEqual(message.cseq, (7, "REGISTER"))

    def test_invalid(self) -> None:
        """Truncated, oversized and malformed input raises SipParseError."""
        cases = [
            b"",
            b"garbage",
            OK[:40],
            b"SIP/2.0 2000 OK\r\n\r\n",
            b"SIP/3.0 200 OK\r\n\r\n",
            b"SIP/2.0 200 OK\r\nNo colon here\r\n\r\n",
            b"SIP/2.0 200 OK\r\n folded first\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            b"SIP/2.0 200 OK\r\n" + b"X: y\r\n" * 1100 + b"\r\n",
            b"SIP/2.0 200 OK\r\n" + b"X: " + b"a" * MAX_MESSAGE_SIZE + b"\r\n\r\n",
        ]
        for data in cases:
            with self.assertRaises(SipParseError, msg=data[:40]):
                parse_message(data)

    def test_single_headers_once(self) -> None:
        """A repeated single header (however spelled) is refused; list headers may repeat, in order, folding kept."""
        base = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:a@h>\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
        for repeated in ["i: d", "CSeq: 2 REGISTER", "t: <sip:b@h>", "Content-Length: 0\r\nl: 0", "Expires: 1\r\nexpires: 2"]:
            with self.assertRaises(SipParseError, msg=repeated) as caught:
                parse_message((base + repeated + "\r\n\r\n").encode())
            self.assertIn("more than one", str(caught.exception))
        message = parse_message((base + "v: SIP/2.0/UDP g;branch=z9hG4bK2\r\nContact: <sip:a@x>\r\n  ;expires=5\r\n\r\n").encode())
        self.assertEqual(message.get_all("via"), ["SIP/2.0/UDP h;branch=z9hG4bK1", "SIP/2.0/UDP g;branch=z9hG4bK2"])
        self.assertEqual(message.get("contact"), "<sip:a@x> ;expires=5")
        self.assertEqual(message.headers[-1], ("contact", "<sip:a@x> ;expires=5"))

    def test_bad_header_values(self) -> None:
        """The dialog headers are checked eagerly; others when used; always with the codec's error."""
        base = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:a@h>\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
        for bad in ["CSeq: x REGISTER", "Via: nonsense", "To: <sip:a@h", "Call-ID:"]:
            name = bad.split(":")[0]
            data = "\r\n".join(line for line in base.split("\r\n") if not line.startswith(name + ":")) + bad + "\r\n\r\n"
            with self.assertRaises(SipParseError, msg=bad):
                parse_message(data.encode()).call_id
        message = parse_message((base + "Expires: -1\r\nRetry-After: soon\r\n\r\n").encode())
        with self.assertRaises(SipParseError):
            message.int_header("expires")
        assert isinstance(message, Response)
        with self.assertRaises(SipParseError):
            message.retry_after

    def test_numbers_are_ascii_digits(self) -> None:
        """
        Every number the parser reads refuses Unicode digits (which
        C{str.isdigit} accepts) with the codec's own error, never another.
        """
        base = (
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\nTo: <sip:a@h>\r\nFrom: <sip:a@h:5060>;tag=1\r\n"
            "Call-ID: c\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\nExpires: 60\r\nMin-Expires: 60\r\n"
            "Retry-After: 60\r\nContent-Length: 0\r\n\r\n"
        )
        parse_message(base.encode())
        for digit in ("\u00b2", "\u0661", "\uff11", "\u09e7", "1\u00b3"):
            eager = [
                base.replace("200 OK", f"20{digit} OK"),
                base.replace("CSeq: 1", f"CSeq: {digit}"),
                base.replace("Max-Forwards: 70", f"Max-Forwards: {digit}"),
                base.replace("h:5060;branch", f"h:{digit};branch"),
                base.replace("Content-Length: 0", f"Content-Length: {digit}"),
            ]
            for text in eager:
                with self.assertRaises(SipParseError, msg=text):
                    parse_message(text.encode()).top_via
            for name in ("Expires", "Min-Expires"):
                message = parse_message(base.replace(f"{name}: 60", f"{name}: {digit}").encode())
                with self.assertRaises(SipParseError):
                    message.int_header(name)
            message = parse_message(base.replace("Retry-After: 60", f"Retry-After: {digit}").encode())
            assert isinstance(message, Response)
            with self.assertRaises(SipParseError):
                message.retry_after
            with self.assertRaises(SipParseError):
                parse_uri_uncached(f"sip:a@h:{digit}")
            with self.assertRaises(SipParseError):
                parse_via(f"SIP/2.0/UDP h:{digit}")

    def test_name_tables_keep_short_names_only(self) -> None:
        """A header or parameter name padded with thousands of spaces is parsed but never remembered."""
        names = Names()
        padded = OK.replace(b"i: call-1", b"i" + b" " * 20000 + b": call-1").replace(b";tag=xyz", b";tag" + b" " * 20000 + b"=xyz")
        message = parse_message(padded, names=names)
        self.assertEqual(message.call_id, "call-1")
        self.assertEqual(parse_name_addr(message.get("to") or "", names=names).params, {"tag": "xyz"})
        self.assertEqual(list(names.headers), ["X-Folded"])
        self.assertEqual(names.params, {})

    def test_unusual_spellings_remembered_in_the_callers_names(self) -> None:
        """Unusual spellings go to the L{Names} passed, up to its limit; without one, nothing is kept."""
        odd = OK.replace(b"i: call-1", b"cALL-iD: call-1").replace(b";tag=xyz", b";TaG=xyz")
        names = Names(limit=1)
        for _ in range(2):
            message = parse_message(odd, names=names)
            self.assertEqual((message.call_id, parse_name_addr(message.get("to") or "", names=names).params), ("call-1", {"tag": "xyz"}))
        self.assertEqual((names.headers, names.params), ({"cALL-iD": "call-id"}, {"TaG": "tag"}))
        parse_message(odd.replace(b"CSeq:", b"cSEQ:"), names=names)
        self.assertEqual(len(names.headers), 1)  # full: the new spelling is matched, not kept
        self.assertEqual(parse_message(odd).call_id, "call-1")  # no table: matched every time

    def test_known_name_without_colon_refused(self) -> None:
        """A line holding only a known header name (no colon) is not a header line, remembered or not."""
        names = Names()
        parse_message(OK.replace(b"X-Folded", b"X-Known"), names=names)
        for line in (b"Expires", b"X-Known"):
            with self.assertRaises(SipParseError):
                parse_message(OK.replace(b"Expires: 3600", line), names=names)

    def test_usual_spellings_canonical(self) -> None:
        """The constant spelling tables give what matching would."""
        from uacregistrant.sip import message as module

        for raw, name in module._HEADER_SPELLINGS.items():
            self.assertEqual(module._header_name(f"{raw}: x"), name)
        for raw, name in module._PARAM_SPELLINGS.items():
            self.assertEqual(parse_params(f";{raw}=x", names=Names(limit=0)), {name: "x"})
            self.assertEqual(name, raw.lower())
        self.assertEqual(module._HEADER_SPELLINGS["WWW-Authenticate"], "www-authenticate")
        self.assertEqual(module._HEADER_SPELLINGS["v"], "via")

    def test_bare_cr_refused(self) -> None:
        """A bare CR inside a header line (which would end a line if echoed) is refused."""
        with self.assertRaises(SipParseError):
            parse_message(OK.replace(b"i: call-1", b"i: call-1\rInjected: 1"))

    def test_many_bindings(self) -> None:
        """A 200 listing 250 bindings, a Contact header each, parses (about 20 KiB)."""
        contacts = b"".join(b"Contact: <sip:u%d@192.0.2.%d:5060>;expires=%d\r\n" % (i, i % 250, 60 + i) for i in range(250))
        data = OK.replace(b"l: 0", contacts + b"l: 0")
        self.assertGreater(len(data), 8192)
        message = parse_message(data)
        self.assertEqual(len(message.get_all("contact")), 3 + 250)

    def test_huge_expires_clamped(self) -> None:
        """delta-seconds beyond 2**32-1 are clamped (RFC 3261 §20.19)."""
        message = parse_message(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:a@h>\r\nFrom: <sip:a@h>;tag=1\r\n"
            b"Call-ID: c\r\nCSeq: 1 REGISTER\r\nExpires: 99999999999999999999\r\n\r\n"
        )
        self.assertEqual(message.int_header("expires"), 2**32 - 1)

    def test_split_list(self) -> None:
        """Commas inside quotes and angle brackets do not split."""
        self.assertEqual(split_list('"a,b" <sip:x;p=1,2>, <sip:y>'), ['"a,b" <sip:x;p=1,2>', "<sip:y>"])


class RenderTests(SynchronousTestCase):
    def test_no_value_can_end_a_line(self) -> None:
        """A CR or LF in any rendered value is refused; never a header line of its own."""
        headers = [("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("To", "<sip:a@r>"), ("From", "<sip:a@r>;tag=1"),
                   ("Call-ID", "c"), ("CSeq", "3 REGISTER")]
        for bad in ("x\r\nInjected: 1", "x\rInjected: 1", "x\nInjected: 1"):
            with self.assertRaises(SipRenderError):
                render_request("REGISTER", "sip:r", headers + [("X", bad)])
            with self.assertRaises(SipRenderError):
                render_request("REGISTER", "sip:r" + bad, headers)
            with self.assertRaises(SipRenderError):
                quote_string(bad)
        self.assertEqual(unquote_string(quote_string("a\x00b\x7f\\\"")), "a\x00b\x7f\\\"")

    def test_response_copies_dialog_headers(self) -> None:
        """A response copies Via, From, Call-ID, CSeq and adds a To tag."""
        request = parse_message(
            render_request(
                "REGISTER",
                "sip:r",
                [("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("Via", "SIP/2.0/UDP b;branch=z9hG4bK2"), ("To", "<sip:a@r>"),
                 ("From", "<sip:a@r>;tag=1"), ("Call-ID", "c"), ("CSeq", "3 REGISTER")],
            )
        )
        assert isinstance(request, Request)
        response = parse_message(render_response(request, 423, "Interval Too Brief", [("Min-Expires", "600")], to_tag="t"))
        assert isinstance(response, Response)
        self.assertEqual(response.get_all("via"), ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b;branch=z9hG4bK2"])
        self.assertEqual(response.get("to"), "<sip:a@r>;tag=t")
        self.assertEqual((response.cseq, response.int_header("min-expires")), ((3, "REGISTER"), 600))

    def test_response_with_given_vias(self) -> None:
        """vias= replaces the request's Vias; a CR or LF in one is refused."""
        request = parse_message(
            render_request("OPTIONS", "sip:r", [("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("To", "<sip:a@r>;tag=x"),
                                               ("From", "<sip:a@r>;tag=1"), ("Call-ID", "c"), ("CSeq", "3 OPTIONS")])
        )
        assert isinstance(request, Request)
        stamped = "SIP/2.0/UDP a;branch=z9hG4bK1;received=192.0.2.1"
        response = parse_message(render_response(request, 200, "OK", to_tag="t", vias=[stamped]))
        self.assertEqual((response.get_all("via"), response.get("to")), ([stamped], "<sip:a@r>;tag=x"))
        with self.assertRaises(SipRenderError):
            render_response(request, 200, "OK", vias=["SIP/2.0/UDP a;branch=z9hG4bK1\r\nX: 1"])

    def test_stamp_via(self) -> None:
        """received when the sent-by is not the source (or rport is asked for); a valueless rport filled in (RFC 3581)."""
        v = "SIP/2.0/UDP "
        cases = [
            (v + "192.0.2.1:5060;branch=z9hG4bK1", "192.0.2.1", v + "192.0.2.1:5060;branch=z9hG4bK1"),
            (v + "192.0.2.1;branch=z9hG4bK1", "192.0.2.2", v + "192.0.2.1;branch=z9hG4bK1;received=192.0.2.2"),
            (v + "h.invalid;branch=z9hG4bK1", "192.0.2.2", v + "h.invalid;branch=z9hG4bK1;received=192.0.2.2"),
            (v + "192.0.2.1;rport;branch=z9hG4bK1", "192.0.2.1", v + "192.0.2.1;rport=4000;branch=z9hG4bK1;received=192.0.2.1"),
            (v + "192.0.2.1;branch=z9hG4bK1;RPort", "192.0.2.1", v + "192.0.2.1;branch=z9hG4bK1;rport=4000;received=192.0.2.1"),
            (v + "192.0.2.1;rport=5;branch=z9hG4bK1", "192.0.2.1", v + "192.0.2.1;rport=5;branch=z9hG4bK1"),
            (v + "192.0.2.1;branch=z9hG4bK1;received=192.0.2.9", "192.0.2.2", v + "192.0.2.1;branch=z9hG4bK1;received=192.0.2.9"),
            (v + "[2001:DB8::1]:5060;branch=z9hG4bK1", "2001:db8:0::1", v + "[2001:DB8::1]:5060;branch=z9hG4bK1"),
            (v + "[2001:db8::1];branch=z9hG4bK1", "fe80::1%eth0", v + "[2001:db8::1];branch=z9hG4bK1;received=fe80::1"),
        ]
        for value, ip, expected in cases:
            self.assertEqual(stamp_via(value, ip, 4000), expected)
            self.assertEqual(parse_via(expected).branch, "z9hG4bK1")
        self.assertRaises(SipParseError, stamp_via, "garbage", "192.0.2.1", 5060)


class FastPathTests(SynchronousTestCase):
    """The parser's shortcuts for the usual shapes give what the full grammar gives."""

    @settings(max_examples=1000, deadline=None)
    @given(
        st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "XUDP"]),
        st.text(alphabet="ab1.:;=[] \t\"\\", max_size=30),
    )
    def test_via_as_the_full_grammar_reads_it(self, transport: str, rest: str) -> None:
        usual = f"SIP/2.0/{transport} {rest}"
        # Lower case never takes the shortcut: the full grammar (case-insensitive) reads it.
        spelled = f"sip/2.0/{transport.lower()} {rest}"
        outcomes = []
        for value in (usual, spelled):
            try:
                outcomes.append(parse_via(value))
            except SipParseError:
                outcomes.append(None)
        self.assertEqual(outcomes[0], outcomes[1])

    @settings(max_examples=3000, deadline=None)
    @given(st.text(alphabet="ab: \r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", max_size=30))
    def test_head_lines_as_replace_and_split(self, text: str) -> None:
        """The header section's lines: exactly as CRLF-to-LF and a split at LF make them, a bare CR refused."""
        expected: list[str] | None = text.replace("\r\n", "\n").split("\n")
        if "\r" in text.replace("\r\n", "\n"):
            expected = None
        try:
            lines: list[str] | None = message_module._head_lines(text)
        except SipParseError:
            lines = None
        self.assertEqual(lines, expected)

    def test_first_item_of_a_list_header(self) -> None:
        """get() of a list header is the first item of all its values, empty items skipped."""
        message = parse_message(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n"
            b"Call-ID: c\r\nCSeq: 1 REGISTER\r\nContact: ,\r\nContact: , <sip:a@c>, <sip:a@d>\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(message.get("contact"), "<sip:a@c>")
        self.assertEqual(message.get("Contact"), message.get_all("contact")[0])
        self.assertIsNone(message.get("route"))
        self.assertEqual(message.get_all("route"), [])
