# -*- test-case-name: tests.unit.app.test_systemd -*-
"""
systemd's notification protocol (sd_notify(3)) without libsystemd: a
datagram of C{KEY=VALUE} lines to the UNIX socket named by
C{$NOTIFY_SOCKET} (C{@name}: the abstract namespace).

L{SystemdService} tells systemd C{READY=1} once the first table load is
done, a C{STATUS=} line with the counts now and then, C{STOPPING=1} when
stopping, and pings C{WATCHDOG=1} at half of C{$WATCHDOG_USEC} from the
reactor: a stalled reactor stops the pings, and systemd restarts it.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

_log = Logger(namespace=__name__)

#: Seconds between two STATUS= lines.
STATUS_INTERVAL = 10.0
#: The longest notification sent (systemd's limit is far above).
MAX_MESSAGE = 4096


class SystemdNotifier:
    """
    Sends notifications to C{$NOTIFY_SOCKET}; does nothing when the
    variable is unset (not run by systemd, or C{Type=} is not notify).
    A notification that cannot be sent is logged once and dropped: systemd
    never holds the daemon up.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """
        Send C{KEY=VALUE} lines (keys upper-cased); whether it went.
        Values lose any line break (a value is one line by the protocol).
        """
        if self.address is None:
            return False
        lines = [f"{key.upper()}={' '.join(str(value).splitlines())}" for key, value in fields.items()]
        message = "\n".join(lines).encode("utf-8", "replace")[:MAX_MESSAGE]
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                _log.warn("cannot notify systemd at {path}: {error}", path=self.address.replace("\0", "@"), error=e.strerror or str(e))
            return False
        return True

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """
    Seconds between two C{WATCHDOG=1} pings (half of C{$WATCHDOG_USEC}),
    or C{None} without a watchdog (unset, not a whole number, or
    C{$WATCHDOG_PID} names another process).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2e6


class SystemdService(Service):
    """
    What systemd hears from the daemon.

    @param status: the one-line C{STATUS=} text (the counts).
    """

    def __init__(self, notifier: SystemdNotifier, clock: IReactorTime, status: Callable[[], str], watchdog: float | None) -> None:
        self._notifier = notifier
        self._status = status
        self._status_loop = LoopingCall(self._send_status)
        self._status_loop.clock = clock
        self._watchdog_interval = watchdog
        self._watchdog = LoopingCall(notifier.notify, watchdog="1")
        self._watchdog.clock = clock
        self.ready = False

    def startService(self) -> None:
        """Start the watchdog pings (from the reactor: they stop if it stalls)."""
        super().startService()
        if not self._notifier.enabled:
            return
        if self._watchdog_interval is not None:
            self._watchdog.start(self._watchdog_interval, now=True)
        self._notifier.notify(status="loading the table")

    def loaded(self) -> None:
        """The first table load is done: READY=1, then a status line every L{STATUS_INTERVAL}."""
        if self.ready or not self.running:
            return
        self.ready = True
        if not self._notifier.enabled:
            return
        self._notifier.notify(ready="1", status=self._status())
        self._status_loop.start(STATUS_INTERVAL, now=False)

    def _send_status(self) -> None:
        self._notifier.notify(status=self._status())

    def stopping(self) -> None:
        """Stopping has begun (un-REGISTERs may take a while): STOPPING=1."""
        self._notifier.notify(stopping="1", status="stopping: un-registering")

    def stopService(self) -> None:
        """
        Stop the loops.  The daemon stops this child last, after
        un-registering: the pings go on while that takes its time.
        """
        super().stopService()
        for loop in (self._status_loop, self._watchdog):
            if loop.running:
                loop.stop()
        self._notifier.close()
