# -*- test-case-name: tests.unit.app.test_logs -*-
"""
The daemon's log under twistd: where it goes (twistd's C{--logfile},
C{-n}), its form (twistd's text or one JSON object per line), reopening
it after C{logrotate} moved it (SIGHUP), and its owner under C{-u}/C{-g}.

twistd opens its own log file as root before it drops privileges, so
the service user could neither reopen nor rotate it.  The service
therefore hands twistd an observer of its own (see L{daemon_log}): the
file is created (or taken over) for the service user, appended to, never
rotated by size (C{logrotate} does that: C{contrib/logrotate}), reopened
on SIGHUP and rotated on SIGUSR1 as twistd does.  With C{--syslog} or
C{--logger} twistd's choice stands.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
from typing import IO, Any, Callable, Mapping

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent, textFileLogObserver

#: Event fields never written (they are Twisted's own bookkeeping).
_INTERNAL = frozenset({"log_logger", "log_source", "log_format", "log_trace", "log_io", "log_legacy", "log_text", "message", "format"})
#: Longest value of one field in a JSON line (a stray huge value stays readable).
MAX_FIELD = 2000


class ReopenableLog:
    """
    A log file by path: appended to, reopened on request (after
    C{logrotate} moved it), rotated on request as twistd does
    (C{path.1}, C{path.2}, ...).  A reopen or rotation that fails keeps
    the file it had: the log never goes silent for a bad path.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._file = self._open()

    def _open(self) -> IO[str]:
        """The path opened for appending (created with mode 0640)."""
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return os.fdopen(descriptor, "a", encoding="utf-8", errors="replace")

    def write(self, text: str) -> None:
        """Append C{text}."""
        self._file.write(text)

    def flush(self) -> None:
        """Flush to the file."""
        self._file.flush()

    def reopen(self) -> None:
        """
        Open the path again (a new file if it was moved away), then close
        the old one; if the path cannot be opened, keep the old one.

        @raise OSError: the path could not be opened (the old file stays).
        """
        new = self._open()
        old, self._file = self._file, new
        old.close()

    def rotate(self) -> None:
        """
        Move the file to C{path.1} (C{path.1} to C{path.2}, and so on) and
        start a new one, as twistd's SIGUSR1 does.

        @raise OSError: a move failed (the directory is not writable, say);
            the file stays as it was.
        """
        self._file.flush()
        taken = 0
        while os.path.exists(f"{self.path}.{taken + 1}"):
            taken += 1
        for n in range(taken, 0, -1):
            os.rename(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.rename(self.path, f"{self.path}.1")
        self.reopen()

    def give_to(self, uid: int | None, gid: int | None) -> None:
        """Make the file the service user's, so that it can reopen it after dropping root."""
        if os.geteuid() == 0 and (uid is not None or gid is not None):
            os.chown(self.path, -1 if uid is None else uid, -1 if gid is None else gid)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def json_line(event: LogEvent) -> str:
    """
    One event as one JSON object and a newline: C{time} (UTC, ISO 8601),
    C{level}, C{namespace}, C{message}, the event's own fields (a record's
    C{aor}, C{state}, C{error}...) and a C{traceback} for a failure.
    """
    moment = datetime.datetime.fromtimestamp(event.get("log_time") or 0, datetime.timezone.utc)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL or key in record:
            continue
        if isinstance(value, (bool, int, float)) or value is None:
            record[key] = value
        elif isinstance(value, str):
            record[key] = value[:MAX_FIELD]
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()[-20 * MAX_FIELD :]
        except Exception:
            record["traceback"] = repr(failure)[:MAX_FIELD]
    # json.dumps escapes every control character: one line, whatever the fields hold.
    return json.dumps(record, ensure_ascii=True, default=str) + "\n"


def observer_for(out: IO[str] | ReopenableLog, log_format: str) -> ILogObserver:
    """An observer writing text (twistd's form) or JSON lines to C{out}."""
    if log_format == "json":
        return FileLogObserver(out, json_line)  # type: ignore[arg-type]
    return textFileLogObserver(out)  # type: ignore[arg-type]


class DaemonLog:
    """
    The log as the daemon runs it: the observer to give twistd, and the
    file (if one) to reopen and rotate.
    """

    def __init__(self, observer: ILogObserver, file: ReopenableLog | None) -> None:
        self.observer = observer
        self.file = file

    def reopen(self) -> None:
        """Reopen the file (nothing for standard output)."""
        if self.file is not None:
            self.file.reopen()

    def rotate(self) -> None:
        """Rotate the file as twistd's SIGUSR1 does (nothing for standard output)."""
        if self.file is not None:
            self.file.rotate()


def daemon_log(twistd: Mapping[str, Any], log_format: str, stdout: IO[str] | None = None) -> DaemonLog | None:
    """
    The log for twistd's options C{twistd} (C{logfile}, C{nodaemon},
    C{syslog}, C{logger}, C{uid}, C{gid}), or C{None} to leave it to
    twistd (syslog, a custom C{--logger}, or options twistd refuses).
    """
    if twistd.get("syslog") or twistd.get("logger"):
        return None
    path = twistd.get("logfile") or ""
    nodaemon = bool(twistd.get("nodaemon"))
    if path == "-" or (nodaemon and not path):
        if not nodaemon:
            return None  # twistd refuses a daemon logging to stdout, with its own message
        return DaemonLog(observer_for(stdout or sys.stdout, log_format), None)
    file = ReopenableLog(path or "twistd.log")
    file.give_to(twistd.get("uid"), twistd.get("gid"))
    return DaemonLog(observer_for(file, log_format), file)


def json_observer() -> ILogObserver:
    """
    JSON lines on standard output, for twistd's C{--logger}
    (C{twistd --logger=uacregistrant.app.logs.json_observer -ny
    registrant.tac}: a .tac file gets no C{--log-format}).
    """
    return observer_for(sys.stdout, "json")


def on_signal(signum: int, call: Callable[[], object], call_from_thread: Callable[..., Any]) -> None:
    """Run C{call} in the reactor whenever C{signum} arrives (the handler itself does nothing else)."""
    signal.signal(signum, lambda number, frame: call_from_thread(call))
