-- tideflow schema for PostgreSQL, version 3: who runs each event handler, and what it could not do.
--
-- Model. An event handler (a projection, a process manager, anything that follows the log) has a
-- checkpoint (handler_checkpoints, migration 0002): the position of the last event it processed,
-- advanced in the same transaction as the handler's own writes. This migration adds what running
-- handlers on many workers needs besides:
--
--   * event_handlers: one row per handler - whether it should run (status), which worker runs it
--     now (owner) and until when (lease_expires_at), the event it keeps failing on, and why it
--     was stopped;
--   * dead_letters: events a handler gave up on after its retries, so it could move past them.
--
-- One worker per handler. A worker takes a handler by setting owner and lease_expires_at, only if
-- the row has no owner or its lease has expired (acquire, handlers_queries.sql); it renews the
-- lease every lease/3 seconds. Every batch of events runs in ONE transaction that first updates
-- the row WHERE owner = this worker (hold): that row lock is held to commit, so a worker whose
-- lease lapsed (a long GC pause, a network partition) cannot commit a batch after another worker
-- took over - the UPDATE finds another owner and the batch rolls back - and a worker taking over
-- waits for a batch in flight to commit before its claim re-reads the row. A worker that dies is
-- replaced once its lease expires, from the checkpoint its last committed batch left.
--
-- Lock order, in every transaction that touches a handler: event_handlers row -> checkpoint row
-- (handler_checkpoints) -> the handler's own rows.
--
-- Timestamps come from the workers' clocks (tideflow.clock), never from now(), so tests can move
-- time; keep the machines NTP-synced and leases well above the expected clock skew.

CREATE TABLE tideflow.event_handlers (
    name             text        PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('handler', 'projection')),
    status           text        NOT NULL CHECK (status IN ('running', 'stopped')),
    owner            text,
    lease_expires_at timestamptz,
    failing_position bigint,     -- the event the handler failed on and is retrying
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    stopped_reason   text,
    updated_at       timestamptz NOT NULL
) WITH (fillfactor = 80);  -- room for HOT updates: every batch and heartbeat rewrites the row

-- One row per (handler, event): reprocessing after a reset updates the row instead of adding one.
CREATE TABLE tideflow.dead_letters (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handler    text        NOT NULL,
    position   bigint      NOT NULL,
    event_id   uuid        NOT NULL,
    event_type text        NOT NULL,
    stream_id  text        NOT NULL,
    error      text        NOT NULL,
    attempts   integer     NOT NULL CHECK (attempts >= 1),
    created_at timestamptz NOT NULL,
    retried_at timestamptz,
    CONSTRAINT dead_letters_event UNIQUE (handler, position)
);
CREATE INDEX dead_letters_pending ON tideflow.dead_letters (handler, id) WHERE retried_at IS NULL;
