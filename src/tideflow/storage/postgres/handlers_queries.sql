-- Named queries of the handler store (tideflow/storage/handler_store.py) on PostgreSQL.
-- Parameters are %(name)s; lists arrive as text[]. Migration 0003 explains the lease model and
-- the lock order (event_handlers row -> checkpoint row -> the handler's rows). Queries marked
-- "in the batch transaction" run on the connection of an event store transaction, so that they
-- commit or roll back with the handler's checkpoint.

-- name: acquire
-- Take the handler if it should run and nobody holds a live lease on it (or we already do). ON
-- CONFLICT DO UPDATE waits for a transaction holding the row (a batch in flight) and then checks
-- the WHERE against the row as that transaction left it. No row back: someone else has it, or it
-- is stopped.
INSERT INTO tideflow.event_handlers AS h (name, kind, status, owner, lease_expires_at, attempts,
                                          updated_at)
VALUES (%(name)s, %(kind)s, 'running', %(owner)s, %(expires)s, 0, %(now)s)
ON CONFLICT (name) DO UPDATE
SET owner = EXCLUDED.owner, lease_expires_at = EXCLUDED.lease_expires_at, kind = EXCLUDED.kind,
    updated_at = EXCLUDED.updated_at
WHERE h.status = 'running'
  AND (h.owner IS NULL OR h.owner = EXCLUDED.owner OR h.lease_expires_at <= EXCLUDED.updated_at)
RETURNING h.failing_position, h.attempts

-- name: hold
-- In the batch transaction, first: extend our lease and lock the row to commit. No row back: we
-- lost the lease (another worker took over) or the handler was stopped - roll the batch back.
UPDATE tideflow.event_handlers
SET lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE name = %(name)s AND owner = %(owner)s AND status = 'running'
RETURNING failing_position, attempts

-- name: renew
UPDATE tideflow.event_handlers
SET lease_expires_at = %(expires)s, updated_at = %(now)s
WHERE name = ANY(%(names)s::text[]) AND owner = %(owner)s AND status = 'running'
RETURNING name

-- name: release
UPDATE tideflow.event_handlers
SET owner = NULL, lease_expires_at = NULL, updated_at = %(now)s
WHERE name = ANY(%(names)s::text[]) AND owner = %(owner)s

-- name: record_failure
UPDATE tideflow.event_handlers
SET failing_position = %(position)s, attempts = %(attempts)s, last_error = %(error)s,
    updated_at = %(now)s
WHERE name = %(name)s AND owner = %(owner)s

-- name: clear_failure
-- In the batch transaction that got past the failing event.
UPDATE tideflow.event_handlers
SET failing_position = NULL, attempts = 0, last_error = NULL, updated_at = %(now)s
WHERE name = %(name)s

-- name: stop_handler
-- In a transaction that holds the row: the handler gave up ("stop" policy) and lets go of it.
UPDATE tideflow.event_handlers
SET status = 'stopped', stopped_reason = %(reason)s, last_error = %(error)s, owner = NULL,
    lease_expires_at = NULL, updated_at = %(now)s
WHERE name = %(name)s

-- name: lock_handler
-- For administrative changes (reset, dead letter retry): create the row if needed and lock it,
-- so that they wait for a batch in flight and the next batch waits for them.
INSERT INTO tideflow.event_handlers AS h (name, kind, status, attempts, updated_at)
VALUES (%(name)s, %(kind)s, 'running', 0, %(now)s)
ON CONFLICT (name) DO UPDATE SET updated_at = EXCLUDED.updated_at
RETURNING h.kind, h.status

-- name: restart_handler
-- Resume or reset: run again, forgetting the failure that stopped it. The owner, if any, keeps
-- its lease.
UPDATE tideflow.event_handlers
SET status = 'running', stopped_reason = NULL, failing_position = NULL, attempts = 0,
    last_error = NULL, updated_at = %(now)s
WHERE name = %(name)s
RETURNING name

-- name: insert_dead_letter
INSERT INTO tideflow.dead_letters AS d (handler, position, event_id, event_type, stream_id, error,
                                        attempts, created_at)
VALUES (%(handler)s, %(position)s, %(event_id)s, %(event_type)s, %(stream_id)s, %(error)s,
        %(attempts)s, %(now)s)
ON CONFLICT (handler, position) DO UPDATE
SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, created_at = EXCLUDED.created_at,
    retried_at = NULL
RETURNING d.id

-- name: list_handlers
-- Every handler with a row or a checkpoint; the position is the checkpoint (0 if none yet).
SELECT n.name, h.kind, h.status, h.owner, h.lease_expires_at, h.failing_position,
       coalesce(h.attempts, 0) AS attempts, h.last_error, h.stopped_reason,
       coalesce(c.position, 0) AS position,
       (SELECT count(*) FROM tideflow.dead_letters AS d
        WHERE d.handler = n.name AND d.retried_at IS NULL) AS dead_letters
FROM (SELECT name FROM tideflow.event_handlers
      UNION SELECT name FROM tideflow.handler_checkpoints) AS n
LEFT JOIN tideflow.event_handlers AS h ON h.name = n.name
LEFT JOIN tideflow.handler_checkpoints AS c ON c.name = n.name
ORDER BY n.name

-- name: list_dead_letters
SELECT id, handler, position, event_id::text AS event_id, event_type, stream_id, error, attempts,
       created_at, retried_at
FROM tideflow.dead_letters
WHERE (%(handler)s::text IS NULL OR handler = %(handler)s::text)
  AND (%(include_retried)s OR retried_at IS NULL)
ORDER BY id
LIMIT %(limit)s

-- name: get_dead_letter
SELECT id, handler, position, event_id::text AS event_id, event_type, stream_id, error, attempts,
       created_at, retried_at
FROM tideflow.dead_letters WHERE id = %(id)s

-- name: mark_dead_letter_retried
UPDATE tideflow.dead_letters SET retried_at = %(now)s WHERE id = %(id)s

-- name: record_dead_letter_failure
UPDATE tideflow.dead_letters SET error = %(error)s, attempts = attempts + 1 WHERE id = %(id)s

-- name: purge_retried_dead_letters
-- Retention, one batch: dead letters retried before the cut-off, oldest first
-- (dead_letters_retried, 0012). Pending ones stay until someone retries them.
DELETE FROM tideflow.dead_letters
WHERE id IN (
    SELECT id FROM tideflow.dead_letters
    WHERE retried_at < %(before)s
    ORDER BY retried_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
