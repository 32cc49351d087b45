-- tideflow schema for PostgreSQL, version 8: durable timers of process manager instances.
--
-- A process manager's reaction may schedule a timer ("if PaymentCharged has not arrived within
-- 15 minutes, undo"): one row per (manager, process id, timer name), written in the reaction's
-- batch transaction, so it exists if and only if that reaction committed. Scheduling a name
-- again replaces its row; cancelling it, or the instance ending, deletes it in the same way.
--
-- Firing (tideflow/storage/timer_store.py, fire_due) is one transaction of whichever worker gets
-- there first: DELETE the due rows, chosen FOR UPDATE SKIP LOCKED (a row another worker is firing,
-- or a reaction is rescheduling, is passed over, not waited for), RETURNING them, and append each
-- one's event to the log. The event and the row's deletion commit together or not at all, so a
-- timer fires exactly once however many workers poll and whenever one is killed.
--
-- process_timers_due serves "what is due soonest": the firing query and the worker's look at
-- when to wake next. fire_at and scheduled_at come from the workers' clocks, never from now().
-- data is json (the event's data, stored as the reaction encoded it).

CREATE TABLE tideflow.process_timers (
    manager      text        NOT NULL,
    process_id   text        NOT NULL,
    name         text        NOT NULL,
    fire_at      timestamptz NOT NULL,
    event_type   text        NOT NULL,
    data         json        NOT NULL,
    scheduled_at timestamptz NOT NULL,
    PRIMARY KEY (manager, process_id, name)
);

CREATE INDEX process_timers_due ON tideflow.process_timers (fire_at);
