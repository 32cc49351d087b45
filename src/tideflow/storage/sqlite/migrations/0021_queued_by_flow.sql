-- tideflow schema for SQLite, version 21: a limited flow's queue, by flow.
--
-- The index of the PostgreSQL migration of the same number (see its header): the limited claim
-- (claim_limited_tasks) reads one flow's queued tasks in visibility order, which tasks_queued,
-- holding every flow's, gave only by testing each row's flow - a walk of another flow's whole
-- backlog on every claim. Building it reads the tasks table once, under the migration's write
-- lock.

CREATE INDEX IF NOT EXISTS tasks_queued_by_flow ON tasks (flow_slug, visible_at) WHERE status = 'queued';
