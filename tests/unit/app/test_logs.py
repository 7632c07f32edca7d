"""
app.logs: the log twistd is handed: JSON lines (one per event, whatever
the fields hold), the text form, a file reopened after logrotate moved
it, and twistd's choices (syslog, --logger, stdout) respected.
"""

from __future__ import annotations

import io
import json
import os
import sys

from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.app.logs import ReopenableLog, daemon_log, json_line


def event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "log_time": 1_800_000_000.25, "log_level": LogLevel.warn, "log_namespace": "uacregistrant.agent.statelog",
        "log_format": "{aor}: {state}: {error}",
    }
    base.update(fields)
    return base


class JsonLineTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """The event's time, level, namespace, message and own fields; objects left out."""
        line = json_line(event(aor="sip:a@x", state="REGISTRAR_ERROR_STATE", error="403 Forbidden", row_id=7, logger=object()))
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["time"], "2027-01-15T08:00:00.250Z")
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "uacregistrant.agent.statelog")
        self.assertEqual(record["message"], "sip:a@x: REGISTRAR_ERROR_STATE: 403 Forbidden")
        self.assertEqual((record["aor"], record["state"], record["row_id"]), ("sip:a@x", "REGISTRAR_ERROR_STATE", 7))
        self.assertNotIn("logger", record)  # objects are not written
        self.assertNotIn("log_format", record)

    def test_one_line_whatever_the_fields_hold(self) -> None:
        """CR, LF, escape sequences and huge values stay inside one line."""
        line = json_line(event(aor="sip:a@x\r\nFAKE=1", state="\x00\x1b[31m", error="é" * 5000))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["aor"], "sip:a@x\r\nFAKE=1")
        self.assertLessEqual(len(record["error"]), 2000)

    def test_failure_has_traceback(self) -> None:
        """A failure's traceback is a field."""
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(json_line(event(log_format="boom", log_failure=failure)))
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_bad_format_still_a_line(self) -> None:
        """An event that cannot be formatted is still one line."""
        record = json.loads(json_line(event(log_format="{missing")))
        self.assertIn("Unable to format event", record["message"])


