"""
Access to the console: the token a TCP connection must give first (on the
real service, fake clock, fake transport), the token file's checks, the
UNIX socket's owner and group, and uacregistrant-ctl's token, standard
input and --version.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import stat
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.simulation import Simulation
from uacregistrant import __version__
from uacregistrant.control import ctl
from uacregistrant.control.endpoints import ControlEndpointError, ControlTokenError, parse_control, read_token
from uacregistrant.control.listener import ControlListener
from uacregistrant.control.protocol import (
    AUTH_TIMEOUT,
    MAX_AUTH_FAILURES,
    MAX_UNAUTHENTICATED,
    MAX_WAITING_FOR_AUTH,
    ControlFactory,
    ControlProtocol,
)
from uacregistrant.testing.registrar import UserPolicy

TOKEN = "k3Y-0123456789abcdefXYZ"


def token_file(case: SynchronousTestCase, text: str = TOKEN + "\n", mode: int = 0o600) -> str:
    path = case.mktemp()
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class TokenAuthTests(SynchronousTestCase):
    """A TCP control connection runs nothing until it gives the token; a UNIX socket needs none."""

    def setUp(self) -> None:
        self.sim = Simulation(self.mktemp(), {"alice": UserPolicy(password="pw-alice")}, hash_size=0, timer_interval=10)
        self.sim.add("alice", password="pw-alice")
        self.service = self.sim.start()
        self.addCleanup(self.service.stopService)
        self.sim.run(2)
        self.factory = ControlFactory(self.service.commands, self.sim.reactor, token_file=token_file(self))
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def connect(self, address: Any = IPv4Address("TCP", "127.0.0.1", 40000), factory: ControlFactory | None = None) -> tuple[ControlProtocol, StringTransport]:
        protocol = (factory or self.factory).buildProtocol(address)
        assert isinstance(protocol, ControlProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def say(self, protocol: ControlProtocol, transport: StringTransport, data: str) -> str:
        transport.clear()
        protocol.dataReceived(data.encode())
        for _ in range(1000):
            if protocol.idle:
                break
            self.sim.reactor.advance(0)
        return transport.value().decode()

    def test_commands_refused_until_the_token(self) -> None:
        """Every command before the token is 401 (status line and empty line); the right token is 200 OK, then commands run."""
        protocol, transport = self.connect()
        self.assertEqual(self.say(protocol, transport, "reg_list\r\n"), "401 Unauthorized\n\n")
        self.assertEqual(self.say(protocol, transport, "reg_upsert aor=sip:x@y registrar=sip:y binding_URI=sip:x@z\n"), "401 Unauthorized\n\n")
        self.assertEqual(self.say(protocol, transport, "auth not-the-token-at-all\n"), "401 Unauthorized\n\n")
        self.assertFalse(protocol.authenticated)
        self.assertEqual(self.say(protocol, transport, f"auth {TOKEN}\r\n"), "200 OK\n\n")
        self.assertTrue(protocol.authenticated)
        reply = self.say(protocol, transport, "reg_list\n")
        self.assertTrue(reply.startswith("200 OK\n"), reply)
        self.assertIn("sip:alice@test.invalid", reply)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.sim.db.execute("SELECT count(*) FROM registrant WHERE aor = 'sip:x@y'").fetchone(), (0,))

    def test_ipv6_needs_the_token_too(self) -> None:
        """tcp6 connections are TCP connections."""
        protocol, transport = self.connect(IPv6Address("TCP", "::1", 40000))
        self.assertEqual(self.say(protocol, transport, "reg_stats\n"), "401 Unauthorized\n\n")

    def test_pipelined_lines_keep_their_order(self) -> None:
        """A command, the token and a command sent at once: 401, 200 OK, then the command's reply."""
        protocol, transport = self.connect()
        reply = self.say(protocol, transport, f"reg_stats\nauth {TOKEN}\nreg_stats\nauth {TOKEN}\n")
        self.assertTrue(reply.startswith("401 Unauthorized\n\n200 OK\n\n200 OK\n"), reply)
        # The token given again once authenticated: 200 OK, not a command.
        self.assertTrue(reply.endswith("\n\n200 OK\n\n"), reply)

    def test_wrong_tokens_close_the_connection(self) -> None:
        """After MAX_AUTH_FAILURES wrong tokens the connection closes; the right one afterwards is not read."""
        protocol, transport = self.connect()
        wrong = "".join(f"auth wrong-token-number-{i}\n" for i in range(MAX_AUTH_FAILURES))
        self.assertEqual(self.say(protocol, transport, wrong + f"auth {TOKEN}\nreg_list\n"), "401 Unauthorized\n\n" * MAX_AUTH_FAILURES)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(protocol.authenticated)

    def test_lines_before_the_token_are_bounded(self) -> None:
        """A client sending only commands gets MAX_UNAUTHENTICATED refusals, then the connection closes."""
        protocol, transport = self.connect()
        reply = self.say(protocol, transport, "reg_list\n" * (MAX_UNAUTHENTICATED * 100))
        self.assertEqual(reply, "401 Unauthorized\n\n" * MAX_UNAUTHENTICATED)
        self.assertTrue(transport.disconnecting)

    def test_token_must_come_in_time(self) -> None:
        """A TCP connection silent for AUTH_TIMEOUT seconds is told so and closed; an authenticated one is not."""
        protocol, transport = self.connect()
        done, done_transport = self.connect()
        self.say(done, done_transport, f"auth {TOKEN}\n")
        done_transport.clear()
        self.sim.reactor.advance(AUTH_TIMEOUT)
        self.assertEqual(transport.value().decode(), f"408 No token within {AUTH_TIMEOUT:.0f} s: closing\n\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(done_transport.value(), b"")
        self.assertFalse(done_transport.disconnecting)

    def test_connections_waiting_for_the_token_are_bounded(self) -> None:
        """
        At most MAX_WAITING_FOR_AUTH TCP connections may wait for their
        token (the next is refused at once); one that gives it, or goes,
        frees its place; UNIX connections never count.
        """
        waiting = [self.connect() for _ in range(MAX_WAITING_FOR_AUTH)]
        refused = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        transport = StringTransport()
        refused.makeConnection(transport)
        self.assertEqual(transport.value(), f"503 Too many connections waiting to authenticate (at most {MAX_WAITING_FOR_AUTH})\n\n".encode())
        self.assertTrue(transport.disconnecting)
        self.assertIsInstance(self.factory.buildProtocol(UNIXAddress("ctl")), ControlProtocol)
        protocol, first = waiting[0]
        self.say(protocol, first, f"auth {TOKEN}\n")
        self.assertIsInstance(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40002)), ControlProtocol)
        waiting[1][0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.waiting_for_auth, MAX_WAITING_FOR_AUTH - 1)

    def test_quit_before_the_token(self) -> None:
        """quit needs no token: the client may leave politely."""
        protocol, transport = self.connect()
        self.assertEqual(self.say(protocol, transport, "quit\n"), "200 Bye\n\n")
        self.assertTrue(transport.disconnecting)

    def test_unix_socket_needs_no_token(self) -> None:
        """A UNIX socket connection runs commands at once; auth there is answered, never run as a command."""
        for address in (UNIXAddress("/run/uacregistrant/ctl"), None):
            protocol, transport = self.connect(address)
            self.assertTrue(protocol.authenticated)
            self.assertTrue(self.say(protocol, transport, "reg_stats\n").startswith("200 OK\n"))
            self.assertEqual(self.say(protocol, transport, "auth whatever\n"), "200 OK\n\n")
        self.sim.reactor.advance(AUTH_TIMEOUT)
        self.assertFalse(transport.disconnecting)

    def test_no_token_file_no_tcp_command(self) -> None:
        """A factory without a token (never started so by the daemon) lets no TCP connection in, whatever it says."""
        bare = ControlFactory(self.service.commands, self.sim.reactor)
        bare.doStart()
        self.addCleanup(bare.doStop)
        protocol, transport = self.connect(factory=bare)
        self.assertEqual(self.say(protocol, transport, "auth \nauth None\nreg_list\n"), "401 Unauthorized\n\n" * 3)

    def test_token_never_in_replies_or_logs(self) -> None:
        """Neither the right token nor a wrong one is echoed or logged."""
        protocol, transport = self.connect()
        seen = self.say(protocol, transport, "auth wrong-token-0123456789\n")
        seen += self.say(protocol, transport, f"auth {TOKEN}\nreg_stats\nauth {TOKEN}\n")
        logged = "\n".join(formatEvent(e) or "" for e in self.events) + repr(list(self.events))
        for secret in (TOKEN, "wrong-token-0123456789"):
            self.assertNotIn(secret, seen)
            self.assertNotIn(secret, logged)

    def test_factory_reads_the_token_when_started(self) -> None:
        """The token is read when the first endpoint listens: a file readable by others is refused then."""
        factory = ControlFactory(self.service.commands, self.sim.reactor, token_file=token_file(self, mode=0o644))
        with self.assertRaises(ControlTokenError):
            factory.doStart()


