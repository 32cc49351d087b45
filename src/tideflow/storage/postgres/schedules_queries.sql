-- Cron schedules (storage/schedule_store.py; the design is in migrations/0020_schedules.sql).

-- name: upsert_schedule
-- A worker declaring its schedules (sync), only for rows that are missing or differ. The same
-- series (cron and timezone unchanged) keeps its cursor as the row has it now, not as the worker
-- read it before: two workers storing a new schedule at once, one of them firing a tick in
-- between, must not move the cursor back (the tick's key would hold, but the cursor is the
-- first guard).
INSERT INTO tideflow.schedules (name, flow_slug, cron, timezone, input, catch_up, grace,
                                last_tick_at, next_tick_at, created_at, updated_at)
VALUES (%(name)s, %(flow_slug)s, %(cron)s, %(timezone)s, %(input)s::jsonb, %(catch_up)s,
        %(grace)s, %(last_tick_at)s, %(next_tick_at)s, %(now)s, %(now)s)
ON CONFLICT (name) DO UPDATE
SET flow_slug = EXCLUDED.flow_slug, cron = EXCLUDED.cron, timezone = EXCLUDED.timezone,
    input = EXCLUDED.input, catch_up = EXCLUDED.catch_up, grace = EXCLUDED.grace,
    last_tick_at = CASE WHEN schedules.cron = EXCLUDED.cron AND schedules.timezone = EXCLUDED.timezone
                        THEN schedules.last_tick_at ELSE EXCLUDED.last_tick_at END,
    next_tick_at = CASE WHEN schedules.cron = EXCLUDED.cron AND schedules.timezone = EXCLUDED.timezone
                        THEN schedules.next_tick_at ELSE EXCLUDED.next_tick_at END,
    updated_at = EXCLUDED.updated_at

-- name: due_schedules
-- Each pass of each worker: which of its schedules have a tick past. A read of a few rows by
-- primary key; it locks nothing (firing locks the row and decides).
SELECT name FROM tideflow.schedules
WHERE name = ANY(%(names)s::text[]) AND next_tick_at <= %(now)s

-- name: lock_due_schedule
-- The firing transaction's first statement. SKIP LOCKED: a schedule another worker is firing
-- is passed over rather than waited for - that worker fires its ticks, and the cursor it commits
-- tells this one's next pass there is nothing left.
SELECT name, flow_slug, cron, timezone, input, catch_up, grace, last_tick_at, next_tick_at,
       created_at, updated_at
FROM tideflow.schedules
WHERE name = %(name)s AND next_tick_at <= %(now)s
FOR UPDATE SKIP LOCKED

-- name: insert_tick
-- The tick's unique key: 1 row inserted, or 0 when the tick fired already.
INSERT INTO tideflow.schedule_ticks (schedule, tick_at, run_id, fired_at)
VALUES (%(schedule)s, %(tick_at)s, %(run_id)s, %(fired_at)s)
ON CONFLICT (schedule, tick_at) DO NOTHING

-- name: move_schedule_cursor
UPDATE tideflow.schedules SET last_tick_at = %(last_tick_at)s, next_tick_at = %(next_tick_at)s
WHERE name = %(name)s

-- name: prune_ticks
-- Keep the newest 100 tick rows of the schedule (an index range of its primary key).
DELETE FROM tideflow.schedule_ticks
WHERE schedule = %(schedule)s
  AND tick_at < (SELECT tick_at FROM tideflow.schedule_ticks WHERE schedule = %(schedule)s
                 ORDER BY tick_at DESC OFFSET 99 LIMIT 1)

-- name: list_schedules
SELECT name, flow_slug, cron, timezone, input, catch_up, grace, last_tick_at, next_tick_at,
       created_at, updated_at
FROM tideflow.schedules ORDER BY name

-- name: list_ticks
SELECT schedule, tick_at, run_id, fired_at FROM tideflow.schedule_ticks
WHERE schedule = %(schedule)s ORDER BY tick_at DESC LIMIT %(limit)s
