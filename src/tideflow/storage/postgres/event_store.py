"""PostgreSQL event store: production, many writers on many machines.

It shares the flow store's connection handling: it runs on a ``PostgresStore``'s pool (its own,
or one passed to ``sharing``) and the same migrations, applied by the same ``migrate()``.

An append is one statement - a call of ``append_events_v2`` (migration 0004) - in an autocommit
connection, so it costs one round trip and commits on its own; inside ``transaction()`` the same
call runs under a savepoint, so a refused append leaves the caller's transaction usable, sent
with it in one libpq pipeline, so that it is one round trip too (``_under_savepoint``). It is
the hot path of every write, so it skips psycopg's cursors: a statement prepared once per
connection, parameters encoded here, run through libpq (``_run_append``). The function raises
SQLSTATE ``TF001`` / ``TF002`` for a wrong expected version / a duplicate idempotency key; driver
errors become the event store's typed errors in one place each (``_append_error``, ``_execute``
and ``_check``, ``_connection``).

Reads page with keyset queries, one short-lived pooled connection per page, so an iterator left
half-consumed holds nothing. ``read_all`` first computes the safe horizon (``event_horizon_v2``)
in a statement of its own, then reads up to it - the migration's header says why that order, and
the autocommit mode that gives each statement a fresh snapshot, are what make it correct.
"""

from __future__ import annotations

import json
import logging
import struct
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, pq
from psycopg.abc import PQGen
from psycopg.pq.abc import PGconn, PGresult
from psycopg_pool import ConnectionPool

from tideflow.clock import Clock
from tideflow.errors import StorageError
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
from tideflow.storage.handler_contract import EVENTS_CHANNEL
from tideflow.storage.postgres.backend import PostgresStore
from tideflow.storage.postgres.errors import is_transient, translate
from tideflow.storage.postgres.notifier import CoalescingNotifier
from tideflow.storage.sqlfile import load_queries
from tideflow.storage.unavailable import is_unavailable

log = logging.getLogger(__name__)

_QUERIES = load_queries("tideflow.storage.postgres", "events_queries.sql")
_WRONG_VERSION = "TF001"
_DUPLICATE_KEY = "TF002"
_LAST_VERSION = 2**62  # "from the end" for backwards reads; above any real version

Conn = psycopg.Connection[Any]

#: The append's prepared statement, created on a connection the first time it appends (and again
#: if something deallocated it); _PREPARED holds the connections that have it.
_APPEND_STATEMENT = b"tideflow_append_events_v2"
_PREPARED: weakref.WeakSet[Conn] = weakref.WeakSet()
#: Parameter formats: binary - a text or JSON value travels as its bytes, unquoted (and a NUL
#: byte is refused by the server rather than cutting the value short), a bigint as 8 bytes - but
#: for the timestamp, sent as ISO text so that the server interprets it as psycopg would.
_APPEND_FORMATS = [1, 1, 1, 1, 1, 1, 0, 1, 1]
_INT8 = struct.Struct("!q").pack
_FATAL = pq.ExecStatus.FATAL_ERROR
_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
#: The append's savepoint inside a transaction (_under_savepoint).
_SAVEPOINT = b"SAVEPOINT tideflow_append"
_RELEASE = b"RELEASE SAVEPOINT tideflow_append"
_ROLLBACK_TO = b"ROLLBACK TO SAVEPOINT tideflow_append; RELEASE SAVEPOINT tideflow_append"


def _events(rows: list[tuple[Any, ...]]) -> list[RecordedEvent]:
    """A page of event rows (columns as in events_queries.sql) as events, not yet upcast."""
    n = len(rows)
    values = decode_objects([r[9] for r in rows] + [r[10] for r in rows])
    return [
        RecordedEvent(
            r[4], r[5], r[3], r[1], r[0], values[i], values[n + i], r[6], r[7], r[8], r[2]
        )
        for i, r in enumerate(rows)
    ]


