-- Named queries of the process store (tideflow/storage/process_store.py) on PostgreSQL.
-- Parameters are %(name)s. Migrations 0005 and 0009 explain the table. Queries marked "in the batch
-- transaction" run on the connection of an event store transaction, so that the instance's row
-- lock and new state belong to the handler's batch.

-- name: load
-- In the batch transaction: the instance, locked until the batch ends, so that no other
-- transaction can apply an event to it meanwhile (a worker that took the handler over waits
-- here, then reads the state this batch left).
SELECT manager, process_id, status, state::text AS state_json, version, last_position, error,
       started_at, updated_at, undo::text AS undo_json, sent::text AS sent_json, finished_at
FROM tideflow.process_instances
WHERE manager = %(manager)s AND process_id = %(process_id)s
FOR UPDATE

-- name: load_many
-- In the batch transaction: the instances a handler batch addresses, in one statement, locked as
-- load locks one (in process id order, the order every batch takes them in).
SELECT manager, process_id, status, state::text AS state_json, version, last_position, error,
       started_at, updated_at, undo::text AS undo_json, sent::text AS sent_json, finished_at
FROM tideflow.process_instances
WHERE manager = %(manager)s AND process_id = ANY(%(process_ids)s::text[])
ORDER BY process_id
FOR UPDATE

-- name: save
-- In the batch transaction. A starting event for an id whose instance has ended replaces the row
-- (a new instance: started_at is reset, with everything else).
INSERT INTO tideflow.process_instances AS p (manager, process_id, status, state, version,
                                             last_position, error, started_at, updated_at, undo,
                                             sent, finished_at)
VALUES (%(manager)s, %(process_id)s, %(status)s, %(state)s::json, %(version)s,
        %(last_position)s, %(error)s, %(now)s, %(now)s, %(undo)s::json, %(sent)s::json,
        %(finished_at)s)
ON CONFLICT (manager, process_id) DO UPDATE
SET status = EXCLUDED.status, state = EXCLUDED.state, version = EXCLUDED.version,
    last_position = EXCLUDED.last_position, error = EXCLUDED.error,
    started_at = CASE WHEN %(fresh)s THEN EXCLUDED.started_at ELSE p.started_at END,
    updated_at = EXCLUDED.updated_at, undo = EXCLUDED.undo, sent = EXCLUDED.sent,
    finished_at = EXCLUDED.finished_at

-- name: prune_finished
-- In the transaction of a new instance's first reaction: instances of the manager that ended
-- before the retention's cut-off go, a bounded number at a time (the partial index of 0009).
DELETE FROM tideflow.process_instances
WHERE (manager, process_id) IN (
    SELECT manager, process_id FROM tideflow.process_instances
    WHERE manager = %(manager)s AND finished_at IS NOT NULL AND finished_at < %(before)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)

-- name: get
SELECT manager, process_id, status, state::text AS state_json, version, last_position, error,
       started_at, updated_at, undo::text AS undo_json, sent::text AS sent_json, finished_at
FROM tideflow.process_instances
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: list_instances
SELECT manager, process_id, status, state::text AS state_json, version, last_position, error,
       started_at, updated_at, undo::text AS undo_json, sent::text AS sent_json, finished_at
FROM tideflow.process_instances
WHERE (%(manager)s::text IS NULL OR manager = %(manager)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY updated_at DESC, manager, process_id
LIMIT %(limit)s

-- name: counts
SELECT manager, status, count(*) AS instances
FROM tideflow.process_instances
GROUP BY manager, status

-- name: delete_instance
-- An instance stopped through the instance API (``ProcessHandle.stop(delete=True)``).
DELETE FROM tideflow.process_instances WHERE manager = %(manager)s AND process_id = %(process_id)s
