# -*- test-case-name: tests.integration.test_postgres,tests.integration.test_least_privilege,tests.unit.store.test_store,tests.unit.app.test_secrets -*-
"""
The registrant table in PostgreSQL, through txpostgres (no threads).

Rows are read through an SQL cursor in batches inside one transaction
(a consistent snapshot that never sits in memory whole).  Live changes come
from a trigger that NOTIFYs the changed row's id and key; a second
connection LISTENs.  When the server goes away, registrations carry on from
memory; both connections come back with back-off and a full resync catches
whatever changed meanwhile.

Least privilege: the role needs only SELECT, INSERT, UPDATE and DELETE on
the table (and USAGE on its id sequence).  The trigger is installed only
when missing or different; a role that may not install it starts anyway,
names the SQL for the DBA (C{registrant-notify-postgres.sql}) and asks
for a full pass every L{FALLBACK_POLL} seconds instead (unless the loader
polls already, C{--db-poll}).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from typing import Any, Callable, cast
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import psycopg2
from psycopg2 import errors as pg_errors
from twisted.internet import defer, error, threads
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres
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

_log = Logger(namespace=__name__)
#: Seconds between liveness checks of the LISTEN connection.
KEEPALIVE = 2.0
#: Reconnection back-off: first delay, factor, cap (seconds).
BACKOFF = (0.5, 2.0, 10.0)
#: Seconds between full passes when NOTIFY could not be set up (and no --db-poll).
FALLBACK_POLL = 30.0
#: The shipped trigger SQL a DBA installs for a role without the rights.
NOTIFY_SQL_FILE = "registrant-notify-postgres.sql"


def redact(url: str) -> str:
    """The URL with its password replaced (in the user part and as C{?password=}), for logs and errors."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name.lower() == "password" for name, _ in pairs):
        query = urlencode([(name, "***" if name.lower() == "password" else value) for name, value in pairs], safe="*/")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Written out: urlunsplit would drop the // of an empty host (postgresql:///db?host=/run/...).
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def channel_name(table: str) -> str:
    """The NOTIFY channel for a table (an identifier of 63 bytes at most)."""
    return ("uacregistrant_" + re.sub(r"[^a-z0-9_]", "_", table.lower()))[:63]


def notify_sql(layout: TableLayout, columns: dict[str, str]) -> str:
    """
    The trigger that NOTIFYs every change: C{{"op", "id", "new", "old"}}
    with the keys as C{[aor, binding_URI, registrar]}; TRUNCATE asks for a
    full resync.  C{columns} maps logical names to the table's real ones.
    """
    table = quote_identifier(layout.table)
    channel = channel_name(layout.table)
    function = quote_identifier(channel + "_notify")

    def key(record: str) -> str:
        return "json_build_array(" + ", ".join(f"{record}.{quote_identifier(columns[c])}" for c in KEY_COLUMNS) + ")"

    row_id = f"{{record}}.{quote_identifier(columns['id'])}" if "id" in columns else "NULL"
    return f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $body$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('{channel}', '{{"op": "TRUNCATE"}}');
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('{channel}', json_build_object('op', TG_OP, 'id', {row_id.format(record="OLD")}, 'old', {key("OLD")})::text);
        RETURN OLD;
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM pg_notify('{channel}', json_build_object('op', TG_OP, 'id', {row_id.format(record="NEW")}, 'new', {key("NEW")}, 'old', {key("OLD")})::text);
        RETURN NEW;
    END IF;
    PERFORM pg_notify('{channel}', json_build_object('op', TG_OP, 'id', {row_id.format(record="NEW")}, 'new', {key("NEW")})::text);
    RETURN NEW;
