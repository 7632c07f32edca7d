"""
The test registrar itself: Kamailio 5.6 on TLS, with the at-fork fix the
fixture preloads (L{tests.integration.forklocals}), answers a burst of
concurrent TLS connections and survives them. Without the fix its
workers share OpenSSL's per-thread state in shared memory and it
crashes within a few hundred connections (kamailio/kamailio#3791).
"""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from .helpers import ProcessTestCase
from .kamailio import KamailioRegistrar

CONNECTIONS = 400
PARALLEL = 16


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _register_over_tls(context: ssl.SSLContext, port: int, index: int) -> bytes:
    """One REGISTER on a new TLS connection to 127.0.0.1:C{port}; the first bytes of the answer (b"" if none)."""
    request = (
        f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-burst-{index}\r\n"
        f"From: <sip:burst@kam.test>;tag={index}\r\nTo: <sip:burst@kam.test>\r\nCall-ID: burst-{index}\r\n"
        f"CSeq: 1 REGISTER\r\nContact: <sip:burst@127.0.0.1:5061;transport=tls>\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(request.encode())
            return tls.recv(64)
    except OSError:
        return b""


class KamailioTlsPeerTests(ProcessTestCase):
    timeout = 120

    def test_concurrent_tls_connections(self) -> None:
        """400 TLS connections, 16 at a time, each challenged: every one answered, no worker crashed."""
        kamailio = KamailioRegistrar({("burst", "kam.test"): "burst-pw"}, tls=True)
        self.addCleanup(kamailio.destroy)
        kamailio.start()
        assert kamailio.tls_port is not None
        port, context = kamailio.tls_port, _client_context()
        with ThreadPoolExecutor(PARALLEL) as pool:
            answers = list(pool.map(lambda i: _register_over_tls(context, port, i), range(CONNECTIONS)))
        time.sleep(0.5)  # a worker's crash is logged by the main process a moment later
        kamailio.assert_not_crashed()
        assert kamailio.process is not None
        self.assertIsNone(kamailio.process.poll(), "kamailio exited")
        unanswered = [i for i, answer in enumerate(answers) if not answer.startswith(b"SIP/2.0 401 ")]
        self.assertEqual(unanswered, [], f"{len(unanswered)} of {CONNECTIONS} connections not challenged")