def _events_document(p: PreparedAppend) -> str:
    """The ``p_events`` argument of ``append_events_v2``: a JSON array of one object per event
    with everything but its data and metadata (those travel in arrays of their own, see
    ``_json_array`` and migration 0004). Spliced together, not re-encoded."""
    quote = json.encoder.encode_basestring_ascii  # what json.dumps does with a str, minus a call
    return (
        "["
        + ",".join(
            f'{{"event_id":"{event_id.hex}","event_type":{quote(event_type)},'
            f'"schema_version":{schema_version},"causation_id":{_json_uuid(cause)},'
            f'"correlation_id":{_json_uuid(correlation)}}}'
            for event_id, event_type, schema_version, cause, correlation in zip(
                p.event_ids,
                p.event_types,
                p.schema_versions,
                p.causation_ids,
                p.correlation_ids,
                strict=True,
            )
        )
        + "]"
    )


def _json_array(texts: list[str]) -> str:
    """A JSON array of JSON texts, each already complete and valid: the ``p_data`` and
    ``p_metadata`` arguments, whose elements the database stores byte for byte."""
    return "[" + ",".join(texts) + "]"


def _json_uuid(value: UUID | None) -> str:
    """A uuid as a JSON string of 32 hex digits (PostgreSQL reads them like the hyphenated
    form, which costs more to format), or null."""
    return "null" if value is None else f'"{value.hex}"'


def _execute(
    conn: Conn, name: str, params: dict[str, Any], *, binary: bool = False
) -> psycopg.Cursor[Any]:
    """Run one of our named queries, its driver errors mapped (``errors.translate``). (The
    caller's own SQL on ``tx.connection`` is not mapped: its errors are the caller's.)"""
    try:
        return conn.execute(_QUERIES[name], params, binary=binary)
    except (psycopg.Error, UnicodeEncodeError) as exc:
        raise translate(exc, f"event store query {name}") from exc


AppendArgs = tuple[str, str, int, str, str, str, datetime, str | None, str | None]


def _append_row(conn: Conn, args: AppendArgs, savepoint: bool) -> tuple[int, list[int]]:
    """First version and positions of an append (``args`` in the order of the append query),
    under a savepoint if asked."""
    try:
        return _append_once(conn, args, savepoint)
    except pg_errors.InvalidSqlStatementName:
        # Code on tx.connection ran DEALLOCATE (or DISCARD ALL): the statement failed without
        # running, its savepoint if any rolled back. Prepare it again, once.
        _PREPARED.discard(conn)
        return _append_once(conn, args, savepoint)


def _append_once(conn: Conn, args: AppendArgs, savepoint: bool) -> tuple[int, list[int]]:
    if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        # The caller's own connection.pipeline() on tx.connection: through a psycopg cursor,
        # which queues the statement - and psycopg's savepoint around it - in that pipeline.
        if savepoint:
            with conn.transaction():
                return _append_by_cursor(conn, args)
        return _append_by_cursor(conn, args)
    return _run_append(conn, args, savepoint)


def _append_by_cursor(conn: Conn, args: AppendArgs) -> tuple[int, list[int]]:
    row = psycopg.RawCursor(conn).execute(_QUERIES["append"], args).fetchone()
    assert row is not None
    return row[0], row[1]


