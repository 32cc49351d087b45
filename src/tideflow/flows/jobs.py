"""Jobs: a plain function as a one-step task, without a class.

    @job(max_attempts=5, timeout=30)
    def send_welcome(input: Welcome) -> dict[str, bool]: ...

    run_id = app.enqueue(send_welcome, {"user": 42}, delay=60)

A job is a one-step flow whose definition is generated from the function: it runs on the same
engine and tables as flows (a run with one step named after the job), so it is retried, timed
out, recovered after a killed worker, listed by ``tideflow runs`` and shown by ``tideflow run``
like any run, and a worker works on it once it is registered (``App(jobs=[...])``). Generating
a ``Flow`` subclass, rather than teaching the engine a second kind of work, is what keeps it
that way: nothing downstream knows jobs exist.

Typing: ``Job[InputT, ResultT]`` takes its parameters from the function, so ``enqueue(job,
input)`` is checked against the function's input annotation (use a ``TypedDict`` for an object).
A job takes one argument - its input, JSON like a flow's run input - and, optionally, a
parameter named ``ctx`` for the ``StepContext``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeGuard, TypeVar, cast, overload

from tideflow.errors import FlowDefinitionError
from tideflow.flows.definition import DEFAULT_MAX_STALLS, check_slug
from tideflow.flows.dsl import Flow, StepContext, step

InputT = TypeVar("InputT")
ResultT = TypeVar("ResultT")
#: A job that takes a ``Welcome`` accepts an input of any subtype of it: contravariant, which
#: also lets a type checker infer ``enqueue(job, {...})``'s input type from the job alone.
InputT_contra = TypeVar("InputT_contra", contravariant=True)

#: The method of the generated flow class that calls the job's function.
_METHOD = "perform"


class Job(Generic[InputT_contra, ResultT]):
    """A function registered as a job: ``flow`` is the one-step ``Flow`` class generated for it
    (what the registry, the worker and the store see), ``fn`` the function itself. Calling the
    job calls the function, so it stays testable as plain code."""

    def __init__(self, fn: Callable[..., ResultT], flow: type[Flow], wants_ctx: bool) -> None:
        self.fn = fn
        self.flow = flow
        self.slug: str = flow.slug
        self.wants_ctx = wants_ctx
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.slug)
        self.__qualname__ = getattr(fn, "__qualname__", self.slug)
        self.__module__ = getattr(fn, "__module__", __name__)

    def __call__(self, input: InputT_contra, ctx: StepContext | None = None) -> ResultT:
        """Call the function now, in this process (no run, no retry): for tests and scripts."""
        if self.wants_ctx:
            return self.fn(input, ctx=ctx)
        return self.fn(input)

    def __repr__(self) -> str:
        return f"<job {self.slug!r} v{self.flow.definition.version}>"


def is_job(obj: object) -> TypeGuard[Job[Any, Any]]:
    return isinstance(obj, Job)


class JobDecorator(Protocol):
    """What ``job(...)`` with options returns: it turns a function into a ``Job``."""

    @overload
    def __call__(
        self, fn: Callable[[InputT, StepContext], Awaitable[ResultT]], /
    ) -> Job[InputT, Awaitable[ResultT]]: ...
    @overload
    def __call__(
        self, fn: Callable[[InputT], Awaitable[ResultT]], /
    ) -> Job[InputT, Awaitable[ResultT]]: ...
    @overload
    def __call__(self, fn: Callable[[InputT, StepContext], ResultT], /) -> Job[InputT, ResultT]: ...
    @overload
    def __call__(self, fn: Callable[[InputT], ResultT], /) -> Job[InputT, ResultT]: ...


@overload
def job(fn: Callable[[InputT, StepContext], ResultT], /) -> Job[InputT, ResultT]: ...
@overload
def job(fn: Callable[[InputT], ResultT], /) -> Job[InputT, ResultT]: ...
@overload
def job(
    *,
    slug: str | None = None,
    max_attempts: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 300.0,
    timeout: float | None = None,
    max_stalls: int = DEFAULT_MAX_STALLS,
    reports: bool = False,
) -> JobDecorator: ...


def job(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    slug: str | None = None,
    max_attempts: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 300.0,
    timeout: float | None = None,
    max_stalls: int = DEFAULT_MAX_STALLS,
    reports: bool = False,
) -> Job[Any, Any] | JobDecorator:
    """Make a function a job: ``@job`` or ``@job(slug=..., max_attempts=..., timeout=...)``.

    The options are a flow's (``Flow``'s class keywords), for its one step: retries with backoff
    (``max_attempts``, ``base_delay``, ``max_delay``), ``timeout`` per attempt, ``max_stalls``
    (lease expiries of killed workers tolerated), ``reports`` (the run's end goes to the event
    log). ``slug`` defaults to the function's name; it is the job's flow slug and its step's, so
    it must be unique among the app's flows and jobs (``SlugConflictError`` at registration).
    Everything is checked here, before anything is stored (``FlowDefinitionError``)."""

    def make(func: Callable[..., Any]) -> Job[Any, Any]:
        return _make_job(
            func, slug, max_attempts, base_delay, max_delay, timeout, max_stalls, reports
        )

    if fn is not None:
        return make(fn)
    return cast(JobDecorator, make)


def _make_job(
    fn: Callable[..., Any],
    slug: str | None,
    max_attempts: int,
    base_delay: float,
    max_delay: float,
    timeout: float | None,
    max_stalls: int,
    reports: bool,
) -> Job[Any, Any]:
    name = slug if slug is not None else getattr(fn, "__name__", None)
    if isinstance(fn, str):  # @job("send_email"): the slug is a keyword
        raise FlowDefinitionError(
            fn, f"@job decorates a function, not str {fn!r}: to name the job, @job(slug={fn!r})"
        )
    if not callable(fn) or isinstance(fn, type):
        raise FlowDefinitionError(
            str(name), f"@job decorates a function, not {type(fn).__name__} {fn!r}"
        )
    job_slug = check_slug(name, flow=str(name))
    wants_ctx = _check_job_signature(job_slug, fn)
    options: dict[str, Any] = {
        "slug": job_slug,
        "max_attempts": max_attempts,
        "base_delay": base_delay,
        "max_delay": max_delay,
        "timeout": timeout,
        "max_stalls": max_stalls,
        "reports": reports,
    }
    body: dict[str, Any] = {
        _METHOD: step(slug=job_slug)(_perform(fn, wants_ctx)),
        # The registry tells a module reload from a slug conflict by the class's qualified
        # name: the function's, so that reloading the module that defines the job is a reload.
        "__module__": getattr(fn, "__module__", __name__),
        "__qualname__": getattr(fn, "__qualname__", job_slug),
        "__doc__": fn.__doc__,
    }
    flow = types.new_class(
        f"Job_{job_slug}", (Flow,), options, lambda namespace: namespace.update(body)
    )
    return Job(fn, flow, wants_ctx)


def _perform(fn: Callable[..., Any], wants_ctx: bool) -> Callable[..., Any]:
    """The generated step: the job's input is its run input (a root step's ``input``). Async
    stays async (the worker awaits it on its loop), sync runs in the worker's thread pool."""
    if inspect.iscoroutinefunction(fn):
        if wants_ctx:

            async def perform_async_ctx(self: Flow, input: Any, ctx: StepContext) -> Any:
                return await fn(input, ctx=ctx)

            return perform_async_ctx

        async def perform_async(self: Flow, input: Any) -> Any:
            return await fn(input)

        return perform_async
    if wants_ctx:

        def perform_ctx(self: Flow, input: Any, ctx: StepContext) -> Any:
            return fn(input, ctx=ctx)

        return perform_ctx

    def perform(self: Flow, input: Any) -> Any:
        return fn(input)

    return perform


