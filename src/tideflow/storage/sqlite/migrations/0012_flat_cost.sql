-- tideflow schema for SQLite, version 12: flat cost as data grows (PostgreSQL's 0012 says why).
--
-- The same indexes as PostgreSQL: the stall finder's index keyed on leases rather than on the
-- 'started' status (so that completions and heartbeats, which name a task by its key and that
-- status, are never planned through it), finished runs by status (list_runs) and by age
-- (retention), idempotency keys and retried dead letters by age (their expiry), and run_id, the
-- listing's tie-breaker, in the listing indexes. SQLite has no storage parameters to set and no
-- stored functions: its claim stays the named query.
DROP INDEX tasks_started;
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
DROP INDEX runs_by_started;
CREATE INDEX runs_by_started ON runs (started_at DESC, run_id);
DROP INDEX runs_by_flow;
CREATE INDEX runs_by_flow ON runs (flow_slug, started_at DESC, run_id);
CREATE INDEX runs_finished_by_status ON runs (status, started_at DESC, run_id)
    WHERE status <> 'started';
CREATE INDEX runs_by_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (recorded_at);
CREATE INDEX dead_letters_retried ON dead_letters (retried_at) WHERE retried_at IS NOT NULL;
