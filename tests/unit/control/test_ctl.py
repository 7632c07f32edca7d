"""
uacregistrant-ctl: one command and its reply, following reg_events, and
the exit status (0 for a 2xx status line, 1 otherwise, 2 when the daemon
cannot be reached).  The daemon's end is one side of a socket pair,
written by the test before (or while) the client reads.
"""

from __future__ import annotations

import io
import socket
import sys

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.control import ctl


class _TimeoutSocket(socket.socket):
    """A client socket that never waits for ever: a client stuck reading fails the test instead of hanging it."""

    def settimeout(self, value: float | None) -> None:
        super().settimeout(5.0 if value is None else value)


class CtlTests(SynchronousTestCase):
    def setUp(self) -> None:
        client, self.daemon = socket.socketpair()
        self.client = _TimeoutSocket(client.family, client.type, fileno=client.detach())
        self.client.settimeout(5.0)
        self.daemon.settimeout(5.0)
        self.addCleanup(self.daemon.close)
        self.addCleanup(self.client.close)
        self.connected: list[tuple[str, float]] = []

        def connect(description: str, timeout: float = 10.0) -> socket.socket:
            self.connected.append((description, timeout))
            return self.client

        self.patch(ctl, "connect", connect)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def reply(self, data: bytes, close: bool = False) -> None:
        """What the daemon writes (then, optionally, it hangs up)."""
        self.daemon.sendall(data)
        if close:
            self.daemon.shutdown(socket.SHUT_WR)

    def received(self) -> bytes:
        """Everything the client wrote (it has closed its end)."""
        chunks = []
        while chunk := self.daemon.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def test_request_parses_status_and_body(self) -> None:
        """The status line and the body lines up to the empty line (CRs dropped); the client then says quit."""
        self.reply(b"200 OK\r\nfirst line\nsecond line\r\n\nnot part of the reply\n")
        status, body = ctl.request("unix:/nowhere", "reg_list", timeout=3.0)
        self.assertEqual((status, body), ("200 OK", ["first line", "second line"]))
        self.assertEqual(self.connected, [("unix:/nowhere", 3.0)])
        self.assertEqual(self.received(), b"reg_list\nquit\n")

    def test_request_reply_in_pieces(self) -> None:
        """A reply arriving in several pieces is read to its empty line."""
        self.reply(b"404 Not found\nno such")
        self.reply(b" record\n")
        self.reply(b"\n")
        self.assertEqual(ctl.request("unix:x", "reg_show x"), ("404 Not found", ["no such record"]))

    def test_request_daemon_hangs_up(self) -> None:
        """A daemon ending its side before the empty line: what came is the reply, and no error."""
        self.reply(b"503 Too many control connections\nbusy\n", close=True)
        self.assertEqual(ctl.request("unix:x", "reg_list"), ("503 Too many control connections", ["busy"]))

    def test_follow_prints_each_event_as_it_comes(self) -> None:
        """reg_events: each event line is written as soon as it arrives (the next is sent only after), until the daemon hangs up."""
        events = [b"2024-01-01T00:00:00.000Z sip:a@x sip:a@h NOT_REGISTERED_STATE -> REGISTERING_STATE -\n",
                  b"2024-01-01T00:00:00.100Z sip:a@x sip:a@h REGISTERING_STATE -> REGISTERED_STATE 200 OK\n",
                  b"2024-01-01T00:00:01.000Z sip:b@x sip:b@h REGISTERING_STATE -> REGISTER_TIMEOUT_STATE -\n"]
        daemon = self

        class Out(io.StringIO):
            def write(self, text: str) -> int:
                written = super().write(text)
                sent = len(self.getvalue().splitlines())
                if sent < len(events):
                    daemon.reply(events[sent])
                else:
                    daemon.reply(b"", close=True)
                return written

        out = Out()
        self.reply(b"200 OK\n" + events[0])
        self.assertEqual(ctl.follow("unix:x", "reg_events", out), 0)
        self.assertEqual(out.getvalue().encode(), b"".join(events))
        self.assertEqual(self.received(), b"reg_events\n")

    def test_follow_refused(self) -> None:
        """A status line that is not 2xx: printed on stderr, exit status 1, nothing on the output."""
        self.reply(b"400 Too many arguments\nusage: reg_events\n\n")
        out = io.StringIO()
        self.assertEqual(ctl.follow("unix:x", "reg_events now", out), 1)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(self.stderr.getvalue(), "400 Too many arguments\n")

    def test_main_success(self) -> None:
        """A 2xx reply: the body on stdout, exit status 0."""
        self.reply(b"200 OK\nline 1\nline 2\n\n")
        self.assertEqual(ctl.main(["--control", "unix:/run/x.ctl", "--timeout", "2", "reg_list"]), 0)
        self.assertEqual(self.stdout.getvalue(), "line 1\nline 2\n")
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertEqual(self.connected, [("unix:/run/x.ctl", 2.0)])

    def test_main_failure_status(self) -> None:
        """A reply that is not 2xx: the body on stdout, the status line on stderr, exit status 1."""
        self.reply(b"404 Not found\nno record sip:x\n\n")
        self.assertEqual(ctl.main(["--control", "unix:x", "reg_show", "sip:x"]), 1)
        self.assertEqual(self.stdout.getvalue(), "no record sip:x\n")
        self.assertEqual(self.stderr.getvalue(), "404 Not found\n")

    def test_main_quotes_words(self) -> None:
        """Several words are sent as one console line, a word holding a space quoted; one word is sent as typed."""
        self.reply(b"200 OK\n\n")
        self.assertEqual(ctl.main(["--control", "unix:x", "reg_upsert", "aor=sip:a@b", "password=a b", ""]), 0)
        self.assertEqual(self.received(), b"reg_upsert aor=sip:a@b 'password=a b' ''\nquit\n")

    def test_main_control_from_environment(self) -> None:
        """Without --control, $UACREG_CONTROL names the endpoint."""
        self.patch(ctl.os, "environ", {"UACREG_CONTROL": "tcp:127.0.0.1:7000"})
        self.reply(b"200 OK\n\n")
        self.assertEqual(ctl.main(["reg_list"]), 0)
        self.assertEqual(self.connected[0][0], "tcp:127.0.0.1:7000")

    def test_main_follows_events(self) -> None:
        """main() with reg_events copies the events to stdout and exits 0 when the daemon hangs up."""
        self.reply(b"200 OK\nevent one\nevent two\n", close=True)
        self.assertEqual(ctl.main(["--control", "unix:x", "reg_events"]), 0)
        self.assertEqual(self.stdout.getvalue(), "event one\nevent two\n")

    def test_main_interrupted_while_following(self) -> None:
        """Ctrl-C while following events ends with exit status 0."""
        def interrupted(*args: object) -> int:
            raise KeyboardInterrupt()

        self.patch(ctl, "follow", interrupted)
        self.assertEqual(ctl.main(["--control", "unix:x", "reg_events"]), 0)


