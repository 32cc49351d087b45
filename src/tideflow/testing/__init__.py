"""Testing helpers: run flows to the end in memory on a manual clock (``run_flow``,
``FlowTestbed``), play a process manager's scenario (``saga``), and decide aggregates' commands
in memory (``given``, re-exported from ``tideflow.events.testing``). See
docs/concepts/testing.md."""

from tideflow.events.testing import given
from tideflow.testing.flows import FlowTestbed, run_flow
from tideflow.testing.sagas import SagaOutcome, SagaScenario, saga

__all__ = ["FlowTestbed", "SagaOutcome", "SagaScenario", "given", "run_flow", "saga"]
