"""StreamFramer: SIP messages and RFC 5626 keep-alives cut out of a TCP/TLS byte stream, bounded."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip.framing import PING, PONG, FramingError, StreamFramer
from uacregistrant.sip.message import Response, parse_message

OK = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKa\r\nFrom: <sip:a@x>;tag=1\r\n"
    b"To: <sip:a@x>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 5\r\n\r\nhello"
)
EMPTY = OK.replace(b"Content-Length: 5\r\n\r\nhello", b"l: 0\r\n\r\n")


class FramingTests(SynchronousTestCase):
    def test_messages_and_keepalives_in_order(self) -> None:
        """Two messages (one with a body, one compact l: 0) around a ping and a pong."""
        framer = StreamFramer()
        out = framer.feed(b"\r\n\r\n" + OK + b"\r\n" + EMPTY)
        self.assertEqual(out, [PING, OK, PONG, EMPTY])
        message = parse_message(out[1])  # type: ignore[arg-type]
        assert isinstance(message, Response)
        self.assertEqual(message.body, b"hello")
        self.assertEqual(framer.pending, 0)

    def test_waits_for_the_rest(self) -> None:
        """A message cut anywhere is returned once whole; a ping cut after its first CRLF is not taken for a pong."""
        framer = StreamFramer()
        self.assertEqual(framer.feed(OK[:30]), [])
        self.assertEqual(framer.feed(OK[30:-2]), [])
        self.assertEqual(framer.feed(OK[-2:] + b"\r\n"), [OK])
        self.assertEqual(framer.feed(b"\r\n"), [PING])

    def test_broken_streams(self) -> None:
        """No Content-Length, a bad or conflicting one, an oversized header or message, a bare LF: FramingError."""
        cases = [
            OK.replace(b"Content-Length: 5\r\n", b""),
            OK.replace(b"Content-Length: 5", b"Content-Length: \xb2"),
            OK.replace(b"Content-Length: 5", b"Content-Length: -1"),
            OK.replace(b"Content-Length: 5", b"Content-Length: 5\r\nl: 6"),
            OK.replace(b"Content-Length: 5", b"Content-Length: 99999999999"),
            b"\n" + OK,
        ]
        for data in cases:
            with self.assertRaises(FramingError, msg=data[:40]):
                StreamFramer().feed(data)
        with self.assertRaises(FramingError):
            StreamFramer(max_message=100).feed(OK.replace(b"Content-Length: 5", b"Content-Length: 200"))
        with self.assertRaises(FramingError):
            StreamFramer(max_message=100).feed(b"SIP/2.0 200 OK\r\n" + b"X: y\r\n" * 30)

    @given(st.lists(st.integers(min_value=0, max_value=len(OK) * 3 + 8), max_size=6))
    @settings(max_examples=200, deadline=None)
    def test_any_cut_gives_the_same_result(self, cuts: list[int]) -> None:
        """However the bytes arrive, the same messages and keep-alives come out."""
        stream = OK + b"\r\n\r\n" + EMPTY + b"\r\n" + OK
        framer = StreamFramer()
        out: list[object] = []
        start = 0
        for cut in sorted(set(cuts)) + [len(stream)]:
            out += framer.feed(stream[start:cut])
            start = max(start, cut)
        self.assertEqual(out, [OK, PING, EMPTY, PONG, OK])

    @given(st.binary(max_size=400), st.integers(min_value=1, max_value=64))
    @settings(max_examples=300, deadline=None)
    def test_garbage_only_framing_errors(self, data: bytes, chunk: int) -> None:
        """Arbitrary bytes in arbitrary pieces give messages, keep-alives or FramingError, never another exception, and the buffer stays bounded."""
        framer = StreamFramer(max_message=256)
        try:
            for start in range(0, len(data), chunk):
                framer.feed(data[start : start + chunk])
                self.assertLessEqual(framer.pending, 256)
        except FramingError:
            pass


class HeldCrlfTests(SynchronousTestCase):
    def test_lone_crlf_taken_as_pong(self) -> None:
        """A lone CRLF waits for more (a ping may be cut in two) until the caller takes it as a pong; the next pong is a pong too."""
        framer = StreamFramer()
        self.assertEqual(framer.feed(b"\r\n"), [])
        self.assertTrue(framer.take_pong())
        self.assertFalse(framer.take_pong())
        self.assertEqual(framer.feed(b"\r\n"), [])
        self.assertTrue(framer.take_pong())
        self.assertEqual(framer.pending, 0)
        self.assertEqual(framer.feed(b"\r\n\r\n"), [PING])