class ReadTokenTests(SynchronousTestCase):
    """The token file: a private regular file whose first line is the token."""

    def refusal(self, path: str) -> str:
        with self.assertRaises(ControlTokenError) as caught:
            read_token(path)
        message = str(caught.exception)
        self.assertIn(path, message)
        self.assertNotIn("\n", message)
        return message

    def test_first_line_stripped(self) -> None:
        """The first line without surrounding blanks is the token; later lines are ignored."""
        self.assertEqual(read_token(token_file(self, f"  {TOKEN} \r\nsecond line\n")), TOKEN.encode())
        self.assertEqual(read_token(token_file(self, TOKEN)), TOKEN.encode())

    def test_group_or_other_bits_refused(self) -> None:
        """Any permission for the group or others is refused, saying chmod 600."""
        for mode in (0o644, 0o640, 0o604, 0o620, 0o602, 0o610):
            message = self.refusal(token_file(self, mode=mode))
            self.assertIn("chmod 600", message)
            self.assertIn(f"{mode:04o}", message)
        read_token(token_file(self, mode=0o400))

    def test_short_or_odd_tokens_refused(self) -> None:
        """Under 16 characters, blanks or control characters inside: refused, and the token is not shown."""
        for text in ("short-token-15c\n", "\n" + TOKEN, "", "with a space-0123456789\n", "tab\there-0123456789abc\n"):
            message = self.refusal(token_file(self, text))
            self.assertNotIn(text.strip() or "\x00", message)
        self.assertIn("must be 16 to", self.refusal(token_file(self, "x" * 15)))
        self.refusal(token_file(self, "x" * 5000))

    def test_not_a_regular_file(self) -> None:
        """A missing file, a directory or a FIFO (not waited for) is refused."""
        missing = self.mktemp()
        self.assertIn("No such file", self.refusal(missing))
        directory = self.mktemp()
        os.mkdir(directory, 0o700)
        self.assertIn("not a regular file", self.refusal(directory))
        fifo = self.mktemp()
        os.mkfifo(fifo, 0o600)
        self.assertIn("not a regular file", self.refusal(fifo))


