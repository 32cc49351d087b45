"""The event store, written once over a ``Database``: appends, reads, snapshots, checkpoints.

The append is the Database's hook (``Database.append_events``: PostgreSQL keeps the log's order
with floor locks in ``append_events_v3``, SQLite with its single write lock); everything around
it - validation and encoding (``event_contract.prepare_append``), retrying a lost answer, the
idempotency record of a refused key, waking handler runners - is here.

Reads page with keyset queries, one short statement per page, so an iterator left half-consumed
holds nothing. ``read_all`` first computes the safe horizon in a statement of its own, then reads
up to it: PostgreSQL's migration 0004 says why that order, and why each page needs a snapshot of
its own (``Database.records`` runs each statement on its own).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any

from tideflow import jsonutil
from tideflow.clock import Clock
from tideflow.errors import StorageError
from tideflow.events.errors import (
    CheckpointConflictError,
    DuplicateIdempotencyKeyError,
    InvalidEventError,
    InvalidIdempotencyKeyError,
    InvalidSnapshotError,
    StreamDeletedError,
    StreamNotFoundError,
    WrongExpectedVersionError,
)
from tideflow.events.handling import Dialect
from tideflow.events.model import (
    ExpectedVersion,
    IdempotencyRecord,
    NewEvent,
    RecordedEvent,
    Snapshot,
    check_name,
    recorded_event,
)
from tideflow.events.upcasting import Upcasters
from tideflow.storage.database import EVENTS_CHANNEL, Database, Row, Tx
from tideflow.storage.event_contract import (
    DEFAULT_PAGE_SIZE,
    PreparedAppend,
    PreparedSnapshot,
    append_retrying,
    check_checkpoint,
    check_event_types,
    check_expected,
    check_limit,
    check_page_size,
    check_position,
    check_stream_id,
    check_version,
    decode_objects,
    prepare_append,
    prepare_snapshot,
)

_LAST_VERSION = 2**62  # "from the end" for backwards reads; above any real version
#: read_all's query by (backwards, of some types only).
_READ_ALL = {
    (False, False): "read_all",
    (False, True): "read_all_of_types",
    (True, False): "read_all_backwards",
    (True, True): "read_all_of_types_backwards",
}


def _page_query(
    event_types: Sequence[str] | None, limit: int
) -> tuple[str, list[str] | None, int] | None:
    """A handler page's named query, its event types and its size; None if it can hold no
    event (no types, or a limit of 0)."""
    types = check_event_types(event_types)
    size = check_limit(limit)
    if types == [] or not size:
        return None
    return ("read_page_of_types" if types is not None else "read_page"), types, size


class SqlEventStore:
    """``EventStore`` over a ``Database``. Safe to share between threads.

    ``owns_db``: ``close()`` closes the Database too (a store opened on its own)."""

    def __init__(
        self,
        db: Database,
        *,
        upcasters: Upcasters | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        owns_db: bool = False,
    ) -> None:
        self.db = db
        self.url = db.url
        self.clock: Clock = db.clock
        self.dialect: Dialect = db.dialect
        self.upcasters = upcasters if upcasters is not None else Upcasters()
        self.page_size = check_page_size(page_size)
        self._owns_db = owns_db

    def is_unavailable(self, exc: BaseException) -> bool:
        return self.db.is_unavailable(exc)

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def _records(self, tx: Tx | None, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        if tx is not None:
            return tx.records(name, **params)
        return self.db.records(name, **params)

    def _events(self, rows: list[tuple[Any, ...]]) -> list[RecordedEvent]:
        """A page of event rows (columns as in events_queries.sql) as events, not yet upcast."""
        n = len(rows)
        values = decode_objects([r[9] for r in rows] + [r[10] for r in rows])
        uuid, time = self.db.decode_uuid, self.db.decode_time
        return [
            recorded_event(
                uuid(r[4]),
                r[5],
                r[3],
                r[1],
                r[0],
                values[i],
                values[n + i],
                r[6] and uuid(r[6]),  # no call for a null: most events have no causation
                r[7] and uuid(r[7]),
                time(r[8]),
                r[2],
            )
            for i, r in enumerate(rows)
        ]

    # --- appending ------------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion | int,
        *,
        idempotency_key: str | None = None,
        result_json: str | None = None,
    ) -> list[RecordedEvent]:
        prepared = prepare_append(
            stream_id, events, expected_version, idempotency_key, result_json, self.upcasters
        )
        try:
            return append_retrying(
                self.read_stream,
                prepared.stream_id,
                prepared.event_ids,
                lambda: self._append(None, prepared),
            )
        finally:
            # Failed appends too: one that rolled back after drawing a position held back the
            # readers' horizon, and the appends it held back have already woken them.
            self.db.wake(EVENTS_CHANNEL)

    def _append(self, tx: Tx | None, p: PreparedAppend) -> list[RecordedEvent]:
        recorded_at = self.db.stored_time(self.clock.now())
        try:
            first_version, positions = self.db.append_events(tx, p, recorded_at)
        except DuplicateIdempotencyKeyError as exc:
            # Rolled back (the append, or its savepoint): the key's first use can be read now,
            # once the transaction that recorded it has committed.
            record = self._idempotent_result(tx, exc.key)
            raise DuplicateIdempotencyKeyError(
                exc.key,
                record.stream_id if record else None,
                record.result_json if record else None,
            ) from None
        return p.recorded(first_version, positions, recorded_at)

    # --- reading --------------------------------------------------------------------------------

    def read_stream(
        self,
        stream_id: str,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]:
        return self._read_stream(
            check_stream_id(stream_id),
            check_version(from_version),
            check_limit(limit),
            bool(backwards),
        )

    def _read_stream(
        self,
        stream_id: str,
        from_version: int | None,
        limit: int | None,
        backwards: bool,
        tx: SqlEventTransaction | None = None,
    ) -> Iterator[RecordedEvent]:
        name = "read_stream_backwards" if backwards else "read_stream_forwards"
        version = from_version or (_LAST_VERSION if backwards else 1)
        remaining = limit
        while remaining != 0 and version >= 1:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._records(
                None if tx is None else tx.open(),
                name,
                stream_id=stream_id,
                from_version=version,
                limit=size,
            )
            yield from self.upcasters.upcast_all(self._events(rows))
            if len(rows) < size:
                return
            version = rows[-1][1] - 1 if backwards else rows[-1][1] + 1
            if remaining is not None:
                remaining -= len(rows)

    def read_all(
        self,
        from_position: int | None = None,
        event_types: Iterable[str] | None = None,
        limit: int | None = None,
        *,
        to_position: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]:
        start = None if from_position is None else check_position(from_position, "from_position")
        types = check_event_types(event_types)
        limit = check_limit(limit)
        end = None if to_position is None else check_position(to_position, "to_position")
        if backwards:  # positions in [end, start): as (after, until], read from the top
            return self._read_all(
                (end or 0) - 1, types, limit, None if start is None else start - 1, True
            )
        return self._read_all(start or 0, types, limit, end, False)

    def _read_all(
        self,
        after: int,
        types: list[str] | None,
        limit: int | None,
        until: int | None,
        backwards: bool,
    ) -> Iterator[RecordedEvent]:
        """Events with ``after < position <= until``, never above the horizon, from the
        bottom or (``backwards``) from the top. Backwards too it starts at the horizon: above
        it, an append in flight may still commit an event below one already delivered."""
        if limit == 0 or types == []:
            return
        horizon = self.head_position()  # a statement of its own, BEFORE the reads: see above
        until = horizon if until is None else min(until, horizon)
        name = _READ_ALL[backwards, types is not None]
        remaining = limit
        while after < until:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._records(
                None, name, after=after, until=until, limit=size, event_types=types
            )
            yield from self.upcasters.upcast_all(self._events(rows))
            if len(rows) < size:
                return
            if backwards:
                until = rows[-1][0] - 1
            else:
                after = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
                if remaining == 0:
                    return

    def read_page(
        self, after: int, event_types: Sequence[str] | None, limit: int
    ) -> tuple[list[RecordedEvent], int]:
        after = check_position(after, "after")
        _, events, horizon = self._page(after, None, event_types, limit)
        return events, horizon

    def read_page_from_checkpoint(
        self, name: str, event_types: Sequence[str] | None, limit: int
    ) -> tuple[int, list[RecordedEvent], int]:
        return self._page(None, check_checkpoint(name), event_types, limit)

    def _page(
        self,
        after: int | None,
        checkpoint: str | None,
        event_types: Sequence[str] | None,
        limit: int,
    ) -> tuple[int, list[RecordedEvent], int]:
        query = _page_query(event_types, limit)
        if query is None:  # nothing to read: where it is, and the head
            if after is None:
                assert checkpoint is not None
                after = self.get_checkpoint(checkpoint)
            return after, [], max(self.head_position(), after)
        name, types, size = query
        after, horizon, rows = self.db.records_below_horizon(
            name, after=after, checkpoint=checkpoint, limit=size, event_types=types
        )
        return (after, *self._page_of(after, horizon, rows))

    def _page_of(
        self, after: int, horizon: int, rows: list[tuple[Any, ...]]
    ) -> tuple[list[RecordedEvent], int]:
        """A page's rows as events and the position it reaches (nothing past ``after``: none)."""
        if horizon <= after:
            return [], after
        return list(self.upcasters.upcast_all(self._events(rows))), horizon

    def head_position(self) -> int:
        return int(self._records(None, "horizon")[0][0])

    def stream_version(self, stream_id: str) -> int:
        rows = self._records(None, "stream_version", stream_id=check_stream_id(stream_id))
        return int(rows[0][0]) if rows else 0

    # --- snapshots ------------------------------------------------------------------------------

    def save_snapshot(
        self,
        stream_id: str,
        version: int,
        state: Mapping[str, Any],
        *,
        snapshot_type: str = "snapshot",
        schema_version: int | None = None,
    ) -> None:
        s = prepare_snapshot(
            stream_id, version, state, snapshot_type, schema_version, self.upcasters
        )
        with self.db.transaction() as tx:
            self._save_snapshot(tx, s)

    def _save_snapshot(self, tx: Tx, s: PreparedSnapshot) -> None:
        """Under the stream row's lock (PostgreSQL), so that a concurrent delete cannot leave a
        snapshot of a deleted stream behind."""
        found = tx.rows("lock_stream", stream_id=s.stream_id)
        if found and found[0]["deleted_at"] is not None:
            raise StreamDeletedError(s.stream_id, found[0]["deleted_at"])
        stream_version = found[0]["version"] if found else 0
        if stream_version < s.version:
            raise InvalidSnapshotError(
                f"cannot snapshot stream {s.stream_id!r} at version {s.version}: the stream "
                f"is at version {stream_version}. Snapshot only a state folded from events "
                "read from the stream, with the version of the last one. Nothing was written."
            )
        tx.run(
            "save_snapshot",
            stream_id=s.stream_id,
            version=s.version,
            snapshot_type=s.snapshot_type,
            schema_version=s.schema_version,
            state=s.state_json,
            taken_at=self.clock.now(),
        )

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        rows = self.db.rows("load_snapshot", stream_id=check_stream_id(stream_id))
        if not rows:
            return None
        r = rows[0]
        return self.upcasters.upcast_snapshot(
            Snapshot(
                r["stream_id"],
                r["version"],
                jsonutil.loads(r["state"]),
                r["snapshot_type"],
                r["schema_version"],
                r["taken_at"],
            )
        )

    # --- deleting -------------------------------------------------------------------------------

    def delete_stream(
        self,
        stream_id: str,
        expected_version: ExpectedVersion | int = ExpectedVersion.ANY,
        *,
        hard: bool = False,
    ) -> None:
        with self.transaction() as tx:
            tx.delete_stream(stream_id, expected_version, hard=hard)

    # --- idempotency and checkpoints ------------------------------------------------------------

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        check_name(key, "idempotency key", InvalidIdempotencyKeyError)
        return self._idempotent_result(None, key)

    def expire_idempotency_keys(self, older_than: float, limit: int = 500) -> int:
        before = self.clock.now() - timedelta(seconds=older_than)
        with self.db.transaction() as tx:
            return tx.run("expire_idempotency_keys", before=before, limit=limit)

    def _idempotent_result(self, tx: Tx | None, key: str) -> IdempotencyRecord | None:
        if tx is None:
            rows = self.db.rows("get_idempotent_result", key=key)
        else:
            rows = tx.rows("get_idempotent_result", key=key)
        if not rows:
            return None
        r = rows[0]
        return IdempotencyRecord(r["key"], r["stream_id"], r["result"], r["recorded_at"])

    def get_checkpoint(self, name: str) -> int:
        rows = self._records(None, "get_checkpoint", name=check_checkpoint(name))
        return int(rows[0][0]) if rows else 0

    def advance_checkpoint(self, name: str, position: int, *, expected: int | None = None) -> None:
        with self.transaction() as tx:
            tx.advance_checkpoint(name, position, expected=expected)

    def reset_checkpoint(self, name: str, position: int = 0) -> None:
        name = check_checkpoint(name, position)
        with self.db.transaction() as tx:
            tx.run("reset_checkpoint", name=name, position=position, updated_at=self.clock.now())

    @contextmanager
    def transaction(self) -> Iterator[SqlEventTransaction]:
        with self.db.transaction() as tx:
            event_tx = SqlEventTransaction(self, tx)
            try:
                yield event_tx
            finally:
                event_tx.closed = True


