-- Named queries of the monitor store (storage/monitor_store.py): read-only aggregates for the
-- dashboard and the Prometheus collector.

-- name: run_counts
SELECT flow_slug, status, count(*) AS n FROM tideflow.runs GROUP BY flow_slug, status
ORDER BY flow_slug, status

-- name: queue_stats
SELECT flow_slug, count(*) AS queued, count(*) FILTER (WHERE visible_at <= %(now)s) AS visible,
       min(queued_at) AS oldest_at
FROM tideflow.tasks WHERE status = 'queued' GROUP BY flow_slug ORDER BY flow_slug

-- name: task_leases
SELECT worker_id, count(*) AS tasks, min(started_at) AS oldest_started_at,
       max(lease_expires_at) AS lease_expires_at
FROM tideflow.tasks
WHERE status = 'started' AND worker_id IS NOT NULL AND lease_expires_at > %(now)s
GROUP BY worker_id

-- name: handler_leases
SELECT owner, name, lease_expires_at FROM tideflow.event_handlers
WHERE owner IS NOT NULL AND lease_expires_at > %(now)s

-- name: version_counts
SELECT flow_slug, flow_version, count(*) AS n FROM tideflow.runs
GROUP BY flow_slug, flow_version ORDER BY flow_slug, flow_version

-- name: find_runs
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM tideflow.runs
WHERE (%(flow_slug)s::text IS NULL OR flow_slug = %(flow_slug)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s::timestamptz)
ORDER BY started_at DESC, run_id
LIMIT %(limit)s

-- name: record_heartbeat
INSERT INTO tideflow.workers (worker_id, hostname, pid, flows, concurrency, running,
                              heartbeat_interval, started_at, heartbeat_at)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(flows)s::jsonb, %(concurrency)s, %(running)s,
        %(heartbeat_interval)s, %(now)s, %(now)s)
ON CONFLICT (worker_id) DO UPDATE
SET running = excluded.running, heartbeat_at = excluded.heartbeat_at, stopped_at = NULL

-- name: record_worker_stopped
UPDATE tideflow.workers SET stopped_at = %(now)s, running = 0 WHERE worker_id = %(worker_id)s

-- name: forget_silent_workers
DELETE FROM tideflow.workers WHERE heartbeat_at < %(before)s

-- name: list_workers
SELECT worker_id, hostname, pid, flows::text AS flows, concurrency, running, heartbeat_interval,
       started_at, heartbeat_at, stopped_at
FROM tideflow.workers ORDER BY stopped_at IS NOT NULL, heartbeat_at DESC, worker_id
