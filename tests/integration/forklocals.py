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


#: How the library is compiled (part of its name: other flags, another build).
FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Werror")


def _private_directory() -> Path:
    """This user's build directory in the temporary directory: made 0700, refused if anyone else could write into it."""
    directory = Path(tempfile.gettempdir()) / f"uacreg-kamailio-fork-locals-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    found = directory.lstat()
    if not directory.is_dir() or directory.is_symlink() or found.st_uid != os.getuid() or found.st_mode & 0o022:
        raise AssertionError(f"{directory} is not a private directory of this user: the at-fork fix is not built there")
    return directory


def is_preloaded(pid: int, library: str) -> bool:
    """Whether process C{pid} mapped C{library} (C{/proc/PID/maps}): a preload the loader refused (noexec) is only a warning."""
    real = os.path.realpath(library)
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any(line.rstrip().endswith(real) for line in maps)
    except OSError:
        return False


def fork_locals_library() -> Path:
    """
    The shared library, compiled on first use into this user's private
    directory under the temporary directory (named by the hash of the
    source and the flags, so an edit builds a new one).

    @raise LookupError: no C compiler (C{cc} or C{gcc}) on C{PATH}.
    @raise subprocess.CalledProcessError: the compiler failed.
    """
    source = SOURCE.read_bytes()
    directory = _private_directory()
    target = directory / f"fork-locals-{hashlib.sha256(source + repr(FLAGS).encode()).hexdigest()[:16]}.so"
    if target.exists():
        if target.stat().st_uid != os.getuid():
            raise AssertionError(f"{target} belongs to another user: not preloaded")
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise LookupError("no C compiler (cc or gcc) to build the at-fork fix Kamailio 5.6's TLS needs: install the Debian package gcc")
    fd, partial = tempfile.mkstemp(prefix=target.name + ".", dir=directory)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE)],
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
