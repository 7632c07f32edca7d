"""
How soon the first REGISTER leaves after `twistd uacregistrant` starts,
and when the table is fully loaded (issue 14's "first REGISTER within
0.5 s on a 100k-row table"): the bench owns the registrar's UDP socket on
127.0.0.1 and timestamps the first datagram; the load's end is the log's
"table registrant: ..." line.  Runs alternate between this tree and
another one given with --before (e.g. a `git worktree` of an older commit).

    python bench/first_register.py --accounts 100000 --runs 2 --before /tmp/before
    python bench/first_register.py --python /usr/bin/python3 ...   # another interpreter (its venv must have the deps)

Bounded by --timeout per run; only 127.0.0.1 is used; nothing is answered.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import free_udp_port, precompile, report, write_accounts  # noqa: E402


def one_run(tree: Path, python: str, db: str, registrar: socket.socket, timeout: float) -> dict[str, float]:
    """Start the daemon from C{tree}; seconds to its first REGISTER and to the end of the first load."""
    directory = tempfile.mkdtemp(prefix="uacreg-first-")
    log = Path(directory) / "daemon.log"
    local = free_udp_port()
    twistd = [python, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
    while True:  # drop anything left from an earlier run
        try:
            registrar.recv(65536)
        except BlockingIOError:
            break
    start = time.monotonic()
    daemon = subprocess.Popen(
        [*twistd, "-n", "--pidfile=", f"--logfile={log}", "uacregistrant", "--db-url", f"sqlite:{db}",
         "--listen", f"udp:127.0.0.1:{local}", "--control", f"unix:{directory}/ctl", "--hash-size", "0",
         "--timer-interval", "1800", "--no-unregister-on-shutdown"],
        cwd=directory, env={**os.environ, "PYTHONPATH": str(tree)},
    )
    first = loaded = None
    try:
        while time.monotonic() - start < timeout and (first is None or loaded is None):
            if first is None:
                try:
                    registrar.recv(65536)
                    first = time.monotonic() - start
                except BlockingIOError:
                    pass
            if loaded is None and log.exists() and "table registrant: " in log.read_text(errors="replace"):
                loaded = time.monotonic() - start
            time.sleep(0.002)
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(directory, ignore_errors=True)
    if first is None or loaded is None:
        raise SystemExit(f"run from {tree} incomplete within {timeout}s (first REGISTER {first}, loaded {loaded})")
    return {"first_register_s": round(first, 3), "table_loaded_s": round(loaded, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--before", type=Path, help="another tree to run alternately (its uacregistrant/ is imported)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if not 1 <= args.accounts <= 1_000_000 or not 1 <= args.runs <= 10:
        parser.error("--accounts 1..1000000, --runs 1..10")
    registrar = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    registrar.bind(("127.0.0.1", 0))
    registrar.setblocking(False)
    directory = tempfile.mkdtemp(prefix="uacreg-first-table-")
    try:
        db = os.path.join(directory, "r.db")
        write_accounts(db, args.accounts, [f"sip:127.0.0.1:{registrar.getsockname()[1]}"], 5060)
        # "this": the tree in UACREG_BENCH_TREE (e.g. one compiled in place), else this one.
        trees = [("this", Path(os.environ.get("UACREG_BENCH_TREE", ROOT)))] + ([("before", args.before)] if args.before else [])
        for _, tree in trees:
            precompile(str(tree))
        rows = []
        for run in range(args.runs):
            for name, tree in trees:
                rows.append({"run": run + 1, "tree": name, "accounts": args.accounts, **one_run(tree, args.python, db, registrar, args.timeout)})
        report(rows)
        for name, _ in trees:
            mine = [r for r in rows if r["tree"] == name]
            print(f"{name}: median first REGISTER {statistics.median(r['first_register_s'] for r in mine):.3f} s, "
                  f"table loaded {statistics.median(r['table_loaded_s'] for r in mine):.3f} s ({args.python})")
    finally:
        registrar.close()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
