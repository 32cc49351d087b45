"""Process managers (sagas): persistent instances that follow events and send commands.

See ``tideflow.sagas.manager`` for what a process manager is and ``tideflow.sagas.runtime`` for
how one reacts to an event; ``docs/concepts/sagas.md`` for the guide.
"""

from tideflow.sagas.manager import (
    Action,
    ProcessManager,
    ProcessManagerError,
    ProcessNotBoundError,
    ProcessStateError,
    StartFlow,
)
from tideflow.sagas.runtime import ProcessBindings, react_to

__all__ = [
    "Action",
    "ProcessBindings",
    "ProcessManager",
    "ProcessManagerError",
    "ProcessNotBoundError",
    "ProcessStateError",
    "StartFlow",
    "react_to",
]
