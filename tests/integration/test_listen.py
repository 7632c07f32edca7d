"""
The daemon's own sockets as peers see them: registrars ping the source
of a REGISTER with OPTIONS (over UDP, or over a connection to a tcp: or
tls: listen socket) and expect an answer; TLS files that cannot be used
stop the start with one line.
"""

from __future__ import annotations

import socket
import ssl
import subprocess

from tests.certs import make_ca
from uacregistrant.control.ctl import request

from .helpers import PATIENCE, TWISTD, ProcessTestCase, environment, free_udp_port, make_table, wait_for


def options(via: str, call_id: str) -> bytes:
    return (
        f"OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK{call_id}\r\n"
        f"From: <sip:registrar@127.0.0.1>;tag=k\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
        "CSeq: 7 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_response(sock: socket.socket) -> bytes:
    """One response off a stream (its Content-Length is 0)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class ListenTests(ProcessTestCase):
    timeout = 90

    def test_options_answered_on_every_transport(self) -> None:
        """OPTIONS to the UDP socket, over TCP and over TLS to the stream sockets: 200 OK with Allow; counted in reg_stats."""
        authority = make_ca("listen test CA")
        cert, key = authority.issue(str(self.directory / "uac"), dns=["uac.test"], ips=["127.0.0.1"])
        udp, tcp, tls = free_udp_port(), free_tcp_port(), free_tcp_port()
        db = self.directory / "registrant.db"
        make_table(db, [])
        _, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{udp}", "--listen", f"tcp:127.0.0.1:{tcp}",
             "--listen", f"tls:127.0.0.1:{tls}", "--tls-cert", str(cert), "--tls-key", str(key)]
        )
        wait_for(lambda: request(control, "reg_stats")[0] == "200 OK")

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pinger:
            pinger.settimeout(PATIENCE / 4)
            pinger.bind(("127.0.0.1", 0))
            pinger.sendto(options(f"UDP 127.0.0.1:{pinger.getsockname()[1]}", "u1"), ("127.0.0.1", udp))
            answer, source = pinger.recvfrom(65535)
        self.assertEqual(source, ("127.0.0.1", udp))
        self.assertTrue(answer.startswith(b"SIP/2.0 200 OK\r\n"), answer)
        self.assertIn(b"Allow: OPTIONS\r\n", answer)
        self.assertIn(b"Call-ID: u1\r\n", answer)

        with socket.create_connection(("127.0.0.1", tcp), timeout=PATIENCE / 4) as stream:
            stream.sendall(options("TCP 127.0.0.1:5060", "t1") + b"\r\n\r\n")
            answer = read_response(stream)
            self.assertTrue(answer.startswith(b"SIP/2.0 200 OK\r\n"), answer)
            self.assertIn(b"Call-ID: t1\r\n", answer)

        context = ssl.create_default_context(cadata=authority.pem.decode())
        with socket.create_connection(("127.0.0.1", tls), timeout=PATIENCE / 4) as raw:
            with context.wrap_socket(raw, server_hostname="uac.test") as stream:
                stream.sendall(options("TLS 127.0.0.1:5061", "s1"))
                answer = read_response(stream)  # type: ignore[arg-type]
        self.assertTrue(answer.startswith(b"SIP/2.0 200 OK\r\n"), answer)
        self.assertIn(b"Call-ID: s1\r\n", answer)

        status, lines = request(control, "reg_stats")
        stats = dict(line.split(": ", 1) for line in lines)
        self.assertEqual(stats["sip.requests_answered"], "3")
        self.assertEqual(stats["transport.tls_verify"], "on")

    def run_twistd(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "uacregistrant", "--control", f"unix:{self.processes.sockets / 'c'}",
             "--db-url", f"sqlite:{self.directory / 'r.db'}", "--listen", f"udp:127.0.0.1:{free_udp_port()}", *args],
            capture_output=True, env=environment(), cwd=self.directory, timeout=60,
        )

    def test_unusable_tls_files_refuse_the_start(self) -> None:
        """A missing CA file, a key that is not the certificate's, a TLS port in use: one line, exit 1."""
        authority = make_ca("refusal CA")
        cert, _ = authority.issue(str(self.directory / "a"), dns=["a.test"])
        _, other_key = authority.issue(str(self.directory / "b"), dns=["b.test"])
        cases = [
            (["--tls-ca", str(self.directory / "missing.pem")], "missing.pem"),
            (["--tls-cert", str(cert), "--tls-key", str(other_key)], "does not match"),
        ]
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        cases.append((["--listen", f"tcp:127.0.0.1:{busy.getsockname()[1]}"], f"cannot listen on tcp:127.0.0.1:{busy.getsockname()[1]}"))
        for args, expected in cases:
            result = self.run_twistd(*args)
            self.assertEqual(result.returncode, 1, result)
            err = result.stderr.decode()
            self.assertIn(expected, err)
            self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_no_verify_is_announced(self) -> None:
        """--tls-no-verify logs a warning at start and shows in reg_stats."""
        db = self.directory / "registrant.db"
        make_table(db, [])
        _, control = self.processes.daemon(["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{free_udp_port()}", "--tls-no-verify"])
        wait_for(lambda: request(control, "reg_stats")[0] == "200 OK")
        stats = dict(line.split(": ", 1) for line in request(control, "reg_stats")[1])
        self.assertEqual(stats["transport.tls_verify"], "off")
        self.assertIn("--tls-no-verify: registrars' TLS certificates are NOT checked", self.processes.log("daemon"))
