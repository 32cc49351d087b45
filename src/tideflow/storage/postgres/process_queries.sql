-- Named queries of the process store (tideflow/storage/process_store.py) on PostgreSQL.
-- Parameters are %(name)s. Migration 0005 explains the table. Queries marked "in the batch
-- transaction" run on the connection of an event store transaction, so that the instance's row
-- lock and new state belong to the handler's batch.

-- name: load
-- In the batch transaction: the instance, locked until the batch ends, so that no other
-- transaction can apply an event to it meanwhile (a worker that took the handler over waits
-- here, then reads the state this batch left).
SELECT manager, process_id, status, state::text AS state_json, version, last_position, error,
       started_at, updated_at
FROM tideflow.process_instances
WHERE manager = %(manager)s AND process_id = %(process_id)s
FOR UPDATE

-- name: save
-- In the batch transaction: create the instance or replace its state; started_at stays that of
-- the first insert.
INSERT INTO tideflow.process_instances AS p (manager, process_id, status, state, version,
                                             last_position, error, started_at, updated_at)
VALUES (%(manager)s, %(process_id)s, %(status)s, %(state)s::json, %(version)s,
        %(last_position)s, %(error)s, %(now)s, %(now)s)
ON CONFLICT (manager, process_id) DO UPDATE
SET status = EXCLUDED.status, state = EXCLUDED.state, version = EXCLUDED.version,
    last_position = EXCLUDED.last_position, error = EXCLUDED.error,
    updated_at = EXCLUDED.updated_at

-- name: get
SELECT manager, process_id, status, state::text AS state_json, version, last_position, error,
       started_at, updated_at
FROM tideflow.process_instances
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: list_instances
SELECT manager, process_id, status, state::text AS state_json, version, last_position, error,
       started_at, updated_at
FROM tideflow.process_instances
WHERE (%(manager)s::text IS NULL OR manager = %(manager)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY updated_at DESC, manager, process_id
LIMIT %(limit)s

-- name: counts
SELECT manager, status, count(*) AS instances
FROM tideflow.process_instances
GROUP BY manager, status
