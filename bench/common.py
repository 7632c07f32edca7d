"""What the benchmark scripts share: ports, the accounts table, the report."""

from __future__ import annotations

import json
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


def write_accounts(path: str, accounts: int, registrars: Sequence[str], binding_port: int = 5999, password: str = "bench-pw") -> None:
    """An OpenSIPS-schema SQLite table of C{accounts} bench accounts spread over C{registrars}."""
    db = sqlite3.connect(path)
    db.executescript(schema_sql("sqlite"))
    db.executemany(
        "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) VALUES (?,?,?,?,?,?)",
        ((registrars[i % len(registrars)], f"sip:u{i}@bench.invalid", f"u{i}", password,
          f"sip:u{i}@127.0.0.1:{binding_port}", 3600) for i in range(accounts)),
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
