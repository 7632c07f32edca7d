# -*- test-case-name: tests.integration.test_demo -*-
"""
C{uacregistrant-demo}: the real daemon (twistd) on a generated SQLite
table whose accounts point at the packaged test registrar on loopback.
Prints each account's state changes until all are REGISTERED.
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from uacregistrant.control.ctl import request
from uacregistrant.store import schema_sql

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]

#: user -> (registrar policy, password in the table)
ACCOUNTS: dict[str, tuple[dict[str, object], str | None]] = {
    "alice": ({"password": "alice-pw"}, "alice-pw"),
    "bob": ({"password": "bob-pw", "algorithms": ["SHA-256"]}, "bob-pw"),
    "carol": ({"password": "carol-pw", "challenge": 407}, "carol-pw"),
    "dave": ({"password": "dave-pw", "algorithms": ["SHA-256"], "challenge": 407}, "dave-pw"),
    "erin": ({"password": "erin-pw", "min_expires": 1800}, "erin-pw"),
    "frank": ({}, None),
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 once every account is REGISTERED."""
    parser = argparse.ArgumentParser(prog="uacregistrant-demo", description=__doc__)
    parser.add_argument("--directory", help="where to put the table, logs and sockets (default: a new temp dir)")
    parser.add_argument("--keep-running", action="store_true", help="leave the daemon running until Ctrl-C")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for REGISTERED")
    options = parser.parse_args(argv)
    directory = Path(options.directory or tempfile.mkdtemp(prefix="uacregistrant-demo-")).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    users = directory / "registrar-users.json"
    users.write_text(json.dumps({user: policy for user, (policy, _) in ACCOUNTS.items()}, indent=1))
    port_file = directory / "registrar.port"
    port_file.unlink(missing_ok=True)
    children: list[subprocess.Popen[bytes]] = []
    try:
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "uacregistrant.testing.registrar", "--listen", "127.0.0.1:0", "--users", str(users),
                 "--port-file", str(port_file), "--delay", "0.4"],
                stdout=open(directory / "registrar.log", "wb"), stderr=subprocess.STDOUT,
            )
        )
        registrar_port = int(_wait_for_file(port_file, 20))
        local = _free_port()
        db_path = directory / "registrant.db"
        db_path.unlink(missing_ok=True)
        db = sqlite3.connect(db_path)
        db.executescript(schema_sql("sqlite"))
        for user, (_, password) in ACCOUNTS.items():
            db.execute(
                "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) VALUES (?, ?, ?, ?, ?, ?)",
                (f"sip:127.0.0.1:{registrar_port}", f"sip:{user}@demo.invalid", user, password,
                 f"sip:{user}@127.0.0.1:{local}", 600),
            )
        db.commit()
        db.close()
        control = f"unix:{directory / 'uacregistrant.ctl'}"
        command = [*TWISTD, "-n", "--pidfile=", f"--logfile={directory / 'uacregistrant.log'}", "uacregistrant",
                   "--db-url", f"sqlite:{db_path}", "--listen", f"udp:127.0.0.1:{local}", "--control", control,
                   "--hash-size", "1", "--timer-interval", "4"]
        print(f"demo directory: {directory}")
        print(f"registrar (digest-checking test registrar): 127.0.0.1:{registrar_port}")
        print("daemon: twistd -n uacregistrant --db-url sqlite:registrant.db --listen "
              f"udp:127.0.0.1:{local} --control {control} --hash-size 1 --timer-interval 4\n")
        children.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(directory / "twistd.err", "wb")))
        ok = _follow(control, options.timeout, children[-1])
        if children[-1].poll() is not None:
            print((directory / "twistd.err").read_text(errors="replace")[-2000:])
            return 1
        print()
        status, body = request(control, "reg_list")
        print("\n".join(body))
        if options.keep_running:
            print(f"\nrunning; try: uacregistrant-ctl --control {control} reg_list json   (Ctrl-C to stop)")
            try:
                children[-1].wait()
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
                child.wait(10)


def _follow(control: str, timeout: float, daemon: subprocess.Popen[bytes]) -> bool:
    last: dict[str, str] = {}
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if daemon.poll() is not None:
            print("the daemon exited; see twistd.err and uacregistrant.log in the demo directory")
            return False
        try:
            status, body = request(control, "reg_list json", timeout=2)
        except OSError:
            time.sleep(0.1)
            continue
        records = json.loads(body[0])["Records"] if status.startswith("200") and body else []
        for record in records:
            aor, state = record["AOR"], record["state"]
            if last.get(aor) != state:
                reply = f"  (last reply: {record['last_reply']})" if record["last_reply"] else ""
                print(f"{time.monotonic() - start:6.2f}s  {aor:<24} {last.get(aor, '-'):<22} -> {state}{reply}")
                last[aor] = state
        if records and all(state == "REGISTERED_STATE" for state in last.values()):
            print(f"\nall {len(records)} accounts REGISTERED in {time.monotonic() - start:.1f}s")
            return True
        time.sleep(0.05)
    print(f"not all accounts registered within {timeout}s")
    return False


if __name__ == "__main__":
    sys.exit(main())