def _check_job_signature(job_slug: str, fn: Callable[..., Any]) -> bool:
    """A job is called as ``fn(input)`` or ``fn(input, ctx=...)``: one positional parameter for
    the input, optionally one named ``ctx``; any other parameter needs a default. Returns
    whether it takes ``ctx``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise FlowDefinitionError(job_slug, f"cannot read the job's signature: {exc}") from exc
    wants_ctx = any(p.name == "ctx" for p in params)
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "ctx"
    ]
    if not positional and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise FlowDefinitionError(
            job_slug,
            f"a job takes one parameter, its input: def {getattr(fn, '__name__', job_slug)}"
            "(input) (pass several values as one dict)",
        )
    extra = [p.name for p in positional[1:] if p.default is p.empty]
    extra += [
        p.name
        for p in params
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name != "ctx"
    ]
    if extra:
        raise FlowDefinitionError(
            job_slug,
            f"a job is called with its input only (and ctx), so parameter(s) "
            f"{', '.join(extra)} would get nothing; give them defaults, or take one dict",
        )
    ctx = next((p for p in params if p.name == "ctx"), None)
    if ctx is not None and ctx.kind is ctx.POSITIONAL_ONLY:
        raise FlowDefinitionError(job_slug, "ctx is passed by name: it cannot be positional-only")
    return wants_ctx
