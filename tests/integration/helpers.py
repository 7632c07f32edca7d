"""
Helpers for integration tests: real processes on loopback.

Peers that are missing skip the test on a developer machine, but fail it
when C{UACREG_REQUIRE_PEERS=1} (CI sets it).

Timing: a test waits for the event it needs (L{wait_for}) and fails only
after L{PATIENCE}; it never asserts that something happened within a few
seconds of wall-clock time, which a loaded CI machine cannot promise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from twisted.trial.unittest import SkipTest, TestCase

from uacregistrant.control.ctl import request

ROOT = Path(__file__).resolve().parents[2]
#: twistd, run by this interpreter (``python -m twisted`` is the other runner, twist).
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
#: Seconds to wait for something that normally takes one or two before
#: calling it a failure: generous, for a loaded 2-core CI machine.
PATIENCE = 60.0


def require_binary(name: str, package: str) -> str:
    """The path of a peer binary, or skip (fail under UACREG_REQUIRE_PEERS=1)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install the Debian package {package}"
        if os.environ.get("UACREG_REQUIRE_PEERS") == "1":
            raise AssertionError(message + " (UACREG_REQUIRE_PEERS=1)")
        raise SkipTest(message)
    return path


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_and_tcp_port() -> int:
    """A port on 127.0.0.1 free a moment ago for both UDP and TCP (for a server listening on both, as twistd dns does)."""
    for _ in range(100):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # a TCP connection of this machine has it as its local port
            return port
    raise AssertionError("no port free for both UDP and TCP")


def environment() -> dict[str, str]:
    """The environment for child processes: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float = PATIENCE, interval: float = 0.2) -> Any:
    """Poll until C{predicate()} is truthy; return its value or raise after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


class Processes:
    """Child processes that are always stopped at the end of a test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.children: list[subprocess.Popen[bytes]] = []
        # UNIX socket paths are limited to 107 bytes: keep sockets in a short directory.
        self.sockets = Path(tempfile.mkdtemp(prefix="uacreg-"))

    def spawn(self, args: list[str], name: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        """Start C{args} in the test's directory, its output in C{name}.log; C{env} adds to the environment."""
        log = open(self.directory / f"{name}.log", "wb")
        child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**environment(), **(env or {})}, cwd=self.directory, **kw)
        self.children.append(child)
        return child

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        shutil.rmtree(self.sockets, ignore_errors=True)
        for child in self.children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    def registrar(self, users: dict[str, dict[str, Any]], delay: float = 0.0) -> int:
        """Start the packaged test registrar; return its port."""
        users_file = self.directory / "users.json"
        users_file.write_text(json.dumps(users))
        port_file = self.directory / "registrar.port"
        self.spawn(
            [sys.executable, "-m", "uacregistrant.testing.registrar", "--listen", "127.0.0.1:0",
             "--users", str(users_file), "--port-file", str(port_file), "--delay", str(delay)],
            "registrar",
        )
        return int(wait_for(lambda: port_file.exists() and port_file.read_text()))

    def daemon(self, args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
        """Start C{twistd -n uacregistrant} with C{args}; return it and its control endpoint."""
        control = f"unix:{self.sockets / 'ctl'}"
        child = self.spawn(
            [*TWISTD, "-n", "--pidfile=", "--logfile=-", "uacregistrant",
             "--control", control, *args],
            "daemon",
        )
        return child, control


def make_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """An OpenSIPS-schema registrant table (as OpenSIPS's own SQLite script creates it)."""
    from uacregistrant.store import schema_sql

    db = sqlite3.connect(path)
    db.executescript(schema_sql("sqlite"))
    for row in rows:
        names = ", ".join(row)
        db.execute(f"INSERT INTO registrant ({names}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    db.commit()
    db.close()


def records(control: str) -> dict[str, dict[str, Any]]:
    """reg_list json over the control endpoint, by AOR user part."""
    status, body = request(control, "reg_list json", timeout=PATIENCE / 2)
    assert status == "200 OK", status
    return {r["AOR"].split(":")[1].split("@")[0]: r for r in json.loads(body[0])["Records"]}


class ServerProcess:
    """
    A peer server run from its own temporary directory: started with a
    readiness probe, stopped with a signal, its directory removed.
    """

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self, args: list[str], ready: Callable[[], object], timeout: float = PATIENCE, **kw: Any) -> None:
        """Start C{args}, then poll C{ready()} until it stops raising."""
        log = open(os.path.join(self.directory, f"{self.name}.log"), "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, **kw)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log()[-3000:]}")
            try:
                ready()
                return
            except Exception:
                time.sleep(0.1)
        raise AssertionError(f"{self.name} did not start: {self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, f"{self.name}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class ProcessTestCase(TestCase):
    """A trial test case with a scratch directory and child processes stopped at the end."""

    timeout = 180

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.processes = Processes(self.directory)
        self.addCleanup(self.processes.stop)