def _run_append(conn: Conn, args: AppendArgs, savepoint: bool) -> tuple[int, list[int]]:
    """Run the append statement through libpq (``psycopg.pq``), as psycopg's cursors do
    underneath: under the connection's lock, waiting with ``conn.wait`` (interruptible, like
    every psycopg query), errors raised as psycopg's exceptions. Without the cursor around it -
    query conversion, a transformer, a dumper per parameter, prepared-statement bookkeeping -
    the statement costs the client half the CPU (about 45 us instead of 90 us a call here),
    and an append is mostly this statement. Under a savepoint, see ``_under_savepoint``."""
    pgconn = conn.pgconn
    stream_id, kind, number, events, data, metadata, recorded_at, key, result_json = args
    # The JSON documents are ASCII (json escapes the rest); the caller's texts are encoded as
    # psycopg would, in the connection's encoding - which matters only if they are not ASCII.
    enc = (
        "ascii"
        if stream_id.isascii()
        and (key is None or key.isascii())
        and (result_json is None or result_json.isascii())
        else conn.info.encoding
    )
    params = [
        stream_id.encode(enc),
        kind.encode(),
        _INT8(number),
        events.encode(),
        data.encode(),
        metadata.encode(),
        recorded_at.isoformat().encode(),
        None if key is None else key.encode(enc),
        None if result_json is None else result_json.encode(enc),
    ]
    with conn.lock:
        if savepoint:
            result = _under_savepoint(conn, params)
        else:
            if conn not in _PREPARED:
                pgconn.send_prepare(_APPEND_STATEMENT, _QUERIES["append"].encode())
                _check(conn, conn.wait(generators.execute(pgconn)))
                _PREPARED.add(conn)
            pgconn.send_query_prepared(_APPEND_STATEMENT, params, _APPEND_FORMATS)
            result = _check(conn, conn.wait(generators.execute(pgconn)))
    first, positions = result.get_value(0, 0), result.get_value(0, 1)  # text: b"41", b"{41,42}"
    assert first is not None and positions is not None
    return int(first), [int(n) for n in positions[1:-1].split(b",")] if len(positions) > 2 else []


def _under_savepoint(conn: Conn, params: list[bytes | None]) -> PGresult:
    """The append's result, run in the caller's transaction under a savepoint of its own.

    SAVEPOINT, the statement (prepared first if need be) and RELEASE go in one libpq pipeline:
    one round trip, where psycopg's ``transaction()`` around the statement costs three - in a
    process manager's batch, which dispatches a command or more per event, those two extra
    round trips were 19% of a reaction's time (the profile in docs/benchmarks.md). If one of
    them fails, the server skips the rest, up to the pipeline's Sync; if the savepoint was
    taken, it is then rolled back to and released (one round trip more, on failures only) and
    the first error raised, as ``transaction()`` would: the caller's transaction stays usable.
    Unlike ``transaction()``, this leaves psycopg's own prepared statements alone (its rollback
    deallocates them all, ours with them): the savepoint spans this one statement, which
    changes no schema that they could depend on."""
    pgconn = conn.pgconn
    prepare = conn not in _PREPARED
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_query_params(_SAVEPOINT, None)
        if prepare:
            pgconn.send_prepare(_APPEND_STATEMENT, _QUERIES["append"].encode())
        pgconn.send_query_prepared(_APPEND_STATEMENT, params, _APPEND_FORMATS)
        pgconn.send_query_params(_RELEASE, None)
        pgconn.pipeline_sync()
        results = conn.wait(_pipeline_results(pgconn, 4 if prepare else 3))
        pgconn.exit_pipeline_mode()
    except BaseException:
        # Interrupted, or the connection broke, half-way through the pipeline: libpq may still
        # expect results, and what the server did is unknown. Close the connection rather than
        # return it to the pool in that state; the caller's transaction is lost either way.
        if pgconn.pipeline_status != pq.PipelineStatus.OFF:
            pgconn.finish()
        raise
    if prepare and results[1][-1].status == _COMMAND_OK:
        _PREPARED.add(conn)  # a prepared statement outlives savepoints and transactions
    if all(r[-1].status != _FATAL and r[-1].status != _ABORTED for r in results):
        return results[-2][-1]
    if results[0][-1].status != _FATAL:  # the savepoint was taken: undo what came after it
        pgconn.send_query(_ROLLBACK_TO)
        try:
            _check(conn, conn.wait(generators.execute(pgconn)))
        except Exception as exc:
            # As transaction() does: the append's error is the one raised (and if the
            # rollback failed, the connection is most likely lost, the transaction with it).
            log.warning("error ignored in rolling back a refused append: %s", exc)
    return _check(conn, [r for batch in results for r in batch])


