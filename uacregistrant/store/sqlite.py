# -*- test-case-name: tests.unit.app.test_preflight,tests.unit.store.test_store,tests.unit.app.test_secrets -*-
"""
The embedded default store: an SQLite file, read and written on a thread
of its own, never on the reactor's.

Another process holding a write lock (an operator's long transaction, a
backup) must not freeze the console or let registrations lapse: each
statement waits at most L{BUSY_TIMEOUT} on its thread, and a busy
database is retried from the reactor with back-off (L{BUSY_RETRIES}) before
the call fails with L{StoreError}.

Before the service binds anything, L{SqliteStore.check} only reads (nothing is created,
no connection kept); L{SqliteStore.start} opens the connection on the
store's thread, creating the table if it is missing (with a warning: an
empty new table usually means the file was moved or deleted).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from typing import Any, Callable, Generic, TypeVar

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from uacregistrant.store import (
    BATCH_SIZE,
    KEY_COLUMNS,
    IRegistrantStore,
    Key,
    Row,
    StoreError,
    StoreValueError,
    TableLayout,
    make_row,
    match_columns,
    quote_identifier,
    row_assignments,
    schema_sql,
    select_sql,
    where_key_sql,
)
from uacregistrant.store.sqlite_pages import PagedReader

_log = Logger(namespace=__name__)
_T = TypeVar("_T")

#: Seconds a statement waits for another connection's lock, on the store's thread.
BUSY_TIMEOUT = 0.2
#: Delays (seconds) between retries of a call that found the database busy.
BUSY_RETRIES = (0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0)

#: Text that is not UTF-8 is read with surrogates in place of the bad
#: bytes (a C-level call), so one bad row is refused by validation instead
#: of failing the whole read.
_TEXT_FACTORY = functools.partial(str, encoding="utf-8", errors="surrogateescape")

RunInThread = Callable[..., "defer.Deferred[Any]"]


def sqlite_path(url: str) -> str:
    """The file path of C{sqlite:PATH} or C{sqlite://PATH}."""
    if not url.startswith("sqlite:"):
        raise StoreError(f"not an sqlite URL: {url!r}")
    path = url[len("sqlite:") :]
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise StoreError("sqlite URL without a path")
    return path


def run_synchronously(function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """Run C{function} now, on this thread (for tests on a fake clock)."""
    return defer.maybeDeferred(function, *args)


def _is_busy(error: BaseException | None) -> bool:
    """Whether C{error} says another connection holds the database's lock."""
    return isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error))


