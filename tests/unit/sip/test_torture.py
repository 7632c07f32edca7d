"""
The parser under RFC 4475's torture cases (section 3.1, parser tests).

The messages are written by hand after the RFC's cases (same names, same
tortures: folding, compact forms, odd case and whitespace, escaped quotes,
unusual methods and URIs; and for the invalid ones the same defect), not
copied from it.  CRLF line ends are added by L{message}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import Request, Response, parse_message, parse_name_addr
from uacregistrant.sip.uri import parse_uri


def message(text: str, body: bytes = b"") -> bytes:
    """Lines joined with CRLF, a blank line, the body."""
    lines = text.strip("\n").split("\n")
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body


SDP = b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\n"

VALID = {
    # 3.1.1.1: compact and odd-case names, folding everywhere, LWS around
    # separators, an unknown header with an odd value, quoted escapes.
    "wsinv": message(
        """
INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;rport;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33
""",
        (SDP + b"a=rtpmap:31 LPC\r\n").ljust(150, b"x"),
    ),
    # 3.1.1.2: every legal character class in method, URI user part and tokens.
    "intmeth": message(
        """
!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb
Content-Length: 0
"""
    ),
    # 3.1.1.3: escaped characters in URIs are equivalent to the unescaped ones.
    "esc01": message(
        """
INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 0
"""
    ),
    # 3.1.1.5: a display name with LWS and odd quoting in Contact.
    "lwsdisp": message(
        """
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0
"""
    ),
    # 3.1.1.7: an unknown header repeated with many values; a huge header value.
    "longreq": message(
        """
INVITE sip:user@example.com SIP/2.0
To: "I have a user name of extreme proportion" <sip:user@example.com:6000;unknownparam1=verylonngvalue;longparamnamewithnovalue>
From: sip:caller@example.net;tag=12982982
Call-ID: longreq.onereallyreallyreallyreallyreallyreallyreallylongcallid
CSeq: 1 INVITE
Max-Forwards: 60
Via: SIP/2.0/TCP sip33.example.com
v: SIP/2.0/TCP sip32.example.com
V: SIP/2.0/TCP sip31.example.com
Via: SIP/2.0/TCP sip30.example.com
Via: SIP/2.0/TCP sip29.example.com;branch=z9hG4bK0001
X-Very-Long: """ + "z" * 2000 + """
Contact: <sip:amazinglylongcallername@host5.example.net>
Content-Length: 0
"""
    ),
    # 3.1.1.9: semicolons in the user part of a URI.
    "semiuri": message(
        """
OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0
"""
    ),
    # 3.1.1.10: transports other than UDP in Via.
    "transports": message(
        """
OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0
"""
    ),
    # 3.1.1.12 / 3.1.1.13: a response with an unusual reason phrase, and one with none.
    "unreason": message(
        """
SIP/2.0 200 = 2**3 * 5**2 \xd0\xbd\xd0\xbe \xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd0\xbd\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 0
Contact: <sip:user@host198.example.com>
"""
    ),
    "noreason": message(
        """
SIP/2.0 100 
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
"""
    ),
}

INVALID = {
    # 3.1.2.2: Content-Length larger than the body.
    "clerr": message(
        """
INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999
""",
        SDP,
    ),
    # 3.1.2.3: a negative Content-Length.
    "scalar02": message(
        """
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1000000000000000000000000000000000000000
Contact: <sip:user@host129.example.com>
Content-Length: -999
"""
    ),
    # 3.1.2.4: values far beyond their ranges (CSeq past 2**31-1, Max-Forwards past 255).
    "scalarlg": message(
        """
SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0
"""
    ),
    # 3.1.2.5: unterminated quoted string in a display name.
    "quotbal": message(
        """
INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Length: 0
"""
    ),
    # 3.1.2.6: the Request-URI in angle brackets.
    "ltgtruri": message(
        """
INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Content-Length: 0
"""
    ),
    # 3.1.2.7: whitespace inside the Request-URI.
    "lwsruri": message(
        """
INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Content-Length: 0
"""
    ),
    # 3.1.2.8: several spaces between the parts of the request line.
    "lwsstart": message(
        """
INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Content-Length: 0
"""
    ),
    # 3.1.2.9: trailing whitespace after the version.
    "trws": message(
        """
OPTIONS sip:remote-target@example.com SIP/2.0  
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0
"""
    ),
    # 3.1.2.12: a unquoted display name with characters that are not tokens.
    "baddn": message(
        """
OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0
"""
    ),
    # 3.1.2.11: whitespace inside the angle brackets around an addr-spec.
    "badaspec": message(
        """
OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0
"""
    ),
    # 3.1.2.13: a SIP version that is not 2.0.
    "badvers": message(
        """
OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0
"""
    ),
    # 3.1.2.14: CSeq method differs from the request method.
    "mismatch01": message(
        """
OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0
"""
    ),
    # 3.1.2.15: the same with an unknown method.
    "mismatch02": message(
        """
NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Length: 0
"""
    ),
    # 3.1.2.17: single-valued headers given twice.
    "multi01": message(
        """
INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Length: 0
"""
    ),
    # 3.1.2.19: required headers missing.
    "insuf": message(
        """
INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Length: 0
"""
    ),
    # 3.1.2.1-like: a CRLF-less, truncated datagram.
    "truncated": b"INVITE sip:user@example.com SIP/2.0\r\nTo: sip:j.user@example.com\r\nFrom: sip:caller@exa",
}


class TortureTests(SynchronousTestCase):
    def test_valid_messages_parse(self) -> None:
        """Every valid message parses."""
        for name, data in VALID.items():
            try:
                parse_message(data)
            except SipParseError as e:
                self.fail(f"{name}: {e}")

    def test_invalid_messages_raise_the_codec_error(self) -> None:
        """Every invalid message raises SipParseError, nothing else."""
        for name, data in INVALID.items():
            with self.assertRaises(SipParseError, msg=name):
                parse_message(data)

    def test_wsinv_headers(self) -> None:
        """Folding, compact forms and LWS do not change what a registrant reads."""
        m = parse_message(VALID["wsinv"])
        assert isinstance(m, Request)
        self.assertEqual(m.cseq, (9, "INVITE"))
        self.assertEqual(m.call_id, "wsinv.ndaksdj@192.0.2.1")
        vias = m.get_all("via")
        self.assertEqual(len(vias), 3)
        self.assertEqual((m.top_via.transport, m.top_via.host, m.top_via.branch), ("UDP", "192.0.2.2", "390skdjuw"))
        (contact,) = [parse_name_addr(v) for v in m.get_all("contact")]
        self.assertEqual(contact.display, 'Quoted string ""')
        self.assertEqual((contact.uri, contact.params), ("sip:jdrosen@example.com", {"newparam": "newvalue", "secondparam": None, "q": "0.33"}))
        to = parse_name_addr(m.get("to") or "")
        self.assertEqual((to.uri, to.params["tag"]), ("sip:vivekg@chair-dnrc.example.com", "1918181833n"))
        self.assertEqual(parse_name_addr(m.get("from") or "").display, 'J Rosenberg \\"')
        self.assertEqual(m.get("newfangledheader"), "newfangled value continued newfangled value")
        self.assertEqual(len(m.body), 150)

    def test_intmeth_and_escapes(self) -> None:
        """Unusual methods and URI characters survive; escapes compare equal to their characters."""
        m = parse_message(VALID["intmeth"])
        assert isinstance(m, Request)
        self.assertEqual(m.cseq, (139122385, "!INTERESTING-METHOD0123456789_*+`.%INDEED'~"))
        self.assertEqual(parse_uri(m.uri).host, "example.com")
        self.assertEqual(parse_uri(m.uri).user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        esc = parse_message(VALID["esc01"])
        assert isinstance(esc, Request)
        self.assertEqual(parse_uri(esc.uri).user, "sips%3Auser%40example.com")
        from uacregistrant.sip.uri import uris_equal

        contact = parse_name_addr(esc.get("contact") or "")
        self.assertTrue(uris_equal(parse_uri(contact.uri), parse_uri("sip:caller@host5.example.net;lr;name=value%25%34%31")))
        self.assertTrue(uris_equal(parse_uri(parse_name_addr(esc.get("to") or "").uri), parse_uri("sip:user@example.com")))

    def test_responses(self) -> None:
        """Odd reason phrases (or none) and the headers a registrant reads."""
        m = parse_message(VALID["unreason"])
        assert isinstance(m, Response)
        self.assertEqual((m.status, m.cseq), (200, (35, "INVITE")))
        self.assertTrue(m.reason.startswith("= 2**3 * 5**2"))
        noreason = parse_message(VALID["noreason"])
        assert isinstance(noreason, Response)
        self.assertEqual((noreason.status, noreason.reason), (100, ""))

    def test_many_vias_and_transports(self) -> None:
        """Repeated and compact Via headers keep their order; any transport token parses."""
        m = parse_message(VALID["longreq"])
        self.assertEqual([v.split()[-1] for v in m.get_all("via")][:2], ["sip33.example.com", "sip32.example.com"])
        t = parse_message(VALID["transports"])
        from uacregistrant.sip.message import parse_via

        self.assertEqual([parse_via(v).transport for v in t.get_all("via")], ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"])
