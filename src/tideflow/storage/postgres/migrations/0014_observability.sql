-- tideflow schema for PostgreSQL, version 14: what an operator needs to see a run fail and follow
-- it across machines.
--
-- task_failures: one row per failed attempt of a task - the exception's type, its message and
-- its formatted traceback (bounded by the worker, newest frames kept) - written in the
-- transaction that records the failure, so a failure is visible if and only if it counted.
-- `retried` says whether a retry followed (false: the attempt failed the task, its step and its
-- run). Rows go with their run (ON DELETE CASCADE). A run retried by hand keeps its earlier
-- failures: the history of what happened is not rewritten.
--
-- runs.trace_context: the W3C trace context (traceparent, tracestate) of the span that started
-- the run, as JSON text, or NULL when no OpenTelemetry SDK was configured. A worker on any
-- machine continues that trace for each task attempt.
CREATE TABLE tideflow.task_failures (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      text        NOT NULL REFERENCES tideflow.runs (run_id) ON DELETE CASCADE,
    step_slug   text        NOT NULL,
    task_index  integer     NOT NULL,
    attempt     integer     NOT NULL,
    worker_id   text,
    error_type  text,
    error       text        NOT NULL,
    traceback   text,
    retried     boolean     NOT NULL,
    started_at  timestamptz,
    failed_at   timestamptz NOT NULL
);
CREATE INDEX task_failures_by_run ON tideflow.task_failures (run_id, id);

ALTER TABLE tideflow.runs ADD COLUMN trace_context text;
