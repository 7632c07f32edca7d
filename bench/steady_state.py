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
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import (  # noqa: E402
    completed,
    cpu_seconds,
    free_udp_port,
    reg_stats,
    registrar_statistics,
    report,
    start_daemon,
    stop_registrars,
    write_accounts,
)

SCENARIO = ROOT / "bench" / "sipp" / "registrar_steady.xml"



def run(accounts: int, expiry: int, seconds: int, registrars: int, timeout: float) -> dict[str, object]:
    """uacregistrant: cold start, then D seconds of refreshes measured."""
    directory = tempfile.mkdtemp(prefix="uacreg-steady-")
    # A refresh reuses its Call-ID: SIPp must forget finished calls after
    # 1 s (it keeps them 33 s by default and drops their messages).
    ports = registrar_statistics(SCENARIO, registrars, directory, "-deadcall_wait", "1000")
    local = free_udp_port()
    db = os.path.join(directory, "r.db")
    write_accounts(db, accounts, [f"sip:127.0.0.1:{p}" for p in ports], local, expiry=expiry)
    control = f"unix:{directory}/ctl"
    daemon = start_daemon(
        directory, db, local, control,
        "--hash-size", "2", "--timer-interval", str(expiry // 2), "--send-rate", "10000",
    )
    try:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            time.sleep(max(0.2, accounts / 100000))
            try:
                if reg_stats(control)["states"]["REGISTERED_STATE"] == accounts:
                    break
            except OSError:
                continue
        registered_after = time.monotonic() - start
        before, cpu_before, t0 = reg_stats(control), cpu_seconds(daemon.pid), time.monotonic()
        done_before = completed(directory, ports)
        worst = accounts
        # reg_stats walks every record (about 0.1 s of CPU at 100k): sample
        # rarely, and subtract the probes' own CPU from the daemon's.
        probes = 0.0
        while time.monotonic() - t0 < seconds:
            time.sleep(min(60, seconds - (time.monotonic() - t0)) if seconds > 60 else 10)
            before_probe = cpu_seconds(daemon.pid)
            worst = min(worst, reg_stats(control)["bindings_held"])
            probes += cpu_seconds(daemon.pid) - before_probe
        cpu_after, t1 = cpu_seconds(daemon.pid), time.monotonic()
        after = reg_stats(control)
        # SIPp writes its statistics every second: read at both ends alike.
        refreshes = completed(directory, ports) - done_before
    finally:
        daemon.terminate()
        daemon.wait(30)
        stop_registrars(ports)
        shutil.rmtree(directory, ignore_errors=True)
    elapsed = t1 - t0
    sent = after["sip"]["requests_sent"] - before["sip"]["requests_sent"]
    cpu = cpu_after - cpu_before - probes
    return {
        "system": "uacregistrant",
        "accounts": accounts,
        "expiry_s": expiry,
        "cold_start_s": round(registered_after, 1),
        "measured_s": round(elapsed, 1),
        "refreshes_per_s": round(refreshes / elapsed, 1),
        "requests_per_s": round(sent / elapsed, 1),
        "retransmissions": after["sip"]["retransmissions"] - before["sip"]["retransmissions"],
        "timeouts": after["sip"]["timeouts"] - before["sip"]["timeouts"],
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "cpu_us_per_refresh": round(1e6 * cpu / max(1, refreshes), 1),
        "probe_cpu_s": round(probes, 2),
        "lapsed": after["sip"]["lapsed_registrations"],
        "fewest_bindings_held": worst,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100000)
    parser.add_argument("--expiry", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--registrars", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    options = parser.parse_args()
    report([run(options.accounts, options.expiry, options.seconds, options.registrars, options.timeout)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
