# -*- test-case-name: tests.unit.store.test_loader,tests.unit.control.test_metrics -*-
"""
Keeping the registry in step with the table: the first load (retried until
the database answers), full passes on demand and on a timer, one-row
changes from NOTIFY, and a full pass after the store reconnects.

One full pass runs at a time.  L{TableSync} decides what each row means
for the registry; this module decides when rows are read.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from uacregistrant.core.account import AccountKey
from uacregistrant.store import IRegistrantStore, Row, StoreError
from uacregistrant.store.sync import TableSync

_log = Logger(namespace=__name__)

#: Delays (seconds) between attempts to start the store and load the
#: table, doubling up to the last.
START_RETRY = (1.0, 60.0)

_FROM_MEMORY = "registrations continue from memory"


class TableLoader(Service):
    """
    Reads the table into the registry through C{sync}.

    @param poll_interval: seconds between full passes (0: none; SQLite has
        no NOTIFY).
    @param loaded: called after each complete full pass with its counts
        (the service starts walking after the first).
    @param first_batch: called after each batch of the first load is fed
        (the GC policy moves the long-lived records out of its reach).
    """

    def __init__(
        self,
        store: IRegistrantStore,
        sync: TableSync,
        clock: IReactorTime,
        poll_interval: float = 0.0,
        loaded: Callable[[dict[str, int]], None] = lambda counts: None,
        first_batch: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._sync = sync
        self._clock = clock
        self._poll_interval = poll_interval
        self._loaded_hook = loaded
        self._first_batch = first_batch
        self._lock = defer.DeferredLock()
        self._poll = LoopingCall(self.poll)
        self._poll.clock = clock
        self._store_started = False
        self._start_delay = START_RETRY[0]
        self._start_retry: IDelayedCall | None = None
        #: Whether a full pass has completed.
        self.loaded = False
        # Those sharing the pass that waits for the running one (None: none waits).
        self._queued: list[defer.Deferred[dict[str, int]]] | None = None
        #: When the last full pass completed (C{clock.seconds()}), or C{None}.
        self.last_loaded: float | None = None

    def startService(self) -> None:
        """Start the store and load the table, retrying until it works."""
        super().startService()
        self._start_attempt()

    def stopService(self) -> None:
        """No more passes: stop polling and retrying (a pass under way finishes)."""
        super().stopService()
        if self._poll.running:
            self._poll.stop()
        if self._start_retry is not None and self._start_retry.active():
            self._start_retry.cancel()
        self._start_retry = None

    def _start_attempt(self) -> None:
        self._start_retry = None
        if not self.running or self.loaded:
            return
        if self._store_started:
            d: defer.Deferred[Any] = defer.succeed(None)
        else:
            d = self._store.start().addCallback(self._store_ready)
        d.addCallback(lambda _: self._lock.run(self._full_pass, True))
        d.addErrback(self._start_failed)

    def _store_ready(self, _: object) -> None:
        self._store_started = True
        self._store.watch(self.row_changed, self.resync)

    def _start_failed(self, failure: Failure) -> None:
        if not self.running or self.loaded:
            return
        delay = self._start_delay
        self._start_delay = min(START_RETRY[1], delay * 2)
        pass_failed(failure, "loading the table", f"retrying in {delay:.0f}s")
        self._start_retry = self._clock.callLater(delay, self._start_attempt)

    @property
    def busy(self) -> bool:
        """Whether a full pass is running or waiting."""
        return bool(self._lock.locked)

    def reload(self, initial: bool = False) -> defer.Deferred[dict[str, int]]:
        """
        A full pass over the table (one at a time): add, change, retire.
        Asked for while one pass runs and another already waits, it shares
        the waiting one (which reads the table after this request anyway):
        a burst of reloads (SIGHUPs, MI notifications) costs two passes at
        most.

        @param initial: the first load (its records are new and wait for
            their bucket's visit; see L{TableSync.full}).
        """
        if self._queued is not None:
            shared: defer.Deferred[dict[str, int]] = defer.Deferred()
            self._queued.append(shared)
            return shared
        waiters: list[defer.Deferred[dict[str, int]]] = []
        started: list[bool] = []

        def begin() -> defer.Deferred[dict[str, int]]:
            started.append(True)
            if self._queued is waiters:
                self._queued = None
            return self._full_pass(initial)

        def share(result: Any) -> Any:
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        d = self._lock.run(begin)
        if not started:
            self._queued = waiters
        return d.addBoth(share)

    def _full_pass(self, initial: bool = False) -> defer.Deferred[dict[str, int]]:
        full = self._sync.full(initial)

        def feed(rows: list[Row]) -> None:
            full.feed(rows)
            if initial:
                self._first_batch()

        def finished(_: object) -> defer.Deferred[dict[str, int]]:
            return full.finish(self._clock).addCallback(report)

        def abandoned(failure: Failure) -> Failure:
            full.abandon()
            return failure

        def report(counts: dict[str, int]) -> dict[str, int]:
            # Whichever pass completes first counts as the first load (the
            # initial one may have failed with the database away).
            first = not self.loaded
            self.loaded = True
            self.last_loaded = self._clock.seconds()
            if first and self.running and self._poll_interval > 0 and not self._poll.running:
                self._poll.start(self._poll_interval, now=False)
            self._loaded_hook(counts)
            return counts

        return self._store.load(feed).addCallbacks(finished, abandoned)

    def poll(self) -> defer.Deferred[None] | None:
        """
        One timed pass; the loop waits for it (polls never pile up behind a
        locked database), and a poll due while another pass runs is skipped.
        """
        if self._lock.locked:
            return None
        return self.reload().addCallbacks(lambda _: None, lambda f: pass_failed(f, "polling the table", _FROM_MEMORY))

    def row_changed(self, key: AccountKey | None, old_key: AccountKey | None) -> defer.Deferred[None]:
        """A NOTIFY: re-read one record (C{key}); retire C{old_key} if the key changed or the row went."""
        sync = self._sync
        for changed in (key, old_key):
            if changed is not None:
                sync.touch(changed)  # a full pass under way keeps out of it
        if old_key is not None and old_key != key:
            sync.retire(old_key)
        if key is None:
            return defer.succeed(None)

        def loaded(row: Row | None) -> None:
            if row is None:
                sync.retire(key)
                return
            account = sync.account(row)
            if account is not None and account.key == key:
                sync.apply(account)

        return self._store.load_key(key).addCallback(loaded)

    def resync(self) -> None:
        """The store reconnected (or the table was truncated): a full pass catches up."""
        self.reload().addErrback(lambda f: pass_failed(f, "resynchronising after reconnecting", _FROM_MEMORY))


def pass_failed(failure: Failure, what: str, then: str) -> None:
    """A pass failed: one line for the database's own errors, a traceback for anything else."""
    if failure.check(StoreError):
        _log.error("{what} failed: {error}; {then}", what=what, error=failure.getErrorMessage(), then=then)
    else:
        _log.failure("{what} failed; {then}", failure, what=what, then=then)
