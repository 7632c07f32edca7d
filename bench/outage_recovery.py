"""
Outage recovery (issue 5, scenario 3): N accounts registered at SIPp
registrars (bench/sipp/registrar_steady.xml); just before the first
refreshes fall due the registrars are stopped for --down seconds, then
started again on the same ports.  Reports the time from their return
until every record is REGISTERED with a live binding again, the peak send
rate (new requests and all datagrams, per second, sampled each second)
against --send-rate, timeouts, early retries, and records lost (must be 0).

    python bench/outage_recovery.py --accounts 100000 --expiry 120 --down 60

Bounded by --timeout for each phase; only 127.0.0.1.
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
    cpu_seconds,
    free_udp_port,
    reg_stats,
    report,
    start_daemon,
    start_registrars,
    stop_registrars,
    write_accounts,
)

from uacregistrant.core.registrant import Policy  # noqa: E402

SCENARIO = ROOT / "bench" / "sipp" / "registrar_steady.xml"


def all_registered(current: dict, accounts: int) -> bool:  # type: ignore[type-arg]
    return bool(current["states"]["REGISTERED_STATE"] == accounts and current["bindings_held"] == accounts)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100000)
    parser.add_argument("--expiry", type=int, default=120)
    parser.add_argument("--down", type=float, default=60)
    parser.add_argument("--send-rate", type=float, default=10000)
    parser.add_argument("--hash-size", type=int, default=0, help="0: every record is walked at once, so every refresh meets the outage")
    parser.add_argument("--registrars", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    options = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="uacreg-outage-")
    extra = ("-deadcall_wait", "1000")  # refreshes reuse their Call-ID
    ports = start_registrars(SCENARIO, options.registrars, directory, *extra)
    local = free_udp_port()
    db = os.path.join(directory, "r.db")
    write_accounts(db, options.accounts, [f"sip:127.0.0.1:{p}" for p in ports], local, expiry=options.expiry)
    control = f"unix:{directory}/ctl"
    start = time.monotonic()
    daemon = start_daemon(
        directory, db, local, control,
        "--hash-size", str(options.hash_size), "--timer-interval", str(options.expiry // 2), "--send-rate", str(options.send_rate),
    )
    samples: list[tuple[float, dict]] = []  # type: ignore[type-arg]
    try:
        current: dict = {}  # type: ignore[type-arg]
        while time.monotonic() - start < options.timeout:
            time.sleep(max(0.2, options.accounts / 100000))
            try:
                current = reg_stats(control)
            except OSError:
                continue
            if all_registered(current, options.accounts):
                break
        cold = time.monotonic() - start
        # The earliest refresh falls due (expiry - lead) after the first
        # registration, which came at least a moment after start.
        lead = Policy().refresh_lead(options.expiry)
        stop_at = start + options.expiry - lead - 3
        while time.monotonic() < stop_at:
            time.sleep(0.2)
        stop_registrars(ports)
        down_at = time.monotonic()
        while time.monotonic() - down_at < options.down:
            time.sleep(1)
            samples.append((time.monotonic(), reg_stats(control)))
        fewest_held = min(s["bindings_held"] for _, s in samples)
        start_registrars(SCENARIO, options.registrars, directory, *extra, ports=ports)
        back_at = time.monotonic()
        cpu_back = cpu_seconds(daemon.pid)
        recovered = None
        while time.monotonic() - back_at < options.timeout:
            time.sleep(1)
            current = reg_stats(control)
            samples.append((time.monotonic(), current))
            if all_registered(current, options.accounts):
                recovered = time.monotonic() - back_at
                break
        cpu_recovery = cpu_seconds(daemon.pid) - cpu_back
    finally:
        daemon.terminate()
        daemon.wait(30)
        stop_registrars(ports)
        shutil.rmtree(directory, ignore_errors=True)
    peak_new = peak_all = 0.0
    for (t0, a), (t1, b) in zip(samples, samples[1:]):
        new = b["sip"]["requests_sent"] - a["sip"]["requests_sent"]
        every = new + b["sip"]["retransmissions"] - a["sip"]["retransmissions"]
        peak_new = max(peak_new, new / (t1 - t0))
        peak_all = max(peak_all, every / (t1 - t0))
    final = samples[-1][1]
    report([{
        "accounts": options.accounts,
        "expiry_s": options.expiry,
        "down_s": options.down,
        "send_rate": options.send_rate,
        "hash_size": options.hash_size,
        "cold_start_s": round(cold, 1),
        "fewest_bindings_held_while_down": fewest_held,
        "recovered_s_after_return": None if recovered is None else round(recovered, 1),
        "recovery_cpu_s": round(cpu_recovery, 1),
        "peak_new_requests_per_s": round(peak_new),
        "peak_datagrams_per_s": round(peak_all),
        "timeouts": final["sip"]["timeouts"],
        "retransmissions": final["sip"]["retransmissions"],
        "early_retries": final["sip"]["early_retries"],
        "lapsed": final["sip"]["lapsed_registrations"],
        "records_lost": options.accounts - final["total"],
        "registered_at_end": final["states"]["REGISTERED_STATE"],
    }])
    return 0


if __name__ == "__main__":
    sys.exit(main())
