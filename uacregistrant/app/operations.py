# -*- test-case-name: tests.unit.app.test_operations,tests.integration.test_operations -*-
"""
The daemon as the operating system and the operator's tools see it:
systemd's notifications, signals, the log, and a warning when run as root.

Signals (installed when the daemon runs, by the plugin or a .tac file):
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

_log = Logger(namespace=__name__)


class OperationsService(MultiService):
    """
    systemd, signals and the log file of one daemon.

    @param reload: re-reads the table (SIGHUP).
    @param status: the one-line status systemd shows.
    @param call_from_thread: the reactor's, when this is the running
        daemon: the signal handlers hand their work to it (none are
        installed without it, nor is root warned about).
    @param uid: the process's user id once started (twistd's C{-u} has
        taken effect by then).
    """

    def __init__(
        self,
        clock: IReactorTime,
        reload: Callable[[], defer.Deferred[Any]],
        status: Callable[[], str],
        log: DaemonLog | None = None,
        notifier: SystemdNotifier | None = None,
        call_from_thread: Callable[..., Any] | None = None,
        environ: Mapping[str, str] | None = None,
        uid: Callable[[], int] = os.getuid,
    ) -> None:
        super().__init__()
        self._reload = reload
        self._uid = uid
        self.log = log
        self._call_from_thread = call_from_thread
        self.systemd = SystemdService(notifier or SystemdNotifier(environ), clock, status, watchdog_interval(environ))
        self.systemd.setServiceParent(self)

    def startService(self) -> None:
        """Say which version starts, warn about root, install the signal handlers, start telling systemd."""
        super().startService()
        _log.info("uacregistrant {version} starting (Python {python})", version=__version__, python=platform.python_version())
        if self._call_from_thread is not None:
            # twistd starts the services after -u/-g took effect: still root means no -u.
            if self._uid() == 0:
                _log.warn("running as root: give twistd -u USER -g GROUP (or systemd's User=) to drop privileges once the sockets are bound")
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
            except Exception as e:  # the old file stays: log there, and re-read the table all the same
                _log.error("SIGHUP: cannot reopen the log file (still writing to the old one): {error}", error=_reason(e))
            else:
                _log.info("SIGHUP: log file reopened")
        _log.info("SIGHUP: re-reading the table")
        try:
            d = self._reload()
        except Exception as e:
            _log.error("SIGHUP: re-reading the table failed: {error}", error=_reason(e))
            return defer.succeed(None)

        def failed(reason: Any) -> None:
            _log.warn("SIGHUP: re-reading the table failed: {error}", error=reason.getErrorMessage())

        return d.addErrback(failed)

    def rotate_log(self) -> None:
        """SIGUSR1: rotate the log file."""
        if self.log is not None:
            try:
                self.log.rotate()
            except Exception as e:
                _log.error("SIGUSR1: cannot rotate the log file (still writing to it): {error}", error=_reason(e))


def _reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__
