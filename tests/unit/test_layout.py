"""The package's housekeeping: test-case-name markers name test modules that exist; module loggers carry their modules' names."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parents[2] / "uacregistrant"
MARKER = re.compile(r"^# -\*- test-case-name: (.+) -\*-$")


class MarkerTests(SynchronousTestCase):
    def test_markers_name_existing_test_modules(self) -> None:
        """C{trial --testmodule} (and editors) find the tests each marker names."""
        missing = []
        for path in sorted(PACKAGE.rglob("*.py")):
            first = path.read_text(encoding="utf-8").split("\n", 1)[0]
            match = MARKER.match(first)
            if match is None:
                continue
            for name in match.group(1).split(","):
                if importlib.util.find_spec(name.strip()) is None:
                    missing.append(f"{path.relative_to(PACKAGE.parent)}: {name}")
        self.assertEqual(missing, [])

    def test_modules_with_code_have_markers(self) -> None:
        """Every module of more than a docstring says where its tests are."""
        unmarked = [
            str(path.relative_to(PACKAGE.parent))
            for path in sorted(PACKAGE.rglob("*.py"))
            if path.stat().st_size > 1024 and not MARKER.match(path.read_text(encoding="utf-8").split("\n", 1)[0])
        ]
        self.assertEqual(unmarked, [])


class LoggerNamespaceTests(SynchronousTestCase):
    def test_module_loggers_are_named_after_their_modules(self) -> None:
        """
        Each module's C{_log} logs under the module's name, compiled or not: a
        bare C{Logger()} takes its name from the calling frame, which in a
        module compiled by mypyc is importlib's (the log said
        C{importlib._bootstrap}).
        """
        wrong = {}
        for path in sorted(PACKAGE.rglob("*.py")):
            if "_log = Logger(" not in path.read_text(encoding="utf-8"):
                continue
            name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
            namespace = importlib.import_module(name)._log.namespace
            if namespace != name:
                wrong[name] = namespace
        self.assertEqual(wrong, {})
