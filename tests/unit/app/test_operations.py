"""
app.operations: SIGHUP re-reads the table and reopens the log (a failing
reload is a warning, never a crash), SIGUSR1 rotates, handlers only under
twistd, and a warning when running as root without -u.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.app.logs import DaemonLog
from uacregistrant.app.operations import OperationsService
from uacregistrant.app.systemd import SystemdNotifier


class FakeLog(DaemonLog):
    """Records reopen and rotate; C{broken} makes them fail."""

    def __init__(self) -> None:
        super().__init__(lambda event: None, None)
        self.calls: list[str] = []
        self.broken: Exception | None = None

    def reopen(self) -> None:
        self.calls.append("reopen")
        if self.broken is not None:
            raise self.broken

    def rotate(self) -> None:
        self.calls.append("rotate")


class OperationsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.reloads: list[defer.Deferred[Any]] = []
        self.log = FakeLog()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def reload(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.reloads.append(d)
        return d

    def service(self, call_from_thread: Any = None, uid: int = 1000) -> OperationsService:
        return OperationsService(self.clock, self.reload, lambda: "", log=self.log, notifier=SystemdNotifier({}),
                                 call_from_thread=call_from_thread, environ={}, uid=lambda: uid)

    def messages(self) -> list[str]:
        return [str(e.get("log_format", "")) for e in self.events]

    def test_hangup_reopens_then_reloads(self) -> None:
        """SIGHUP reopens the log, then re-reads the table."""
        service = self.service()
        d = service.hangup()
        self.assertEqual(self.log.calls, ["reopen"])
        self.assertEqual(len(self.reloads), 1)
        self.reloads[0].callback({"added": 1})
        self.successResultOf(d)

    def test_failed_reload_is_a_warning(self) -> None:
        """A re-read that fails is a warning; the handler's Deferred does not fail."""
        service = self.service()
        d = service.hangup()
        self.reloads[0].errback(RuntimeError("database away"))
        self.successResultOf(d)
        self.assertIn("SIGHUP: re-reading the table failed: {error}", self.messages())

    def test_failed_reopen_still_reloads(self) -> None:
        """Whatever the reopen raises, it is logged and the table is re-read all the same."""
        service = self.service()
        for broken in (FileNotFoundError(2, "No such file or directory"), AttributeError("_file")):
            self.log.broken = broken
            service.hangup()
        self.assertEqual(len(self.reloads), 2)
        self.assertEqual(self.messages().count("SIGHUP: cannot reopen the log file (still writing to the old one): {error}"), 2)

    def test_rotate(self) -> None:
        """SIGUSR1 rotates the log."""
        self.service().rotate_log()
        self.assertEqual(self.log.calls, ["rotate"])

    def test_signals_only_under_twistd(self) -> None:
        """Handlers are installed only for the running daemon; the signals then reach the reactor's thread."""
        before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
        for s, handler in before.items():
            self.addCleanup(signal.signal, s, handler)
        calls: list[Any] = []
        service = self.service()
        service.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before[signal.SIGHUP])
        service.stopService()
        service = self.service(call_from_thread=lambda f, *a: calls.append(f))
        service.startService()
        self.addCleanup(service.stopService)
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertEqual(calls, [service.hangup, service.rotate_log])

    def test_root_warning(self) -> None:
        """Still root once started (no -u): warned about; another user (-u took effect): not."""
        before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
        for s, handler in before.items():
            self.addCleanup(signal.signal, s, handler)
        for uid, warned in ((0, True), (1000, False)):
            self.events.clear()
            service = self.service(call_from_thread=lambda f, *a: None, uid=uid)
            service.startService()
            service.stopService()
            self.assertEqual(any(m.startswith("running as root") for m in self.messages()), warned, uid)
