-- Jobs (tideflow/flows/jobs.py): see ../postgres/jobs_queries.sql.

-- name: delay_run_tasks
UPDATE tasks SET visible_at = max(visible_at, %(visible_at)s)
WHERE run_id = %(run_id)s AND status = 'queued'
