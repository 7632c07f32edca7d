"""
Admin commands under load: with N accounts loaded, the time to answer
reg_list json, reg_stats and reg_reload over the UNIX control socket, and
the longest reactor stall while each runs (a 5 ms LoopingCall probe).  The
client is uacregistrant-ctl in a subprocess (its time includes Python's
start-up, about 0.1 s); the daemon runs on the real reactor in this process.
Nothing is registered (send rate 1/s to the discard port of 127.0.0.1).

    python bench/admin_load.py --accounts 100000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import report, write_accounts  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402
from twisted.names.resolve import ResolverChain  # noqa: E402

from uacregistrant.app.service import RegistrantService, open_store  # noqa: E402
from uacregistrant.app.settings import build_settings  # noqa: E402

COMMANDS = ["reg_list json", "reg_list", "reg_stats json", "reg_reload json"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100000)
    options = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="uacreg-admin-")
    path = os.path.join(directory, "r.db")
    write_accounts(path, options.accounts, ["sip:127.0.0.1:9"])
    control = f"unix:{directory}/ctl"
    settings = build_settings({
        "db_url": f"sqlite:{path}", "listen": ["udp:127.0.0.1:0"], "control": [control],
        "hash_size": 4, "timer_interval": 1800, "send_rate": 1,
    })
    service = RegistrantService(settings, open_store(settings, reactor), reactor, resolver=ResolverChain([]))
    probe = {"max": 0.0, "last": time.monotonic()}

    def tick() -> None:
        now = time.monotonic()
        probe["max"] = max(probe["max"], now - probe["last"] - 0.005)
        probe["last"] = now

    results: list[dict[str, object]] = []

    def client() -> None:
        while len(service.registry) < options.accounts:
            time.sleep(0.1)
        time.sleep(0.5)
        for command in COMMANDS:
            reactor.callFromThread(probe.update, max=0.0)
            time.sleep(0.05)
            start = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "uacregistrant.control.ctl", "--control", control, "--timeout", "60", *command.split()],
                capture_output=True, cwd=ROOT, timeout=120,
            )
            elapsed = time.monotonic() - start
            time.sleep(0.05)
            status = "2xx" if done.returncode == 0 else done.stderr.decode().strip()
            size = len(done.stdout)
            results.append({"command": command, "status": status, "seconds": round(elapsed, 3),
                            "body_bytes": size, "max_stall_ms": round(probe["max"] * 1000, 1)})
        reactor.callFromThread(reactor.stop)

    service.startService()
    LoopingCall(tick).start(0.005)
    threading.Thread(target=client, daemon=True).start()
    reactor.callLater(600, reactor.stop)
    reactor.run()
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
