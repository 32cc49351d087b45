-- Named queries of the event store (tideflow/storage/event_store.py) on SQLite; the append is
-- SQLiteDatabase.append_events (sqlite/database.py).
-- Parameters are %(name)s (rewritten to :name at load); list parameters arrive as JSON arrays
-- read with json_each; timestamps are REAL epoch seconds; UUIDs are text.
-- An append is several statements inside one BEGIN IMMEDIATE transaction (or a savepoint of
-- store.transaction()): SQLite runs in-process, so round trips cost nothing.

-- name: insert_idempotency_key
INSERT INTO idempotency_keys (key, stream_id, result, recorded_at)
VALUES (%(key)s, %(stream_id)s, %(result)s, %(recorded_at)s)
ON CONFLICT (key) DO NOTHING

-- name: bump_stream_version
-- The common append: the stream exists, is not deleted and (exact) is where the caller expects:
-- check and move its version in one statement; no row back means "look closer" (lock_stream).
UPDATE streams SET version = version + %(n)s
WHERE stream_id = %(stream_id)s AND deleted_at IS NULL
  AND (NOT %(exact)s OR version = %(expected)s)
RETURNING version - %(n)s

-- name: unbump_stream_version
-- An append refused after bump_stream_version (a duplicate event id) puts the version back.
UPDATE streams SET version = version - %(n)s WHERE stream_id = %(stream_id)s

-- name: forget_idempotency_key
-- An append refused inside a caller's transaction takes back the key it recorded (no savepoint:
-- see SQLiteDatabase.append_events).
DELETE FROM idempotency_keys WHERE key = %(key)s

-- name: forget_event
-- ... and the events it inserted.
DELETE FROM events WHERE position = %(position)s

-- name: stream_version
-- A deleted stream has no events to read: version 0.
SELECT version FROM streams WHERE stream_id = %(stream_id)s AND deleted_at IS NULL

-- name: insert_event
INSERT INTO events (version, schema_version, stream_id, event_id, event_type, causation_id,
                    correlation_id, recorded_at, data, metadata)
VALUES (%(version)s, %(schema_version)s, %(stream_id)s, %(event_id)s, %(event_type)s,
        %(causation_id)s, %(correlation_id)s, %(recorded_at)s, %(data)s, %(metadata)s)
RETURNING position

-- name: set_stream_version
INSERT INTO streams (stream_id, version) VALUES (%(stream_id)s, %(version)s)
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version

-- name: read_stream_forwards
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data, metadata
FROM events
WHERE stream_id = %(stream_id)s AND version >= %(from_version)s AND deleted = 0
ORDER BY version
LIMIT %(limit)s

-- name: read_stream_backwards
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data, metadata
FROM events
WHERE stream_id = %(stream_id)s AND version <= %(from_version)s AND deleted = 0
ORDER BY version DESC
LIMIT %(limit)s

-- name: read_all
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data, metadata
FROM events
WHERE position > %(after)s AND position <= %(until)s AND deleted = 0
ORDER BY position
LIMIT %(limit)s

-- name: read_all_of_types
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data, metadata
FROM events
WHERE position > %(after)s AND position <= %(until)s
  AND event_type IN (SELECT value FROM json_each(%(event_types)s)) AND deleted = 0
ORDER BY position
LIMIT %(limit)s

-- name: horizon
-- One writer at a time: everything committed is settled, so the horizon is the last position
-- drawn (AUTOINCREMENT's counter, which a hard delete of the newest events does not lower).
SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)

-- name: save_snapshot
INSERT INTO snapshots (stream_id, version, snapshot_type, schema_version, state, taken_at)
VALUES (%(stream_id)s, %(version)s, %(snapshot_type)s, %(schema_version)s, %(state)s,
        %(taken_at)s)
ON CONFLICT (stream_id) DO UPDATE
SET version = excluded.version, snapshot_type = excluded.snapshot_type,
    schema_version = excluded.schema_version, state = excluded.state,
    taken_at = excluded.taken_at
WHERE snapshots.version <= excluded.version

-- name: load_snapshot
SELECT stream_id, version, state, snapshot_type, schema_version, taken_at
FROM snapshots WHERE stream_id = %(stream_id)s

-- name: get_idempotent_result
SELECT key, stream_id, result, recorded_at FROM idempotency_keys WHERE key = %(key)s

-- name: get_checkpoint
SELECT position FROM handler_checkpoints WHERE name = %(name)s

-- name: lock_checkpoint
-- Creates the row at 0 if needed; either way returns it unchanged. The transaction holds SQLite's
-- write lock already (BEGIN IMMEDIATE): that is the lock.
INSERT INTO handler_checkpoints AS c (name, position, updated_at)
VALUES (%(name)s, 0, %(updated_at)s)
ON CONFLICT (name) DO UPDATE SET position = c.position
RETURNING position

-- name: set_checkpoint
UPDATE handler_checkpoints SET position = %(position)s, updated_at = %(updated_at)s
WHERE name = %(name)s

-- name: reset_checkpoint
INSERT INTO handler_checkpoints (name, position, updated_at)
VALUES (%(name)s, %(position)s, %(updated_at)s)
ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at

-- name: read_all_backwards
-- read_all from the newest event down: the same range, the highest positions first.
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data, metadata
FROM events
WHERE position > %(after)s AND position <= %(until)s AND deleted = 0
ORDER BY position DESC
LIMIT %(limit)s

-- name: read_all_of_types_backwards
SELECT position, version, schema_version, stream_id, event_id, event_type, causation_id,
       correlation_id, recorded_at, data, metadata
FROM events
WHERE position > %(after)s AND position <= %(until)s AND event_type IN (SELECT value FROM json_each(%(event_types)s))
  AND deleted = 0
ORDER BY position DESC
LIMIT %(limit)s

-- name: lock_stream
-- The stream's version and whether it was deleted; the transaction holds the write lock.
SELECT version, deleted_at FROM streams WHERE stream_id = %(stream_id)s

-- name: mark_stream_deleted
UPDATE streams SET deleted_at = %(deleted_at)s WHERE stream_id = %(stream_id)s

-- name: hide_stream_events
UPDATE events SET deleted = 1 WHERE stream_id = %(stream_id)s

-- name: delete_snapshot
DELETE FROM snapshots WHERE stream_id = %(stream_id)s

-- name: erase_stream_events
DELETE FROM events WHERE stream_id = %(stream_id)s

-- name: erase_stream_keys
-- No index on stream_id (it would cost every keyed append): an erasure reads the whole table.
DELETE FROM idempotency_keys WHERE stream_id = %(stream_id)s

-- name: erase_stream
DELETE FROM streams WHERE stream_id = %(stream_id)s

-- name: expire_idempotency_keys
-- Retention, one batch: keys recorded before the cut-off, oldest first (idempotency_keys_by_age,
-- 0012). A repeat of an expired key is a new append.
DELETE FROM idempotency_keys
WHERE key IN (
    SELECT key FROM idempotency_keys
    WHERE recorded_at < %(before)s
    ORDER BY recorded_at
    LIMIT %(limit)s
)
