-- tideflow schema for PostgreSQL, version 5: the instances of process managers (sagas).
--
-- A process manager (tideflow.sagas) follows events as an event handler and keeps, per instance
-- - one per process id, e.g. one per order - the state it needs between events. That state
-- cannot live in the handler's checkpoint (one per handler, not per instance) nor be rebuilt
-- from the log on every event (an instance reacts to events of many streams), so each instance
-- has a row here, read and written in the handler's batch transaction: the row is locked by the
-- read (SELECT ... FOR UPDATE) and its new state commits together with the commands the instance
-- dispatched, the flows it started and the handler's checkpoint - or none of them does.
--
-- last_position is the position of the last event the instance applied. A reset handler replays
-- the log from an earlier position; events at or below last_position are skipped, so a replay
-- neither re-sends commands nor applies an event twice.
--
-- Timestamps come from the workers' clocks (tideflow.clock), never from now(), so tests can move
-- time. state is json, not jsonb: it is written and read back as text, never queried inside.

CREATE TABLE tideflow.process_instances (
    manager       text        NOT NULL,
    process_id    text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    state         json        NOT NULL,
    version       bigint      NOT NULL CHECK (version >= 0),   -- events applied
    last_position bigint      NOT NULL CHECK (last_position >= 0),
    error         text,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (manager, process_id)
) WITH (fillfactor = 80);  -- room for HOT updates: every event an instance applies rewrites it

-- `tideflow processes` lists the instances of a manager in a status, most recently updated first.
CREATE INDEX process_instances_listing
    ON tideflow.process_instances (manager, status, updated_at DESC);
