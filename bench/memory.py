"""
Memory per account: the daemon's resident set after loading N accounts
from SQLite, minus the resident set before (same process, nothing sent).

    python bench/memory.py --accounts 100000 --accounts 1000000
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import report, write_accounts  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.names.resolve import ResolverChain  # noqa: E402

from uacregistrant.app.service import RegistrantService  # noqa: E402
from uacregistrant.app.settings import build_settings  # noqa: E402
from uacregistrant.store.sqlite import SqliteStore, run_synchronously  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(accounts: int) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="uacreg-mem-")
    path = os.path.join(directory, "r.db")
    write_accounts(path, accounts, ["sip:127.0.0.1:5080"])
    settings = build_settings({"db_url": f"sqlite:{path}", "listen": ["udp:127.0.0.1:0"], "control": ["unix:x"], "hash_size": 10, "timer_interval": 1800})
    clock = Clock()
    gc.collect()
    before = rss_bytes()
    store = SqliteStore(path, settings.table, clock, run_in_thread=run_synchronously)
    store.start()
    service = RegistrantService(settings, store, clock, resolver=ResolverChain([]))
    start = time.monotonic()
    outcome: list[object] = []
    service.loader.reload(initial=True).addBoth(outcome.append)
    while not outcome:
        clock.advance(0)
    loaded = time.monotonic() - start
    gc.collect()
    after = rss_bytes()
    count = len(service.registry)
    service.store.close()
    return {
        "accounts": count,
        "load_s": round(loaded, 1),
        "rss_growth_mib": round((after - before) / 2**20, 1),
        "bytes_per_account": round((after - before) / count),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, action="append")
    options = parser.parse_args()
    results = [measure(n) for n in options.accounts or [100000]]
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
