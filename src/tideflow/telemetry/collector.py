"""Gauges read from the database at scrape time: what every process shares - runs per flow and
status, queue depth and the age of the oldest queued task per flow, each handler's lag in events
and its dead letters, process manager instances per status, the event log's head.

Any one process (the dashboard, or each worker with ``--metrics-port``) gives the whole
picture; a scrape costs a handful of aggregate queries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from tideflow.storage.event_contract import EventStore
from tideflow.storage.handler_contract import HandlerStore
from tideflow.storage.monitor_contract import MonitorStore
from tideflow.storage.process_contract import ProcessStore
from tideflow.telemetry import metrics

log = logging.getLogger("tideflow.telemetry")


class DatabaseCollector:
    """A prometheus-client collector over the stores (register it on a registry)."""

    def __init__(
        self,
        monitor: MonitorStore,
        events: EventStore,
        handlers: HandlerStore,
        processes: ProcessStore,
    ) -> None:
        self.monitor = monitor
        self.events = events
        self.handlers = handlers
        self.processes = processes

    def describe(self) -> list[Any]:
        return []  # read at scrape time only: registering must not query the database

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily as gauge

        try:
            runs = gauge("tideflow_runs", "Runs by flow and status.", labels=["flow", "status"])
            for c in self.monitor.run_counts():
                runs.add_metric([c.flow_slug, c.status], c.runs)
            depth = gauge("tideflow_queue_depth", "Queued tasks by flow.", labels=["flow"])
            age = gauge(
                "tideflow_queue_oldest_age_seconds",
                "Age of the oldest queued task by flow.",
                labels=["flow"],
            )
            now = self.events.clock.now()
            for q in self.monitor.queue_stats():
                depth.add_metric([q.flow_slug], q.queued)
                if q.oldest_queued_at is not None:
                    age.add_metric([q.flow_slug], (now - q.oldest_queued_at).total_seconds())
            head = self.events.head_position()
            lag = gauge(
                "tideflow_handler_lag_events",
                "Events between the log's head and each handler's checkpoint.",
                labels=["handler"],
            )
            dead = gauge(
                "tideflow_handler_dead_letters",
                "Dead letters not yet retried, by handler.",
                labels=["handler"],
            )
            for h in self.handlers.list_handlers():
                lag.add_metric([h.name], max(0, head - h.position))
                dead.add_metric([h.name], h.dead_letters)
            instances = gauge(
                "tideflow_process_instances",
                "Process manager instances by manager and status.",
                labels=["manager", "status"],
            )
            for (manager, status), n in sorted(self.processes.counts().items()):
                instances.add_metric([manager, status], n)
            alive = gauge(
                "tideflow_workers_alive", "Flow workers heard from within three heartbeats."
            )
            alive.add_metric([], sum(1 for w in self.monitor.list_workers() if w.alive(now)))
            position = gauge("tideflow_event_log_head", "Position of the event log's head.")
            position.add_metric([], head)
        except Exception:  # a scrape must not fail the process: log, and serve what is known
            log.exception("reading metrics from the database failed")
            return
        yield from (runs, depth, age, lag, dead, instances, alive, position)


class _ProcessMetrics:
    """The metrics this process counts itself (``telemetry.metrics``, and whatever else the
    application registered in prometheus-client's default registry)."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def metrics_registry(database: DatabaseCollector) -> Any:
    """A registry serving this process's metrics and the database's gauges, for one
    ``/metrics`` endpoint (the dashboard's, or a worker's ``--metrics-port``)."""
    from prometheus_client import CollectorRegistry

    metrics.mark_exported()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    registry.register(database)
    return registry


def serve_metrics(database: DatabaseCollector, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (a worker's)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=metrics_registry(database))