class SqlEventTransaction:
    """``EventTransaction``: a ``Tx`` of the store's Database with the event store's operations.
    Being a Tx, it is what a reaction hands to the other stores (handler leases, process
    instances, flow runs), so that all of it commits together."""

    def __init__(self, store: SqlEventStore, tx: Tx) -> None:
        self._store = store
        self.tx = tx
        self.dialect: Dialect = tx.dialect
        self._checkpoints: dict[str, int] = {}  # locked in this transaction -> position
        self._woke = False
        self.closed = False  # the block ended

    # --- Tx, delegated --------------------------------------------------------------------------

    @property
    def connection(self) -> Any:
        return self.tx.connection

    @property
    def notify(self) -> bool:
        return self.tx.notify

    @notify.setter
    def notify(self, value: bool) -> None:
        self.tx.notify = value

    @property
    def run_ends(self) -> set[str]:
        return self.tx.run_ends

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        return self.tx.rows(name, **params)

    def run(self, name: str, /, **params: Any) -> int:
        return self.tx.run(name, **params)

    def run_many(self, name: str, params: Sequence[dict[str, Any]], /) -> None:
        self.tx.run_many(name, params)

    def records(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        return self.tx.records(name, **params)

    def defer(self, name: str, /, **params: Any) -> None:
        self.tx.defer(name, **params)

    def defer_many(self, name: str, params: Sequence[dict[str, Any]], /) -> None:
        self.tx.defer_many(name, params)

    def prefetch(self, name: str, /, **params: Any) -> Callable[[], list[Row]]:
        return self.tx.prefetch(name, **params)

    def page_after_commit(
        self, name: str, /, *, after: int, **params: Any
    ) -> Callable[[], tuple[int, list[tuple[Any, ...]]] | None]:
        return self.tx.page_after_commit(name, after=after, **params)

    def read_page_after_commit(
        self, after: int, event_types: Sequence[str] | None, limit: int
    ) -> Callable[[], tuple[list[RecordedEvent], int] | None]:
        after = check_position(after, "after")
        query = _page_query(event_types, limit)
        if query is None:
            return lambda: None
        name, types, size = query
        fetch = self.tx.page_after_commit(name, after=after, limit=size, event_types=types)

        def page() -> tuple[list[RecordedEvent], int] | None:
            found = fetch()
            return None if found is None else self._store._page_of(after, *found)

        return page

    def execute(self, sql: str, params: Any = None) -> Any:
        return self.tx.execute(sql, params)

    def execute_script(self, script: str) -> None:
        self.tx.execute_script(script)

    def savepoint(self) -> AbstractContextManager[None]:
        return self.open().savepoint()

    def on_end(self, callback: Callable[[], None]) -> None:
        self.tx.on_end(callback)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self.tx.on_commit(callback)

    def open(self) -> Tx:
        """The transaction, while it is open. A ``read_stream`` iterator kept past the block
        would otherwise read its next page on a connection that is back in the pool, perhaps in
        another thread's transaction."""
        if self.closed:
            raise StorageError(
                "this event store transaction has ended: consume tx.read_stream() "
                "inside its `with store.transaction()` block, or use "
                "store.read_stream() after it"
            )
        return self.tx

    # --- the event store's operations -----------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion | int,
        *,
        idempotency_key: str | None = None,
        result_json: str | None = None,
    ) -> list[RecordedEvent]:
        store = self._store
        prepared = prepare_append(
            stream_id, events, expected_version, idempotency_key, result_json, store.upcasters
        )
        if not self._woke:
            self._woke = True
            self.tx.on_end(lambda: store.db.wake(EVENTS_CHANNEL))
        return store._append(self.tx, prepared)

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        check_name(key, "idempotency key", InvalidIdempotencyKeyError)
        return self._store._idempotent_result(self.tx, key)

    def read_stream(
        self,
        stream_id: str,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]:
        return self._store._read_stream(
            check_stream_id(stream_id),
            check_version(from_version),
            check_limit(limit),
            bool(backwards),
            self,
        )

    def save_snapshot(
        self,
        stream_id: str,
        version: int,
        state: Mapping[str, Any],
        *,
        snapshot_type: str = "snapshot",
        schema_version: int | None = None,
    ) -> None:
        store = self._store
        s = prepare_snapshot(
            stream_id, version, state, snapshot_type, schema_version, store.upcasters
        )
        store._save_snapshot(self.open(), s)

    def delete_stream(
        self,
        stream_id: str,
        expected_version: ExpectedVersion | int = ExpectedVersion.ANY,
        *,
        hard: bool = False,
    ) -> None:
        stream_id = check_stream_id(stream_id)
        kind, number = check_expected(stream_id, expected_version)
        if kind == "no_stream":
            raise InvalidEventError(
                f"delete_stream({stream_id!r}) with ExpectedVersion.NO_STREAM: a stream that "
                "does not exist cannot be deleted; pass ANY, EXISTS or the stream's version"
            )
        tx = self.open()
        found = tx.rows("lock_stream", stream_id=stream_id)
        if not found:
            raise StreamNotFoundError(stream_id)
        version, deleted_at = found[0]["version"], found[0]["deleted_at"]
        if deleted_at is not None and not hard:
            raise StreamDeletedError(stream_id, deleted_at)
        if kind == "exact" and version != number:
            raise WrongExpectedVersionError(stream_id, expected_version, version)
        tx.run("delete_snapshot", stream_id=stream_id)
        if hard:
            tx.run("erase_stream_events", stream_id=stream_id)
            tx.run("erase_stream_keys", stream_id=stream_id)
            tx.run("erase_stream", stream_id=stream_id)
        else:
            tx.run("hide_stream_events", stream_id=stream_id)
            tx.run("mark_stream_deleted", stream_id=stream_id, deleted_at=self._store.clock.now())

    def lock_checkpoint(self, name: str) -> int:
        return self.lock_checkpoint_soon(name)()

    def lock_checkpoint_soon(self, name: str) -> Callable[[], int]:
        name = check_checkpoint(name)
        if name in self._checkpoints:
            return functools.partial(self._checkpoints.__getitem__, name)
        fetch = self.tx.prefetch("lock_checkpoint", name=name, updated_at=self._store.clock.now())

        def position() -> int:
            if name not in self._checkpoints:
                self._checkpoints[name] = int(fetch()[0]["position"])
            return self._checkpoints[name]

        return position

    def advance_checkpoint(self, name: str, position: int, *, expected: int | None = None) -> None:
        name = check_checkpoint(name, position)
        current = self.lock_checkpoint(name)
        if (expected is not None and expected != current) or position < current:
            raise CheckpointConflictError(name, position, current, expected)
        if position != current:
            # With the COMMIT: the row is locked and the value checked, so nothing but the
            # database's weather can refuse it.
            self.tx.defer(
                "set_checkpoint", name=name, position=position, updated_at=self._store.clock.now()
            )
            self._checkpoints[name] = position
