"""SQLite event store: the embedded default, no server needed.

It shares the flow store's connection handling: it runs on a ``SQLiteStore``'s connection and
lock (its own, or one passed to ``sharing``) and the same migrations, applied by the same
``migrate()``. Threads of one process take turns on that connection; other processes coordinate
through SQLite's database lock (WAL mode lets readers run during a write).

Every append is its own ``BEGIN IMMEDIATE`` transaction, or a savepoint inside
``transaction()``, so a refused append - wrong version, duplicate key, a failure half way through
the events - writes nothing. With a single writer at a time, positions are handed out in commit
order, which is all ``read_all`` needs to never miss an event (see migration 0002).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from tideflow.clock import Clock
from tideflow.errors import SchemaNotReadyError
from tideflow.events.errors import (
    CheckpointConflictError,
    DuplicateEventIdError,
    DuplicateIdempotencyKeyError,
    InvalidIdempotencyKeyError,
    InvalidSnapshotError,
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
)
from tideflow.events.upcasting import Upcasters
from tideflow.storage.event_contract import (
    DEFAULT_PAGE_SIZE,
    PreparedAppend,
    append_retrying,
    check_checkpoint,
    check_event_types,
    check_limit,
    check_page_size,
    check_position,
    check_stream_id,
    check_version,
    decode_objects,
    prepare_append,
    prepare_snapshot,
)
from tideflow.storage.sqlfile import load_queries
from tideflow.storage.sqlite.backend import SQLiteStore
from tideflow.storage.sqlite.errors import is_transient, rollback_quietly, translate, translated
from tideflow.storage.unavailable import is_unavailable

_PARAM = re.compile(r"%\((\w+)\)s")
_QUERIES = {
    name: _PARAM.sub(r":\1", sql)
    for name, sql in load_queries("tideflow.storage.sqlite", "events_queries.sql").items()
}
_LAST_VERSION = 2**62  # "from the end" for backwards reads; above any real version


def _uuid(text: str | None) -> UUID | None:
    return None if text is None else UUID(text)


def _events(rows: list[tuple[Any, ...]]) -> list[RecordedEvent]:
    """A page of event rows (columns as in events_queries.sql) as events, not yet upcast."""
    n = len(rows)
    values = decode_objects([r[9] for r in rows] + [r[10] for r in rows])
    return [
        RecordedEvent(
            UUID(r[4]),
            r[5],
            r[3],
            r[1],
            r[0],
            values[i],
            values[n + i],
            _uuid(r[6]),
            _uuid(r[7]),
            datetime.fromtimestamp(r[8], UTC),
            r[2],
        )
        for i, r in enumerate(rows)
    ]


def _stored_time(moment: datetime) -> tuple[float, datetime]:
    """A timestamp as stored (REAL seconds) and as it will read back, so that what a write
    returns equals what a later read gives, to the microsecond."""
    seconds = moment.timestamp()
    return seconds, datetime.fromtimestamp(seconds, UTC)


def split_script(script: str) -> Iterator[str]:
    """Statements of an SQL script (a projection's DDL), for SQLite, whose ``execute`` runs one
    statement (and whose ``executescript`` would commit the caller's transaction).
    ``sqlite3.complete_statement`` knows where one ends, triggers' ``BEGIN ... END`` included."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip().strip(";").strip():
                yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer


class SQLiteEventStore:
    """``EventStore`` on SQLite. Safe to share between threads."""

    url: str
    clock: Clock
    upcasters: Upcasters
    page_size: int
    dialect: Dialect = "sqlite"

    def __init__(
        self,
        path: str | Path,
        clock: Clock | None = None,
        *,
        upcasters: Upcasters | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        """Open (creating it if needed) the database file at ``path``."""
        self._setup(SQLiteStore(path, clock), True, upcasters, page_size)

    @classmethod
    def sharing(
        cls,
        flow_store: SQLiteStore,
        *,
        upcasters: Upcasters | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> SQLiteEventStore:
        """An event store on ``flow_store``'s connection, lock and clock. Closing it leaves the
        flow store open."""
        store = cls.__new__(cls)
        store._setup(flow_store, False, upcasters, page_size)
        return store

    def _setup(
        self, flows: SQLiteStore, owns: bool, upcasters: Upcasters | None, page_size: int
    ) -> None:
        self._flows = flows
        self._owns_flows = owns
        self._conn: sqlite3.Connection = flows.connection
        self._lock: threading.RLock = flows.lock
        self.url = flows.url
        self.clock = flows.clock
        self.upcasters = upcasters if upcasters is not None else Upcasters()
        self.page_size = check_page_size(page_size)

    def is_unavailable(self, exc: BaseException) -> bool:
        return is_unavailable(exc, is_transient)

    def migrate(self) -> list[str]:
        return self._flows.migrate()

    def close(self) -> None:
        if self._owns_flows:
            self._flows.close()

    def _execute(self, name: str, params: dict[str, Any]) -> sqlite3.Cursor:
        """Run one of our named queries (the caller holds ``_lock``)."""
        try:
            return self._conn.execute(_QUERIES[name], params)
        except sqlite3.IntegrityError:
            raise  # the caller knows what a constraint of its statement means
        except (sqlite3.Error, UnicodeEncodeError) as exc:
            error = translate(exc, f"SQLite database {self._flows.path!r}: query {name}")
            if isinstance(error, SchemaNotReadyError):
                error = SchemaNotReadyError(
                    "the tideflow event tables are missing from this database; run `tideflow "
                    f"migrate` (or store.migrate()) first: {exc}"
                )
            raise error from exc

    def _rows(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._execute(query, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One atomic unit of writes: a transaction of its own, or a savepoint when one is open
        (inside ``transaction()``), so that a failure rolls back exactly this unit."""
        with self._lock:
            if self._conn.in_transaction:
                begin, commit = "SAVEPOINT tideflow_events", "RELEASE tideflow_events"
                rollback: tuple[str, ...] = ("ROLLBACK TO tideflow_events", commit)
            else:
                begin, commit, rollback = "BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",)
            with translated(f"SQLite database {self._flows.path!r}: beginning a transaction"):
                self._conn.execute(begin)
            try:
                yield
            except BaseException:
                rollback_quietly(self._conn, rollback)
                raise
            try:
                self._conn.execute(commit)
            except sqlite3.Error as exc:
                rollback_quietly(self._conn, rollback)
                raise translate(exc, f"SQLite database {self._flows.path!r}: committing") from exc

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

        def write() -> list[RecordedEvent]:
            with self._write():
                return self._append(prepared)

        return append_retrying(self.read_stream, prepared.stream_id, prepared.event_ids, write)

    def _append(self, p: PreparedAppend) -> list[RecordedEvent]:
        """The append's statements; the caller holds ``_write()``, which rolls back on error."""
        seconds, recorded_at = _stored_time(self.clock.now())
        if p.idempotency_key is not None:
            inserted = self._execute(
                "insert_idempotency_key",
                {
                    "key": p.idempotency_key,
                    "stream_id": p.stream_id,
                    "result": p.result_json,
                    "recorded_at": seconds,
                },
            ).rowcount
            if not inserted:
                record = self._idempotent_result(p.idempotency_key)
                raise DuplicateIdempotencyKeyError(
                    p.idempotency_key,
                    record.stream_id if record else None,
                    record.result_json if record else None,
                )
        row = self._execute("stream_version", {"stream_id": p.stream_id}).fetchone()
        current = row[0] if row else 0
        kind = p.expected_kind
        if (
            (kind == "no_stream" and row)
            or (kind == "exists" and not row)
            or (kind == "exact" and current != p.expected_number)
        ):
            raise WrongExpectedVersionError(p.stream_id, p.expected, current)
        positions = []
        for i, event_id in enumerate(p.event_ids):
            causation, correlation = p.causation_ids[i], p.correlation_ids[i]
            try:
                cur = self._execute(
                    "insert_event",
                    {
                        "version": current + 1 + i,
                        "schema_version": p.schema_versions[i],
                        "stream_id": p.stream_id,
                        "event_id": str(event_id),
                        "event_type": p.event_types[i],
                        "causation_id": None if causation is None else str(causation),
                        "correlation_id": None if correlation is None else str(correlation),
                        "recorded_at": seconds,
                        "data": p.data[i],
                        "metadata": p.metadata[i],
                    },
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateEventIdError(
                    f"event #{i} appended to {p.stream_id!r} has event_id {event_id}, which is "
                    "already recorded; nothing was written. Event ids are unique across the "
                    "store: leave event_id out to get a fresh uuid4, and never reuse one."
                ) from exc
            positions.append(cur.fetchone()[0])
        if positions:
            self._execute(
                "set_stream_version",
                {"stream_id": p.stream_id, "version": current + len(positions)},
            )
        return p.recorded(current + 1, positions, recorded_at)

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
        self, stream_id: str, from_version: int | None, limit: int | None, backwards: bool
    ) -> Iterator[RecordedEvent]:
        name = "read_stream_backwards" if backwards else "read_stream_forwards"
        version = from_version or (_LAST_VERSION if backwards else 1)
        remaining = limit
        while remaining != 0 and version >= 1:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._rows(name, stream_id=stream_id, from_version=version, limit=size)
            yield from self.upcasters.upcast_all(_events(rows))
            if len(rows) < size:
                return
            version = rows[-1][1] - 1 if backwards else rows[-1][1] + 1
            if remaining is not None:
                remaining -= len(rows)

    def read_all(
        self,
        from_position: int = 0,
        event_types: Iterable[str] | None = None,
        limit: int | None = None,
        *,
        to_position: int | None = None,
    ) -> Iterator[RecordedEvent]:
        return self._read_all(
            check_position(from_position, "from_position"),
            check_event_types(event_types),
            check_limit(limit),
            None if to_position is None else check_position(to_position, "to_position"),
        )

    def _read_all(
        self, after: int, types: list[str] | None, limit: int | None, to_position: int | None
    ) -> Iterator[RecordedEvent]:
        if limit == 0 or types == []:
            return
        until = self.head_position()
        if to_position is not None:
            until = min(until, to_position)
        name = "read_all" if types is None else "read_all_of_types"
        type_list = None if types is None else json.dumps(types)
        remaining = limit
        while after < until:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._rows(name, after=after, until=until, limit=size, event_types=type_list)
            yield from self.upcasters.upcast_all(_events(rows))
            if len(rows) < size:
                return
            after = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
                if remaining == 0:
                    return

    def head_position(self) -> int:
        return int(self._rows("horizon")[0][0])

    def stream_version(self, stream_id: str) -> int:
        rows = self._rows("stream_version", stream_id=check_stream_id(stream_id))
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
        with self._write():
            row = self._execute("stream_version", {"stream_id": s.stream_id}).fetchone()
            stream_version = row[0] if row else 0
            if stream_version < s.version:
                raise InvalidSnapshotError(
                    f"cannot snapshot stream {s.stream_id!r} at version {s.version}: the stream "
                    f"is at version {stream_version}. Snapshot only a state folded from events "
                    "read from the stream, with the version of the last one. Nothing was written."
                )
            self._execute(
                "save_snapshot",
                {
                    "stream_id": s.stream_id,
                    "version": s.version,
                    "snapshot_type": s.snapshot_type,
                    "schema_version": s.schema_version,
                    "state": s.state_json,
                    "taken_at": self.clock.now().timestamp(),
                },
            )

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        rows = self._rows("load_snapshot", stream_id=check_stream_id(stream_id))
        if not rows:
            return None
        sid, version, state, snapshot_type, schema_version, taken_at = rows[0]
        return self.upcasters.upcast_snapshot(
            Snapshot(
                sid,
                version,
                json.loads(state),
                snapshot_type,
                schema_version,
                datetime.fromtimestamp(taken_at, UTC),
            )
        )

    # --- idempotency and checkpoints ------------------------------------------------------------

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        check_name(key, "idempotency key", InvalidIdempotencyKeyError)
        with self._lock:
            return self._idempotent_result(key)

    def _idempotent_result(self, key: str) -> IdempotencyRecord | None:
        row = self._execute("get_idempotent_result", {"key": key}).fetchone()
        if row is None:
            return None
        return IdempotencyRecord(row[0], row[1], row[2], datetime.fromtimestamp(row[3], UTC))

    def get_checkpoint(self, name: str) -> int:
        rows = self._rows("get_checkpoint", name=check_checkpoint(name))
        return int(rows[0][0]) if rows else 0

    def advance_checkpoint(self, name: str, position: int, *, expected: int | None = None) -> None:
        with self.transaction() as tx:
            tx.advance_checkpoint(name, position, expected=expected)

    def reset_checkpoint(self, name: str, position: int = 0) -> None:
        name = check_checkpoint(name, position)
        with self._write():
            self._execute(
                "reset_checkpoint",
                {"name": name, "position": position, "updated_at": self.clock.now().timestamp()},
            )

    @contextmanager
    def transaction(self) -> Iterator[SQLiteEventTransaction]:
        with self._write():
            yield SQLiteEventTransaction(self)


class SQLiteEventTransaction:
    """``EventTransaction`` on the store's connection, inside ``BEGIN IMMEDIATE``: SQLite's write
    lock is held for the whole block, so checkpoints are trivially locked."""

    dialect: Dialect = "sqlite"

    def __init__(self, store: SQLiteEventStore) -> None:
        self._store = store
        self.connection = store._conn

    def execute_script(self, script: str) -> None:
        for statement in split_script(script):
            self.connection.execute(statement)

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
        with store._write():
            return store._append(prepared)

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        check_name(key, "idempotency key", InvalidIdempotencyKeyError)
        return self._store._idempotent_result(key)

    def read_stream(
        self,
        stream_id: str,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]:
        # The store's one connection is this transaction's: its reads already see our appends.
        return self._store.read_stream(stream_id, from_version, limit, backwards)

    def lock_checkpoint(self, name: str) -> int:
        name = check_checkpoint(name)
        store = self._store
        store._execute(
            "ensure_checkpoint", {"name": name, "updated_at": store.clock.now().timestamp()}
        )
        return int(store._execute("get_checkpoint", {"name": name}).fetchone()[0])

    def advance_checkpoint(self, name: str, position: int, *, expected: int | None = None) -> None:
        name = check_checkpoint(name, position)
        current = self.lock_checkpoint(name)
        if (expected is not None and expected != current) or position < current:
            raise CheckpointConflictError(name, position, current, expected)
        if position != current:
            self._store._execute(
                "set_checkpoint",
                {
                    "name": name,
                    "position": position,
                    "updated_at": self._store.clock.now().timestamp(),
                },
            )
