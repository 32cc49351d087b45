"""The worker process: claims tasks from storage and runs flow steps."""

from tideflow.worker.worker import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