class UnreachableTests(SynchronousTestCase):
    """Exit status 2 when the daemon cannot be reached (the real connect)."""

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.patch(sys, "stdout", io.StringIO())

    def test_missing_unix_socket(self) -> None:
        """A UNIX path that does not exist: exit status 2 naming the endpoint, for a command and for reg_events."""
        path = self.mktemp()  # never created
        for command in ("reg_list", "reg_events"):
            self.stderr.truncate(0)
            self.stderr.seek(0)
            self.assertEqual(ctl.main(["--control", f"unix:{path}", command]), 2, command)
            self.assertIn(f"cannot reach unix:{path}", self.stderr.getvalue())

    def test_unsupported_endpoint(self) -> None:
        """An endpoint the client cannot use (no port, unknown kind): exit status 2."""
        for control in ("tcp", "ssl:1234"):
            self.assertEqual(ctl.main(["--control", control, "reg_list"]), 2, control)

    def test_tcp_descriptions(self) -> None:
        """tcp:PORT, tcp:HOST:PORT, tcp:PORT:interface=IP and tcp6:PORT connect where they say."""
        calls: list[tuple[tuple[str, int], float]] = []
        self.patch(ctl.socket, "create_connection", lambda address, timeout: calls.append((address, timeout)))
        for description in ("tcp:7000", "tcp:192.0.2.5:7001", "tcp:7002:interface=192.0.2.6", "tcp6:7003"):
            ctl.connect(description, 4.0)
        self.assertEqual(calls, [(("127.0.0.1", 7000), 4.0), (("192.0.2.5", 7001), 4.0),
                                 (("192.0.2.6", 7002), 4.0), (("::1", 7003), 4.0)])


class RefusedBeforeSendTests(SynchronousTestCase):
    def test_reply_written_before_the_command_is_still_read(self) -> None:
        """A daemon that answered 503 and closed before the command went out is reported as 503 (exit 1), not unreachable."""
        client, daemon = socket.socketpair()
        daemon.sendall(b"503 Too many control connections (at most 64)\n\n")
        daemon.close()
        self.patch(ctl, "connect", lambda description, timeout=10.0: client)
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(ctl.main(["--control", "unix:x", "reg_list"]), 1)
        self.assertIn("503 Too many control connections", err.getvalue())
