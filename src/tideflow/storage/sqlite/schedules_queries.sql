-- Cron schedules (storage/schedule_store.py; the design is in
-- ../postgres/migrations/0020_schedules.sql). No row locks: a transaction holds SQLite's write
-- lock from BEGIN IMMEDIATE to its end, so firing transactions run one at a time.

-- name: upsert_schedule
INSERT INTO schedules (name, flow_slug, cron, timezone, input, catch_up, grace, last_tick_at,
                       next_tick_at, created_at, updated_at)
VALUES (%(name)s, %(flow_slug)s, %(cron)s, %(timezone)s, %(input)s, %(catch_up)s, %(grace)s,
        %(last_tick_at)s, %(next_tick_at)s, %(now)s, %(now)s)
ON CONFLICT (name) DO UPDATE
SET flow_slug = excluded.flow_slug, cron = excluded.cron, timezone = excluded.timezone,
    input = excluded.input, catch_up = excluded.catch_up, grace = excluded.grace,
    last_tick_at = CASE WHEN schedules.cron = excluded.cron AND schedules.timezone = excluded.timezone
                        THEN schedules.last_tick_at ELSE excluded.last_tick_at END,
    next_tick_at = CASE WHEN schedules.cron = excluded.cron AND schedules.timezone = excluded.timezone
                        THEN schedules.next_tick_at ELSE excluded.next_tick_at END,
    updated_at = excluded.updated_at

-- name: due_schedules
SELECT name FROM schedules
WHERE name IN (SELECT value FROM json_each(%(names)s)) AND next_tick_at <= %(now)s

-- name: lock_due_schedule
SELECT name, flow_slug, cron, timezone, input, catch_up, grace, last_tick_at, next_tick_at,
       created_at, updated_at
FROM schedules
WHERE name = %(name)s AND next_tick_at <= %(now)s

-- name: insert_tick
INSERT INTO schedule_ticks (schedule, tick_at, run_id, fired_at)
VALUES (%(schedule)s, %(tick_at)s, %(run_id)s, %(fired_at)s)
ON CONFLICT (schedule, tick_at) DO NOTHING

-- name: move_schedule_cursor
UPDATE schedules SET last_tick_at = %(last_tick_at)s, next_tick_at = %(next_tick_at)s
WHERE name = %(name)s

-- name: prune_ticks
DELETE FROM schedule_ticks
WHERE schedule = %(schedule)s
  AND tick_at < (SELECT tick_at FROM schedule_ticks WHERE schedule = %(schedule)s
                 ORDER BY tick_at DESC LIMIT 1 OFFSET 99)

-- name: list_schedules
SELECT name, flow_slug, cron, timezone, input, catch_up, grace, last_tick_at, next_tick_at,
       created_at, updated_at
FROM schedules ORDER BY name

-- name: list_ticks
SELECT schedule, tick_at, run_id, fired_at FROM schedule_ticks
WHERE schedule = %(schedule)s ORDER BY tick_at DESC LIMIT %(limit)s
