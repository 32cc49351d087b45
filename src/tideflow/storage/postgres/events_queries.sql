-- Named queries of the event store (tideflow/storage/event_store.py) on PostgreSQL. The append
-- (postgres/fast_paths.py) and the safe horizon are functions of migration 0004; its header explains why read_all must call event_horizon_v2 in a
-- statement of its own, before the statement that reads events. JSON columns are read as text
-- and decoded in Python.
--
-- The page reads say LIMIT (SELECT n), not LIMIT n, so that the planner cannot see the page size.
-- Seeing it, and with no statistics on events yet (a new table, before autovacuum analyzes it,
-- or with autovacuum off), it estimates the page's key range at 0.5% of the table, finds that a
-- LIMIT of 1000 takes all of it, and prefers reading the whole range through a bitmap scan and
-- sorting it - every page of a catch-up then reads everything up to the horizon (measured: 500 ms
-- a page at 150,000 events, against 0.5 ms). An unknown limit makes it plan for a fraction of the
-- range, which only an ordered index scan serves well; with statistics it chooses that anyway.

-- name: horizon
SELECT tideflow.event_horizon_v2()

-- name: set_horizon
-- The horizon kept for the rest of the transaction, for read_page / read_page_of_types: the
-- pair runs as two statements (two snapshots, in this order) in one round trip
-- (PostgresDatabase.records_below_horizon), the page bounded by what this one saw. The planner
-- cannot see that bound, and without statistics it then reads a page of a rare type through a
-- bitmap scan of the whole range and a sort (measured in tests/events/test_page_plans.py):
-- sorting is off for the transaction, which leaves the ordered walk of the position index.
-- The page starts after the position given or, when that is NULL, after the checkpoint named.
SELECT set_config('tideflow.horizon', tideflow.event_horizon_v2()::text, true)::bigint,
       set_config('tideflow.after', coalesce(
           %(after)s::bigint,
           (SELECT position FROM tideflow.handler_checkpoints WHERE name = %(checkpoint)s::text),
           0)::text, true)::bigint,
       set_config('enable_sort', 'off', true)

-- name: read_page
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data::text, metadata::text
FROM tideflow.events
WHERE position > current_setting('tideflow.after')::bigint
  AND position <= current_setting('tideflow.horizon')::bigint
  AND NOT deleted
ORDER BY position
LIMIT (SELECT %(limit)s::bigint)

-- name: read_page_of_types
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data::text, metadata::text
FROM tideflow.events
WHERE position > current_setting('tideflow.after')::bigint
  AND position <= current_setting('tideflow.horizon')::bigint
  AND event_type = ANY(%(event_types)s::text[]) AND NOT deleted
ORDER BY position
LIMIT (SELECT %(limit)s::bigint)

-- name: read_stream_forwards
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data::text, metadata::text
FROM tideflow.events
WHERE stream_id = %(stream_id)s AND version >= %(from_version)s AND NOT deleted
ORDER BY version
LIMIT (SELECT %(limit)s::bigint)

-- name: read_stream_backwards
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data::text, metadata::text
FROM tideflow.events
WHERE stream_id = %(stream_id)s AND version <= %(from_version)s AND NOT deleted
ORDER BY version DESC
LIMIT (SELECT %(limit)s::bigint)

-- name: read_all
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data::text, metadata::text
FROM tideflow.events
WHERE position > %(after)s AND position <= %(until)s AND NOT deleted
ORDER BY position
LIMIT (SELECT %(limit)s::bigint)

-- name: read_all_of_types
-- A scan of the position index that filters types: cheap when the types are common; a handler of
-- rare types pays one pass over the log per catch-up and then follows from its checkpoint.
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data::text, metadata::text
FROM tideflow.events
WHERE position > %(after)s AND position <= %(until)s AND event_type = ANY(%(event_types)s::text[])
  AND NOT deleted
ORDER BY position
LIMIT (SELECT %(limit)s::bigint)

-- name: stream_version
-- A deleted stream has no events to read: version 0.
SELECT version FROM tideflow.streams WHERE stream_id = %(stream_id)s AND deleted_at IS NULL

