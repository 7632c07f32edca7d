"""
Builds uacregistrant (the metadata is in setup.cfg).

The modules on the hot path (the SIP codec, the registrant state machine
and the rest of core/, the client transaction machine, target health, and
the registration client) are compiled with mypyc, which ships with mypy (a build
requirement in pyproject.toml): about a third less CPU per registration
(docs/PERFORMANCE.md, issue 14).  UACREG_PURE_PYTHON=1 builds pure Python.
Without a C compiler, the Python headers or mypyc, or when compiling
fails, the build is pure Python: `pip install .` works everywhere.

The project's own tests run against the source tree, so CI compiles in
place for its compiled run (and a development install should be pure:
`UACREG_PURE_PYTHON=1 pip install -e .`, or the .so files shadow edits):

    python setup.py build_ext --inplace   # .so files beside the .py files
    python setup.py clean_compiled        # back to pure Python
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys
import sysconfig
from typing import Any

from setuptools import Command, setup
from setuptools.command.build_ext import build_ext

#: What mypyc compiles: no Twisted, no zope, no I/O (import-linter keeps it so).
CORE = sorted(
    glob.glob("uacregistrant/sip/*.py")
    + glob.glob("uacregistrant/core/*.py")
    + ["uacregistrant/net/transaction.py", "uacregistrant/net/targets.py"]
)
#: Compiled too when Twisted's types are there to compile it against (a
#: build requirement): the registration client, the glue around every
#: request and response (about a tenth less CPU per registration).  Its
#: imports (Twisted, the transports) stay interpreted.
GLUE = ["uacregistrant/agent/client.py"]


def compile_reason() -> str | None:
    """Why the build stays pure Python, or C{None} to compile."""
    if os.environ.get("UACREG_PURE_PYTHON") == "1":
        return "UACREG_PURE_PYTHON=1"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no Python headers (Python.h)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (pip install mypy)"
    return None


def extensions() -> list[Any]:
    """The mypyc extensions, or none (pure Python)."""
    if "clean_compiled" in sys.argv[1:]:
        return []  # nothing to build: do not run mypyc for it
    reason = compile_reason()
    if reason is not None:
        print(f"uacregistrant: pure Python build ({reason})", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    # The modules are type-checked (strict) by the project's own mypy run;
    # here mypy only gives mypyc their types, without the zope plugin.
    # mypyc checks and generates the C here, while setup.py loads: a newer
    # mypy that finds fault (it exits) must not fail the install either.
    compiled = CORE
    if importlib.util.find_spec("twisted") is not None:
        compiled = CORE + GLUE
    else:
        print("uacregistrant: Twisted is not in the build environment: the client stays interpreted", file=sys.stderr)
    # The interpreted modules the client imports are read for their types
    # only (silently: zope's interfaces need a plugin this build does not load).
    try:
        return list(mypycify(["--config-file", os.devnull, "--follow-imports=silent", *compiled], opt_level="3", debug_level="0"))
    except BaseException as e:  # SystemExit from mypyc included
        print(f"uacregistrant: mypyc failed ({type(e).__name__}: {e}); pure Python build", file=sys.stderr)
        return []


class OptionalBuildExt(build_ext):
    """Compile the extensions; if that fails, say why and build pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # a compiler error, a missing header: the package still works as Python
            print(f"uacregistrant: compiling failed ({e}); pure Python build", file=sys.stderr)
            self.extensions = []
            clean_compiled()


def clean_compiled() -> None:
    """Remove extension modules built in place (the source tree is pure Python again)."""
    for path in glob.glob("uacregistrant/**/*.so", recursive=True) + glob.glob("*__mypyc*.so"):
        os.remove(path)


class CleanCompiled(Command):
    """setup.py clean_compiled: remove the extension modules built in place."""

    description = "remove the mypyc extension modules built in place"
    user_options: list[Any] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        clean_compiled()


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt, "clean_compiled": CleanCompiled})
