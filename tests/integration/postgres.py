"""
A throw-away PostgreSQL server for the tests: its own data directory, a
free loopback port, run as an unprivileged user (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Any

from .helpers import ServerProcess, require_binary


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        return require_binary(name, "postgresql")
    return found


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer(ServerProcess):
    """initdb + postgres on 127.0.0.1; C{url} for the daemon, C{connect()} for the test."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: clients are disconnected

    def __init__(self) -> None:
        self.initdb = _binary("initdb")
        self.postgres = _binary("postgres")
        super().__init__(tempfile.mkdtemp(prefix="uacreg-pg-"))
        self.data = os.path.join(self.directory, "data")
        self.port = _free_tcp_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "nobody"
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.url = f"postgresql://postgres:secret-pg@127.0.0.1:{self.port}/postgres"
        #: The same server through its UNIX socket directory.
        self.socket_url = f"postgres:///postgres?host={self.directory}&port={self.port}&user=postgres"
        result = subprocess.run(
            [self.initdb, "-D", self.data, "-U", "postgres", "-A", "trust", "--no-locale", "-E", "UTF8"],
            capture_output=True, user=self.user, cwd=self.directory, timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"initdb failed: {result.stderr.decode()[-2000:]}")

    def start(self) -> None:
        self.launch(
            [self.postgres, "-D", self.data, "-p", str(self.port), "-k", self.directory,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"],
            lambda: self.connect().close(),
            user=self.user,
        )

    def connect(self) -> Any:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=10)
        connection.autocommit = True
        return connection

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()
