"""
The compiled build's speed-up, module by module (issue 14): one typical
workload per compiled module, timed in the pure tree and in a tree
compiled in place, alternately, in fresh interpreters.

    python bench/compiled_modules.py --compiled /tmp/wt-comp            # against this tree (pure)
    python bench/compiled_modules.py --compiled /tmp/wt-comp --pure /tmp/wt-pure --rounds 3

A tree is compiled in place with `python setup.py build_ext --inplace`
(in a worktree: `git worktree add /tmp/wt-comp HEAD`).  Each workload
calls only the module's public functions with realistic values (a
registrar's 401 and 200, a table row, a digest challenge); the figure is
the best of five repeats of N calls, in µs per call.  No sockets.

Cython in pure-Python mode (the issue's alternative to mypyc) on the
same source: `pip install cython`, then in a worktree
`cd uacregistrant/sip && cythonize -i -3 message.py uri.py numbers.py
sharing.py errors.py digest.py framing.py tokens.py`, and that tree as
`--compiled` (only the sip rows then apply).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

#: The 401 and the 200 a registrar sends (as in bench/sipp/registrar_401_200.xml).
CHALLENGE_401 = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK8c1e5f2a9d0b4c7e;rport=5060;received=127.0.0.1\r\n"
    b"From: <sip:u1@example.com>;tag=0a1b2c3d4e\r\n"
    b"To: <sip:u1@example.com>;tag=4711\r\n"
    b"Call-ID: 1f2e3d4c5b6a79880123456789abcdef\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="example.com", nonce="5f8e0c1d2b3a4958a7b6c5d4e3f2a1b0", '
    b'opaque="0123456789abcdef", qop="auth", algorithm=MD5\r\n'
    b"Content-Length: 0\r\n\r\n"
)
OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK8c1e5f2a9d0b4c7f;rport=5060;received=127.0.0.1\r\n"
    b"From: <sip:u1@example.com>;tag=0a1b2c3d4e\r\n"
    b"To: <sip:u1@example.com>;tag=4711\r\n"
    b"Call-ID: 1f2e3d4c5b6a79880123456789abcdef\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Contact: <sip:u1@127.0.0.1:5080>;expires=3600\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def workloads() -> dict[str, tuple[Callable[[], Any], int]]:
    """Module name -> (one call of its typical work, calls per repeat)."""
    from uacregistrant.core.account import Account, account_from_row
    from uacregistrant.core.counters import SipCounters
    from uacregistrant.core.register import render_register
    from uacregistrant.core.registrant import Outgoing, Policy, Registrant
    from uacregistrant.core.registry import Registry
    from uacregistrant.net.targets import TargetHealth
    from uacregistrant.net.transaction import NonInviteClientTransactions
    from uacregistrant.sip.digest import Credentials, authorization_value, parse_challenges
    from uacregistrant.sip.message import Response, parse_message
    from uacregistrant.sip.sharing import SharedTables
    from uacregistrant.sip.tokens import RandomTokens
    from uacregistrant.sip.uri import parse_uri_uncached

    shared = SharedTables()
    names = shared.names
    row = {
        "id": 1, "registrar": "sip:127.0.0.1:5070", "proxy": None, "aor": "sip:u1@example.com",
        "third_party_registrant": None, "username": "u1", "password": "secret1", "binding_URI": "sip:u1@127.0.0.1:5080",
        "binding_params": None, "expiry": 3600, "forced_socket": None, "cluster_shtag": None, "state": 0,
    }
    account = account_from_row(row, default_expires=3600, timer_interval=100, sockets=[], shared=shared)
    challenge = parse_challenges(
        'Digest realm="example.com", nonce="5f8e0c1d2b3a4958a7b6c5d4e3f2a1b0", opaque="0123456789abcdef", qop="auth", algorithm=MD5'
    )[0]
    credentials = Credentials("u1", "secret1")
    tokens = RandomTokens()
    policy = Policy(shared=shared)
    challenged = parse_message(CHALLENGE_401, names)
    accepted = parse_message(OK_200, names)
    assert isinstance(challenged, Response) and isinstance(accepted, Response)

    def registrant_cycle() -> None:
        record = Registrant(account, policy)
        record.start(0.0)
        record.on_response(challenged, 1.0)
        record.on_response(accepted, 2.0)

    transactions: NonInviteClientTransactions[int] = NonInviteClientTransactions(SipCounters())
    branch_of_200 = "z9hG4bK8c1e5f2a9d0b4c7f"
    source = ("127.0.0.1", 5070)

    def transaction() -> None:
        transactions.start(0.0, branch_of_200, source, OK_200, 2, 1)
        transactions.receive(accepted, source, 0.01)
        transactions.sweep(100.0)

    health: TargetHealth[tuple[str, int]] = TargetHealth()
    targets = [("127.0.0.1", 5070), ("127.0.0.2", 5070)]

    def target_health() -> None:
        health.choose(targets, 0.0)
        health.answered(targets[0])

    registry = Registry(10)
    records = [Registrant(account_from_row({**row, "id": i, "aor": f"sip:u{i}@example.com"}, default_expires=3600,
                                           timer_interval=100, sockets=[], shared=shared), policy) for i in range(1000)]

    def registry_add_get() -> None:
        for record in records:
            registry.add(record)
        for record in records:
            registry.get(record.account.key)
        for record in records:
            registry.remove(record)

    out = Outgoing(2, 3600, (("Authorization", authorization_value(challenge, credentials, "REGISTER", "sip:127.0.0.1:5070", "0a1b2c3d", 1)),))
    return {
        "sip.message (parse a 401 and a 200)": (lambda: (parse_message(CHALLENGE_401, names), parse_message(OK_200, names)), 2000),
        "sip.digest (parse a challenge, answer it)": (
            lambda: authorization_value(parse_challenges(
                'Digest realm="example.com", nonce="5f8e0c1d2b3a4958a7b6c5d4e3f2a1b0", opaque="0123456789abcdef", '
                'qop="auth", algorithm=MD5')[0], credentials, "REGISTER", "sip:127.0.0.1:5070", "0a1b2c3d", 1), 2000),
        "sip.uri (parse an AOR)": (lambda: parse_uri_uncached("sip:u1@example.com;transport=udp"), 5000),
        "sip.tokens (a branch)": (lambda: tokens.hex(8), 10000),
        "core.account (validate a row)": (
            lambda: account_from_row(row, default_expires=3600, timer_interval=100, sockets=[], shared=shared), 2000),
        "core.register (render a REGISTER)": (
            lambda: render_register(account, "1f2e3d4c5b6a79880123456789abcdef", "0a1b2c3d4e", out, ("127.0.0.1", 5060),
                                    "z9hG4bK8c1e5f2a9d0b4c7f"), 5000),
        "core.registrant (start, 401, 200)": (registrant_cycle, 2000),
        "core.registry (add, get, remove 1000)": (registry_add_get, 20),
        "net.transaction (start, 200, sweep)": (transaction, 5000),
        "net.targets (choose, answered)": (target_health, 10000),
        "Account (construct)": (lambda: Account(row_id=1, aor="sip:u1@example.com", registrar="sip:127.0.0.1:5070",
                                                binding_uri="sip:u1@127.0.0.1:5080", expiry=3600), 5000),
    }


def measure() -> dict[str, object]:
    """This interpreter's figures for the tree first on its path."""
    import uacregistrant.core.registrant
    import uacregistrant.sip.message

    results: dict[str, float] = {}
    for name, (work, number) in workloads().items():
        work()
        best = min(timeit.repeat(work, number=number, repeat=5))
        results[name] = 1e6 * best / number
    # Compiled: mypyc's build (all of it), or only sip/ (Cython, below).
    modules = (uacregistrant.core.registrant, uacregistrant.sip.message)
    return {"compiled": any(not str(m.__file__).endswith(".py") for m in modules), "us_per_call": results}


