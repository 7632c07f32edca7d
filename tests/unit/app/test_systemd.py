"""
app.systemd: sd_notify's datagrams to a real UNIX socket (a temporary
one, as systemd's), the watchdog from the reactor's clock, READY=1 once
the table is loaded, STOPPING=1.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.app.systemd import SystemdNotifier, SystemdService, watchdog_interval


def short_path() -> str:
    """An absolute path for a UNIX socket (short: their paths are limited to 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="uacreg-sd-")
    return os.path.join(directory, "notify")


class NotifySocket:
    """A datagram socket standing where systemd's would, read without blocking."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(path)
        self.socket.setblocking(False)

    def messages(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def close(self) -> None:
        self.socket.close()
        shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)


class NotifierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.listener = NotifySocket(short_path())
        self.addCleanup(self.listener.close)

    def test_sends_lines_one_line_per_value(self) -> None:
        """KEY=VALUE lines in one datagram; a value's line breaks become spaces (no injected keys)."""
        notifier = SystemdNotifier({"NOTIFY_SOCKET": self.listener.path})
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.enabled)
        self.assertTrue(notifier.notify(ready="1", status="12 records\r\nSTOPPING=1"))
        self.assertEqual(self.listener.messages(), [{"READY": "1", "STATUS": "12 records STOPPING=1"}])

    def test_abstract_socket(self) -> None:
        """@name is the abstract namespace."""
        name = f"uacreg-test-{os.getpid()}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(listener.close)
        listener.bind("\0" + name)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.notify(watchdog="1"))
        self.assertEqual(listener.recv(100), b"WATCHDOG=1")

    def test_without_systemd_nothing(self) -> None:
        """No NOTIFY_SOCKET (or a relative one): nothing is sent."""
        for environ in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}):
            notifier = SystemdNotifier(environ)
            self.assertFalse(notifier.enabled)
            self.assertFalse(notifier.notify(ready="1"))

    def test_gone_socket_is_logged_once(self) -> None:
        """A socket that is gone fails quietly, logged once."""
        notifier = SystemdNotifier({"NOTIFY_SOCKET": short_path()})
        self.addCleanup(notifier.close)
        self.assertFalse(notifier.notify(ready="1"))
        self.assertFalse(notifier.notify(ready="1"))

    def test_watchdog_interval(self) -> None:
        """Half of WATCHDOG_USEC, for this process only; ASCII digits only."""
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "20000000"}, pid=7), 10.0)
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "7"}, pid=7), 10.0)
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "8"}, pid=7))
        for usec in ("", "0", "-5", "1e6", "٣"):
            self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": usec}, pid=7), usec)


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.listener = NotifySocket(short_path())
        self.addCleanup(self.listener.close)
        self.clock = Clock()
        self.notifier = SystemdNotifier({"NOTIFY_SOCKET": self.listener.path})
        self.count = 0
        self.service = SystemdService(self.notifier, self.clock, lambda: f"{self.count} records", watchdog=5.0)

    def test_ready_after_load_status_watchdog_stopping(self) -> None:
        """Pings from the start, READY=1 once after the load, STATUS every 10 s, STOPPING=1; nothing after the stop."""
        self.service.startService()
        self.assertEqual(self.listener.messages(), [{"WATCHDOG": "1"}, {"STATUS": "loading the table"}])
        self.clock.advance(5)
        self.assertEqual(self.listener.messages(), [{"WATCHDOG": "1"}])
        self.count = 3
        self.service.loaded()
        self.service.loaded()  # once only
        self.assertEqual(self.listener.messages(), [{"READY": "1", "STATUS": "3 records"}])
        self.count = 4
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(self.listener.messages(), [{"WATCHDOG": "1"}, {"STATUS": "4 records"}, {"WATCHDOG": "1"}])
        self.service.stopping()
        self.assertEqual(self.listener.messages(), [{"STOPPING": "1", "STATUS": "stopping: un-registering"}])
        self.service.stopService()
        self.clock.advance(60)
        self.assertEqual(self.listener.messages(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_watchdog_no_pings(self) -> None:
        """Without WatchdogSec no pings."""
        service = SystemdService(self.notifier, self.clock, lambda: "", watchdog=None)
        service.startService()
        self.clock.advance(100)
        self.assertEqual(self.listener.messages(), [{"STATUS": "loading the table"}])
        service.stopService()
