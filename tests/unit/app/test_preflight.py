"""Tests for L{uacregistrant.app.preflight}: refusals before anything is created."""

import os
import socket

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.app.preflight import check_udp, preflight
from uacregistrant.app.settings import ConfigError, build_settings
from uacregistrant.core.socketspec import SocketSpec
from uacregistrant.store.sqlite import SqliteStore


class PreflightTests(SynchronousTestCase):
    def test_udp_in_use_or_foreign(self) -> None:
        """A port in use and an address not of this host are refused with one line each."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
            busy.bind(("127.0.0.1", 0))
            with self.assertRaises(ConfigError) as caught:
                check_udp(SocketSpec("127.0.0.1", busy.getsockname()[1]))
            self.assertIn("in use", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            check_udp(SocketSpec("192.0.2.1", 5060))
        self.assertIn("not an address of this host", str(caught.exception))
        check_udp(SocketSpec("127.0.0.1", 0))

    def test_nothing_created(self) -> None:
        """A control socket in a missing directory is refused before the table or any socket exists."""
        directory = self.mktemp()
        os.mkdir(directory)
        db = os.path.join(directory, "r.db")
        settings = build_settings({"db_url": f"sqlite:{db}", "listen": ["udp:127.0.0.1:0"],
                                   "control": [f"unix:{directory}/missing/ctl"]})
        with self.assertRaises(ConfigError) as caught:
            preflight(settings, SqliteStore(db, settings.table, Clock()))
        self.assertIn("does not exist", str(caught.exception))
        self.assertEqual(os.listdir(directory), [])