END;
$body$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS uacregistrant_notify ON {table};
CREATE TRIGGER uacregistrant_notify AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {function}();
DROP TRIGGER IF EXISTS uacregistrant_notify_truncate ON {table};
CREATE TRIGGER uacregistrant_notify_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();
"""


class _Connection(txpostgres.Connection):  # type: ignore[misc]
    """A txpostgres connection that reports its loss, and whose loss noticed while idle is not logged as an error."""

    on_lost: Callable[[Failure], None] | None = None

    def doRead(self) -> Any:
        try:
            return super().doRead()
        except psycopg2.Error as e:
            # The server went away while nothing was asked: returned, not
            # raised, the reactor drops the descriptor and calls
            # connectionLost with it (raised, it also logs "Unhandled Error").
            return e
        except ValueError:
            # libpq closed the socket on the error, and txpostgres then
            # asked to watch descriptor -1.
            if _descriptor(self) != -1:
                raise
            return error.ConnectionLost("the server closed the connection")

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.on_lost is not None:
            self.on_lost(reason)


def _descriptor(connection: txpostgres.Connection) -> int:
    """The connection's socket, or -1 if it has none any more."""
    try:
        return int(connection.fileno())
    except Exception:
        return -1


@implementer(IRegistrantStore)
class PostgresStore:
    """
    The registrant table in PostgreSQL.

    @param notify: install the NOTIFY trigger (when missing or different)
        and LISTEN (C{--no-db-notify}: neither).
    @param poll: the loader's seconds between polls (C{--db-poll}, 0: none);
        when NOTIFY cannot be set up and this is 0, the store asks for a
        full pass (C{on_resync}) every L{FALLBACK_POLL} seconds itself.
    @param clock: the clock of those passes (default: C{reactor}).
    @ivar notify_active: whether changes arrive by NOTIFY (known once started).
    @ivar poll_interval: seconds between the passes the store asks for (0: none).
    """

    def __init__(
        self,
        url: str,
        layout: TableLayout,
        reactor: Any,
        notify: bool = True,
        poll: float = 0.0,
        clock: IReactorTime | None = None,
    ) -> None:
        self.url = url
        self.layout = layout
        self.reactor = reactor
        self.notify = notify
        self.notify_active = False
        self.poll_interval = 0.0
        self._poll = poll
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._fallback = LoopingCall(self._fallback_poll)
        self._fallback.clock = self._clock
        self._pass_asked = False
        self._loading = 0
        self._watching = False
        self._present: dict[str, str] = {}
        self._conn: _Connection | None = None
        self._waiters: list[defer.Deferred[_Connection]] | None = None
        self._listener: _Connection | None = None
        self._on_change: Callable[[Key | None, Key | None], defer.Deferred[None]] | None = None
        self._on_resync: Callable[[], None] | None = None
        self._keepalive = LoopingCall(self._check_listener)
        self._keepalive.clock = self._clock
        self._retry: IDelayedCall | None = None
        self._delay = BACKOFF[0]
        self._listening_once = False
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the query connection is up and, while NOTIFY is used, the listening one too."""
        if self._closed or self._conn is None or self._conn.closed:
            return False
        if self._watching and self.notify_active:
            return self._listener is not None and not self._listener.closed
        return True

    # Before the fork: a quick, read-only check with a connection not kept.

    def check(self) -> None:
        """Connect once, check the table and its columns (creating nothing), disconnect."""
        try:
            db = psycopg2.connect(self.url, connect_timeout=5)
        except psycopg2.Error as e:
            raise StoreError(f"cannot connect to {redact(self.url)}: {_first_line(e)}") from None
        try:
            db.autocommit = True
            with db.cursor() as cursor:
                cursor.execute("SELECT to_regclass(%s)", (quote_identifier(self.layout.table),))
                if cursor.fetchone()[0] is None:
                    self._no_table()
                else:
                    cursor.execute(_COLUMNS_SQL, (self.layout.table,))
                    match_columns(self.layout, [str(name) for (name,) in cursor.fetchall()], self.layout.table)
        except psycopg2.Error as e:
            raise StoreError(f"cannot use table {self.layout.table} at {redact(self.url)}: {_first_line(e)}") from None
        finally:
            db.close()

    def _no_table(self) -> None:
        if not self.layout.is_default:
            raise StoreError(
                f"table {self.layout.table} does not exist; create it (see the packaged schema registrant-postgres.sql) "
                "or use the default table and column names"
            )

    # After the fork: everything through txpostgres, off the reactor's back.

    def start(self) -> defer.Deferred[None]:
        """Create the table if missing, read its columns, install the NOTIFY trigger."""
        table = self.layout.table

        @defer.inlineCallbacks
        def prepare(cursor: Any) -> Any:
            yield cursor.execute("SELECT to_regclass(%s)", (quote_identifier(table),))
            if cursor.fetchone()[0] is None:
                self._no_table()
                try:
                    yield cursor.execute(schema_sql("postgres"))
                except pg_errors.InsufficientPrivilege as e:
                    raise StoreError(
                        f"table {table} does not exist and this role may not create it ({_first_line(e)}): "
                        "have the DBA run the packaged registrant-postgres.sql"
                    ) from None
                _log.warn("created an empty table {table}: there are no accounts to register until rows are added", table=table)
            yield cursor.execute(_COLUMNS_SQL, (table,))
            self._present = match_columns(self.layout, [str(name) for (name,) in cursor.fetchall()], table)
            if self.notify:
                self.notify_active = yield self._install_trigger(cursor)
            yield cursor.execute(f"SELECT count(*) FROM {quote_identifier(table)}")
            _log.info("table {table} holds {rows} row(s)", table=table, rows=cursor.fetchone()[0])

        return self._run(lambda connection: connection.runInteraction(prepare)).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def _install_trigger(self, cursor: Any) -> Any:
        """
        Make sure the NOTIFY trigger is there, as L{notify_sql} writes it:
        creating it only when missing or different (re-creating it takes a
        lock that waits for every other node's load).  Fires with whether
        NOTIFY can be used; C{False} when this role may not create it.

        @raise StoreError: when the database refuses it for another reason.
        """
        table = self.layout.table
        sql = notify_sql(self.layout, self._present)
        body = sql.split("$body$")[1]
        # Nodes starting together: one installs, the others then find it.
        yield cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (channel_name(table) + "_notify",))
        yield cursor.execute(
            "SELECT (SELECT prosrc FROM pg_proc WHERE proname = %s LIMIT 1),"
            " (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s)"
            " AND tgname IN ('uacregistrant_notify', 'uacregistrant_notify_truncate'))",
            (channel_name(table) + "_notify", quote_identifier(table)),
        )
        installed, triggers = cursor.fetchone()
        if installed == body and triggers == 2:
            return True
        # A failure must not abort the transaction the start runs in.
        yield cursor.execute("SAVEPOINT uacregistrant_notify")
        try:
            yield cursor.execute(sql)
        except pg_errors.InsufficientPrivilege as e:
            yield cursor.execute("ROLLBACK TO SAVEPOINT uacregistrant_notify")
            self._cannot_install(_first_line(e), "missing" if installed is None or not triggers else "different", sql)
            return False
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise  # the connection: retried as any other start
        except psycopg2.Error as e:
            raise StoreError(
                f"cannot install the NOTIFY trigger on table {table}: {_first_line(e)}; have the DBA run "
                f"{NOTIFY_SQL_FILE} as the table's owner, or start with --no-db-notify (and --db-poll)"
            ) from None
        yield cursor.execute("RELEASE SAVEPOINT uacregistrant_notify")
        return True

    def _cannot_install(self, reason: str, state: str, sql: str) -> None:
        """The role may not install the trigger: say what the DBA should run, and poll meanwhile."""
        poll = f"re-reading the table every {self._poll:g} s (--db-poll)" if self._poll > 0 else f"re-reading the table every {FALLBACK_POLL:g} s"
        _log.warn(
            "the NOTIFY trigger on table {table} is {state} and this role may not install it ({reason}): "
            "have the DBA run {file} (uacregistrant/store/schema/) as the table's owner; until then no NOTIFY, {poll} "
            "(--no-db-notify to choose this)",
            table=self.layout.table,
            state=state,
            reason=reason,
            file=NOTIFY_SQL_FILE,
            poll=poll,
        )
        if not self.layout.is_default:
            _log.warn("the NOTIFY trigger SQL for table {table} (not the default layout of {file}):\n{sql}", table=self.layout.table, file=NOTIFY_SQL_FILE, sql=sql)

    # Connections.

    def _query_connection(self) -> defer.Deferred[_Connection]:
        if self._conn is not None and not self._conn.closed:
            return defer.succeed(self._conn)
        waiter: defer.Deferred[_Connection] = defer.Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        connection = _Connection(reactor=self.reactor)

        def connected(_: object) -> None:
            waiters, self._waiters = self._waiters or [], None
            self._conn = connection
            connection.on_lost = lambda reason: self._lost("query", reason)
            for w in waiters:
                w.callback(connection)

        def failed(reason: Failure) -> None:
            waiters, self._waiters = self._waiters or [], None
            for w in waiters:
                w.errback(StoreError(f"database unavailable: {_message(reason)}"))

        self._connect(connection).addCallbacks(connected, failed)
        return waiter

    def _connect(self, connection: _Connection) -> defer.Deferred[Any]:
        """
        Connect C{connection}.  libpq looks a host name up synchronously,
        which would stall the reactor on every reconnection while DNS is
        slow: a URL naming one plain host name is looked up first on a
        thread (C{getaddrinfo}, IPv4 and IPv6) and connected to by address
        (C{hostaddr}, the name kept for TLS and C{pg_hba}); any other form
        (IP literals, UNIX socket directories, several hosts, C{host=} in
        the query) is left to libpq as written.
        """
        host = _lookup_host(self.url)
        if host is None:
            return cast(defer.Deferred[Any], connection.connect(self.url))
        port = urlsplit(self.url).port or 5432
        d: defer.Deferred[Any] = threads.deferToThread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)

        def connect(addresses: list[Any]) -> defer.Deferred[Any]:
            return cast(defer.Deferred[Any], connection.connect(self.url, hostaddr=addresses[0][4][0]))

        def unresolved(reason: Failure) -> Failure:
            return Failure(StoreError(f"cannot resolve {host}: {_message(reason)}"))

        return d.addCallbacks(connect, unresolved)

    def _run(self, operation: Callable[[_Connection], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        d = self._query_connection()
        d.addCallback(operation)

        def failed(reason: Failure) -> Failure:
            if reason.check(StoreError):
                return reason
            if reason.check(psycopg2.OperationalError, psycopg2.InterfaceError):
                self._drop_query_connection()
            if reason.check(psycopg2.DataError, psycopg2.IntegrityError):
                return Failure(StoreValueError(f"the table refused the values: {_message(reason)}"))
            return Failure(StoreError(f"database error: {_message(reason)}"))

        return d.addErrback(failed)

    def _drop_query_connection(self) -> None:
        connection, self._conn = self._conn, None
        _close_quietly(connection)

    def _lost(self, which: str, reason: Failure) -> None:
        if self._closed:
            return
        _log.warn("database connection ({which}) lost: {error}; registrations continue from memory", which=which, error=_message(reason))
        if which == "query":
            self._conn = None
        else:
            self._listen_failed(reason)

    # Reading.

    def _select(self) -> tuple[list[str], str]:
        return select_sql(self.layout, self._present)

    def _where_key(self) -> str:
        return where_key_sql(self._present, "%s")

    def load(self, consume: Callable[[list[Row]], None]) -> defer.Deferred[None]:
        """Read every row in one snapshot, BATCH_SIZE per FETCH."""
        self._pass_asked = False  # the pass asked for (if any) is this one
        if not self._present:
            return defer.fail(StoreError("the store is not started"))
        logical, query = self._select()

        @defer.inlineCallbacks
        def interaction(cursor: Any) -> Any:
            yield cursor.execute(f"DECLARE uacregistrant_load NO SCROLL CURSOR FOR {query}")
            read = 0
            while True:
                yield cursor.execute(f"FETCH {BATCH_SIZE} FROM uacregistrant_load")
                values = cursor.fetchall()
                read += len(values)
                if values:
                    consume([make_row(logical, v) for v in values])
                if len(values) < BATCH_SIZE:
                    break
            yield cursor.execute("CLOSE uacregistrant_load")
            _log.info("read {rows} row(s) from {table}", rows=read, table=self.layout.table)

        self._loading += 1

        def done(result: object) -> object:
            self._loading -= 1
            return result

        return self._run(lambda connection: connection.runInteraction(interaction)).addBoth(done)

    def load_key(self, key: Key) -> defer.Deferred[Row | None]:
        """The row with this key, or C{None}."""
        logical, query = self._select()

        def found(rows: list[tuple[Any, ...]]) -> Row | None:
            return make_row(logical, rows[0]) if rows else None

        if not self._present:
            return defer.fail(StoreError("the store is not started"))

        return self._run(lambda c: c.runQuery(f"{query} WHERE {self._where_key()}", key)).addCallback(found)

    # Writing.

    def set_state(self, key: Key, state: int) -> defer.Deferred[int]:
        """Write the state column of exactly this record; fires with the rows changed."""
        if "state" not in self._present:
            return self.load_key(key).addCallback(lambda row: 0 if row is None else 1)
        sql = (
            f"UPDATE {quote_identifier(self.layout.table)} SET {quote_identifier(self._present['state'])} = %s "
            f"WHERE {self._where_key()}"
        )

        @defer.inlineCallbacks
        def interaction(cursor: Any) -> Any:
            yield cursor.execute(sql, (state, *key))
            return int(cursor.rowcount)

        return self._run(lambda c: c.runInteraction(interaction))

    def upsert(self, row: Row) -> defer.Deferred[str]:
        """
        Update the columns C{row} names in the row with its key, or insert
        it (one transaction); fires with C{"updated"} or C{"inserted"}.
        """
        assignments = row_assignments(row, self._present)
        table = quote_identifier(self.layout.table)
        key = [row[name] for name in KEY_COLUMNS]
        key_columns = {self._present[k] for k in KEY_COLUMNS}
        changes = [(name, value) for name, value in assignments if name not in key_columns]
        sets = ", ".join(f"{quote_identifier(name)} = %s" for name, _ in changes)
        names = ", ".join(quote_identifier(name) for name, _ in assignments)
        marks = ", ".join("%s" for _ in assignments)

        @defer.inlineCallbacks
        def interaction(cursor: Any) -> Any:
            if changes:
                yield cursor.execute(f"UPDATE {table} SET {sets} WHERE {self._where_key()}", [v for _, v in changes] + key)
            else:
                yield cursor.execute(f"SELECT 1 FROM {table} WHERE {self._where_key()}", key)
            if cursor.rowcount:
                return "updated"
            yield cursor.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", [v for _, v in assignments])
            return "inserted"

        return self._run(lambda c: c.runInteraction(interaction))

    # Live changes.

    def watch(
        self,
        on_change: Callable[[Key | None, Key | None], defer.Deferred[None]],
        on_resync: Callable[[], None],
    ) -> None:
        """
        LISTEN for the trigger's NOTIFYs (unless --no-db-notify); without
        the trigger, ask for a full pass every L{FALLBACK_POLL} seconds
        (unless the loader polls already).
        """
        if not self.notify or self._watching:
            return
        self._watching = True
        self._on_change = on_change
        self._on_resync = on_resync
        if self.notify_active:
            self._listen()
        elif self._poll <= 0 and not self._closed:
            self.poll_interval = FALLBACK_POLL
            self._fallback.start(FALLBACK_POLL, now=False)

    def _fallback_poll(self) -> None:
        """
        Ask for a full pass, unless one is running or the last one asked for
        has not begun (a pass longer than the interval never piles up).
        """
        if self._loading or self._pass_asked or self._on_resync is None:
            return
        self._pass_asked = True
        self._on_resync()

    def _listen(self) -> None:
        self._retry = None
        if self._closed:
            return
        listener = _Connection(reactor=self.reactor)
        listener.addNotifyObserver(self._notified)
        d = self._connect(listener)
        d.addCallback(lambda _: listener.runOperation(f"LISTEN {channel_name(self.layout.table)}"))

        def listening(_: object) -> None:
            self._listener = listener
            listener.on_lost = lambda reason: self._lost("listen", reason)
            self._delay = BACKOFF[0]
            if not self._keepalive.running:
                self._keepalive.start(KEEPALIVE, now=False)
            if self._listening_once:
                _log.info("database connection back: resynchronising the table")
                if self._on_resync is not None:
                    self._on_resync()
            self._listening_once = True

        def failed(reason: Failure) -> None:
            _close_quietly(listener)
            self._listen_failed(reason)

        d.addCallbacks(listening, failed)

    def _listen_failed(self, reason: Failure) -> None:
        listener, self._listener = self._listener, None
        _close_quietly(listener)
        self._drop_query_connection()
        if self._closed or self._retry is not None:
            return
        # The database refused LISTEN itself (not a lost connection): say how to do without.
        refused = reason.check(psycopg2.DatabaseError) is not None and reason.check(psycopg2.OperationalError) is None
        _log.warn(
            "cannot LISTEN at {url}: {error}; retrying in {delay:.1f}s{hint}",
            url=redact(self.url),
            error=_message(reason),
            delay=self._delay,
            hint=" (--no-db-notify to do without NOTIFY, with --db-poll)" if refused else "",
        )
        self._retry = self._clock.callLater(self._delay, self._listen)
        self._delay = min(BACKOFF[2], self._delay * BACKOFF[1])

    def _check_listener(self) -> None:
        listener = self._listener
        if listener is None:
            return
        d = listener.runQuery("SELECT 1")
        d.addErrback(self._listen_failed)

    def _notified(self, notify: Any) -> defer.Deferred[None] | None:
        try:
            payload = json.loads(notify.payload)
            op = payload["op"]
        except (ValueError, KeyError, TypeError):
            _log.warn("ignoring malformed NOTIFY payload {payload!r}", payload=str(getattr(notify, "payload", ""))[:200])
            return None
        if op == "TRUNCATE":
            if self._on_resync is not None:
                self._on_resync()
            return None
        new = _key(payload.get("new"))
        old = _key(payload.get("old"))
        if self._on_change is None:
            return None
        d = self._on_change(new if op != "DELETE" else None, old)
        return d.addErrback(lambda f: _log.failure("applying a NOTIFY for row {row_id} failed", f, row_id=payload.get("id")))

    def close(self) -> None:
        """Close both connections and stop reconnecting."""
        self._closed = True
        if self._keepalive.running:
            self._keepalive.stop()
        if self._fallback.running:
            self._fallback.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for connection in (self._listener, self._conn):
            _close_quietly(connection)
        self._listener = self._conn = None


def _close_quietly(connection: _Connection | None) -> None:
    """Close a connection that may be half-dead, without reporting its loss."""
    if connection is None or connection.closed:
        return
    connection.on_lost = None
    try:
        connection.close()
    except Exception:
        pass


def _key(value: Any) -> Key | None:
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value):
        return (value[0], value[1], value[2])
    return None


_COLUMNS_SQL = "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s"


def _lookup_host(url: str) -> str | None:
    """The one plain host name of C{url} to look up, or C{None} to leave the URL to libpq."""
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # raises for a port libpq would have to judge
    except ValueError:
        return None
    query = parse_qs(parts.query)
    if not host or "host" in query or "hostaddr" in query:
        return None
    netloc_host = parts.netloc.rpartition("@")[2]
    if "," in netloc_host or "%" in netloc_host or host.startswith("/") or _is_ip(host):
        return None
    return host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _message(reason: Failure) -> str:
    text = str(reason.value).strip()
    return text.splitlines()[0] if text else reason.type.__name__ if reason.type else "error"
