"""What the benchmark scripts share: ports, the accounts table, the report."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from uacregistrant.store import schema_sql  # noqa: E402


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_accounts(
    path: str, accounts: int, registrars: Sequence[str], binding_port: int = 5999, password: str = "bench-pw", expiry: int = 3600
) -> None:
    """An OpenSIPS-schema SQLite table of C{accounts} bench accounts spread over C{registrars}."""
    db = sqlite3.connect(path)
    db.executescript(schema_sql("sqlite"))
    db.executemany(
        "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) VALUES (?,?,?,?,?,?)",
        ((registrars[i % len(registrars)], f"sip:u{i}@bench.invalid", f"u{i}", password,
          f"sip:u{i}@127.0.0.1:{binding_port}", expiry) for i in range(accounts)),
    )
    db.commit()
    db.close()


def report(results: list[dict[str, Any]]) -> None:
    """Print the results as a Markdown table, then as one line of JSON."""
    columns = list(results[0])
    print("| " + " | ".join(columns) + " |")
    print("| " + " | ".join("---" for _ in columns) + " |")
    for row in results:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    print(json.dumps(results))


TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def start_registrars(scenario: Path, count: int, directory: str, *extra: str, ports: Sequence[int] = ()) -> list[int]:
    """
    Start C{count} SIPp registrars (background) on free loopback ports, or
    on C{ports}; return the ports.  C{{port}} in C{extra} becomes each
    one's port.
    """
    import subprocess
    import time

    ports = list(ports) or [free_udp_port() for _ in range(count)]
    for port in ports:
        subprocess.run(
            ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-nostdin", "-bg",
             "-max_recv_loops", "10000", "-buff_size", "8388608", *(arg.format(port=port) for arg in extra)],
            cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
        )
    time.sleep(0.5)
    return ports


def registrar_statistics(scenario: Path, registrars: int, directory: str, *extra: str) -> list[int]:
    """SIPp registrars that write their statistics file (stat<port>.csv) every second."""
    return start_registrars(
        scenario, registrars, directory, "-trace_stat", "-stf", os.path.join(directory, "stat{port}.csv"), "-fd", "1", *extra
    )


def completed(directory: str, ports: list[int]) -> int:
    """Registrations the registrars completed (200 sent), summed."""
    return sum(successful(os.path.join(directory, f"stat{p}.csv")) for p in ports)


def successful(path: str) -> int:
    """The registrar's count of completed registrations (200 sent), from SIPp's statistics file."""
    try:
        with open(path) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except OSError:
        return 0
    if len(lines) < 2:
        return 0
    header = lines[0].split(";")
    values = lines[-1].split(";")
    try:
        return int(values[header.index("SuccessfulCall(C)")])
    except (ValueError, IndexError):
        return 0


def stop_registrars(ports: list[int]) -> None:
    """Stop the SIPp registrars listening on C{ports}."""
    import subprocess

    for port in ports:
        subprocess.run(["pkill", "-f", "--", f"-p {port} "], check=False)


_PRECOMPILED: set[str] = set()


def precompile(tree: str) -> None:
    """
    Write the bytecode of C{tree}'s package, as C{pip install} does, so
    the daemon does not compile its modules at every start (these
    machines set C{PYTHONDONTWRITEBYTECODE}; a fresh worktree has none).
    """
    if tree in _PRECOMPILED:
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", f"{tree}/uacregistrant", f"{tree}/twisted/plugins"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    _PRECOMPILED.add(tree)


def start_daemon(directory: str, db: str, local: int, control: str, *options: str, twistd: Sequence[str] = ()) -> Any:
    """C{twistd -n uacregistrant} on the table, one loopback socket, the control socket."""
    tree = os.environ.get("UACREG_BENCH_TREE", str(ROOT))
    precompile(tree)
    return subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", f"--logfile={directory}/daemon.log", *twistd, "uacregistrant",
         "--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--control", control,
         "--no-unregister-on-shutdown", *options],
        # The tree first; an inherited PYTHONPATH after it (e.g. a venv's
        # site-packages for Debian's /usr/bin/python3, same 3.11 ABI).
        cwd=directory, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))},
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reg_stats(control: str) -> dict[str, Any]:
    """The daemon's C{reg_stats json}, parsed."""
    from uacregistrant.control.ctl import request

    status, body = request(control, "reg_stats json", timeout=30)
    return json.loads(body[0])  # type: ignore[no-any-return]


