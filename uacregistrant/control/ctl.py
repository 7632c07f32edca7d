# -*- test-case-name: tests.unit.control.test_ctl,tests.integration.test_daemon,tests.integration.test_hardening -*-
"""
C{uacregistrant-ctl}: send one command to a running daemon and print the
reply's body; the exit status is 0 for a 2xx status line, 1 otherwise,
2 when the daemon cannot be reached.  C{reg_events} prints each state
change as it comes, until interrupted (exit 0) or the daemon closes the
connection.

Words are sent as given; a value holding a space is quoted for the
console (C{uacregistrant-ctl reg_upsert ... "password=a b"}).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from typing import TextIO

from uacregistrant.control.endpoints import split_description as _split

DEFAULT_CONTROL = "unix:uacregistrant.ctl"


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


def request(description: str, command: str, timeout: float = 10.0) -> tuple[str, list[str]]:
    """Send one command; return the status line and the body lines."""
    with connect(description, timeout) as sock:
        _send_command(sock, command)
        # The reply ends at the first empty line (body lines are never empty).
        received = bytearray()
        while received.find(b"\n\n", max(0, len(received) - (1 << 20) - 1)) == -1:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
        buffer = bytes(received)
        try:
            sock.sendall(b"quit\n")
        except OSError:
            pass
    text = buffer.decode("utf-8", errors="replace").split("\n")
    status = text[0].rstrip("\r")
    body: list[str] = []
    for line in text[1:]:
        line = line.rstrip("\r")
        if line == "":
            break
        body.append(line)
    return status, body


def follow(description: str, command: str, out: TextIO, timeout: float = 10.0) -> int:
    """
    Send a streaming command (C{reg_events}) and copy every line to C{out}
    as it arrives, until the daemon closes the connection.

    @return: the exit status (0 after a 2xx status line, else 1).
    """
    with connect(description, timeout) as sock:
        _send_command(sock, command)
        reader = sock.makefile("r", encoding="utf-8", errors="replace", newline="\n")
        status = reader.readline().rstrip("\r\n")
        if status[:1] != "2":
            print(status, file=sys.stderr)
            return 1
        sock.settimeout(None)  # events may be minutes apart
        for line in reader:
            out.write(line)
            out.flush()
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


def _command_line(words: list[str]) -> str:
    """The words as one console line, quoted where needed."""
    return " ".join(shlex.quote(word) if word else "''" for word in words)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="uacregistrant-ctl", description="Send one command to uacregistrant.")
    parser.add_argument(
        "--control",
        default=os.environ.get("UACREG_CONTROL", DEFAULT_CONTROL),
        help="control endpoint (default: $UACREG_CONTROL or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default %(default)s)")
    parser.add_argument("command", nargs="+", help="e.g. reg_list json")
    options = parser.parse_args(argv)
    # One argument is a whole command line, as typed at the console.
    line = options.command[0] if len(options.command) == 1 else _command_line(options.command)
    if line.split()[:1] == ["reg_events"]:
        try:
            return follow(options.control, line, sys.stdout, options.timeout)
        except KeyboardInterrupt:
            return 0
        except (OSError, ValueError) as e:
            print(f"uacregistrant-ctl: cannot reach {options.control}: {e}", file=sys.stderr)
            return 2
    try:
        status, body = request(options.control, line, options.timeout)
    except (OSError, ValueError) as e:
        print(f"uacregistrant-ctl: cannot reach {options.control}: {e}", file=sys.stderr)
        return 2
    ok = status[:1] == "2"
    for line in body:
        print(line)
    if not ok:
        print(status, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
