-- Named queries of the handler store (tideflow/storage/handler_store.py) on SQLite.
-- Parameters are %(name)s (rewritten to :name at load); lists arrive as JSON arrays read with
-- json_each; timestamps are REAL epoch seconds. The queries mirror the PostgreSQL ones (see
-- postgres/handlers_queries.sql and migration 0003 for the lease model); SQLite's single writer
-- makes every write transaction hold what PostgreSQL locks row by row.

-- name: acquire
INSERT INTO event_handlers (name, kind, status, owner, lease_expires_at, attempts, updated_at)
VALUES (%(name)s, %(kind)s, 'running', %(owner)s, %(expires)s, 0, %(now)s)
ON CONFLICT (name) DO UPDATE
SET owner = excluded.owner, lease_expires_at = excluded.lease_expires_at, kind = excluded.kind,
    updated_at = excluded.updated_at
WHERE event_handlers.status = 'running'
  AND (event_handlers.owner IS NULL OR event_handlers.owner = excluded.owner
       OR event_handlers.lease_expires_at <= excluded.updated_at)
RETURNING failing_position, attempts

-- name: hold
UPDATE event_handlers
SET lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE name = %(name)s AND owner = %(owner)s AND status = 'running'
RETURNING failing_position, attempts

-- name: renew
UPDATE event_handlers
SET lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE name IN (SELECT value FROM json_each(%(names)s)) AND owner = %(owner)s
  AND status = 'running'
RETURNING name

-- name: release
UPDATE event_handlers
SET owner = NULL, lease_expires_at = NULL, updated_at = %(now)s
WHERE name IN (SELECT value FROM json_each(%(names)s)) AND owner = %(owner)s

-- name: record_failure
UPDATE event_handlers
SET failing_position = %(position)s, attempts = %(attempts)s, last_error = %(error)s,
    updated_at = %(now)s
WHERE name = %(name)s AND owner = %(owner)s

-- name: clear_failure
UPDATE event_handlers
SET failing_position = NULL, attempts = 0, last_error = NULL, updated_at = %(now)s
WHERE name = %(name)s

-- name: stop_handler
UPDATE event_handlers
SET status = 'stopped', stopped_reason = %(reason)s, last_error = %(error)s, owner = NULL,
    lease_expires_at = NULL, updated_at = %(now)s
WHERE name = %(name)s

-- name: lock_handler
INSERT INTO event_handlers (name, kind, status, attempts, updated_at)
VALUES (%(name)s, %(kind)s, 'running', 0, %(now)s)
ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at
RETURNING kind, status

-- name: restart_handler
UPDATE event_handlers
SET status = 'running', stopped_reason = NULL, failing_position = NULL, attempts = 0,
    last_error = NULL, updated_at = %(now)s
WHERE name = %(name)s
RETURNING name

-- name: insert_dead_letter
INSERT INTO dead_letters (handler, position, event_id, event_type, stream_id, error, attempts,
                          created_at)
VALUES (%(handler)s, %(position)s, %(event_id)s, %(event_type)s, %(stream_id)s, %(error)s,
        %(attempts)s, %(now)s)
ON CONFLICT (handler, position) DO UPDATE
SET error = excluded.error, attempts = excluded.attempts, created_at = excluded.created_at,
    retried_at = NULL
RETURNING id

-- name: list_handlers
SELECT n.name, h.kind, h.status, h.owner, h.lease_expires_at, h.failing_position,
       coalesce(h.attempts, 0) AS attempts, h.last_error, h.stopped_reason,
       coalesce(c.position, 0) AS position,
       (SELECT count(*) FROM dead_letters AS d
        WHERE d.handler = n.name AND d.retried_at IS NULL) AS dead_letters
FROM (SELECT name FROM event_handlers UNION SELECT name FROM handler_checkpoints) AS n
LEFT JOIN event_handlers AS h ON h.name = n.name
LEFT JOIN handler_checkpoints AS c ON c.name = n.name
ORDER BY n.name

-- name: list_dead_letters
SELECT id, handler, position, event_id, event_type, stream_id, error, attempts, created_at,
       retried_at
FROM dead_letters
WHERE (%(handler)s IS NULL OR handler = %(handler)s)
  AND (%(include_retried)s OR retried_at IS NULL)
ORDER BY id
LIMIT %(limit)s

-- name: get_dead_letter
SELECT id, handler, position, event_id, event_type, stream_id, error, attempts, created_at,
       retried_at
FROM dead_letters WHERE id = %(id)s

-- name: mark_dead_letter_retried
UPDATE dead_letters SET retried_at = %(now)s WHERE id = %(id)s

-- name: record_dead_letter_failure
UPDATE dead_letters SET error = %(error)s, attempts = attempts + 1 WHERE id = %(id)s

-- name: purge_retried_dead_letters
-- Retention, one batch: dead letters retried before the cut-off, oldest first
-- (dead_letters_retried, 0012). Pending ones stay until someone retries them.
DELETE FROM dead_letters
WHERE id IN (
    SELECT id FROM dead_letters
    WHERE retried_at < %(before)s
    ORDER BY retried_at
    LIMIT %(limit)s
)
