-- Jobs (tideflow/flows/jobs.py): a job is a one-step flow, so it needs no SQL of its own but
-- this one statement, for a job enqueued with a delay.

-- name: delay_run_tasks
-- In start_run's transaction, right after the run's root tasks were queued: they become
-- claimable at visible_at, not before (the claim already waits for tasks.visible_at, as it does
-- for a retry's backoff - no claim change, no new column). GREATEST: a time in the past
-- leaves the task where the start put it rather than ahead of the queue.
UPDATE tideflow.tasks SET visible_at = GREATEST(visible_at, %(visible_at)s::timestamptz)
WHERE run_id = %(run_id)s AND status = 'queued'