def tree_cpu(root: int) -> float:
    """
    User + system CPU seconds of a process and every live descendant,
    with what each has collected from children it reaped (cutime and
    cstime): a PostgreSQL server's exited backends are counted too.
    """
    import glob
    import os

    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        pid = int(head.split("(", 1)[0])
        parents[pid] = int(fields[1])
        cpu[pid] = sum(int(v) for v in fields[11:15]) / tick
    total = 0.0
    for pid in cpu:
        ancestor, hops = pid, 0
        while ancestor != root and ancestor > 1 and hops < 64:
            ancestor, hops = parents.get(ancestor, 0), hops + 1
        if ancestor == root:
            total += cpu[pid]
    return total


class Postgres:
    """
    A throw-away PostgreSQL on 127.0.0.1 (initdb into a temporary
    directory, run as C{nobody} when we are root, which PostgreSQL
    requires), for benchmarks: bench/ does not import from tests/.
    C{url} for the daemon, C{connect()} for the benchmark, C{cpu()} for
    the server's CPU (backends included), C{destroy()} at the end.
    """

    def __init__(self) -> None:
        import glob
        import pwd
        import shutil
        import subprocess
        import tempfile

        def binary(name: str) -> str:
            found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
            if found is None:
                raise RuntimeError(f"{name} not found: install the Debian package postgresql")
            return found

        self.directory = tempfile.mkdtemp(prefix="uacreg-bench-pg-")
        self.data = os.path.join(self.directory, "data")
        self.postgres = binary("postgres")
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "nobody"
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: Any = None
        done = subprocess.run(
            [binary("initdb"), "-D", self.data, "-U", "postgres", "-A", "trust", "--no-locale", "-E", "UTF8"],
            capture_output=True, user=self.user, cwd=self.directory, timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")

    def start(self, *settings: str, timeout: float = 60) -> None:
        """Start the server (fsync off: a benchmark's table needs no durability) and wait until it answers."""
        import subprocess
        import time

        options = ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
                   "-c", "synchronous_commit=off", *(arg for s in settings for arg in ("-c", s))]
        log = open(os.path.join(self.directory, "postgres.log"), "ab")
        self.process = subprocess.Popen(
            [self.postgres, "-D", self.data, "-p", str(self.port), "-k", self.directory, *options],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, user=self.user, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log()[-3000:]}")
            try:
                self.connect().close()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"postgres did not start: {self.log()[-3000:]}")

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

    def cpu(self) -> float:
        """CPU seconds of the server so far (postmaster, live and exited backends)."""
        return tree_cpu(self.process.pid) if self.process is not None else 0.0

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, "postgres.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def destroy(self) -> None:
        """Stop the server (fast shutdown, bounded) and remove its directory."""
        import shutil
        import signal
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _group_stats(pgid: int) -> Iterator[list[str]]:
    """The /proc/PID/stat fields after the command name (state first) of each process of a process group."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            yield fields


def group_cpu(pgid: int) -> float:
    """User + system CPU seconds of every live process of a process group."""
    return sum(int(fields[11]) + int(fields[12]) for fields in _group_stats(pgid)) / os.sysconf("SC_CLK_TCK")


def stop_group(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM a process group we started (its leader is C{process}), SIGKILL after C{grace} s."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_members(process.pid):
        time.sleep(0.1)


def group_members(pgid: int) -> int:
    """How many live processes are in the process group (0 once it is gone)."""
    return sum(1 for fields in _group_stats(pgid) if fields[0] != "Z")
