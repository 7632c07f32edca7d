"""
Cold start on loopback: N accounts in an SQLite table, digest (MD5,
qop=auth) at the packaged test registrar (a separate process); the daemon
runs in this process on the real reactor.  Reports wall time to all
REGISTERED, the daemon's CPU seconds and CPU per registration.

    python bench/cold_start.py --accounts 2000 --rate 2000

Bounded: stops after --timeout seconds whatever happens; sends only to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import reactor  # noqa: E402
from twisted.names.resolve import ResolverChain  # noqa: E402

from uacregistrant.agent.changes import StateChange  # noqa: E402
from uacregistrant.app.service import RegistrantService, open_store  # noqa: E402
from uacregistrant.app.settings import build_settings  # noqa: E402
from uacregistrant.core.registrant import RegState  # noqa: E402
from uacregistrant.store import schema_sql  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    options = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="uacreg-bench-"))
    users = {f"u{i}": {"password": f"p{i}"} for i in range(options.accounts)}
    (directory / "users.json").write_text(json.dumps(users))
    port_file = directory / "port"
    registrar = subprocess.Popen(
        [sys.executable, "-m", "uacregistrant.testing.registrar", "--listen", "127.0.0.1:0",
         "--users", str(directory / "users.json"), "--port-file", str(port_file)],
        cwd=ROOT, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text())
        db = sqlite3.connect(directory / "r.db")
        db.executescript(schema_sql("sqlite"))
        db.executemany(
            "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) VALUES (?,?,?,?,?,?)",
            [(f"sip:127.0.0.1:{port}", f"sip:u{i}@bench.invalid", f"u{i}", f"p{i}", f"sip:u{i}@127.0.0.1:5999", 3600)
             for i in range(options.accounts)],
        )
        db.commit()
        settings = build_settings({
            "db_url": f"sqlite:{directory / 'r.db'}", "listen": ["udp:127.0.0.1:0"],
            "control": [f"unix:{directory / 'ctl'}"], "hash_size": 0, "timer_interval": 100,
            "send_rate": options.rate,
        })
        service = RegistrantService(settings, open_store(settings, reactor), reactor, resolver=ResolverChain([]))
        result: dict[str, float] = {}
        registered = [0]
        cpu0, t0 = cpu(), time.monotonic()

        def finish() -> None:
            if not result:
                result.update(wall=time.monotonic() - t0, cpu=cpu() - cpu0, registered=registered[0])
                reactor.stop()

        def observe(change: StateChange) -> None:
            if change.new == RegState.REGISTERED_STATE:
                registered[0] += 1
                if registered[0] == options.accounts:
                    finish()

        service.changes.observe(observe)
        service.startService()
        reactor.callLater(options.timeout, finish)
        reactor.run()
        counters = service.counters
        report = {
            "accounts": options.accounts,
            "registered": int(result["registered"]),
            "wall_s": round(result["wall"], 3),
            "daemon_cpu_s": round(result["cpu"], 3),
            "cpu_us_per_registration": round(1e6 * result["cpu"] / max(1, result["registered"]), 1),
            "registrations_per_s": round(result["registered"] / result["wall"], 1),
            "requests_sent": counters.requests_sent,
            "retransmissions": counters.retransmissions,
            "timeouts": counters.timeouts,
        }
        print(json.dumps(report))
        return 0 if report["registered"] == options.accounts else 1
    finally:
        registrar.terminate()
        registrar.wait(10)


if __name__ == "__main__":
    sys.exit(main())