class OwnershipTests(SynchronousTestCase):
    """unix:PATH:owner=:group=: resolved when parsed, applied right after the socket is bound."""

    def test_names_and_ids(self) -> None:
        """Names are looked up, ids taken as they are; Twisted's description leaves them out."""
        endpoint = parse_control("unix:/run/uacregistrant/ctl:mode=660:owner=root:group=root")
        self.assertEqual((endpoint.owner, endpoint.group, endpoint.mode), (0, 0, "660"))
        self.assertEqual(endpoint.description, "unix:/run/uacregistrant/ctl:mode=660")
        numeric = parse_control("unix:/run/x:group=4321:owner=1234")
        self.assertEqual((numeric.owner, numeric.group), (1234, 4321))
        plain = parse_control("unix:/run/x")
        self.assertEqual((plain.owner, plain.group), (-1, -1))

    def test_unknown_names(self) -> None:
        """An unknown user or group is a clear error naming the part."""
        for description, words in (
            ("unix:/run/x:owner=no-such-user-uacreg", "no user named 'no-such-user-uacreg' (owner=)"),
            ("unix:/run/x:group=no-such-group-uacreg", "no group named 'no-such-group-uacreg' (group=)"),
            ("unix:/run/x:group=99999999999", "no group named"),
        ):
            with self.assertRaises(ControlEndpointError) as caught:
                parse_control(description)
            self.assertIn(words, str(caught.exception))

    def test_check_without_root(self) -> None:
        """Not root: giving the socket to another user, or to a group the daemon is not in, is refused before starting."""
        directory = self.mktemp()
        os.mkdir(directory)
        self.patch(os, "geteuid", lambda: 4242)
        self.patch(os, "getegid", lambda: 4242)
        self.patch(os, "getgroups", lambda: [4243])
        with self.assertRaises(ControlEndpointError) as caught:
            parse_control(f"unix:{directory}/ctl:owner=0").check()
        self.assertIn("owner=0 needs root", str(caught.exception))
        with self.assertRaises(ControlEndpointError) as caught:
            parse_control(f"unix:{directory}/ctl:group=0").check()
        self.assertIn("group=0 needs root", str(caught.exception))
        parse_control(f"unix:{directory}/ctl:owner=4242:group=4243").check()

    def test_listener_gives_the_socket_its_owner_and_group(self) -> None:
        """The listener applies owner and group as soon as the socket is bound, within the start call."""
        path = os.path.join(self.mktemp(), "ctl")
        os.mkdir(os.path.dirname(path))
        uid, gid = (65534, 65534) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
        endpoint = parse_control(f"unix:{path}:mode=660:owner={uid}:group={gid}")
        listener = ControlListener(BindingEndpoint(path), Factory.forProtocol(Protocol), on_listening=endpoint.apply_ownership)
        listener.privilegedStartService()
        info = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(info.st_mode))
        self.assertEqual((info.st_uid, info.st_gid), (uid, gid))
        listener.stopService()

    def test_ownership_failure_refuses_the_start(self) -> None:
        """A chown that fails closes the port and fails the start with CannotListenError naming the socket."""
        path = os.path.join(self.mktemp(), "ctl")
        os.mkdir(os.path.dirname(path))
        bound = BindingEndpoint(path)

        def refuse() -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted")

        listener = ControlListener(bound, Factory.forProtocol(Protocol), on_listening=refuse)
        with self.assertRaises(CannotListenError) as caught:
            listener.privilegedStartService()
        self.assertEqual(caught.exception.port, path.encode())
        self.assertIn("owner and group", str(caught.exception.socketError))
        self.assertEqual(bound.ports[0].stopped, 1)


