"""
Coverage-guided fuzzing of the datagram entry point with atheris.

    pip install atheris && python fuzz/fuzz_datagram.py -max_total_time=60

Each input is handed to L{SipTransport.datagramReceived} with a live
transaction waiting for it (so the transaction and state-machine paths are
reached too), and to the parser's accessors.  Anything but the codec's own
error escaping, or a crash, is a finding; libFuzzer prints the input and
stops.  Seeds: the torture messages and real responses in tests/.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import atheris  # noqa: E402

# Twisted is imported first so that only this project's code is instrumented.
import twisted.internet.protocol  # noqa: E402,F401
import twisted.logger  # noqa: E402,F401
from twisted.internet.task import Clock  # noqa: E402

with atheris.instrument_imports():
    from uacregistrant.sip.digest import parse_challenges
    from uacregistrant.sip.errors import SipParseError
    from uacregistrant.sip.message import Response, parse_message, parse_name_addr
    from uacregistrant.sockets import SocketSpec
    from uacregistrant.stats import SipCounters
    from uacregistrant.transaction import TransactionLayer
    from uacregistrant.transport import SipTransport

SOURCE = ("127.0.0.1", 5080)


class _Sink:
    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        pass


def one_input(data: bytes) -> None:
    counters = SipCounters()
    clock = Clock()
    transactions = TransactionLayer(clock, counters)
    transactions.start(_Sink(), SOURCE, b"REQ", "z9hG4bKfuzz", 1, lambda response: None, lambda: None)
    transport = SipTransport(SocketSpec("127.0.0.1", 5060), transactions, counters)
    transport.datagramReceived(data, SOURCE)
    try:
        message = parse_message(data)
        for value in message.get_all("contact"):
            parse_name_addr(value)
        for value in message.get_all("www-authenticate") + message.get_all("proxy-authenticate"):
            parse_challenges(value)
        message.int_header("expires")
        if isinstance(message, Response):
            message.retry_after
    except SipParseError:
        pass
    clock.advance(64)


SEEDS = [
    b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;rport=5060;branch=z9hG4bKfuzz\r\n"
    b"To: <sip:a@example.com>;tag=1\r\nFrom: <sip:a@example.com>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="r", nonce="n", qop="auth,auth-int", algorithm=SHA-256, opaque="o"\r\n'
    b'WWW-Authenticate: Digest realm="r", nonce="n2", algorithm=MD5, stale=true\r\nContent-Length: 0\r\n\r\n',
    b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKfuzz\r\nt: <sip:a@example.com>;tag=1\r\n"
    b"f: <sip:a@example.com>;tag=2\r\ni: c\r\nCSeq: 1 REGISTER\r\n"
    b'm: "A, B" <sip:a@192.0.2.1:5060;ob>;expires=120, <sip:b@192.0.2.2>;expires=60\r\nExpires: 3600\r\nl: 0\r\n\r\n',
    b"SIP/2.0 423 Interval Too Brief\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKfuzz\r\nTo: <sip:a@h>\r\n"
    b"From: <sip:a@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nMin-Expires: 600\r\nRetry-After: 5 (x);duration=3\r\n\r\n",
]


def main() -> None:
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        # No corpus directory given: start from a few real responses.
        import tempfile

        corpus = tempfile.mkdtemp(prefix="uacreg-fuzz-")
        for i, seed in enumerate(SEEDS):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(seed)
        argv.append(corpus)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
