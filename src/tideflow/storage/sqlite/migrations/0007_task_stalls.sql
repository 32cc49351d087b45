-- tideflow schema for SQLite, version 7: a killed worker no longer costs its task an attempt.
--
-- As on PostgreSQL (see its 0007): tasks.stalls counts the lease expiries that requeued a task
-- without counting an attempt, and run_steps.max_stalls caps them (copied from the flow's step
-- options when a run starts, like max_attempts). Existing rows take the defaults. SQLite has no
-- stored functions, so nothing else changes here: its insert_steps query names the new column.

ALTER TABLE tasks ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0 CHECK (stalls >= 0);

ALTER TABLE run_steps ADD COLUMN max_stalls INTEGER NOT NULL DEFAULT 3 CHECK (max_stalls >= 0);
