"""
What compiling the hot modules with mypyc would buy, before the build
does it (issue 14): copy the committed tree to a scratch directory,
compile the chosen modules there with mypyc (from mypy, which the project
already runs), then run bench/core_cycle.py alternately on the compiled
copy and on the pure-Python tree, and report each run and the medians.

    python bench/compiled_probe.py                       # sip/, core/, the transaction machine
    python bench/compiled_probe.py --modules uacregistrant/sip/ --accounts 50000 --runs 3

Needs a C compiler and the Python headers; touches no network. The
scratch copy is removed at the end (--keep keeps it, e.g. to run the unit
tests there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import report  # noqa: E402

#: The codec, the state machine and what they use, the transaction machine, target health: no Twisted.
DEFAULT_MODULES = ["uacregistrant/sip/", "uacregistrant/core/", "uacregistrant/net/transaction.py", "uacregistrant/net/targets.py"]


def copy_tree(scratch: Path) -> None:
    """The committed package, bench and tests (HEAD, as git has them)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "uacregistrant", "bench", "tests", "pyproject.toml"],
                             check=True, capture_output=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True, timeout=120)


def compile_modules(scratch: Path, modules: list[str]) -> float:
    """mypyc on C{modules} in the scratch copy; the seconds it took."""
    mypyc = Path(sys.executable).parent / "mypyc"
    started = time.monotonic()
    result = subprocess.run([str(mypyc), *modules], cwd=scratch, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        errors = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if "error" in line]
        raise SystemExit("mypyc failed:\n" + "\n".join(errors[:20]))
    return time.monotonic() - started


def core_cycle(cwd: Path, accounts: int) -> dict[str, Any]:
    """One run of bench/core_cycle.py from C{cwd} (its uacregistrant is the one imported)."""
    result = subprocess.run([sys.executable, "bench/core_cycle.py", "--accounts", str(accounts)], cwd=cwd,
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"core_cycle failed in {cwd}:\n{result.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", action="append", help="a module or package path to compile (repeatable)")
    parser.add_argument("--accounts", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = parser.parse_args()
    if not 1 <= args.accounts <= 1_000_000 or not 1 <= args.runs <= 20:
        parser.error("--accounts 1..1000000, --runs 1..20")
    modules = args.modules or DEFAULT_MODULES
    scratch = Path(tempfile.mkdtemp(prefix="uacreg-mypyc-"))
    try:
        copy_tree(scratch)
        seconds = compile_modules(scratch, modules)
        print(f"compiled {', '.join(modules)} in {seconds:.0f} s ({sys.executable}, Python {sys.version.split()[0]})")
        rows = []
        for run in range(args.runs):
            for build, cwd in (("compiled", scratch), ("pure", ROOT)):
                row = core_cycle(cwd, args.accounts)
                rows.append({"run": run + 1, "build": build, "us_per_registration": row["us_per_registration"],
                             "rss_bytes_per_registered_account": row["rss_bytes_per_registered_account"]})
        report(rows)
        medians = {build: {key: statistics.median(r[key] for r in rows if r["build"] == build)
                           for key in ("us_per_registration", "rss_bytes_per_registered_account")}
                   for build in ("compiled", "pure")}
        ratio = medians["compiled"]["us_per_registration"] / medians["pure"]["us_per_registration"]
        print(f"medians: {json.dumps(medians)}; compiled/pure CPU per registration x{ratio:.2f}")
    finally:
        if args.keep:
            print(f"scratch copy kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
