"""
The at-fork fix for Kamailio 5.6's TLS workers (C{kamailio_fork_locals.c}):
built once per source version with the machine's C compiler, then preloaded
into each Kamailio that listens on TLS.

Without it, Debian 12's Kamailio corrupts its shared memory under
concurrent TLS connections and shuts down (kamailio/kamailio#3791); the
TLS tests then fail on the registrar's crash, not on the daemon.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("kamailio_fork_locals.c")


def fork_locals_library() -> Path:
    """
    The shared library, compiled into the temporary directory on first use
    (named by the source's hash, so an edit builds a new one).

    @raise LookupError: no C compiler (C{cc} or C{gcc}) on C{PATH}.
    @raise subprocess.CalledProcessError: the compiler failed.
    """
    source = SOURCE.read_bytes()
    target = Path(tempfile.gettempdir()) / f"uacreg-kamailio-fork-locals-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise LookupError("no C compiler (cc or gcc) to build the at-fork fix Kamailio 5.6's TLS needs: install the Debian package gcc")
    fd, partial = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", partial, str(SOURCE)],
                       check=True, capture_output=True, timeout=120)
        os.replace(partial, target)  # atomic: a concurrent build finds a whole library or none
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def preload_environment(environment: dict[str, str] | None = None) -> dict[str, str]:
    """C{environment} (default: this process's) with the library added to C{LD_PRELOAD}."""
    result = dict(os.environ if environment is None else environment)
    library = str(fork_locals_library())
    result["LD_PRELOAD"] = f"{library} {result['LD_PRELOAD']}" if result.get("LD_PRELOAD") else library
    return result