@implementer(IRegistrantStore)
class SqliteStore:
    """
    The registrant table in an SQLite file.

    @param run_in_thread: runs a function off the reactor thread and
        returns a Deferred of its result; by default, the store's own
        one-thread pool (one connection, used only there).
    """

    def __init__(
        self,
        path: str,
        layout: TableLayout,
        reactor: Any,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        self.path = path
        self.layout = layout
        self._clock: IReactorTime = reactor
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._run_in_thread = run_in_thread
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._noticed: tuple[int, int] | None = None
        self._present: dict[str, str] = {}
        self._closed = False

    @property
    def connected(self) -> bool:
        """Always: an embedded file has no connection to lose (a busy or broken file fails the call instead)."""
        return True

    # At the start-up checks: read only, keep nothing open.

    def check(self) -> None:
        """
        Refuse at once what cannot work (a missing directory, a file that is
        not a database, a table without a required column), creating nothing.

        @raise StoreError: with one line saying what is wrong.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open database {self.path}: directory {directory} does not exist")
        if not os.path.exists(self.path):
            if not os.access(directory, os.W_OK):
                raise StoreError(f"cannot create database {self.path}: directory {directory} is not writable")
            return
        try:
            db = sqlite3.connect(f"file:{_uri_path(self.path)}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {self.path}: {e}") from None
        try:
            self._inspect(db, create=False)
        except sqlite3.Error as e:
            if _is_busy(e):
                return  # another process's lock: the start retries until it is gone
            raise StoreError(f"cannot read database {self.path}: {e}") from None
        finally:
            db.close()

    def _inspect(self, db: sqlite3.Connection, create: bool, require: bool = False) -> tuple[bool, dict[str, str]]:
        """
        Check (and if asked create) the table; return whether it was
        created, and its columns (logical name → real name).

        @param require: a missing table is an error (a replacement file).
        """
        table = self.layout.table
        db.execute("PRAGMA schema_version").fetchone()
        found = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
        if found is None:
            if require:
                raise StoreError(f"no table {table} in {self.path}")
            if not self.layout.is_default:
                raise StoreError(
                    f"table {table} does not exist in {self.path}; create it (see the packaged "
                    "schema registrant-sqlite.sql) or use the default table and column names"
                )
            if not create:
                return False, {}
            db.executescript(schema_sql("sqlite"))
            db.commit()
            return True, match_columns(self.layout, _columns(db, table), f"{table} in {self.path}")
        return False, match_columns(self.layout, _columns(db, table), f"{table} in {self.path}")

    # Once started: everything on the store's thread.

    def start(self) -> defer.Deferred[None]:
        """Start the store's thread and open the connection there (creating the table if missing)."""
        if self._run_in_thread is None:
            pool = self._pool = ThreadPool(minthreads=1, maxthreads=1, name="uacregistrant-sqlite")
            pool.start()
            reactor: IReactorThreads = self._reactor
            self._run_in_thread = functools.partial(threads.deferToThreadPool, reactor, pool)
        return self._call("opening", self._open).addCallback(self._opened)

    def _open(self) -> tuple[bool, int]:
        db, created, present, rows = self._connect(create=True)
        self._adopt(db, present, _identity(self.path))
        return created, rows

    def _adopt(self, db: sqlite3.Connection, present: dict[str, str], identity: tuple[int, int] | None) -> None:
        """On the store's thread: use C{db} (and its columns) from now on."""
        self._close_db()
        self._db = db
        self._present = present
        self._identity = self._noticed = identity

    def _connect(self, create: bool) -> tuple[sqlite3.Connection, bool, dict[str, str], int]:
        """On the store's thread: a checked connection, whether the table was created, its columns, its rows."""
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {self.path}: {e}") from None
        db.text_factory = _TEXT_FACTORY
        try:
            created, present = self._inspect(db, create=create, require=not create)
            rows = db.execute(f"SELECT count(*) FROM {quote_identifier(self.layout.table)}").fetchone()[0]
        except BaseException:
            db.close()
            raise
        return db, created, present, int(rows)

    def _opened(self, result: tuple[bool, int]) -> None:
        created, rows = result
        if created:
            _log.warn(
                "created an empty table {table} in {path}: there are no accounts to register until rows are added "
                "(if this file held accounts, it was moved or deleted)",
                table=self.layout.table,
                path=os.path.abspath(self.path),
            )
        else:
            _log.info("opened {path}: table {table} holds {rows} row(s)", path=os.path.abspath(self.path), table=self.layout.table, rows=rows)

    def _call(self, what: str, function: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        """
        Run C{function} on the store's thread; retry while the database is
        busy (another process's lock), with back-off, then fail with
        L{StoreError} naming C{what}.
        """
        return _Call(self, what, function, args).done

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    def _select(self) -> tuple[list[str], str]:
        return select_sql(self.layout, self._present)

    def _where_key(self) -> str:
        return where_key_sql(self._present, "?")

    def load(self, consume: Callable[[list[Row]], None]) -> defer.Deferred[None]:
        """
        Read every row, C{BATCH_SIZE} per trip to the store's thread; each
        batch is handed to C{consume} on the reactor thread.
        """
        return _Load(self, consume).done

    def _notice_replacement(self) -> None:
        """
        On the store's thread: the file deleted or replaced under the open
        connection is said in the log (once per change); a replacement
        that holds the table is opened in its place, one that does not
        (an empty or broken file) is not: the copy held open is read on,
        so a bad copy never retires every record.
        """
        now = _identity(self.path)
        if now == self._identity:
            return
        first_notice = now != self._noticed
        self._noticed = now
        path = os.path.abspath(self.path)
        if now is None:
            if first_notice:
                _log.error(
                    "database file {path} was deleted: still reading the copy held open; restore the file "
                    "(a restart would create an empty table)",
                    path=path,
                )
            return
        try:
            # Tried at every load while the file differs: a replacement
            # fixed in place (the table created afterwards) is picked up.
            db, _, present, rows = self._connect(create=False)
        except (sqlite3.Error, StoreError) as e:
            if first_notice:
                _log.error(
                    "database file {path} was replaced by one that cannot be used ({error}): still reading the copy held open",
                    path=path,
                    error=str(e),
                )
            return
        self._adopt(db, present, now)
        _log.warn("database file {path} was replaced: reading the new file ({rows} rows)", path=path, rows=rows)

    def load_key(self, key: Key) -> defer.Deferred[Row | None]:
        """The row with this key, or C{None}."""

        def read() -> Row | None:
            logical, query = self._select()
            found = self._connection().execute(f"{query} WHERE {self._where_key()}", key).fetchone()
            return None if found is None else make_row(logical, found)

        return self._call("reading", read)

    def set_state(self, key: Key, state: int) -> defer.Deferred[int]:
        """Write the state column of exactly this record; fires with the rows changed."""

        def write() -> int:
            db = self._connection()
            if "state" not in self._present:  # nothing to write: say whether the row is there
                return 0 if db.execute(f"SELECT 1 FROM {quote_identifier(self.layout.table)} WHERE {self._where_key()}", key).fetchone() is None else 1
            sql = (
                f"UPDATE {quote_identifier(self.layout.table)} SET {quote_identifier(self._present['state'])} = ? "
                f"WHERE {self._where_key()}"
            )
            with db:
                return int(db.execute(sql, (state, *key)).rowcount)

        return self._call("writing", write)

    def upsert(self, row: Row) -> defer.Deferred[str]:
        """
        Update the columns C{row} names in the row with its key, or insert
        it; fires with C{"updated"} or C{"inserted"}.
        """
        table = quote_identifier(self.layout.table)
        key = [row[name] for name in KEY_COLUMNS]

        def write() -> str:
            assignments = row_assignments(row, self._present)
            changes = [(name, value) for name, value in assignments if name not in {self._present[k] for k in KEY_COLUMNS}]
            sets = ", ".join(f"{quote_identifier(name)} = ?" for name, _ in changes)
            names = ", ".join(quote_identifier(name) for name, _ in assignments)
            marks = ", ".join("?" for _ in assignments)
            exists = f"SELECT 1 FROM {table} WHERE {self._where_key()}"
            db = self._connection()
            with db:
                if changes:
                    if db.execute(f"UPDATE {table} SET {sets} WHERE {self._where_key()}", [v for _, v in changes] + key).rowcount:
                        return "updated"
                elif db.execute(exists, key).fetchone() is not None:
                    return "updated"
                db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", [v for _, v in assignments])
                return "inserted"

        return self._call("writing", write)

    def watch(
        self,
        on_change: Callable[[Key | None, Key | None], defer.Deferred[None]],
        on_resync: Callable[[], None],
    ) -> None:
        """SQLite has no NOTIFY: changes are found by --db-poll."""

    def close(self) -> None:
        """Close the connection and stop the store's thread."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.callInThread(self._close_db)
            pool.stop()
        else:
            self._close_db()

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in db.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()]


def _identity(path: str) -> tuple[int, int] | None:
    """The file's (device, inode), or C{None} if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _store_error(what: str, table: str, failure: Failure) -> StoreError:
    error = failure.value
    if isinstance(error, StoreError):
        return error
    if isinstance(error, (sqlite3.IntegrityError, OverflowError)):
        return StoreValueError(f"{what} {table}: the table refused the values: {error}")
    if _is_busy(error):
        return StoreError(f"{what} {table}: the database stayed locked by another process")
    return StoreError(f"{what} {table} failed: {type(error).__name__}: {error}")


# The store's calls and loads are small objects whose methods are the
# callbacks, not closures calling each other: closures that refer to each
# other form a reference cycle, which only the cyclic collector frees, and
# the daemon freezes what survives its older generations
# (app/gcpolicy.py): a load caught in one kept its whole pass for good.


class _Call(Generic[_T]):
    """One call on the store's thread, retried while the database is busy; C{done} fires with its result."""

    __slots__ = ("_store", "_what", "_function", "_args", "done")

    def __init__(self, store: SqliteStore, what: str, function: Callable[..., _T], args: tuple[Any, ...]) -> None:
        self._store = store
        self._what = what
        self._function = function
        self._args = args
        self.done: defer.Deferred[_T] = defer.Deferred()
        self._attempt(0)

    def _attempt(self, tries: int) -> None:
        store = self._store
        if store._closed or store._run_in_thread is None:
            self.done.errback(StoreError(f"{self._what} {store.layout.table}: the store is closed"))
            return
        d = store._run_in_thread(self._function, *self._args)
        d.addCallbacks(self.done.callback, self._failed, errbackArgs=(tries,))

    def _failed(self, failure: Failure, tries: int) -> None:
        store = self._store
        if _is_busy(failure.value) and tries < len(BUSY_RETRIES) and not store._closed:
            store._clock.callLater(BUSY_RETRIES[tries], self._attempt, tries + 1)
            return
        self.done.errback(_store_error(self._what, store.layout.table, failure))


class _Load:
    """
    Every row, C{BATCH_SIZE} per trip to the store's thread, each batch
    handed to C{consume}; C{done} fires after the last.  A page is one
    step of one statement (L{PagedReader}) where the table allows it, else
    the rows are fetched one step each.
    """

    __slots__ = ("_store", "_consume", "_columns", "_pages", "_cursor", "_read", "done")

    def __init__(self, store: SqliteStore, consume: Callable[[list[Row]], None]) -> None:
        self._store = store
        self._consume = consume
        self._columns: list[str] = []
        self._pages: PagedReader | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._read = 0
        self.done: defer.Deferred[None] = defer.Deferred()
        store._call("reading", self._first).addCallbacks(self._got, self._failed)

    def _first(self) -> tuple[list[Row], bool]:
        # The query is built here, on the store's thread, after a
        # replacement file may have been opened with other columns.
        store = self._store
        store._notice_replacement()
        logical, query = store._select()
        self._columns[:] = logical  # a busy retry runs this again
        db = store._connection()
        self._pages = PagedReader.open(db, store.layout.table, [store._present[name] for name in logical], BATCH_SIZE)
        if self._pages is None:
            self._cursor = db.execute(query)
        return self._more()

    def _more(self) -> tuple[list[Row], bool]:
        """The next batch, and whether it is the last."""
        columns = self._columns
        pages = self._pages
        if pages is not None:
            rows = [make_row(columns, v) for v in pages.next_page()]
            return rows, pages.done
        assert self._cursor is not None
        rows = [make_row(columns, v) for v in self._cursor.fetchmany(BATCH_SIZE)]
        if len(rows) < BATCH_SIZE:
            self._cursor.close()
            return rows, True
        return rows, False

    def _failed(self, failure: Failure) -> None:
        self._let_go()
        self.done.errback(failure)

    def _let_go(self) -> None:
        """A read abandoned half-way: its open statement is closed on the store's thread."""
        pages, cursor = self._pages, self._cursor
        self._pages = self._cursor = None
        if (pages is not None and not pages.done) or cursor is not None:
            closing = self._store._call("closing a read", pages.close if pages is not None else cursor.close)  # type: ignore[union-attr]
            closing.addErrback(lambda f: None)  # the store closing closes it all the same

    def _got(self, batch: tuple[list[Row], bool]) -> None:
        rows, last = batch
        self._read += len(rows)
        try:
            if rows:
                self._consume(rows)
        except Exception:
            self._failed(Failure())
            return
        if last:
            self._pages = self._cursor = None
            _log.info("read {rows} row(s) from {table}", rows=self._read, table=self._store.layout.table)
            self.done.callback(None)
        else:
            # The next batch on a later reactor turn, however fast the thread answers.
            self._store._clock.callLater(0, self._next)

    def _next(self) -> None:
        self._store._call("reading", self._more).addCallbacks(self._got, self._failed)
