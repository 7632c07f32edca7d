"""
Property tests: whatever bytes arrive, the parser returns a message or
raises SipParseError, and the transport counts and drops without raising.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.fuzzing import SEEDS, SEPARATOR, RegistrantScenario
from uacregistrant.core.counters import SipCounters
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.net.transport import SipTransport
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import _PLAIN_NAME_ADDR, Response, parse_message, parse_name_addr, parse_params
from uacregistrant.sip.sharing import Names

VALID = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;rport=5060;branch=z9hG4bKabc\r\n"
    b"To: <sip:alice@example.com>;tag=1\r\nFrom: <sip:alice@example.com>;tag=2\r\n"
    b"Call-ID: c1\r\nCSeq: 1 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="r", nonce="n", qop="auth", algorithm=MD5\r\n'
    b"Contact: <sip:alice@192.0.2.1>;expires=60\r\nContent-Length: 0\r\n\r\n"
)
LINES = VALID.split(b"\r\n")


def exercise(data: bytes) -> None:
    """Parse and touch everything a registrant reads; only SipParseError may escape."""
    try:
        message = parse_message(data)
        message.top_via
        message.cseq
        message.call_id
        for value in message.get_all("contact"):
            parse_name_addr(value)
        message.int_header("expires")
        if isinstance(message, Response):
            message.retry_after
    except SipParseError:
        pass


mutated = st.builds(
    lambda lines, cut, junk, at: b"\r\n".join(lines)[:cut] + junk + b"\r\n".join(lines)[at:],
    st.lists(st.sampled_from(LINES), min_size=1, max_size=30),
    st.integers(0, 600),
    st.binary(max_size=40),
    st.integers(0, 600),
)


#: ASCII digits and look-alikes that are digits to str.isdigit() but not to SIP.
_DIGITS = st.sampled_from(list("0123456789") + ["\u00b2", "\u00b3", "\u0661", "\uff11", "\u09e7", "\U0001d7ce"])


def _digits_swapped(data: bytes, choices: list[str]) -> bytes:
    """Replace the ASCII digits of C{data}, in order, by C{choices} (cycled)."""
    if not choices:
        return data
    text = data.decode("utf-8", errors="surrogateescape")
    out = []
    n = 0
    for c in text:
        if c.isascii() and c.isdigit():
            out.append(choices[n % len(choices)])
            n += 1
        else:
            out.append(c)
    return "".join(out).encode("utf-8", errors="surrogateescape")


exchanges = st.builds(
    lambda seed, cut, junk, at, digits: _digits_swapped(seed[:cut] + junk + seed[at:], digits),
    st.sampled_from(SEEDS),
    st.integers(0, 900),
    st.binary(max_size=30),
    st.integers(0, 900),
    st.lists(_DIGITS, max_size=8),
)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(exchanges)
    def test_registrant_always_has_pending_work(self, data: bytes) -> None:
        """
        Whole exchanges, spliced and with Unicode digits for ASCII ones,
        through the daemon's client, transaction layer and a real
        registrant: the record always ends with pending work and no
        internal error.
        """
        RegistrantScenario().feed(data)

    def test_seeds(self) -> None:
        """The fuzzing seeds are whole exchanges, each ending in the state its last answer gives."""
        ends = []
        for seed in SEEDS:
            scenario = RegistrantScenario()
            scenario.feed(seed)
            ends.append(scenario.registrant.state.name)
        self.assertEqual(ends, ["REGISTERED_STATE", "REGISTERED_STATE", "REGISTER_TIMEOUT_STATE", "REGISTRAR_ERROR_STATE",
                                "REGISTERED_STATE", "REGISTRAR_ERROR_STATE"])
        self.assertEqual(len(SEEDS[0].split(SEPARATOR)), 2)


    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=2000))
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes never raise anything but SipParseError."""
        exercise(data)

    @settings(max_examples=400, deadline=None)
    @given(mutated)
    def test_mutated_responses(self, data: bytes) -> None:
        """Shuffled, duplicated, truncated and spliced responses neither."""
        exercise(data)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(st.binary(max_size=300), mutated), max_size=20))
    def test_transport_never_raises(self, datagrams: list[bytes]) -> None:
        """The datagram entry point counts every datagram and never raises."""
        counters = SipCounters()
        transport = SipTransport(SocketSpec("127.0.0.1", 5060), TransactionLayer(Clock(), counters), counters, Clock())
        for data in datagrams:
            transport.datagramReceived(data, ("127.0.0.1", 5080))
        self.assertEqual(counters.datagrams_received, len(datagrams))

    def test_huge_header_values(self) -> None:
        """Huge values (a 60 kB header, 20,000 escapes, 6,000 list items) parse or are refused with the codec's error."""
        exercise(VALID.replace(b"Call-ID: c1", b"Call-ID: " + b"x" * 60000))
        exercise(VALID.replace(b"nonce=\"n\"", b'nonce="' + b"\\\"" * 20000 + b'"'))
        exercise(b"SIP/2.0 200 OK\r\nContact: " + b"<sip:a@b>," * 6000 + b"\r\n\r\n")

    @settings(max_examples=300, deadline=None)
    @given(st.from_regex(_PLAIN_NAME_ADDR, fullmatch=True))
    def test_plain_name_addr_is_valid(self, value: str) -> None:
        """Every To/From value the parser's shortcut accepts, the full check accepts too."""
        parse_name_addr(value)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet="aB;= \t\"x-", max_size=30))
    def test_parameter_names_cached_or_not(self, text: str) -> None:
        """A parameter list parses the same the first and the second time (names remembered), and without a table."""
        names = Names()
        try:
            first = parse_params(text, names=names)
        except SipParseError:
            self.assertRaises(SipParseError, parse_params, text, names=names)
            self.assertRaises(SipParseError, parse_params, text)
        else:
            self.assertEqual(parse_params(text, names=names), first)
            self.assertEqual(parse_params(text), first)
