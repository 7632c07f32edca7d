# -*- test-case-name: tests.unit.store.test_sync,tests.unit.store.test_loader -*-
"""
Applies the table's contents to the registry: adds new records, hands
changed configuration to existing ones, and retires records whose rows are
gone, so that a reload, a NOTIFY or a poll never re-registers what did not
change.

A full pass reads a snapshot that may be older than a single-row change
(a NOTIFY, an admin command) applied while the pass runs: the pass leaves
alone every key changed that way after it started, so a deleted row is
not brought back, nor a disabled one enabled, by the pass's older copy.
"""

from __future__ import annotations

from typing import Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from uacregistrant.core.account import Account, AccountKey, RowError, account_from_row
from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.schedule.slices import in_slices
from uacregistrant.sip.sharing import SharedTables
from uacregistrant.store import Row

_log = Logger(namespace=__name__)


class TableSync:
    """
    The one place where rows become records.

    @param poke: called with a record whose send time may have changed.
    @param arrived: called with a record the first load added (it waits
        for its bucket's visit, unless the walk has passed that bucket
        already: the walk starts as the first rows land).
    @param forget: called with a retired record once it is removed.
    @param shared: the service's tables, where accounts keep once what
        they repeat (a fresh set of tables if not given).
    """

    def __init__(
        self,
        registry: Registry,
        policy: Policy,
        clock: IReactorTime,
        *,
        default_expires: int,
        timer_interval: int,
        sockets: list[str],
        poke: Callable[[Registrant], None],
        forget: Callable[[Registrant], None],
        shared: SharedTables | None = None,
        arrived: Callable[[Registrant], None] = lambda registrant: None,
    ) -> None:
        self._shared = shared if shared is not None else SharedTables()
        self._registry = registry
        self._policy = policy
        self._clock = clock
        self._default_expires = default_expires
        self._timer_interval = timer_interval
        self._sockets = sockets
        self.poke = poke
        self._arrived = arrived
        self._forget = forget
        #: Keys deleted by an admin: their rows stay (disabled) but the
        #: records stay forgotten until a row for the key is enabled again.
        self.deleted: set[AccountKey] = set()
        #: Full passes under way (each learns the keys changed meanwhile).
        self._passes: set[FullSync] = set()

    def validate(self, row: Row) -> Account:
        """Validate a row; raises L{RowError}."""
        return account_from_row(
            row,
            default_expires=self._default_expires,
            timer_interval=self._timer_interval,
            sockets=self._sockets,
            shared=self._shared,
        )

    def account(self, row: Row) -> Account | None:
        """Validate a row; log (with its id) and return C{None} if unusable, whatever went wrong."""
        try:
            return self.validate(row)
        except RowError as e:
            reason, hint = e.reason, e.hint
        except Exception as e:
            reason, hint = f"unusable row ({type(e).__name__}: {str(e)[:200]})", "check the row's values"
        _log.error("skipping row id={row_id}: {reason}; fix: {hint}", row_id=_row_id(row), reason=reason, hint=hint)
        return None

    def touch(self, key: AccountKey) -> None:
        """A single-row change of C{key} is under way: passes running now leave it alone."""
        for full in self._passes:
            full.touched.add(key)

    def apply(self, account: Account, immediate: bool = True) -> str:
        """
        Add or update one record (a single-row change: see L{touch}).

        @param immediate: send a new record's first REGISTER now (paced)
            rather than at its bucket's next visit.
        @return: C{"added"}, C{"changed"} or C{"unchanged"}.
        """
        self.touch(account.key)
        return self._apply(account, immediate)

    def _apply(self, account: Account, immediate: bool) -> str:
        now = self._clock.seconds()
        if self.deleted and account.key in self.deleted:
            if not account.enabled:
                return "unchanged"
            self.deleted.discard(account.key)
        existing = self._registry.get(account.key)
        if existing is None:
            registrant = Registrant(account, self._policy)
            self._registry.add(registrant)
            if immediate:
                self.poke(registrant)
            else:
                self._arrived(registrant)
            return "added"
        if existing.reconfigure(account, now):
            self.poke(existing)
            return "changed"
        return "unchanged"

    def delete(self, key: AccountKey) -> bool:
        """Retire a record and keep it forgotten while its row is disabled."""
        self.deleted.add(key)
        return self.retire(key)

    def retire(self, key: AccountKey) -> bool:
        """Un-register (if needed) and forget one record (a single-row change); C{False} if unknown."""
        self.touch(key)
        return self._retire(key)

    def _retire(self, key: AccountKey) -> bool:
        registrant = self._registry.get(key)
        if registrant is None:
            return False
        registrant.retire(self._clock.seconds())
        self.check_finished(registrant)
        if not registrant.removed:
            self.poke(registrant)
        return True

    def check_finished(self, registrant: Registrant) -> None:
        """Remove a retiring record that has nothing left to send."""
        if registrant.finished and not registrant.removed:
            self._registry.remove(registrant)
            self._forget(registrant)

    def full(self, initial: bool = False) -> "FullSync":
        """
        Start a full pass: feed it every row, then call C{finish}.

        @param initial: the first load: new records wait for their bucket's
            visit, so start-up follows the bucket walk.
        """
        full = FullSync(self, initial)
        self._passes.add(full)
        return full

    def _ended(self, full: "FullSync") -> None:
        self._passes.discard(full)


