-- Named queries of the timer store (tideflow/storage/timer_store.py) on SQLite.
-- Parameters are %(name)s (rewritten to :name at load); timestamps are REAL epoch seconds. The
-- queries mirror the PostgreSQL ones (see postgres/timers_queries.sql and migrations 0008 and
-- 0013), without FOR UPDATE SKIP LOCKED: the firing transaction holds SQLite's write lock instead.

-- name: schedule
-- Schedule, or reschedule: a timer of that name, pending or fired, is replaced (a new token).
INSERT INTO process_timers (manager, process_id, name, fire_at, event_type, data, scheduled_at,
                            token, fired_at)
VALUES (%(manager)s, %(process_id)s, %(name)s, %(fire_at)s, %(event_type)s, %(data)s, %(now)s,
        %(token)s, NULL)
ON CONFLICT (manager, process_id, name) DO UPDATE
SET fire_at = excluded.fire_at, event_type = excluded.event_type, data = excluded.data,
    scheduled_at = excluded.scheduled_at, token = excluded.token, fired_at = NULL

-- name: cancel
DELETE FROM process_timers
WHERE manager = %(manager)s AND process_id = %(process_id)s AND name = %(name)s

-- name: cancel_all
DELETE FROM process_timers
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: take_due
-- In the firing transaction: the due timers, soonest first, marked fired and returned.
UPDATE process_timers
SET fired_at = %(now)s
WHERE (manager, process_id, name) IN (
    SELECT manager, process_id, name
    FROM process_timers
    WHERE fire_at <= %(now)s AND fired_at IS NULL
    ORDER BY fire_at
    LIMIT %(limit)s)
RETURNING manager, process_id, name, fire_at, event_type, data AS data_json, scheduled_at, token

-- name: take_fired
-- In the batch transaction of the instance the fired event reached (PostgreSQL's says why).
DELETE FROM process_timers
WHERE manager = %(manager)s AND process_id = %(process_id)s AND name = %(name)s
  AND token = %(token)s AND fired_at IS NOT NULL

-- name: next_due
SELECT min(fire_at) AS fire_at FROM process_timers WHERE fired_at IS NULL

-- name: pending
SELECT manager, process_id, name, fire_at, event_type, data AS data_json, scheduled_at, token
FROM process_timers
WHERE fired_at IS NULL
  AND (%(manager)s IS NULL OR manager = %(manager)s)
  AND (%(process_id)s IS NULL OR process_id = %(process_id)s)
ORDER BY fire_at, manager, process_id, name
LIMIT %(limit)s
