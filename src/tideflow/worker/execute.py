"""Running one claimed task: find the step's code, call it the way its place in the DAG says,
enforce its timeout, and turn the outcome into a completion or a failure.

Calls are made from the *stored* shape of the run's flow version (kind, dependencies), not from
the class as it is now, so a run started on an older version still gets its inputs in the shape it
was promised. If the step no longer exists in the code, the task fails without retry and says so.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import traceback
from collections.abc import Callable
from typing import Any

from tideflow.errors import InputNotSerializableError, NonRetryableError, StepTimeoutError
from tideflow.flows.dsl import Flow, StepContext
from tideflow.flows.registry import FlowRegistry
from tideflow.jsonutil import dumps, loads
from tideflow.storage.flow_contract import ClaimedTask, TaskCompletion, TaskFailure
from tideflow.typed import StepTypes, coerce, is_structured, step_types
from tideflow.worker import threads as step_threads
from tideflow.worker.threads import StepThreads


class StepGone(NonRetryableError):
    """The run's flow version has a step the current code no longer defines."""


#: What a worker dispatches a step's commands with: (command, default idempotency key, the
#: run's correlation id) -> the dispatch's result.
StepDispatch = Callable[[Any, str, str | None], Any]


def sync_steps(registry: FlowRegistry) -> frozenset[tuple[str, str]]:
    """(flow slug, step slug) of every plain ``def`` step of ``registry``'s flows: the steps
    that run in threads."""
    return frozenset(
        (flow.slug, step.slug)
        for flow in registry
        for step in flow.definition.steps
        if not inspect.iscoroutinefunction(getattr(flow, step.method))
    )


async def execute(
    task: ClaimedTask, flow: Flow, threads: StepThreads, dispatch: StepDispatch | None = None
) -> TaskCompletion | TaskFailure:
    """Run ``task``'s step: an ``async def`` on the loop, a ``def`` in one of ``threads``."""
    key = task.key
    try:
        output = await _call(task, flow, threads, dispatch)
        returns = _types(flow, task).returns
        if returns is not None:
            what = f"output of step {key.step_slug!r} of flow {task.flow_slug!r}"
            output = coerce(output, returns, what=what)
        return TaskCompletion(
            key,
            task.attempt,
            dumps(output, what=f"output of step {key.step_slug!r} of flow {task.flow_slug!r}"),
            task.reports,
        )
    except asyncio.CancelledError:
        raise
    except StepTimeoutError as exc:
        return TaskFailure(key, task.attempt, str(exc), True, error_type(exc))
    except InputNotSerializableError as exc:
        return TaskFailure(key, task.attempt, str(exc), False, error_type(exc), format_tb(exc))
    except NonRetryableError as exc:
        return TaskFailure(
            key, task.attempt, _describe(exc), False, error_type(exc), format_tb(exc)
        )
    except Exception as exc:
        return TaskFailure(key, task.attempt, _describe(exc), True, error_type(exc), format_tb(exc))


#: A stored traceback keeps at most this many frames per exception, the newest (where the step
#: failed), and at most this many characters, the last ones: enough to find the bug, bounded so
#: that a deep recursion cannot bloat the failures table.
TRACEBACK_FRAMES = 30
TRACEBACK_CHARS = 16_000


_MACHINERY = frozenset({__file__, step_threads.__file__})


def format_tb(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it (with its causes), bounded: the newest
    ``TRACEBACK_FRAMES`` frames and the last ``TRACEBACK_CHARS`` characters."""
    shown = traceback.TracebackException.from_exception(exc, limit=-TRACEBACK_FRAMES)
    # The frames of tideflow's own calling machinery (this module, the thread pool) say nothing
    # about the step: leave them out when the step's own frames remain.
    own = [f for f in shown.stack if f.filename not in _MACHINERY]
    if own:
        shown.stack = traceback.StackSummary.from_list(own)
    text = "".join(shown.format())
    if len(text) > TRACEBACK_CHARS:
        text = "... (older lines dropped)\n" + text[-TRACEBACK_CHARS:]
    return text


def error_type(exc: BaseException) -> str:
    """The exception class's name, qualified by its module unless it is a builtin."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _types(flow: Flow, task: ClaimedTask) -> StepTypes:
    return step_types(getattr(flow, flow.definition.step(task.key.step_slug).method))


def _run_input(flow: Flow, task: ClaimedTask) -> Any:
    """The run input as the step context gives it: an instance of the flow's input type when
    it declares a structured one."""
    value = loads(task.run_input_json)
    tp = flow.input_type
    if tp is None or not is_structured(tp):
        return value
    return coerce(value, tp, what=f"run input of flow {task.flow_slug!r}")


async def _call(
    task: ClaimedTask, flow: Flow, threads: StepThreads, dispatch: StepDispatch | None
) -> Any:
    definition = flow.definition
    try:
        step = definition.step(task.key.step_slug)
    except KeyError:
        raise StepGone(
            f"flow {task.flow_slug!r} version {task.flow_version} has step "
            f"{task.key.step_slug!r}, but the code registered in this worker (version "
            f"{definition.version}) does not define it; deploy code that still has the step "
            "until runs of the old version finish"
        ) from None
    fn = getattr(flow, step.method)
    value = loads(task.input_json)
    kwargs: dict[str, Any] = {}
    args: tuple[Any, ...] = ()
    declared = step_types(fn)
    what = f"input of step {task.key.step_slug!r} of flow {task.flow_slug!r}"
    if task.step_kind == "map" or not task.depends_on:
        tp = declared.params.get(declared.first) if declared.first else None
        args = (value if tp is None else coerce(value, tp, what=what),)
    else:
        kwargs = dict(value)
        for name, tp in declared.params.items():
            if name in kwargs:
                kwargs[name] = coerce(kwargs[name], tp, what=f"{what} (from {name!r})")
    if step.wants_ctx:
        kwargs["ctx"] = StepContext(
            run_id=task.key.run_id,
            flow_slug=task.flow_slug,
            flow_version=task.flow_version,
            step_slug=task.key.step_slug,
            task_index=task.key.task_index,
            attempt=task.attempt,
            run_input=_run_input(flow, task),
            dispatcher=(
                None
                if dispatch is None
                else lambda command, key: dispatch(command, key, task.correlation_id)
            ),
        )
    coro: Any
    if inspect.iscoroutinefunction(fn):
        coro = fn(*args, **kwargs)
    else:
        # In the attempt's context (its span is current): the step's own spans nest under it.
        context = contextvars.copy_context()
        coro = threads.submit(lambda: context.run(fn, *args, **kwargs))
    if task.timeout is None:
        return await coro
    try:
        return await asyncio.wait_for(coro, task.timeout)
    except TimeoutError:
        # A sync step's thread cannot be killed; its eventual result is discarded.
        raise StepTimeoutError(
            f"step {task.key.step_slug!r} of flow {task.flow_slug!r} timed out after "
            f"{task.timeout:g}s"
        ) from None
