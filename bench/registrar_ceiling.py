"""
The benchmark registrar alone (issue 5, scenario 1): one SIPp UAS running
bench/sipp/registrar_401_200.xml, loaded by a SIPp UAC doing the same
two-transaction digest registration at a fixed offered rate.  Reports the
registrations per second it completed.

    python bench/registrar_ceiling.py --rate 2000 --rate 5000 --rate 10000 --seconds 10

Bounded: each run is rate x seconds registrations at most, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import free_udp_port, report  # noqa: E402


def run(rate: int, seconds: int) -> dict[str, object]:
    directory = tempfile.mkdtemp(prefix="uacreg-ceiling-")
    port = free_udp_port()
    uas = subprocess.Popen(
        ["sipp", "-sf", str(ROOT / "bench/sipp/registrar_401_200.xml"), "-i", "127.0.0.1", "-p", str(port),
         "-nostdin", "-max_recv_loops", "10000", "-buff_size", "8388608"],
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    total = rate * seconds
    start = time.monotonic()
    uac = subprocess.run(
        ["sipp", f"127.0.0.1:{port}", "-sf", str(ROOT / "bench/sipp/uac_401_200.xml"), "-i", "127.0.0.1",
         "-p", str(free_udp_port()), "-r", str(rate), "-m", str(total), "-l", str(rate * 4), "-au", "u0", "-ap", "bench-pw",
         "-nostdin", "-max_recv_loops", "10000", "-buff_size", "8388608", "-timeout", str(seconds * 3 + 10),
         "-trace_stat", "-stf", f"{directory}/stat.csv"],
        cwd=directory, capture_output=True, timeout=seconds * 3 + 30,
    )
    elapsed = time.monotonic() - start
    uas.terminate()
    uas.wait(10)
    text = uac.stdout.decode(errors="replace")
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", text)
    failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", text)
    successful = int(ok[-1]) if ok else 0
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "offered_rate": rate,
        "registrations": total,
        "successful": successful,
        "failed": int(failed[-1]) if failed else None,
        "elapsed_s": round(elapsed, 2),
        "completed_per_s": round(successful / elapsed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, action="append")
    parser.add_argument("--seconds", type=int, default=10)
    options = parser.parse_args()
    results = [run(rate, options.seconds) for rate in options.rate or [2000]]
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
