-- Named queries of the process store (tideflow/storage/process_store.py) on SQLite.
-- Parameters are %(name)s (rewritten to :name at load); timestamps are REAL epoch seconds. The
-- queries mirror the PostgreSQL ones (see postgres/process_queries.sql and migration 0005),
-- without FOR UPDATE: the handler's batch transaction holds SQLite's write lock instead.

-- name: load
SELECT manager, process_id, status, state AS state_json, version, last_position, error,
       started_at, updated_at
FROM process_instances
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: save
-- Create the instance or replace its state; started_at stays that of the first insert.
INSERT INTO process_instances (manager, process_id, status, state, version, last_position, error,
                               started_at, updated_at)
VALUES (%(manager)s, %(process_id)s, %(status)s, %(state)s, %(version)s, %(last_position)s,
        %(error)s, %(now)s, %(now)s)
ON CONFLICT (manager, process_id) DO UPDATE
SET status = excluded.status, state = excluded.state, version = excluded.version,
    last_position = excluded.last_position, error = excluded.error,
    updated_at = excluded.updated_at

-- name: get
SELECT manager, process_id, status, state AS state_json, version, last_position, error,
       started_at, updated_at
FROM process_instances
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: list_instances
SELECT manager, process_id, status, state AS state_json, version, last_position, error,
       started_at, updated_at
FROM process_instances
WHERE (%(manager)s IS NULL OR manager = %(manager)s)
  AND (%(status)s IS NULL OR status = %(status)s)
ORDER BY updated_at DESC, manager, process_id
LIMIT %(limit)s

-- name: counts
SELECT manager, status, count(*) AS instances
FROM process_instances
GROUP BY manager, status
