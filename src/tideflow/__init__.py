"""tideflow: durable DAG workflows for Python on PostgreSQL or embedded SQLite."""

from tideflow.app import App
from tideflow.client import AsyncClient, Client
from tideflow.errors import (
    CycleError,
    DatabaseUnavailableError,
    DuplicateStepError,
    FlowDefinitionError,
    FlowImportError,
    FlowNotFoundError,
    InputNotSerializableError,
    InvalidDataError,
    InvalidSlugError,
    MapSourceError,
    NonRetryableError,
    NotAFlowError,
    RegistryError,
    RunAlreadyExistsError,
    RunNotFoundError,
    RunTimeoutError,
    SchemaMissingError,
    SchemaNotReadyError,
    SlugConflictError,
    StepTimeoutError,
    StorageError,
    TideflowError,
    UnknownDependencyError,
)
from tideflow.flows import Flow, FlowRegistry, StepContext, step
from tideflow.runtime.retention import Purged, Retention
from tideflow.storage.flow_contract import RunRecord, StepRecord, TaskRecord

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncClient",
    "Client",
    "CycleError",
    "DatabaseUnavailableError",
    "DuplicateStepError",
    "Flow",
    "FlowDefinitionError",
    "FlowImportError",
    "FlowNotFoundError",
    "FlowRegistry",
    "InputNotSerializableError",
    "InvalidDataError",
    "InvalidSlugError",
    "MapSourceError",
    "NonRetryableError",
    "NotAFlowError",
    "Purged",
    "RegistryError",
    "Retention",
    "RunAlreadyExistsError",
    "RunNotFoundError",
    "RunRecord",
    "RunTimeoutError",
    "SchemaMissingError",
    "SchemaNotReadyError",
    "SlugConflictError",
    "StepContext",
    "StepRecord",
    "StepTimeoutError",
    "StorageError",
    "TaskRecord",
    "TideflowError",
    "UnknownDependencyError",
    "step",
]
