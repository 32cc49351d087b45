-- tideflow schema for PostgreSQL, version 20: cron schedules of flows and jobs.
--
-- schedules: one row per schedule an app declares (tideflow/flows/schedules.py), written by the
-- workers as they start (storage/schedule_store.py, sync) - what to start (flow_slug, input),
-- when (cron, timezone) and what to do with ticks found already past (catch_up, grace). Its
-- cursor, last_tick_at, is the last tick handled (fired, or passed over by catch_up); a new row
-- starts at the time it was stored, so no tick before it fires. next_tick_at is the first tick
-- after the cursor: what `tideflow schedules` shows, and what a worker's pass looks at to find
-- the schedules that are due (a read of a handful of rows by primary key).
--
-- schedule_ticks: one row per fired tick, keyed (schedule, tick_at): the unique key that makes
-- a tick fire once. Firing is one transaction of whichever worker gets there first: lock the
-- schedule row FOR UPDATE SKIP LOCKED (a worker firing it already is passed over, not waited
-- for), compute the due ticks from the locked cursor, insert each tick row and start its run
-- (run id schedule:<name>@<tick>) in the same transaction, move the cursor. The tick, its run
-- and the cursor commit together or not at all, so a worker killed mid-way leaves the tick to
-- the next pass, and no interleaving of workers fires it twice: the row lock orders them, the
-- cursor tells the later one it is done, and the primary key (and the run id's) would refuse a
-- second tick even if both were bypassed. Old tick rows are pruned as new ones are written
-- (the newest 100 per schedule are kept, for `tideflow schedules` and for readers).
--
-- Times come from the workers' clocks, never from now(); the cron arithmetic is Python's
-- (cronsim), stored as UTC instants.

CREATE TABLE tideflow.schedules (
    name         text             PRIMARY KEY,
    flow_slug    text             NOT NULL,
    cron         text             NOT NULL,
    timezone     text             NOT NULL,
    input        jsonb            NOT NULL,
    catch_up     text             NOT NULL CHECK (catch_up IN ('none', 'latest', 'all')),
    grace        double precision NOT NULL,
    last_tick_at timestamptz      NOT NULL,
    next_tick_at timestamptz,
    created_at   timestamptz      NOT NULL,
    updated_at   timestamptz      NOT NULL
);

CREATE TABLE tideflow.schedule_ticks (
    schedule text        NOT NULL,
    tick_at  timestamptz NOT NULL,
    run_id   text        NOT NULL,
    fired_at timestamptz NOT NULL,
    PRIMARY KEY (schedule, tick_at)
);
