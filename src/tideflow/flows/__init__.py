"""Flows: DAG workflows declared as Python classes (the domain layer; no storage here)."""

from tideflow.flows.definition import FlowDefinition, RetryPolicy, StepDefinition
from tideflow.flows.dsl import Flow, StepContext, is_flow_class, step
from tideflow.flows.registry import FlowRegistry

__all__ = [
    "Flow",
    "FlowDefinition",
    "FlowRegistry",
    "RetryPolicy",
    "StepContext",
    "StepDefinition",
    "is_flow_class",
    "step",
]
