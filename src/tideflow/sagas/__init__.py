"""Process managers (sagas): persistent instances that follow events and send commands.

See ``tideflow.sagas.manager`` for what a process manager is and ``tideflow.runtime.sagas`` for
how one reacts to an event; ``docs/concepts/sagas.md`` for the guide.

This package is the domain layer. ``ProcessBindings`` and ``react_to`` belong to the runtime
(``tideflow.runtime.sagas``: they dispatch commands and start flows); they are still importable
from here, lazily (``__getattr__`` below), so that no domain module depends on the runtime;
``tests/test_layers.py`` allows exactly this import.
"""

from typing import TYPE_CHECKING

from tideflow.sagas.manager import (
    SKIP,
    Action,
    CancelTimer,
    ProcessManager,
    ProcessManagerError,
    ProcessNotBoundError,
    ProcessRuntime,
    ProcessStateError,
    ScheduleTimer,
    StartFlow,
    Undoable,
)

if TYPE_CHECKING:  # for type checkers; at run time ``__getattr__`` imports them when first used
    from tideflow.runtime.sagas import ProcessBindings, react_to


def __getattr__(name: str) -> object:
    """``tideflow.sagas.ProcessBindings`` without the domain importing the runtime."""
    if name in ("ProcessBindings", "react_to"):
        from tideflow.runtime import sagas  # the one runtime import tests/test_layers.py allows

        return getattr(sagas, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SKIP",
    "Action",
    "CancelTimer",
    "ProcessBindings",
    "ProcessManager",
    "ProcessManagerError",
    "ProcessNotBoundError",
    "ProcessRuntime",
    "ProcessStateError",
    "ScheduleTimer",
    "StartFlow",
    "Undoable",
    "react_to",
]