-- name: save_snapshot
-- The event store has checked, in this transaction, that the stream reached the version; an
-- older snapshot never replaces a newer one.
INSERT INTO tideflow.snapshots AS s (stream_id, version, snapshot_type, schema_version, state,
                                     taken_at)
VALUES (%(stream_id)s, %(version)s, %(snapshot_type)s, %(schema_version)s, %(state)s::json,
        %(taken_at)s)
ON CONFLICT (stream_id) DO UPDATE
SET version = EXCLUDED.version, snapshot_type = EXCLUDED.snapshot_type,
    schema_version = EXCLUDED.schema_version, state = EXCLUDED.state, taken_at = EXCLUDED.taken_at
WHERE s.version <= EXCLUDED.version

-- name: load_snapshot
SELECT stream_id, version, state::text, snapshot_type, schema_version, taken_at
FROM tideflow.snapshots WHERE stream_id = %(stream_id)s

-- name: get_idempotent_result
SELECT key, stream_id, result::text, recorded_at
FROM tideflow.idempotency_keys WHERE key = %(key)s

-- name: get_checkpoint
SELECT position FROM tideflow.handler_checkpoints WHERE name = %(name)s

-- name: lock_checkpoint
-- Creates the row at 0 if needed and locks it either way (DO UPDATE locks the existing row and
-- returns it unchanged), so concurrent instances of one handler queue here.
INSERT INTO tideflow.handler_checkpoints AS c (name, position, updated_at)
VALUES (%(name)s, 0, %(updated_at)s)
ON CONFLICT (name) DO UPDATE SET position = c.position
RETURNING position

-- name: set_checkpoint
UPDATE tideflow.handler_checkpoints SET position = %(position)s, updated_at = %(updated_at)s
WHERE name = %(name)s

-- name: reset_checkpoint
INSERT INTO tideflow.handler_checkpoints AS c (name, position, updated_at)
VALUES (%(name)s, %(position)s, %(updated_at)s)
ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at

-- name: read_all_backwards
-- read_all from the newest event down: the same range, the highest positions first.
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data::text, metadata::text
FROM tideflow.events
WHERE position > %(after)s AND position <= %(until)s AND NOT deleted
ORDER BY position DESC
LIMIT (SELECT %(limit)s::bigint)

-- name: read_all_of_types_backwards
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data::text, metadata::text
FROM tideflow.events
WHERE position > %(after)s AND position <= %(until)s AND event_type = ANY(%(event_types)s::text[])
  AND NOT deleted
ORDER BY position DESC
LIMIT (SELECT %(limit)s::bigint)

-- name: lock_stream
-- The stream row, locked to the end of the transaction: the lock appenders take (0004), so
-- a delete and an append to one stream run one after the other.
SELECT version, deleted_at FROM tideflow.streams WHERE stream_id = %(stream_id)s FOR UPDATE

-- name: mark_stream_deleted
UPDATE tideflow.streams SET deleted_at = %(deleted_at)s WHERE stream_id = %(stream_id)s

-- name: hide_stream_events
UPDATE tideflow.events SET deleted = true WHERE stream_id = %(stream_id)s

-- name: delete_snapshot
DELETE FROM tideflow.snapshots WHERE stream_id = %(stream_id)s

-- name: erase_stream_events
DELETE FROM tideflow.events WHERE stream_id = %(stream_id)s

-- name: erase_stream_keys
-- No index on stream_id (it would cost every keyed append): an erasure reads the whole table.
DELETE FROM tideflow.idempotency_keys WHERE stream_id = %(stream_id)s

-- name: erase_stream
DELETE FROM tideflow.streams WHERE stream_id = %(stream_id)s

-- name: expire_idempotency_keys
-- Retention, one batch: keys recorded before the cut-off, oldest first (idempotency_keys_by_age,
-- 0012). A repeat of an expired key is a new append.
DELETE FROM tideflow.idempotency_keys
WHERE key IN (
    SELECT key FROM tideflow.idempotency_keys
    WHERE recorded_at < %(before)s
    ORDER BY recorded_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
