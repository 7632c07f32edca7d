# -*- test-case-name: tests.unit.app.test_operations,tests.integration.test_operations -*-
"""
The daemon as the operating system and the operator's tools see it:
systemd's notifications, signals, the log, and a warning when run as root.

Signals (installed only when the daemon runs under twistd):
  - SIGTERM, SIGINT: stop (un-registering, or handing over in a cluster).
  - SIGHUP: re-read the table (as C{reg_reload}) and reopen the log file.
  - SIGUSR1: rotate the log file as twistd does (C{FILE.1}, ...).
"""

from __future__ import annotations

import os
import platform
import signal
from typing import Any, Callable, Mapping

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from uacregistrant import __version__
from uacregistrant.app.logs import DaemonLog, on_signal
from uacregistrant.app.systemd import SystemdNotifier, SystemdService, watchdog_interval

_log = Logger()


class OperationsService(MultiService):
    """
    systemd, signals and the log file of one daemon.

    @param reload: re-reads the table (SIGHUP).
    @param status: the one-line status systemd shows.
    @param twistd: twistd's options (empty when not run by twistd: no
        signal handlers then, and no root warning).
    """

    def __init__(
        self,
        clock: IReactorTime,
        reload: Callable[[], defer.Deferred[Any]],
        status: Callable[[], str],
        twistd: Mapping[str, Any],
        log: DaemonLog | None = None,
        notifier: SystemdNotifier | None = None,
        call_from_thread: Callable[..., Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._reload = reload
        self._twistd = twistd
        self.log = log
        self._call_from_thread = call_from_thread
        self.systemd = SystemdService(notifier or SystemdNotifier(environ), clock, status, watchdog_interval(environ))
        self.systemd.setServiceParent(self)

    def startService(self) -> None:
        """Say which version starts, warn about root, install the signal handlers, start telling systemd."""
        super().startService()
        _log.info("uacregistrant {version} starting (Python {python})", version=__version__, python=platform.python_version())
        if self._twistd:
            if os.getuid() == 0 and self._twistd.get("uid") is None:
                _log.warn("running as root: give twistd -u USER -g GROUP (or systemd's User=) to drop privileges once the sockets are bound")
            if self._call_from_thread is not None:
                on_signal(signal.SIGHUP, self.hangup, self._call_from_thread)
                on_signal(signal.SIGUSR1, self.rotate_log, self._call_from_thread)

    def loaded(self) -> None:
        """The first table load is done."""
        self.systemd.loaded()

    def stopping(self) -> None:
        """Stopping has begun."""
        self.systemd.stopping()

    def hangup(self) -> defer.Deferred[Any]:
        """SIGHUP: reopen the log file, then re-read the table."""
        if self.log is not None:
            try:
                self.log.reopen()
            except OSError as e:
                _log.error("SIGHUP: cannot reopen the log file: {error}", error=e.strerror or str(e))
        _log.info("SIGHUP: log file reopened; re-reading the table")
        d = self._reload()

        def failed(reason: Any) -> None:
            _log.warn("SIGHUP: re-reading the table failed: {error}", error=reason.getErrorMessage())

        return d.addErrback(failed)

    def rotate_log(self) -> None:
        """SIGUSR1: rotate the log file."""
        if self.log is not None:
            try:
                self.log.rotate()
            except OSError as e:
                _log.error("SIGUSR1: cannot rotate the log file: {error}", error=e.strerror or str(e))
