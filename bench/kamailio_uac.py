"""
Side by side (issue 5, scenario 6, cold start): the same N accounts, the
same SIPp registrars (bench/sipp/registrar_401_200.xml), first
uacregistrant (bench/cold_start_sipp.py), then Kamailio 5.6's `uac`
module remote registration from a db_text `uacreg` table, tuned as the
issue says (f_malloc, reg_hash_size 14, max_branches 1, reg_timer_interval
1, reg_retry_interval 30, a random initial delay, 2 children, -m 1024
-M 256).  Kamailio's CPU is summed over its process group from /proc;
"all registered" is the registrars' own count of 200s sent (SIPp's
statistics file, written every second), since `uac.reg_dump` is too big
for kamcmd at this scale and the `uac:regactive` counter stayed 0.  Prints both and the
ratios.

    python bench/kamailio_uac.py --accounts 10000 --rate 5000
    python bench/kamailio_uac.py --accounts 100000 --steady 300 --expiry 300   # scenario 2 side by side

Bounded by --timeout per run; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from cold_start_sipp import SCENARIO
from cold_start_sipp import run as run_uacregistrant  # noqa: E402
from common import completed, free_udp_port, group_cpu, registrar_statistics, report, stop_group, stop_registrars  # noqa: E402

STEADY_SCENARIO = ROOT / "bench" / "sipp" / "registrar_steady.xml"
MODULES = next(iter(glob.glob("/usr/lib/*/kamailio/modules")), "/usr/lib/kamailio/modules")

CONFIG = """#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=2
max_branches=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "ctl.so"
loadmodule "counters.so"
loadmodule "rr.so"
loadmodule "db_text.so"
loadmodule "uac.so"
modparam("ctl", "binrpc", "unix:{directory}/kamailio.ctl")
modparam("uac", "reg_db_url", "text://{directory}/db")
modparam("uac", "reg_contact_addr", "127.0.0.1:{port}")
modparam("uac", "reg_hash_size", 14)
modparam("uac", "reg_timer_interval", 1)
modparam("uac", "reg_retry_interval", 30)
modparam("uac", "reg_random_delay", {delay})
request_route {{
    sl_send_reply("404", "Not here");
    exit;
}}
"""


def write_uacreg(directory: str, accounts: int, ports: list[int], expires: int = 3600) -> None:
    """Kamailio's db_text C{uacreg} table: the same accounts as write_accounts."""
    os.mkdir(os.path.join(directory, "db"))
    with open(os.path.join(directory, "db", "version"), "w") as f:
        f.write("table_name(string) table_version(int)\nuacreg:5\n")
    with open(os.path.join(directory, "db", "uacreg"), "w") as f:
        f.write("id(int,auto) l_uuid(string) l_username(string) l_domain(string) r_username(string) r_domain(string) "
                "realm(string) auth_username(string) auth_password(string) auth_ha1(string,null) auth_proxy(string) "
                "expires(int) flags(int) reg_delay(int) contact_addr(string,null) socket(string,null)\n")
        for i in range(accounts):
            f.write(f"{i + 1}:u{i}:u{i}:bench.invalid:u{i}:bench.invalid:bench.invalid:u{i}:bench-pw::"
                    f"sip\\:127.0.0.1\\:{ports[i % len(ports)]}:{expires}:0:0::\n")