def _pipeline_results(pgconn: PGconn, queries: int) -> PQGen[list[list[PGresult]]]:
    """The results of ``queries`` statements sent in pipeline mode, then of their Sync."""
    yield from generators.send(pgconn)
    results = []
    for _ in range(queries):
        results.append((yield from generators.fetch_many(pgconn)))
    sync = yield from generators.fetch_many(pgconn)
    if len(sync) != 1 or sync[0].status != pq.ExecStatus.PIPELINE_SYNC:
        raise psycopg.InternalError(f"unexpected results in an append's pipeline: {sync}")
    return results


def _check(conn: Conn, results: list[PGresult]) -> PGresult:
    """The last result, after raising the error of a failed one as psycopg would."""
    for result in results:
        if result.status == _FATAL:
            raise pg_errors.error_from_result(result, encoding=conn.info.encoding)
    return results[-1]


class PostgresEventStore:
    """``EventStore`` on PostgreSQL. Safe to share between threads."""

    url: str
    clock: Clock
    upcasters: Upcasters
    page_size: int
    dialect: Dialect = "postgresql"

    def __init__(
        self,
        url: str,
        clock: Clock | None = None,
        *,
        upcasters: Upcasters | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        pool_size: int = 8,
    ) -> None:
        """Connect with a pool of up to ``pool_size`` connections (``StorageError`` if the
        server cannot be reached)."""
        self._setup(PostgresStore(url, clock, pool_size=pool_size), True, upcasters, page_size)

    @classmethod
    def sharing(
        cls,
        flow_store: PostgresStore,
        *,
        upcasters: Upcasters | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> PostgresEventStore:
        """An event store on ``flow_store``'s pool and clock, so that one process opens one set
        of connections for flows and events. Closing it leaves the flow store open."""
        store = cls.__new__(cls)
        store._setup(flow_store, False, upcasters, page_size)
        return store

    def _setup(
        self, flows: PostgresStore, owns: bool, upcasters: Upcasters | None, page_size: int
    ) -> None:
        self._flows = flows
        self._owns_flows = owns
        self._pool: ConnectionPool[Conn] = flows.pool
        self.url = flows.url
        self.clock = flows.clock
        self.upcasters = upcasters if upcasters is not None else Upcasters()
        self.page_size = check_page_size(page_size)
        # Wakes handler runners after appends; see notifier.py for why not inside the append.
        self._notifier = CoalescingNotifier(flows.url, EVENTS_CHANNEL)

    def is_unavailable(self, exc: BaseException) -> bool:
        return is_unavailable(exc, is_transient)

    def migrate(self) -> list[str]:
        return self._flows.migrate()

    def close(self) -> None:
        self._notifier.close()
        if self._owns_flows:
            self._flows.close()

    @contextmanager
    def _connection(self) -> Iterator[Conn]:
        """A pooled connection; a lost or unreachable server becomes ``StorageError``.

        ``getconn``/``putconn`` rather than ``pool.connection()``, which also commits or rolls
        back on the way out: on these autocommit connections there is never anything to end
        by then (``transaction()`` ends its own), and the no-op costs half of a checkout, some
        10 us an append. ``putconn`` still rolls back, or replaces, a connection returned in a
        bad state."""
        pool = self._pool
        try:
            conn = pool.getconn()
        except psycopg.Error as exc:
            raise translate(exc, "event store: connecting") from exc
        try:
            yield conn
        except psycopg.Error as exc:
            # Only a lost connection is ours to map here: other driver errors raised inside a
            # transaction() block may come from the caller's own SQL on tx.connection (a
            # projection's table), and are the caller's to read.
            if is_transient(exc):
                raise translate(exc, "event store operation") from exc
            raise
        finally:
            pool.putconn(conn)

    def _rows(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return _execute(conn, query, params).fetchall()

    def _event_rows(
        self, query: str, tx: PostgresEventTransaction | None = None, /, **params: Any
    ) -> list[tuple[Any, ...]]:
        """Rows of events, in binary format: uuid, bigint and timestamptz arrive without
        parsing text (about a fifth of read_all's time per event). On ``tx``'s connection if
        given, else on a pooled one."""
        if tx is not None:
            return _execute(tx.open_connection(), query, params, binary=True).fetchall()
        with self._connection() as conn:
            return _execute(conn, query, params, binary=True).fetchall()

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
            with self._connection() as conn:
                return self._append(conn, prepared, savepoint=False)

        try:
            return append_retrying(self.read_stream, prepared.stream_id, prepared.event_ids, write)
        finally:
            # Failed appends too: one that rolled back after drawing a position held back the
            # readers' horizon, and the appends it held back have already sent their NOTIFY.
            self._notifier.poke()

    def _append(self, conn: Conn, p: PreparedAppend, *, savepoint: bool) -> list[RecordedEvent]:
        recorded_at = self.clock.now()
        args: AppendArgs = (
            p.stream_id,
            p.expected_kind,
            p.expected_number,
            _events_document(p),
            _json_array(p.data),
            _json_array(p.metadata),
            recorded_at,
            p.idempotency_key,
            p.result_json,
        )
        try:
            first_version, positions = _append_row(conn, args, savepoint)
        except psycopg.DatabaseError as exc:
            raise self._append_error(conn, p, exc) from exc
        return p.recorded(first_version, positions, recorded_at)

    def _append_error(self, conn: Conn, p: PreparedAppend, exc: psycopg.DatabaseError) -> Exception:
        if exc.sqlstate == _WRONG_VERSION:
            actual = int(exc.diag.message_detail or 0)
            return WrongExpectedVersionError(p.stream_id, p.expected, actual)
        if exc.sqlstate == _DUPLICATE_KEY:
            assert p.idempotency_key is not None
            # The statement (or savepoint) is rolled back: the connection can read the key,
            # which ON CONFLICT only reports once the transaction that wrote it has committed.
            record = self._idempotent_result(conn, p.idempotency_key)
            return DuplicateIdempotencyKeyError(
                p.idempotency_key,
                record.stream_id if record else None,
                record.result_json if record else None,
            )
        if (
            isinstance(exc, pg_errors.UniqueViolation)
            and exc.diag.constraint_name == "events_event_id"
        ):
            return DuplicateEventIdError(
                f"an event appended to {p.stream_id!r} has an event_id that is already recorded "
                f"({exc.diag.message_detail}); nothing was written. Event ids are unique across "
                "the store: leave event_id out to get a fresh uuid4, and never reuse one."
            )
        return translate(exc, f"appending to stream {p.stream_id!r}")

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
        tx: PostgresEventTransaction | None = None,
    ) -> Iterator[RecordedEvent]:
        name = "read_stream_backwards" if backwards else "read_stream_forwards"
        version = from_version or (_LAST_VERSION if backwards else 1)
        remaining = limit
        while remaining != 0 and version >= 1:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._event_rows(name, tx, stream_id=stream_id, from_version=version, limit=size)
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
        until = self.head_position()  # a statement of its own, BEFORE the reads: see migration 0004
        if to_position is not None:
            until = min(until, to_position)
        name = "read_all" if types is None else "read_all_of_types"
        remaining = limit
        while after < until:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            rows = self._event_rows(name, after=after, until=until, limit=size, event_types=types)
            yield from self.upcasters.upcast_all(_events(rows))
            if len(rows) < size:
                return
            after = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
                if remaining == 0:
                    return

    def head_position(self) -> int:
        row = self._rows("horizon")[0]
        return int(row[0])

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
        rows = self._rows(
            "save_snapshot",
            stream_id=s.stream_id,
            version=s.version,
            snapshot_type=s.snapshot_type,
            schema_version=s.schema_version,
            state=s.state_json,
            taken_at=self.clock.now(),
        )
        stream_version = int(rows[0][0])
        if stream_version < s.version:
            raise InvalidSnapshotError(
                f"cannot snapshot stream {s.stream_id!r} at version {s.version}: the stream is at "
                f"version {stream_version}. Snapshot only a state folded from events read from "
                "the stream, with the version of the last one. Nothing was written."
            )

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        rows = self._rows("load_snapshot", stream_id=check_stream_id(stream_id))
        if not rows:
            return None
        sid, version, state, snapshot_type, schema_version, taken_at = rows[0]
        return self.upcasters.upcast_snapshot(
            Snapshot(sid, version, json.loads(state), snapshot_type, schema_version, taken_at)
        )

    # --- idempotency and checkpoints ------------------------------------------------------------

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        check_name(key, "idempotency key", InvalidIdempotencyKeyError)
        with self._connection() as conn:
            return self._idempotent_result(conn, key)

    @staticmethod
    def _idempotent_result(conn: Conn, key: str) -> IdempotencyRecord | None:
        row = _execute(conn, "get_idempotent_result", {"key": key}).fetchone()
        return IdempotencyRecord(*row) if row else None

    def get_checkpoint(self, name: str) -> int:
        rows = self._rows("get_checkpoint", name=check_checkpoint(name))
        return int(rows[0][0]) if rows else 0

    def advance_checkpoint(self, name: str, position: int, *, expected: int | None = None) -> None:
        with self.transaction() as tx:
            tx.advance_checkpoint(name, position, expected=expected)

    def reset_checkpoint(self, name: str, position: int = 0) -> None:
        with self._connection() as conn:
            _execute(
                conn,
                "reset_checkpoint",
                {
                    "name": check_checkpoint(name, position),
                    "position": position,
                    "updated_at": self.clock.now(),
                },
            )

    @contextmanager
    def transaction(self) -> Iterator[PostgresEventTransaction]:
        tx: PostgresEventTransaction | None = None
        try:
            with self._connection() as conn, conn.transaction():
                tx = PostgresEventTransaction(self, conn)
                yield tx
        finally:
            if tx is not None:
                tx.closed = True
                if tx.appended:
                    self._notifier.poke()


class PostgresEventTransaction:
    """``EventTransaction`` on one pooled connection, inside ``conn.transaction()``."""

    dialect: Dialect = "postgresql"

    def __init__(self, store: PostgresEventStore, conn: Conn) -> None:
        self._store = store
        self.connection = conn
        self._checkpoints: dict[str, int] = {}  # locked in this transaction -> position
        self.appended = False  # whether to NOTIFY the handler runners when it ends
        self.closed = False  # the block ended: the connection is back in the pool

    def execute_script(self, script: str) -> None:
        self.connection.execute(script)  # no parameters: PostgreSQL runs several statements

    def open_connection(self) -> Conn:
        """The connection, while the transaction is open. A ``read_stream`` iterator kept past
        the block would otherwise read its next page on a connection that is back in the pool,
        perhaps in another thread's transaction."""
        if self.closed:
            raise StorageError(
                "this event store transaction has ended: consume tx.read_stream() "
                "inside its `with store.transaction()` block, or use "
                "store.read_stream() after it"
            )
        return self.connection

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
        self.appended = True
        return store._append(self.connection, prepared, savepoint=True)

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        check_name(key, "idempotency key", InvalidIdempotencyKeyError)
        return self._store._idempotent_result(self.connection, key)

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

    def lock_checkpoint(self, name: str) -> int:
        name = check_checkpoint(name)
        if name not in self._checkpoints:
            row = _execute(
                self.connection,
                "lock_checkpoint",
                {"name": name, "updated_at": self._store.clock.now()},
            ).fetchone()
            assert row is not None
            self._checkpoints[name] = int(row[0])
        return self._checkpoints[name]

    def advance_checkpoint(self, name: str, position: int, *, expected: int | None = None) -> None:
        name = check_checkpoint(name, position)
        current = self.lock_checkpoint(name)
        if (expected is not None and expected != current) or position < current:
            raise CheckpointConflictError(name, position, current, expected)
        if position != current:
            _execute(
                self.connection,
                "set_checkpoint",
                {"name": name, "position": position, "updated_at": self._store.clock.now()},
            )
            self._checkpoints[name] = position
