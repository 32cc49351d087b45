"""PostgreSQL's fast path for appending events: the one statement, through libpq, pipelined.

An append is one call of ``append_events_v3`` (migration 0010; 0004 explains the protocol). Outside
a transaction it runs on an autocommit connection: one round trip that commits on its own. Inside
one it runs under a savepoint, so that a refused append leaves the caller's transaction usable, sent
with it in one libpq pipeline, so that it is one round trip too (``_under_savepoint``). It is the
hot path of every write, so it skips psycopg's cursors: a statement prepared once per connection,
parameters encoded here, run through libpq (``_run_append``).

The plain counterpart (``Database(fast_paths=False)``, and a caller's own pipeline on the
connection) calls the same function through a psycopg cursor, under psycopg's savepoint; the
event store tests run on both. The function raises SQLSTATE ``TF001`` / ``TF002`` / ``TF003``
for a wrong expected version / a duplicate idempotency key / a deleted stream;
``errors.append_error`` maps them.

The flow store's fast paths need no code here: they are the named queries ``start_run`` and
``complete_tasks_batch`` (PL/pgSQL functions of migrations 0001 and 0007), which the flow store
runs instead of its plain transitions when ``fast_paths`` is on.
"""

from __future__ import annotations

import json
import logging
import struct
import weakref
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, pq
from psycopg.abc import PQGen
from psycopg.pq.abc import PGconn, PGresult

from tideflow.storage.event_contract import PreparedAppend
from tideflow.storage.postgres.errors import append_error

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]

#: The append query, positional ($1...) as libpq's prepared statements want it.
_APPEND_SQL = """SELECT first_version, positions
FROM tideflow.append_events_v3($1::text, $2::text, $3::bigint, $4::json, $5::json, $6::json,
                               $7::timestamptz, $8::text, $9::text)"""
#: The append's prepared statement, created on a connection the first time it appends (and again
#: if something deallocated it); _PREPARED holds the connections that have it.
_APPEND_STATEMENT = b"tideflow_append_events_v3"
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


def append_events(
    conn: Conn, p: PreparedAppend, recorded_at: datetime, savepoint: bool, fast: bool
) -> tuple[int, list[int]]:
    """First version and positions of ``p``'s events (``Database.append_events``)."""
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
        if fast:
            return _append_row(conn, args, savepoint)
        return _append_plain(conn, args, savepoint)
    except psycopg.DatabaseError as exc:
        raise append_error(exc, p) from exc


def _events_document(p: PreparedAppend) -> str:
    """The ``p_events`` argument of ``append_events_v3``: a JSON array of one object per event
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
        # The caller's own connection.pipeline() on tx.connection: the plain path queues the
        # statement - and psycopg's savepoint around it - in that pipeline.
        return _append_plain(conn, args, savepoint)
    return _run_append(conn, args, savepoint)


def _append_plain(conn: Conn, args: AppendArgs, savepoint: bool) -> tuple[int, list[int]]:
    """The plain counterpart: the same function through a psycopg cursor."""
    if savepoint:
        with conn.transaction():
            return _append_by_cursor(conn, args)
    return _append_by_cursor(conn, args)


def _append_by_cursor(conn: Conn, args: AppendArgs) -> tuple[int, list[int]]:
    row = psycopg.RawCursor(conn).execute(_APPEND_SQL, args).fetchone()
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
                pgconn.send_prepare(_APPEND_STATEMENT, _APPEND_SQL.encode())
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
            pgconn.send_prepare(_APPEND_STATEMENT, _APPEND_SQL.encode())
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