class FullSync:
    """
    One full pass over the table (load, reload or poll): C{feed} it every
    row, then C{finish} (or C{abandon} if the read failed).

    @ivar touched: keys changed by single-row changes since the pass began.
    """

    def __init__(self, sync: TableSync, initial: bool) -> None:
        self._sync = sync
        self._initial = initial
        self.seen: set[AccountKey] = set()
        self.touched: set[AccountKey] = set()
        #: Keys of rows that failed validation: their records are kept.
        self.unusable: set[AccountKey] = set()
        self.counts = {"added": 0, "changed": 0, "unchanged": 0, "skipped": 0, "removed": 0}

    def feed(self, rows: list[Row]) -> None:
        """Apply a batch of rows."""
        seen, touched, counts = self.seen, self.touched, self.counts
        for row in rows:
            account = self._sync.account(row)
            if account is None:
                counts["skipped"] += 1
                # A record whose row turned unusable keeps running on its
                # last good configuration (as after a NOTIFY for that row):
                # an edit mistake must not un-register the account.
                raw = _raw_key(row)
                if raw is not None:
                    self.unusable.add(raw)
                continue
            key = account.key  # (a new tuple at each access)
            if touched and key in touched:
                seen.add(key)
                continue  # changed since this pass's snapshot: the newer change stands
            # One lookup in the set of every key so far (100,000 at a
            # cold start, beyond the cache), not two: a key already there
            # leaves its size as it was.
            before = len(seen)
            seen.add(key)
            if len(seen) == before:
                _log.error(
                    "skipping row id={row_id}: duplicate of (aor, binding_URI, registrar) {key}",
                    row_id=row.get("id"),
                    key=key,
                )
                counts["skipped"] += 1
                continue
            counts[self._sync._apply(account, immediate=not self._initial)] += 1

    def finish(self, clock: IReactorTime, slice_size: int = 10000) -> defer.Deferred[dict[str, int]]:
        """
        Retire every record whose row is gone, looking a slice of the
        registry per reactor turn (100k keys in one turn stalled the
        reactor 50 ms); fires with the counts.
        """
        keys = list(self._sync._registry.keys())
        d = in_slices(clock, keys, slice_size, self._retire_vanished)
        d.addBoth(self._end)
        return d.addCallback(lambda _: self.counts)

    def abandon(self) -> None:
        """The read failed: end the pass without retiring anything."""
        self._sync._ended(self)

    def _end(self, result: object) -> object:
        self._sync._ended(self)
        self.seen = set()
        self.touched = set()
        return result

    def _retire_vanished(self, keys: Sequence[AccountKey]) -> None:
        seen = self.seen
        touched = self.touched
        unusable = self.unusable
        registry = self._sync._registry
        for key in keys:
            if key in seen or key in touched or key in unusable:
                continue
            registrant = registry.get(key)
            if registrant is not None and not registrant.retiring:
                self._sync._retire(key)
                self.counts["removed"] += 1


def _row_id(row: Row) -> object:
    """The row's id for a log line (whatever the column holds, shortened)."""
    row_id = row.get("id")
    return row_id if isinstance(row_id, int) or row_id is None else str(row_id)[:40]


def _raw_key(row: Row) -> AccountKey | None:
    """The row's key columns as stored, if they are text."""
    aor, binding, registrar = row.get("aor"), row.get("binding_URI"), row.get("registrar")
    if isinstance(aor, str) and isinstance(binding, str) and isinstance(registrar, str):
        return (aor, binding, registrar)
    return None
