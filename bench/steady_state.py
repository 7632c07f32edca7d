"""
Steady state (issue 5, scenario 2): N accounts with expiry E registered at
SIPp registrars that accept credentials sent up front
(bench/sipp/registrar_steady.xml); then, over D seconds, the refresh rate,
the daemon's CPU % and CPU per refresh, and lapsed registrations (must be
0: reg_stats sip.lapsed_registrations).

    python bench/steady_state.py --accounts 100000 --expiry 300 --seconds 300

Bounded by --seconds plus the cold start's --timeout; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import cpu_seconds, free_udp_port, report, start_daemon, start_registrars, stop_registrars, write_accounts  # noqa: E402

from uacregistrant.control.ctl import request  # noqa: E402

SCENARIO = ROOT / "bench" / "sipp" / "registrar_steady.xml"


def stats(control: str) -> dict:  # type: ignore[type-arg]
    status, body = request(control, "reg_stats json", timeout=30)
    return json.loads(body[0])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100000)
    parser.add_argument("--expiry", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--registrars", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    options = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="uacreg-steady-")
    # A refresh reuses its Call-ID: SIPp must forget finished calls after
    # 1 s (it keeps them 33 s by default and drops their messages).
    ports = start_registrars(SCENARIO, options.registrars, directory, "-deadcall_wait", "1000")
    local = free_udp_port()
    db = os.path.join(directory, "r.db")
    write_accounts(db, options.accounts, [f"sip:127.0.0.1:{p}" for p in ports], local)
    import sqlite3

    connection = sqlite3.connect(db)
    connection.execute("UPDATE registrant SET expiry = ?", (options.expiry,))
    connection.commit()
    connection.close()
    control = f"unix:{directory}/ctl"
    daemon = start_daemon(
        directory, db, local, control,
        "--hash-size", "2", "--timer-interval", str(options.expiry // 2), "--send-rate", "10000",
    )
    try:
        start = time.monotonic()
        while time.monotonic() - start < options.timeout:
            time.sleep(max(0.2, options.accounts / 100000))
            try:
                if stats(control)["states"]["REGISTERED_STATE"] == options.accounts:
                    break
            except OSError:
                continue
        registered_after = time.monotonic() - start
        before, cpu_before, t0 = stats(control), cpu_seconds(daemon.pid), time.monotonic()
        worst = options.accounts
        samples = 0
        while time.monotonic() - t0 < options.seconds:
            time.sleep(10)
            current = stats(control)
            worst = min(worst, current["states"]["REGISTERED_STATE"])
            samples += 1
        after, cpu_after, t1 = stats(control), cpu_seconds(daemon.pid), time.monotonic()
    finally:
        daemon.terminate()
        daemon.wait(30)
        stop_registrars(ports)
        shutil.rmtree(directory, ignore_errors=True)
    elapsed = t1 - t0
    sent = after["sip"]["requests_sent"] - before["sip"]["requests_sent"]
    cpu = cpu_after - cpu_before
    report([{
        "accounts": options.accounts,
        "expiry_s": options.expiry,
        "cold_start_s": round(registered_after, 1),
        "measured_s": round(elapsed, 1),
        "requests_per_s": round(sent / elapsed, 1),
        "retransmissions": after["sip"]["retransmissions"] - before["sip"]["retransmissions"],
        "timeouts": after["sip"]["timeouts"] - before["sip"]["timeouts"],
        "daemon_cpu_percent": round(100 * cpu / elapsed, 1),
        "cpu_us_per_request": round(1e6 * cpu / max(1, sent), 1),
        "lapsed": after["sip"]["lapsed_registrations"],
        "min_registered_sampled": worst,
    }])
    return 0


if __name__ == "__main__":
    sys.exit(main())
