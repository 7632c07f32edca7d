"""
Secrets out of argv and out of sight: the database URL from the
environment, config files holding a password, the control token file,
--version, and the stores' C{connected}.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.usage import UsageError
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant import __version__
from uacregistrant.app import tap
from uacregistrant.app.preflight import preflight
from uacregistrant.app.settings import ConfigError, build_settings, environment_values, load_toml, url_has_password
from uacregistrant.app.tap import Options
from uacregistrant.store import TableLayout
from uacregistrant.store.postgres import PostgresStore
from uacregistrant.store.sqlite import SqliteStore

TOKEN = "0123456789abcdef-token"


class DatabaseUrlTests(SynchronousTestCase):
    """The password stays out of argv: PGPASSFILE, UACREG_DB_URL, or a config file others cannot read."""

    def config(self, text: str, mode: int) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_url_has_password(self) -> None:
        """USER:PASSWORD@ and ?password= are passwords; a user alone, a host and port, SQLite are not."""
        for url in ("postgres://u:pw@h/db", "postgresql://u:pw@[::1]:5432/db", "postgres://u@h/db?password=pw", "postgres://u:pw@[bad/db"):
            self.assertTrue(url_has_password(url), url)
        for url in ("postgres://u@h:5432/db", "postgres:///db?host=/run/postgresql&user=u", "sqlite:/var/lib/x.db", "postgres://h:5432/db"):
            self.assertFalse(url_has_password(url), url)

    def test_world_readable_config_with_password_refused(self) -> None:
        """A config file every user may read is refused (one line, naming it and chmod) when its db_url holds a password."""
        for url in ("postgres://u:s3cret@h/db", "postgres://u@h/db?password=s3cret"):
            path = self.config(f'db_url = "{url}"\n', 0o644)
            with self.assertRaises(ConfigError) as caught:
                load_toml(path)
            message = str(caught.exception)
            self.assertIn(path, message)
            self.assertIn(f"chmod o-r {path}", message)
            self.assertNotIn("s3cret", message)
            self.assertNotIn("\n", message)

    def test_private_config_or_no_password_accepted(self) -> None:
        """Mode 0640 with a password, or 0644 without one, is read."""
        self.assertEqual(load_toml(self.config('DB_URL = "postgres://u:s3cret@h/db"\n', 0o640))["db_url"], "postgres://u:s3cret@h/db")
        self.assertEqual(load_toml(self.config('db_url = "postgres://u@h/db"\n', 0o644))["db_url"], "postgres://u@h/db")

    def test_environment(self) -> None:
        """UACREG_DB_URL gives db_url; an empty one is ignored; nothing else is read from the environment."""
        self.assertEqual(environment_values({"UACREG_DB_URL": "postgres://u@h/db", "PGPASSWORD": "x"}), {"db_url": "postgres://u@h/db"})
        self.assertEqual(environment_values({"UACREG_DB_URL": ""}), {})

    def test_precedence(self) -> None:
        """Command line, then UACREG_DB_URL, then the config file, then the default."""
        path = self.config('db_url = "postgres://file@h/db"\n', 0o600)
        env = {"UACREG_DB_URL": "postgres://env@h/db"}
        options = Options()
        options.parseOptions(["--config", path, "--db-url", "postgres://cli@h/db"])
        self.assertEqual(options.merged(env)["db_url"], "postgres://cli@h/db")
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.merged(env)["db_url"], "postgres://env@h/db")
        self.assertEqual(options.merged({})["db_url"], "postgres://file@h/db")
        options = Options()
        options.parseOptions([])
        self.assertNotIn("db_url", options.merged({}))

    def test_environment_reaches_the_settings(self) -> None:
        """Parsing the options reads the process's environment."""
        self.patch(tap.os, "environ", {"UACREG_DB_URL": "postgres://env@h/db"})
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.settings.db_url, "postgres://env@h/db")

    def test_password_in_argv_warned(self) -> None:
        """A password in --db-url is logged as visible in ps (without the password); none in the environment is not."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.patch(tap.os, "environ", {"UACREG_DB_URL": "postgres://u:env-pw@h/db"})
        Options().parseOptions([])
        self.assertEqual(len(events), 0)
        Options().parseOptions(["--db-url", "postgres://u:argv-pw@h/db"])
        self.assertEqual(len(events), 1)
        text = formatEvent(events[0])
        self.assertIn("every local user sees it in ps", text)
        self.assertNotIn("argv-pw", text + repr(events[0]))

    def test_help_documents_the_secrets(self) -> None:
        """--help names the environment, the password files, the token file, owner/group and --version."""
        text = " ".join(str(Options()).split())
        for words in ("UACREG_DB_URL", "PGPASSFILE", "~/.pgpass", "Precedence: this option, then $UACREG_DB_URL, then db_url in --config",
                      "--control-token-file", "auth TOKEN", "owner=USER", "group=GROUP", "--version", "mode 0600"):
            self.assertIn(words, text)


class ControlTokenSettingTests(SynchronousTestCase):
    """A TCP console needs --control-token-file; the file is checked before the start."""

    def token_file(self, mode: int, text: str = TOKEN + "\n") -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_tcp_control_needs_a_token_file(self) -> None:
        """tcp: without a token file is a usage error saying to add --control-token-file; UNIX sockets need none."""
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--control", "tcp:5028"])
        message = str(caught.exception)
        self.assertIn("control endpoint tcp:5028 needs --control-token-file FILE", message)
        self.assertNotIn("\n", message)
        options = Options()
        options.parseOptions(["--control", "tcp:5028", "--control-token-file", "/etc/uacregistrant/token"])
        self.assertEqual(options.settings.control_token_file, "/etc/uacregistrant/token")
        self.assertEqual(build_settings({"control": ["unix:/run/x.ctl"]}).control_token_file, "")

    def test_unknown_owner_is_a_usage_error(self) -> None:
        """An unknown user or group in a UNIX endpoint is refused when the options are parsed."""
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--control", "unix:/run/x.ctl:mode=660:group=no-such-group-uacreg"])
        self.assertIn("no group named 'no-such-group-uacreg'", str(caught.exception))

    def preflight_refusal(self, path: str) -> str:
        directory = self.mktemp()
        os.mkdir(directory)
        db = os.path.join(directory, "r.db")
        settings = build_settings(
            {"db_url": f"sqlite:{db}", "listen": ["udp:127.0.0.1:0"], "control": ["tcp:0"], "control_token_file": path}
        )
        with self.assertRaises(ConfigError) as caught:
            preflight(settings, SqliteStore(db, settings.table, Clock()))
        self.assertEqual(os.listdir(directory), [])
        return str(caught.exception)

    def test_preflight_checks_the_token_file(self) -> None:
        """Readable by others, missing or too short: the start is refused, naming the file (never the token)."""
        loose = self.token_file(0o644)
        message = self.preflight_refusal(loose)
        self.assertIn(f"chmod 600 {loose}", message)
        self.assertNotIn(TOKEN, message)
        missing = self.mktemp()
        self.assertIn(missing, self.preflight_refusal(missing))
        self.assertIn("16 to", self.preflight_refusal(self.token_file(0o600, "too-short\n")))

    def test_preflight_accepts_a_private_token_file(self) -> None:
        """Mode 0600 with a long enough token: the checks pass."""
        directory = self.mktemp()
        os.mkdir(directory)
        db = os.path.join(directory, "r.db")
        settings = build_settings(
            {"db_url": f"sqlite:{db}", "listen": ["udp:127.0.0.1:0"], "control": ["tcp:0"], "control_token_file": self.token_file(0o600)}
        )
        preflight(settings, SqliteStore(db, settings.table, Clock()))


class VersionTests(SynchronousTestCase):
    """twistd uacregistrant --version prints the package's version and exits 0."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.patch(sys, "stdout", self.stdout)

    def test_options(self) -> None:
        """The plugin's options."""
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(self.stdout.getvalue(), f"uacregistrant {__version__}\n")

    def test_through_twistd(self) -> None:
        """Through twistd's own option parser and the plugin (not twistd's version)."""
        with self.assertRaises(SystemExit) as caught:
            ServerOptions().parseOptions(["uacregistrant", "--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(self.stdout.getvalue(), f"uacregistrant {__version__}\n")


class ConnectedTests(SynchronousTestCase):
    """The stores' connected property (for uacregistrant_db_up)."""

    def test_sqlite_always(self) -> None:
        """An SQLite file has no connection to lose."""
        self.assertIs(SqliteStore(self.mktemp(), TableLayout(), Clock()).connected, True)

    def test_postgres_not_before_start_nor_after_close(self) -> None:
        """PostgreSQL: not connected before starting, nor once closed (the live cases: tests.integration.test_least_privilege)."""
        store = PostgresStore("postgres://u@127.0.0.1:1/db", TableLayout(), Clock())
        self.assertIs(store.connected, False)
        store.close()
        self.assertIs(store.connected, False)
