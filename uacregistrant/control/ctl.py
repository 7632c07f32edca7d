# -*- test-case-name: tests.unit.control.test_ctl,tests.unit.control.test_access,tests.integration.test_daemon,tests.integration.test_hardening -*-
"""
C{uacregistrant-ctl}: send one command to a running daemon and print the
reply's body; the exit status is 0 for a 2xx status line, 1 otherwise,
2 when the daemon cannot be reached.  C{reg_events} prints each state
change as it comes, until interrupted (exit 0) or the daemon closes the
connection.

Words are sent as given; a value holding a space is quoted for the
console (C{uacregistrant-ctl reg_upsert ... "password=a b"}).  Given
C{-}, the command lines are read from standard input instead, one per
line, so that a password never shows in C{ps}.  On a TCP endpoint the
token of C{--token-file} is sent first (C{auth TOKEN}).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from types import TracebackType
from typing import TextIO

from uacregistrant import __version__
from uacregistrant.control.endpoints import ControlEndpointError, read_token
from uacregistrant.control.endpoints import split_description as _split

DEFAULT_CONTROL = "unix:uacregistrant.ctl"
#: Bytes of command lines read from standard input at most.
MAX_STDIN = 16 << 20


def is_tcp(description: str) -> bool:
    """Whether a control endpoint is a TCP one (which wants the token first)."""
    return _split(description)[0].lower() in ("tcp", "tcp6")


def connect(description: str, timeout: float = 10.0) -> socket.socket:
    """
    Connect to a control endpoint given in the daemon's own syntax
    (C{unix:PATH[:mode=600]}, C{tcp:PORT[:interface=IP]}) or as
    C{tcp:HOST:PORT}.
    """
    parts = _split(description)
    kind, args = parts[0].lower(), parts[1:]
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    if kind == "unix":
        path = named.get("address") or (positional[0] if positional else "")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        return sock
    if kind in ("tcp", "tcp6"):
        host = named.get("interface") or named.get("host") or ("::1" if kind == "tcp6" else "127.0.0.1")
        port = named.get("port")
        if len(positional) == 2:
            host, port = positional
        elif positional:
            port = positional[0]
        if port is None:
            raise ValueError(f"no port in {description!r}")
        return socket.create_connection((host, int(port)), timeout=timeout)
    raise ValueError(f"unsupported control endpoint {description!r}")


class Session:
    """
    One connection to the daemon: the token first on TCP (C{token}), then
    commands one after the other, each reply read to its empty line.
    Leaving the C{with} block says C{quit} and closes.

    @ivar auth_reply: the daemon's answer to the token (C{None}: none sent).
    """

    def __init__(self, description: str, timeout: float = 10.0, token: bytes | None = None) -> None:
        self.sock = connect(description, timeout)
        self._buffer = bytearray()
        self.auth_reply: tuple[str, list[str]] | None = None
        if token is not None and is_tcp(description):
            try:
                self.auth_reply = self.ask("auth " + token.decode("ascii"))
            except BaseException:
                self.sock.close()
                raise

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close(quit=kind is None)

    def close(self, quit: bool = True) -> None:
        """Say C{quit} (when asked) and close the connection."""
        if quit:
            try:
                self.sock.sendall(b"quit\n")
            except OSError:
                pass
        self.sock.close()

    def send(self, command: str) -> None:
        """Send one command line."""
        _send_command(self.sock, command)

    def ask(self, command: str) -> tuple[str, list[str]]:
        """Send one command; return the status line and the body lines."""
        self.send(command)
        return self.reply()

    def reply(self) -> tuple[str, list[str]]:
        """
        The next reply: it ends at the first empty line (body lines are
        never empty), or where the daemon hung up.
        """
        searched = 0
        while (end := self._buffer.find(b"\n\n", searched)) == -1:
            searched = max(0, len(self._buffer) - 1)
            chunk = self._receive()
            if not chunk:
                end = len(self._buffer)
                break
            self._buffer += chunk
        data = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        text = data.decode("utf-8", errors="replace").split("\n")
        status = text[0].rstrip("\r")
        body: list[str] = []
        for line in text[1:]:
            line = line.rstrip("\r")
            if line == "":
                break
            body.append(line)
        return status, body

    def readline(self) -> bytes:
        """The next line as it comes (with its newline; C{b""} once the daemon has hung up)."""
        while (end := self._buffer.find(b"\n")) == -1:
            chunk = self._receive()
            if not chunk:
                rest = bytes(self._buffer)
                self._buffer.clear()
                return rest
            self._buffer += chunk
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    def _receive(self) -> bytes:
        return self.sock.recv(1 << 20)


def request(description: str, command: str, timeout: float = 10.0, token: bytes | None = None) -> tuple[str, list[str]]:
    """
    Send one command; return the status line and the body lines (or the
    daemon's refusal of the token).
    """
    with Session(description, timeout, token) as session:
        if session.auth_reply is not None and session.auth_reply[0][:1] != "2":
            return session.auth_reply
        return session.ask(command)


def follow(description: str, command: str, out: TextIO, timeout: float = 10.0, token: bytes | None = None) -> int:
    """
    Send a streaming command (C{reg_events}) and copy every line to C{out}
    as it arrives, until the daemon closes the connection.

    @return: the exit status (0 after a 2xx status line, else 1).
    """
    session = Session(description, timeout, token)
    try:
        if session.auth_reply is not None and session.auth_reply[0][:1] != "2":
            _refused(session.auth_reply[0])
            return 1
        session.send(command)
        status = session.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        if status[:1] != "2":
            _refused(status)
            return 1
        session.sock.settimeout(None)  # events may be minutes apart
        while line := session.readline():
            out.write(line.decode("utf-8", errors="replace"))
            out.flush()
    finally:
        session.close(quit=False)
    return 0


def _send_command(sock: socket.socket, command: str) -> None:
    """
    Send one command line.  A daemon that refused the connection (too many
    clients) may have written its reply and closed before we send: the
    reply is still read, so the caller reports it rather than "cannot reach".
    """
    try:
        sock.sendall(command.encode("utf-8") + b"\n")
    except (BrokenPipeError, ConnectionResetError):
        pass


def _refused(status: str) -> None:
    """A status line that is not 2xx, on stderr (with a hint for 401)."""
    print(status or "uacregistrant-ctl: the daemon closed the connection without a reply", file=sys.stderr)
    if status[:3] == "401":
        print(
            "uacregistrant-ctl: a TCP control endpoint wants the daemon's token: --token-file FILE (or $UACREG_CONTROL_TOKEN_FILE)",
            file=sys.stderr,
        )


def _command_line(words: list[str]) -> str:
    """The words as one console line, quoted where needed."""
    return " ".join(shlex.quote(word) if word else "''" for word in words)


def _stdin_commands(stdin: TextIO) -> list[str]:
    """The command lines on standard input (empty lines skipped), at most L{MAX_STDIN} bytes."""
    text = stdin.read(MAX_STDIN + 1)
    if len(text) > MAX_STDIN:
        raise ValueError(f"more than {MAX_STDIN} bytes on standard input")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _is_events(line: str) -> bool:
    return line.split()[:1] == ["reg_events"]


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="uacregistrant-ctl",
        description="Send commands to uacregistrant's control endpoint.",
        epilog="Exit status: 0 when every reply is 2xx, 1 otherwise, 2 when the daemon cannot be reached.",
    )
    parser.add_argument(
        "--control",
        default=os.environ.get("UACREG_CONTROL", DEFAULT_CONTROL),
        help="control endpoint, unix:PATH or tcp:[HOST:]PORT (default: $UACREG_CONTROL or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default %(default)s)")
    parser.add_argument(
        "--token-file",
        default=os.environ.get("UACREG_CONTROL_TOKEN_FILE", ""),
        help="file (mode 0600) whose first line is the daemon's --control-token-file token, "
        "sent first on a TCP endpoint (default: $UACREG_CONTROL_TOKEN_FILE)",
    )
    parser.add_argument("--version", action="version", version=f"uacregistrant {__version__}")
    parser.add_argument(
        "command",
        nargs="+",
        help="e.g. reg_list json; or - to read command lines from standard input, one per line "
        "(keeps passwords out of ps; stops at the first reply that is not 2xx)",
    )
    options = parser.parse_args(argv)
    if "-" in options.command:
        if options.command != ["-"]:
            parser.error("- reads the commands from standard input: give no other words")
        try:
            lines = _stdin_commands(sys.stdin)
        except (OSError, ValueError) as e:
            parser.error(f"cannot read standard input: {e}")
        if not lines:
            parser.error("no command on standard input")
        if len(lines) > 1 and any(_is_events(line) for line in lines):
            parser.error("reg_events must be the only command")
    else:
        # One argument is a whole command line, as typed at the console.
        lines = [options.command[0] if len(options.command) == 1 else _command_line(options.command)]
    token: bytes | None = None
    if options.token_file and is_tcp(options.control):
        try:
            token = read_token(options.token_file)
        except ControlEndpointError as e:
            print(f"uacregistrant-ctl: {e}", file=sys.stderr)
            return 2
    if _is_events(lines[0]):
        try:
            return follow(options.control, lines[0], sys.stdout, options.timeout, token)
        except KeyboardInterrupt:
            return 0
        except (OSError, ValueError) as e:
            print(f"uacregistrant-ctl: cannot reach {options.control}: {e}", file=sys.stderr)
            return 2
    try:
        return _run(options.control, lines, options.timeout, token)
    except (OSError, ValueError) as e:
        print(f"uacregistrant-ctl: cannot reach {options.control}: {e}", file=sys.stderr)
        return 2


def _run(control: str, lines: list[str], timeout: float, token: bytes | None) -> int:
    """Send each line in turn on one connection; stop at the first reply that is not 2xx."""
    with Session(control, timeout, token) as session:
        if session.auth_reply is not None and session.auth_reply[0][:1] != "2":
            _refused(session.auth_reply[0])
            return 1
        for line in lines:
            status, body = session.ask(line)
            for text in body:
                print(text)
            if status[:1] != "2":
                _refused(status)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