def start_kamailio(directory: str, accounts: int) -> tuple[subprocess.Popen[bytes], int]:
    """Kamailio tuned as the issue says, on a free port; returns it and its random initial delay."""
    port = free_udp_port()
    delay = max(2, accounts // 20000)
    config = os.path.join(directory, "kamailio.cfg")
    with open(config, "w") as f:
        f.write(CONFIG.format(port=port, modules=MODULES, directory=directory, delay=delay))
    kamailio = subprocess.Popen(
        ["kamailio", "-f", config, "-DD", "-E", "-x", "fm", "-m", "1024", "-M", "256", "-Y", directory],
        cwd=directory, stdout=open(os.path.join(directory, "kamailio.log"), "wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return kamailio, delay


def run_kamailio(accounts: int, registrars: int, timeout: float) -> dict[str, object]:
    directory = tempfile.mkdtemp(prefix="uacreg-kamuac-")
    ports = registrar_statistics(SCENARIO, registrars, directory)
    write_uacreg(directory, accounts, ports)
    start = time.monotonic()
    kamailio, delay = start_kamailio(directory, accounts)
    active = 0
    try:
        while time.monotonic() - start < timeout and kamailio.poll() is None:
            time.sleep(max(0.1, accounts / 100000))
            active = completed(directory, ports)
            if active >= accounts:
                break
        wall = time.monotonic() - start
        cpu = group_cpu(kamailio.pid)
    finally:
        # (Kamailio sometimes takes longer than 30 s to stop: killed then,
        # the measurement taken before stands and no process is left behind.)
        stop_group(kamailio, grace=30)
        stop_registrars(ports)
        log = open(os.path.join(directory, "kamailio.log"), errors="replace").read()[-2000:]
        shutil.rmtree(directory, ignore_errors=True)
    if active < accounts:
        print(log, file=sys.stderr)
    return {
        "system": "kamailio uac",
        "accounts": accounts,
        "registered": active,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_registration": round(1e6 * cpu / max(1, active), 1),
        "registrations_per_s": round(active / wall, 1),
        "random_delay_s": delay,
    }


def run_kamailio_steady(accounts: int, expiry: int, seconds: int, registrars: int, timeout: float) -> dict[str, object]:
    """Kamailio: cold start, then D seconds of refreshes (200s counted by the registrars)."""
    directory = tempfile.mkdtemp(prefix="uacreg-kamsteady-")
    ports = registrar_statistics(STEADY_SCENARIO, registrars, directory, "-deadcall_wait", "1000")
    write_uacreg(directory, accounts, ports, expires=expiry)
    start = time.monotonic()
    kamailio, _ = start_kamailio(directory, accounts)
    try:
        while time.monotonic() - start < timeout and kamailio.poll() is None:
            time.sleep(max(0.2, accounts / 100000))
            if completed(directory, ports) >= accounts:
                break
        registered_after = time.monotonic() - start
        time.sleep(1.5)
        done_before, cpu_before, t0 = completed(directory, ports), group_cpu(kamailio.pid), time.monotonic()
        while time.monotonic() - t0 < seconds and kamailio.poll() is None:
            time.sleep(1)
        cpu_after, t1 = group_cpu(kamailio.pid), time.monotonic()
        # SIPp writes its statistics every second: read at both ends alike.
        refreshes = completed(directory, ports) - done_before
    finally:
        stop_group(kamailio, grace=30)
        stop_registrars(ports)
        shutil.rmtree(directory, ignore_errors=True)
    elapsed = t1 - t0
    cpu = cpu_after - cpu_before
    return {
        "system": "kamailio uac",
        "accounts": accounts,
        "expiry_s": expiry,
        "cold_start_s": round(registered_after, 1),
        "measured_s": round(elapsed, 1),
        "refreshes_per_s": round(refreshes / elapsed, 1),
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "cpu_us_per_refresh": round(1e6 * cpu / max(1, refreshes), 1),
    }


def steady(options: argparse.Namespace) -> int:
    """Scenario 2 side by side: uacregistrant, then Kamailio, same N, expiry and registrars."""
    from steady_state import run as run_steady

    ours = run_steady(options.accounts, options.expiry, options.steady, options.registrars, options.timeout)
    theirs = run_kamailio_steady(options.accounts, options.expiry, options.steady, options.registrars, options.timeout)
    columns = ["system", "accounts", "expiry_s", "cold_start_s", "measured_s", "refreshes_per_s", "cpu_percent", "cpu_us_per_refresh"]
    report([{c: row.get(c) for c in columns} for row in (ours, theirs)])
    print(json.dumps(ours))
    ratio = {
        "cpu_per_refresh_ratio": round(float(ours["cpu_us_per_refresh"]) / max(0.01, float(theirs["cpu_us_per_refresh"])), 2),  # type: ignore[arg-type]
        "lapsed": ours["lapsed"],
    }
    print(f"uacregistrant / kamailio: CPU per refresh x{ratio['cpu_per_refresh_ratio']}")
    print(json.dumps(ratio))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=10000)
    parser.add_argument("--registrars", type=int, default=2)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--steady", type=int, metavar="SECONDS", help="scenario 2 instead: measure refreshes for SECONDS")
    parser.add_argument("--expiry", type=int, default=300, help="with --steady: the accounts' expiry")
    options = parser.parse_args()
    if options.steady:
        return steady(options)
    ours = run_uacregistrant(options.accounts, options.registrars, options.rate, options.timeout)
    theirs = run_kamailio(options.accounts, options.registrars, options.timeout)
    rows = [
        {"system": "uacregistrant", "accounts": ours["accounts"], "registered": ours["registered"], "wall_s": ours["wall_s"],
         "cpu_s": ours["daemon_cpu_s"], "cpu_us_per_registration": ours["cpu_us_per_registration"],
         "registrations_per_s": ours["registrations_per_s"]},
        {k: v for k, v in theirs.items() if k != "random_delay_s"},
    ]
    report(rows)
    ratio = {
        "wall_ratio": round(float(rows[0]["wall_s"]) / max(0.01, float(rows[1]["wall_s"])), 2),  # type: ignore[arg-type]
        "cpu_ratio": round(float(rows[0]["cpu_s"]) / max(0.01, float(rows[1]["cpu_s"])), 2),  # type: ignore[arg-type]
        "kamailio_random_delay_s": theirs["random_delay_s"],
    }
    print(f"uacregistrant / kamailio: wall x{ratio['wall_ratio']}, CPU x{ratio['cpu_ratio']}")
    print(json.dumps(ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
