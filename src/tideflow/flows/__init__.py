"""Flows: DAG workflows declared as Python classes (the domain layer; no storage here)."""

from tideflow.flows.definition import FlowDefinition, RetryPolicy, StepDefinition
from tideflow.flows.dsl import Flow, StepContext, is_flow_class, step
from tideflow.flows.jobs import Job, job
from tideflow.flows.registry import FlowRegistry
from tideflow.flows.schedules import Schedule, scheduled_tick

__all__ = [
    "Flow",
    "FlowDefinition",
    "FlowRegistry",
    "Job",
    "RetryPolicy",
    "Schedule",
    "StepContext",
    "StepDefinition",
    "is_flow_class",
    "job",
    "scheduled_tick",
    "step",
]
