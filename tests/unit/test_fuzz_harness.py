"""The atheris harness in fuzz/ stays runnable (a short run, bounded in count)."""

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

HARNESS = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_datagram.py"


class FuzzHarnessTests(SynchronousTestCase):
    def test_short_run(self) -> None:
        """3000 coverage-guided inputs through the datagram entry point: no finding."""
        try:
            import atheris  # noqa: F401
        except ImportError:
            raise SkipTest("atheris is not installed (pip install atheris)")
        result = subprocess.run([sys.executable, str(HARNESS), "-runs=3000", "-seed=1"], capture_output=True, timeout=120)
        output = result.stderr.decode(errors="replace")
        self.assertEqual(result.returncode, 0, output[-3000:])
        self.assertIn("Done 3000 runs", output)
