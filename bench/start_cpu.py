"""
What a daemon start costs before any account (issue 14: at 20k accounts
the start is about 9 µs of each registration): `twistd -n uacregistrant`
on an empty SQLite table, one loopback UDP socket and the control
socket; its CPU (user + system, from /proc) once the control socket
exists and a second has passed.  The tree is UACREG_BENCH_TREE (default
this one); the interpreter is this one.

    python bench/start_cpu.py --runs 3
    UACREG_BENCH_TREE=/tmp/wt-comp python bench/start_cpu.py

Bounded: each run waits at most --timeout for the socket, then stops the
daemon.  Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import cpu_seconds, free_udp_port, start_daemon, write_accounts  # noqa: E402


def one_run(timeout: float) -> float:
    """CPU seconds of one start on an empty table."""
    directory = tempfile.mkdtemp(prefix="uacreg-start-")
    try:
        db = os.path.join(directory, "registrant.db")
        write_accounts(db, 0, ["sip:127.0.0.1:9"])
        control = os.path.join(directory, "ctl")
        daemon = start_daemon(directory, db, free_udp_port(), f"unix:{control}")
        try:
            deadline = time.monotonic() + timeout
            while not os.path.exists(control):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the daemon did not start; see {directory}/daemon.log")
                time.sleep(0.01)
            time.sleep(1.0)  # whatever the start left for the reactor's first turns
            return cpu_seconds(daemon.pid)
        finally:
            daemon.terminate()
            daemon.wait(30)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0)
    options = parser.parse_args()
    runs = [one_run(options.timeout) for _ in range(options.runs)]
    tree = os.environ.get("UACREG_BENCH_TREE", str(ROOT))
    print(f"tree {tree}, {sys.executable} ({sys.version.split()[0]}): start CPU {', '.join(f'{r:.2f}' for r in runs)} s"
          f" (median {statistics.median(runs):.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