class BoundPort:
    """A real bound UNIX socket standing for Twisted's port (the listener needs getHost and stopListening)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.stopped = 0

    def getHost(self) -> UNIXAddress:
        return UNIXAddress(self.path.encode())

    def stopListening(self) -> None:
        self.stopped += 1
        self.sock.close()
        os.unlink(self.path)


@implementer(IStreamServerEndpoint)
class BindingEndpoint:
    """Binds a real UNIX socket at once, as Twisted's UNIX endpoint does (its Deferred has fired on return)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ports: list[BoundPort] = []

    def listen(self, factory: object) -> defer.Deferred[BoundPort]:
        port = BoundPort(self.path)
        self.ports.append(port)
        return defer.succeed(port)


class CtlAccessTests(SynchronousTestCase):
    """uacregistrant-ctl: the token on TCP, commands from standard input, --version."""

    def setUp(self) -> None:
        client, self.daemon = socket.socketpair()
        client.settimeout(5.0)
        self.daemon.settimeout(5.0)
        self.client = client
        self.addCleanup(self.daemon.close)
        self.addCleanup(self.client.close)
        self.connected: list[str] = []

        def connect(description: str, timeout: float = 10.0) -> socket.socket:
            self.connected.append(description)
            return self.client

        self.patch(ctl, "connect", connect)
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.patch(ctl.os, "environ", {})

    def received(self) -> bytes:
        self.client.close()
        chunks = []
        while chunk := self.daemon.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def stdin(self, text: str) -> None:
        self.patch(sys, "stdin", io.StringIO(text))

    def test_stdin_commands(self) -> None:
        """- sends each line of standard input in turn on one connection (the password never in argv); bodies printed."""
        self.stdin("reg_upsert aor=sip:a@b registrar=sip:b binding_URI=sip:a@c password='s3cr et'\n\n  reg_list\n")
        self.daemon.sendall(b"200 OK\nadded\n\n200 OK\nlisting\n\n")
        self.assertEqual(ctl.main(["--control", "unix:x", "-"]), 0)
        self.assertEqual(self.received(), b"reg_upsert aor=sip:a@b registrar=sip:b binding_URI=sip:a@c password='s3cr et'\nreg_list\nquit\n")
        self.assertEqual(self.stdout.getvalue(), "added\nlisting\n")
        self.assertEqual(self.connected, ["unix:x"])

    def test_stdin_stops_at_the_first_failure(self) -> None:
        """A reply that is not 2xx: its status on stderr, exit 1, later lines not sent."""
        self.stdin("reg_disable sip:nobody@x\nreg_delete sip:a@b\n")
        self.daemon.sendall(b"404 Not found\nno record sip:nobody@x\n\n")
        self.assertEqual(ctl.main(["--control", "unix:x", "-"]), 1)
        self.assertEqual(self.received(), b"reg_disable sip:nobody@x\nquit\n")
        self.assertEqual(self.stderr.getvalue(), "404 Not found\n")

    def test_stdin_misuse(self) -> None:
        """- with other words, nothing on standard input, or reg_events among several: usage errors (2), nothing sent."""
        for argv, text in ((["-", "reg_list"], "reg_list\n"), (["-"], "\n \n"), (["-"], "reg_list\nreg_events\n")):
            self.stdin(text)
            with self.assertRaises(SystemExit) as caught:
                ctl.main(["--control", "unix:x", *argv])
            self.assertEqual(caught.exception.code, 2)
        self.assertEqual(self.connected, [])

    def test_stdin_reg_events(self) -> None:
        """reg_events alone on standard input follows the events."""
        self.stdin("reg_events\n")
        self.daemon.sendall(b"200 OK\nevent\n")
        self.daemon.shutdown(socket.SHUT_WR)
        self.assertEqual(ctl.main(["--control", "unix:x", "-"]), 0)
        self.assertEqual(self.stdout.getvalue(), "event\n")

    def test_token_sent_first_on_tcp(self) -> None:
        """On a TCP endpoint the token file's token goes first (--token-file, or $UACREG_CONTROL_TOKEN_FILE)."""
        path = token_file(self)
        self.daemon.sendall(b"200 OK\n\n200 OK\nstats\n\n")
        self.assertEqual(ctl.main(["--control", "tcp:7000", "--token-file", path, "reg_stats"]), 0)
        self.assertEqual(self.received(), f"auth {TOKEN}\nreg_stats\nquit\n".encode())
        self.assertEqual(self.stdout.getvalue(), "stats\n")

    def test_token_from_environment(self) -> None:
        """$UACREG_CONTROL_TOKEN_FILE names the file when --token-file is not given."""
        self.patch(ctl.os, "environ", {"UACREG_CONTROL_TOKEN_FILE": token_file(self)})
        self.daemon.sendall(b"200 OK\n\n200 OK\n\n")
        self.assertEqual(ctl.main(["--control", "tcp:127.0.0.1:7000", "reg_stats"]), 0)
        self.assertTrue(self.received().startswith(f"auth {TOKEN}\n".encode()))

    def test_no_token_on_unix(self) -> None:
        """A UNIX socket gets no token (its permissions guard it), even with a token file given."""
        self.daemon.sendall(b"200 OK\n\n")
        self.assertEqual(ctl.main(["--control", "unix:x", "--token-file", token_file(self), "reg_stats"]), 0)
        self.assertEqual(self.received(), b"reg_stats\nquit\n")

    def test_token_refused(self) -> None:
        """A 401 to the token: exit 1, the command not sent, a hint about --token-file on stderr."""
        self.daemon.sendall(b"401 Unauthorized\n\n")
        self.assertEqual(ctl.main(["--control", "tcp:7000", "--token-file", token_file(self), "reg_stats"]), 1)
        self.assertEqual(self.received(), f"auth {TOKEN}\nquit\n".encode())
        self.assertIn("401 Unauthorized\n", self.stderr.getvalue())
        self.assertIn("--token-file", self.stderr.getvalue())

    def test_command_without_token_refused(self) -> None:
        """No token given on TCP: the daemon's 401 comes back with the hint."""
        self.daemon.sendall(b"401 Unauthorized\n\n")
        self.assertEqual(ctl.main(["--control", "tcp:7000", "reg_stats"]), 1)
        self.assertIn("--token-file FILE", self.stderr.getvalue())

    def test_bad_token_file(self) -> None:
        """A token file readable by others: exit 2 saying chmod 600, nothing sent."""
        path = token_file(self, mode=0o644)
        self.assertEqual(ctl.main(["--control", "tcp:7000", "--token-file", path, "reg_stats"]), 2)
        self.assertIn(f"chmod 600 {path}", self.stderr.getvalue())
        self.assertEqual(self.connected, [])

    def test_version(self) -> None:
        """--version prints the package version and exits 0, with no command given."""
        with self.assertRaises(SystemExit) as caught:
            ctl.main(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(self.stdout.getvalue(), f"uacregistrant {__version__}\n")
        import importlib.metadata

        self.assertEqual(importlib.metadata.version("uacregistrant"), __version__)  # setup.cfg reads it from the package
