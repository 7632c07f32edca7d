"""The README's quick start: the demo brings every account to REGISTERED."""

import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from .helpers import PATIENCE, environment


class DemoTests(TestCase):
    timeout = 150

    def test_demo_registers_everything(self) -> None:
        """uacregistrant-demo exits 0 after showing every account REGISTERED."""
        directory = Path(tempfile.mkdtemp(prefix="uacreg-demo-"))
        self.addCleanup(shutil.rmtree, directory, True)
        result = subprocess.run(
            [sys.executable, "-m", "uacregistrant.app.demo", "--directory", str(directory), "--timeout", str(int(PATIENCE))],
            capture_output=True, env=environment(), timeout=2 * PATIENCE,
        )
        out = result.stdout.decode()
        self.assertEqual(result.returncode, 0, out + result.stderr.decode())
        self.assertIn("all 6 accounts REGISTERED", out)
        self.assertIn("AUTHENTICATING_STATE   -> REGISTERED_STATE", out)
        self.assertIn("expires: 1800", out)  # erin got 423 with Min-Expires 1800
