"""
contrib/systemd and contrib/logrotate: the units are what the daemon
does (Type=notify with a watchdog, reload = SIGHUP, the hardening the
issue asks for), their ExecStart parses as the plugin's options, and
systemd itself accepts them where systemd-analyze exists.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.app.tap import Options

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
UNITS = [CONTRIB / "systemd" / "uacregistrant.service", CONTRIB / "systemd" / "uacregistrant@.service"]


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


class UnitTests(SynchronousTestCase):
    def test_notify_watchdog_reload_hardening(self) -> None:
        """Type=notify, a watchdog, reload by SIGHUP, a service user and the hardening options."""
        for path in UNITS:
            service = unit(path)["Service"]
            self.assertEqual(service["Type"], "notify", path.name)
            self.assertEqual(service["ExecReload"], "/bin/kill -HUP $MAINPID", path.name)
            self.assertTrue(service["WatchdogSec"].isdigit(), path.name)
            self.assertEqual(service["User"], "uacregistrant", path.name)
            self.assertEqual(service["ProtectSystem"], "strict", path.name)
            self.assertEqual(service["RuntimeDirectory"], "uacregistrant", path.name)
            self.assertEqual(service["NoNewPrivileges"], "yes", path.name)
        self.assertEqual(unit(UNITS[0])["Service"]["StateDirectory"], "uacregistrant")

    def test_exec_start_is_the_plugin(self) -> None:
        """ExecStart's plugin arguments parse as the plugin's options."""
        for path in UNITS:
            words = shlex.split(unit(path)["Service"]["ExecStart"])
            self.assertTrue(words[0].endswith("/twistd"))
            self.assertIn("--nodaemon", words)
            plugin = words[words.index("uacregistrant") + 1 :]
            self.assertEqual(plugin[0], "--config")
            # The unit's own arguments, its config file standing in for the operator's.
            config = Path(self.mktemp())
            config.write_text('db_url = "sqlite:/var/lib/uacregistrant/registrant.db"\nlog_format = "json"\n')
            options = Options()
            options.parseOptions([str(config) if word.startswith("/etc/") else word for word in plugin])
            self.assertEqual(options.settings.log_format, "json")

    def test_systemd_accepts_them(self) -> None:
        """systemd-analyze verify finds nothing but the absent binary."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise self.skipTest("systemd-analyze is not installed")  # type: ignore[misc]
        directory = Path(self.mktemp())
        directory.mkdir()
        for path in UNITS:
            name = path.name.replace("@.", "@1.")
            (directory / name).write_text(path.read_text())
            result = subprocess.run([analyze, "verify", "--man=no", str(directory / name)], capture_output=True, text=True, timeout=60)
            problems = [line for line in (result.stdout + result.stderr).splitlines() if "is not executable" not in line and line.strip()]
            self.assertEqual(problems, [], name)


class LogrotateTests(SynchronousTestCase):
    def test_reopen_by_sighup(self) -> None:
        """logrotate creates the file for the service user and sends SIGHUP; copytruncate is the documented alternative."""
        text = (CONTRIB / "logrotate" / "uacregistrant").read_text()
        self.assertIn("create 0640 uacregistrant", text)
        self.assertIn("--signal=HUP", text)
        self.assertIn("copytruncate", text)  # the alternative, documented