def run_in(tree: str) -> dict[str, Any]:
    """L{measure} in a fresh interpreter on C{tree}."""
    output = subprocess.run(
        [sys.executable, __file__, "--measure"], env={**os.environ, "PYTHONPATH": tree}, cwd=tree,
        capture_output=True, text=True, check=True, timeout=600,
    )
    return dict(json.loads(output.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compiled", help="a tree compiled in place")
    parser.add_argument("--pure", default=str(ROOT), help="a pure tree (default: this one)")
    parser.add_argument("--rounds", type=int, default=2, help="alternated runs of each tree")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.measure:
        print(json.dumps(measure()))
        return 0
    if not options.compiled:
        parser.error("--compiled TREE is needed")
    runs: dict[str, list[dict[str, float]]] = {"pure": [], "compiled": []}
    for _ in range(options.rounds):
        for build, tree in (("compiled", options.compiled), ("pure", options.pure)):
            result = run_in(tree)
            if result["compiled"] != (build == "compiled"):
                raise SystemExit(f"{tree} is not the {build} build")
            runs[build].append(result["us_per_call"])
    print(f"interpreter: {sys.executable} ({sys.version.split()[0]}); {options.rounds} alternated runs each, medians")
    print("| module (workload) | pure µs per call | compiled µs per call | compiled / pure |")
    print("| --- | --- | --- | --- |")
    for name in runs["pure"][0]:
        pure = statistics.median(run[name] for run in runs["pure"])
        compiled = statistics.median(run[name] for run in runs["compiled"])
        print(f"| {name} | {pure:.2f} | {compiled:.2f} | ×{compiled / pure:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
