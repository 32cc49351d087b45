-- tideflow schema for PostgreSQL, version 1.
--
-- Model: a flow version (flows) is a DAG of steps; a run instantiates it (runs), with one row
-- per step (run_steps) counting the dependencies and tasks it still waits for, and one row per
-- unit of work (tasks): one for a single step, one per array element for a map step.
-- Workers claim queued tasks with FOR UPDATE SKIP LOCKED and hold them under a lease
-- (lease_expires_at) that heartbeats extend; a task whose lease expired is retried by any worker.
--
-- Lock order, in every transaction that changes a run: runs row (by run_id) -> run_steps ->
-- tasks. The claim touches only queued tasks, skipping locked ones, so it never waits.

CREATE SCHEMA IF NOT EXISTS tideflow;

CREATE TABLE tideflow.flows (
    flow_slug   text        NOT NULL,
    version     text        NOT NULL,
    shape       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (flow_slug, version)
);

CREATE TABLE tideflow.runs (
    run_id          text        PRIMARY KEY,
    flow_slug       text        NOT NULL,
    flow_version    text        NOT NULL,
    status          text        NOT NULL
                    CHECK (status IN ('started', 'completed', 'failed', 'cancelled')),
    input           jsonb       NOT NULL,
    output          jsonb,
    error           text,
    remaining_steps integer     NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    FOREIGN KEY (flow_slug, flow_version) REFERENCES tideflow.flows (flow_slug, version)
);
CREATE INDEX runs_by_started ON tideflow.runs (started_at DESC);
CREATE INDEX runs_by_flow ON tideflow.runs (flow_slug, started_at DESC);

CREATE TABLE tideflow.run_steps (
    run_id          text        NOT NULL REFERENCES tideflow.runs (run_id) ON DELETE CASCADE,
    step_slug       text        NOT NULL,
    step_index      integer     NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('single', 'map')),
    depends_on      jsonb       NOT NULL,
    status          text        NOT NULL
                    CHECK (status IN ('created', 'started', 'completed', 'failed', 'skipped')),
    remaining_deps  integer     NOT NULL,
    initial_tasks   integer,
    remaining_tasks integer,
    output          jsonb,
    error           text,
    max_attempts    integer     NOT NULL,
    base_delay      double precision NOT NULL,
    max_delay       double precision NOT NULL,
    timeout         double precision,
    start_delay     double precision NOT NULL,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (run_id, step_slug)
);

CREATE TABLE tideflow.tasks (
    run_id           text        NOT NULL,
    step_slug        text        NOT NULL,
    task_index       integer     NOT NULL,
    flow_slug        text        NOT NULL,
    status           text        NOT NULL
                     CHECK (status IN ('queued', 'started', 'completed', 'failed', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    input            jsonb       NOT NULL,
    output           jsonb,
    error            text,
    timeout          double precision,
    worker_id        text,
    queued_at        timestamptz NOT NULL,
    visible_at       timestamptz NOT NULL,
    started_at       timestamptz,
    lease_expires_at timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (run_id, step_slug, task_index),
    FOREIGN KEY (run_id, step_slug) REFERENCES tideflow.run_steps (run_id, step_slug)
        ON DELETE CASCADE
);
-- The claim reads only this partial index: queued tasks by visibility.
CREATE INDEX tasks_queued ON tideflow.tasks (visible_at) WHERE status = 'queued';
-- Stalled-task recovery reads only this one.
CREATE INDEX tasks_started ON tideflow.tasks (lease_expires_at) WHERE status = 'started';
