"""What the benchmark scripts share: ports, the accounts table, the report."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any, Sequence

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


def start_daemon(directory: str, db: str, local: int, control: str, *options: str, twistd: Sequence[str] = ()) -> Any:
    """C{twistd -n uacregistrant} on the table, one loopback socket, the control socket."""
    import os
    import subprocess

    return subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", f"--logfile={directory}/daemon.log", *twistd, "uacregistrant",
         "--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--control", control,
         "--no-unregister-on-shutdown", *options],
        cwd=directory, env={**os.environ, "PYTHONPATH": str(ROOT)},
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
