-- Named queries of the timer store (tideflow/storage/timer_store.py) on SQLite.
-- Parameters are %(name)s (rewritten to :name at load); timestamps are REAL epoch seconds. The
-- queries mirror the PostgreSQL ones (see postgres/timers_queries.sql and migration 0008),
-- without FOR UPDATE SKIP LOCKED: the firing transaction holds SQLite's write lock instead.

-- name: schedule
-- Schedule, or reschedule: a pending timer of that name is replaced.
INSERT INTO process_timers (manager, process_id, name, fire_at, event_type, data, scheduled_at)
VALUES (%(manager)s, %(process_id)s, %(name)s, %(fire_at)s, %(event_type)s, %(data)s, %(now)s)
ON CONFLICT (manager, process_id, name) DO UPDATE
SET fire_at = excluded.fire_at, event_type = excluded.event_type, data = excluded.data,
    scheduled_at = excluded.scheduled_at

-- name: cancel
DELETE FROM process_timers
WHERE manager = %(manager)s AND process_id = %(process_id)s AND name = %(name)s

-- name: cancel_all
DELETE FROM process_timers
WHERE manager = %(manager)s AND process_id = %(process_id)s

-- name: take_due
-- In the firing transaction: the due timers, soonest first, deleted and returned.
DELETE FROM process_timers
WHERE (manager, process_id, name) IN (
    SELECT manager, process_id, name
    FROM process_timers
    WHERE fire_at <= %(now)s
    ORDER BY fire_at
    LIMIT %(limit)s)
RETURNING manager, process_id, name, fire_at, event_type, data AS data_json, scheduled_at

-- name: next_due
SELECT min(fire_at) AS fire_at FROM process_timers

-- name: pending
SELECT manager, process_id, name, fire_at, event_type, data AS data_json, scheduled_at
FROM process_timers
WHERE (%(manager)s IS NULL OR manager = %(manager)s)
  AND (%(process_id)s IS NULL OR process_id = %(process_id)s)
ORDER BY fire_at, manager, process_id, name
LIMIT %(limit)s
