-- Named queries of the timer store (tideflow/storage/timer_store.py) on PostgreSQL.
-- Parameters are %(name)s. Migration 0008 explains the table. schedule, cancel and cancel_all
-- run in a reaction's batch transaction; take_due in the firing transaction.

-- name: schedule
-- Schedule, or reschedule: a timer of that name, pending or fired, is replaced (a new token: the
-- old one's event, if it fired, is stale).
INSERT INTO tideflow.process_timers AS t (manager, process_id, name, fire_at, event_type, data,
                                          scheduled_at, token, fired_at)
VALUES (%(manager)s, %(process_id)s, %(name)s, %(fire_at)s, %(event_type)s, %(data)s::json,
        %(now)s, %(token)s, NULL)
ON CONFLICT (manager, process_id, name) DO UPDATE
SET fire_at = EXCLUDED.fire_at, event_type = EXCLUDED.event_type, data = EXCLUDED.data,
    scheduled_at = EXCLUDED.scheduled_at, token = EXCLUDED.token, fired_at = NULL

-- name: cancel
DELETE FROM tideflow.process_timers
WHERE manager = %(manager)s AND process_id = %(process_id)s AND name = %(name)s

-- name: cancel_all
DELETE FROM tideflow.process_timers
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: take_due
-- In the firing transaction: the due timers, soonest first, marked fired and returned (the row
-- stays until its instance takes it: take_fired). SKIP LOCKED passes over rows another worker is
-- firing (or a reaction is rewriting) instead of waiting: each row is fired by one transaction,
-- and its event commits with the mark. MATERIALIZED: the rows are chosen and locked once,
-- whatever plan the UPDATE gets.
WITH due AS MATERIALIZED (
    SELECT manager, process_id, name
    FROM tideflow.process_timers
    WHERE fire_at <= %(now)s AND fired_at IS NULL
    ORDER BY fire_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tideflow.process_timers AS t
SET fired_at = %(now)s
FROM due
WHERE t.manager = due.manager AND t.process_id = due.process_id AND t.name = due.name
RETURNING t.manager, t.process_id, t.name, t.fire_at, t.event_type, t.data::text AS data_json,
          t.scheduled_at, t.token

-- name: take_fired
-- In the batch transaction of the instance the fired event reached: the row goes, if it is still
-- the one that fired (same token). No row: the event is stale (cancelled, rescheduled, or the
-- instance ended after the timer fired).
DELETE FROM tideflow.process_timers
WHERE manager = %(manager)s AND process_id = %(process_id)s AND name = %(name)s
  AND token = %(token)s AND fired_at IS NOT NULL

-- name: next_due
SELECT min(fire_at) AS fire_at FROM tideflow.process_timers WHERE fired_at IS NULL

-- name: pending
SELECT manager, process_id, name, fire_at, event_type, data::text AS data_json, scheduled_at,
       token
FROM tideflow.process_timers
WHERE fired_at IS NULL AND (%(manager)s::text IS NULL OR manager = %(manager)s::text)
  AND (%(process_id)s::text IS NULL OR process_id = %(process_id)s::text)
ORDER BY fire_at, manager, process_id, name
LIMIT %(limit)s