class DaemonLogTests(SynchronousTestCase):
    def test_left_to_twistd(self) -> None:
        """--syslog, --logger and a daemon logging to stdout are twistd's business."""
        self.assertIsNone(daemon_log({"syslog": True, "logfile": "x.log"}, "json"))
        self.assertIsNone(daemon_log({"logger": "my.observer"}, "text"))
        self.assertIsNone(daemon_log({"logfile": "-", "nodaemon": False}, "text"))

    def test_stdout(self) -> None:
        """-n --logfile=-: standard output, nothing to reopen."""
        out = io.StringIO()
        log = daemon_log({"logfile": "-", "nodaemon": True}, "json", stdout=out)
        assert log is not None
        self.assertIsNone(log.file)
        log.observer(event(aor="sip:b@x", state="REGISTERED_STATE", error="-"))
        self.assertEqual(json.loads(out.getvalue())["aor"], "sip:b@x")
        log.reopen()  # nothing to reopen
        log.rotate()

    def test_file_reopened_after_logrotate_moved_it(self) -> None:
        """After logrotate moved the file, writes go to the old one until SIGHUP, then to a new one (mode 0640)."""
        path = os.path.abspath(self.mktemp())
        log = daemon_log({"logfile": path, "nodaemon": False}, "text")
        assert log is not None and log.file is not None
        self.addCleanup(log.file.close)
        log.observer(event(aor="sip:c@x", state="S", error="first"))
        os.rename(path, path + ".1")  # logrotate without copytruncate
        log.observer(event(aor="sip:c@x", state="S", error="second"))
        log.reopen()  # SIGHUP
        log.observer(event(aor="sip:c@x", state="S", error="third"))
        with open(path + ".1") as moved, open(path) as new:
            old_text, new_text = moved.read(), new.read()
        self.assertIn("first", old_text)
        self.assertIn("second", old_text)
        self.assertNotIn("third", old_text)
        self.assertIn("third", new_text)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)

    def test_file_given_to_the_service_user(self) -> None:
        """Under -u/-g (twistd opens the log as root) the file is the service user's, so it can reopen it later."""
        if os.geteuid() != 0:
            raise self.skipTest("only root can give a file away")  # type: ignore[misc]
        path = os.path.abspath(self.mktemp())
        log = daemon_log({"logfile": path, "uid": 65534, "gid": 65534}, "json")
        assert log is not None and log.file is not None
        self.addCleanup(log.file.close)
        info = os.stat(path)
        self.assertEqual((info.st_uid, info.st_gid, info.st_mode & 0o777), (65534, 65534, 0o640))

    def test_failed_reopen_keeps_the_old_file(self) -> None:
        """A path that cannot be opened again (its directory gone) keeps the old file: nothing is lost in between."""
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "u.log")
        file = ReopenableLog(path)
        self.addCleanup(file.close)
        file.write("before\n")
        file.flush()
        os.rename(directory, directory + ".gone")
        with self.assertRaises(OSError):
            file.reopen()
        file.write("after\n")
        file.flush()
        with open(os.path.join(directory + ".gone", "u.log")) as f:
            self.assertEqual(f.read(), "before\nafter\n")

    def test_failed_rotation_keeps_the_file(self) -> None:
        """A rotation that cannot move the file raises and the file stays in use."""
        path = os.path.abspath(self.mktemp())
        file = ReopenableLog(path)
        self.addCleanup(file.close)
        def refused(source: str, target: str) -> None:
            raise PermissionError(13, "Permission denied")  # the directory is root's, the daemon not

        self.patch(os, "rename", refused)
        with self.assertRaises(OSError):
            file.rotate()
        file.write("still\n")
        file.flush()
        with open(path) as f:
            self.assertEqual(f.read(), "still\n")

    def test_rotate_as_twistd(self) -> None:
        """SIGUSR1 moves the file to FILE.1 and starts a new one."""
        path = os.path.abspath(self.mktemp())
        file = ReopenableLog(path)
        self.addCleanup(file.close)
        file.write("one\n")
        file.rotate()
        file.write("two\n")
        file.flush()
        with open(path + ".1") as old, open(path) as new:
            self.assertEqual((old.read(), new.read()), ("one\n", "two\n"))

    def test_no_size_rotation(self) -> None:
        """logrotate rotates: a big log stays one file (twistd's own rotated at 1 MB, and could not under -u)."""
        path = os.path.abspath(self.mktemp())
        file = ReopenableLog(path)
        self.addCleanup(file.close)
        for _ in range(300):
            file.write("x" * 4000 + "\n")
        file.flush()
        self.assertFalse(os.path.exists(path + ".1"))
        self.assertGreater(os.path.getsize(path), 1_000_000)

    def test_json_observer_for_twistd_logger(self) -> None:
        """twistd --logger=uacregistrant.app.logs.json_observer: JSON lines on standard output."""
        from twisted.python.reflect import namedAny

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = namedAny("uacregistrant.app.logs.json_observer")()
        observer(event(aor="sip:d@x", state="S", error="e"))
        self.assertEqual(json.loads(out.getvalue())["aor"], "sip:d@x")

    def test_observer_receives_from_publisher(self) -> None:
        """The observer works as twistd's global observer."""
        out = io.StringIO()
        log = daemon_log({"nodaemon": True}, "json", stdout=out)
        assert log is not None
        globalLogPublisher.addObserver(log.observer)
        self.addCleanup(globalLogPublisher.removeObserver, log.observer)
        from twisted.logger import Logger

        Logger(namespace="test.logs").info("hello {who}", who="world")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertIn({"who": "world", "message": "hello world", "namespace": "test.logs"},
                      [{k: r[k] for k in ("who", "message", "namespace") if k in r} for r in lines])
