-- Named queries of the process store (tideflow/storage/process_store.py) on SQLite.
-- Parameters are %(name)s (rewritten to :name at load); timestamps are REAL epoch seconds. The
-- queries mirror the PostgreSQL ones (see postgres/process_queries.sql and migration 0005),
-- without FOR UPDATE: the handler's batch transaction holds SQLite's write lock instead.

-- name: load
SELECT manager, process_id, status, state AS state_json, version, last_position, error,
       started_at, updated_at, undo AS undo_json, sent AS sent_json, finished_at
FROM process_instances
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: load_many
-- In the batch transaction: the instances a handler batch addresses, in one statement
-- (the batch holds the write lock).
SELECT manager, process_id, status, state AS state_json, version, last_position, error,
       started_at, updated_at, undo AS undo_json, sent AS sent_json, finished_at
FROM process_instances
WHERE manager = %(manager)s AND process_id IN (SELECT value FROM json_each(%(process_ids)s))
ORDER BY process_id

-- name: save
-- In the batch transaction. A starting event for an id whose instance has ended replaces the row
-- (a new instance: started_at is reset, with everything else).
INSERT INTO process_instances (manager, process_id, status, state, version, last_position, error,
                               started_at, updated_at, undo, sent, finished_at)
VALUES (%(manager)s, %(process_id)s, %(status)s, %(state)s, %(version)s, %(last_position)s,
        %(error)s, %(now)s, %(now)s, %(undo)s, %(sent)s, %(finished_at)s)
ON CONFLICT (manager, process_id) DO UPDATE
SET status = excluded.status, state = excluded.state, version = excluded.version,
    last_position = excluded.last_position, error = excluded.error,
    started_at = CASE WHEN %(fresh)s THEN excluded.started_at ELSE started_at END,
    updated_at = excluded.updated_at, undo = excluded.undo, sent = excluded.sent,
    finished_at = excluded.finished_at

-- name: prune_finished
-- In the transaction of a new instance's first reaction: instances of the manager that ended
-- before the retention's cut-off go, a bounded number at a time (the partial index of 0009).
DELETE FROM process_instances
WHERE (manager, process_id) IN (
    SELECT manager, process_id FROM process_instances
    WHERE manager = %(manager)s AND finished_at IS NOT NULL AND finished_at < %(before)s
    LIMIT %(limit)s
)

-- name: get
SELECT manager, process_id, status, state AS state_json, version, last_position, error,
       started_at, updated_at, undo AS undo_json, sent AS sent_json, finished_at
FROM process_instances
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: list_instances
SELECT manager, process_id, status, state AS state_json, version, last_position, error,
       started_at, updated_at, undo AS undo_json, sent AS sent_json, finished_at
FROM process_instances
WHERE (%(manager)s IS NULL OR manager = %(manager)s)
  AND (%(status)s IS NULL OR status = %(status)s)
ORDER BY updated_at DESC, manager, process_id
LIMIT %(limit)s

-- name: counts
SELECT manager, status, count(*) AS instances
FROM process_instances
GROUP BY manager, status

-- name: delete_instance
-- An instance stopped through the instance API (``ProcessHandle.stop(delete=True)``).
DELETE FROM process_instances WHERE manager = %(manager)s AND process_id = %(process_id)s
