"""The web dashboard (``tideflow dashboard``; ``pip install 'tideflow[dashboard]'``): runs, their
DAGs and timelines, flows, the event log, handlers and dead letters, process managers, workers
and queues, and ``/metrics`` for Prometheus."""

from tideflow.dashboard.app import Dashboard, create_app
from tideflow.dashboard.auth import DashboardConfigError, check_bind

__all__ = ["Dashboard", "DashboardConfigError", "check_bind", "create_app"]
