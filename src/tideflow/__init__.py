"""tideflow: durable DAG workflows for Python on PostgreSQL or embedded SQLite."""

from tideflow.app import App
from tideflow.client import AsyncClient, Client
from tideflow.errors import (
    CycleError,
    DuplicateStepError,
    FlowDefinitionError,
    FlowImportError,
    FlowNotFoundError,
    InputNotSerializableError,
    InvalidSlugError,
    MapSourceError,
    NonRetryableError,
    NotAFlowError,
    RegistryError,
    RunAlreadyExistsError,
    RunNotFoundError,
    RunTimeoutError,
    SlugConflictError,
    StepTimeoutError,
    TideflowError,
    UnknownDependencyError,
)
from tideflow.flows import Flow, FlowRegistry, StepContext, step
from tideflow.storage.contract import RunRecord, StepRecord, TaskRecord

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "Client",
    "CycleError",
    "DuplicateStepError",
    "Flow",
    "FlowDefinitionError",
    "FlowImportError",
    "FlowNotFoundError",
    "FlowRegistry",
    "InputNotSerializableError",
    "InvalidSlugError",
    "MapSourceError",
    "NonRetryableError",
    "NotAFlowError",
    "RegistryError",
    "RunAlreadyExistsError",
    "RunNotFoundError",
    "RunRecord",
    "RunTimeoutError",
    "SlugConflictError",
    "StepContext",
    "StepRecord",
    "StepTimeoutError",
    "TaskRecord",
    "TideflowError",
    "UnknownDependencyError",
    "step",
]
