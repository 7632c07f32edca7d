"""
Cold start against SIPp registrars (issue 5, scenario 1): N accounts in
SQLite, digest MD5 qop=auth checked by SIPp's verifyauth
(bench/sipp/registrar_401_200.xml), K SIPp instances on loopback with the
accounts spread over them.  The daemon runs as `twistd -n uacregistrant`;
its CPU comes from /proc.  Reports wall time from start to all REGISTERED,
daemon CPU seconds and per registration, registrations/s, retransmissions,
timeouts.

    python bench/cold_start_sipp.py --accounts 1000 --accounts 10000 --registrars 2 --rate 5000

Bounded: every run stops after --timeout seconds; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import cpu_seconds, free_udp_port, report, start_daemon, start_registrars, stop_registrars, write_accounts  # noqa: E402

from uacregistrant.control.ctl import request  # noqa: E402

SCENARIO = ROOT / "bench" / "sipp" / "registrar_401_200.xml"


def run(
    accounts: int, registrars: int, rate: float, timeout: float, profile: str | None = None, py_spy: str | None = None
) -> dict[str, object]:
    directory = tempfile.mkdtemp(prefix="uacreg-cold-")
    ports = start_registrars(SCENARIO, registrars, directory)
    local = free_udp_port()
    write_accounts(os.path.join(directory, "r.db"), accounts, [f"sip:127.0.0.1:{p}" for p in ports], local)
    control = f"unix:{directory}/ctl"
    start = time.monotonic()
    daemon = start_daemon(
        directory, f"{directory}/r.db", local, control,
        "--hash-size", "0", "--timer-interval", "1800", "--send-rate", str(rate),
        twistd=["--profile", profile, "--profiler", "cprofile", "--savestats"] if profile else [],
    )
    sampler = None
    if py_spy:
        sampler = subprocess.Popen(
            ["py-spy", "record", *os.environ.get("UACREG_BENCH_PYSPY", "--gil").split(), "--nonblocking", "--rate", "250", "--format", "raw", "-o", py_spy, "-p", str(daemon.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    stats: dict[str, object] = {}
    registered = 0
    # reg_stats walks every record: its CPU is the probe's, not the
    # registrations'.  It is measured on the idle daemon afterwards and
    # taken out (Kamailio's progress is read from the registrars'
    # statistics files, at no cost to it).
    probes = 0
    try:
        # reg_stats walks every record: poll gently on big tables (its cost
        # would otherwise show in the daemon's CPU); wall time is +- one poll.
        poll = max(0.1, accounts / 100000)
        while time.monotonic() - start < timeout:
            time.sleep(poll)
            try:
                probes += 1
                status, body = request(control, "reg_stats json", timeout=5)
            except OSError:
                continue
            stats = json.loads(body[0])
            registered = stats["states"]["REGISTERED_STATE"]  # type: ignore[index]
            if registered == accounts:
                break
        wall = time.monotonic() - start
        cpu = cpu_seconds(daemon.pid)
        idle_before = cpu_seconds(daemon.pid)
        for _ in range(5):
            request(control, "reg_stats json", timeout=5)
        probe_cost = (cpu_seconds(daemon.pid) - idle_before) / 5
        cpu -= probes * probe_cost
    finally:
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(30)
        daemon.terminate()
        daemon.wait(30)
        stop_registrars(ports)
        shutil.rmtree(directory, ignore_errors=True)
    sip = stats.get("sip", {})
    return {
        "accounts": accounts,
        "registrars": registrars,
        "rate_limit": rate,
        "registered": registered,
        "wall_s": round(wall, 2),
        "daemon_cpu_s": round(cpu, 2),
        "probe_cpu_s": round(probes * probe_cost, 2),
        "cpu_us_per_registration": round(1e6 * cpu / max(1, registered), 1),
        "registrations_per_s": round(registered / wall, 1),
        "retransmissions": sip.get("retransmissions"),  # type: ignore[union-attr]
        "timeouts": sip.get("timeouts"),  # type: ignore[union-attr]
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, action="append")
    parser.add_argument("--registrars", type=int, default=2)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile", help="write the daemon's cProfile stats here (slows it down)")
    parser.add_argument("--py-spy", help="sample the daemon with py-spy into this collapsed-stack file (one N only)")
    options = parser.parse_args()
    results = [run(n, options.registrars, options.rate, options.timeout, options.profile, options.py_spy) for n in options.accounts or [1000]]
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
