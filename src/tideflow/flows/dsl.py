"""Declaring flows as Python classes.

    class Checkout(Flow, slug="checkout", max_attempts=5):
        @step()
        def reserve(self, input): ...

        @step(depends_on=["reserve"], timeout=30)
        async def charge(self, reserve, ctx): ...

Everything is checked when the ``class`` statement runs, so a broken flow never reaches a worker or
the database: bad slugs, unknown dependencies, cycles, duplicate step slugs, a map step with more
than one source, and step signatures that could not receive their inputs.

Calling convention, fixed so that a step reads like the data it gets:

* a root step is called with the run input: ``def first(self, input)``;
* a dependent step gets each dependency's output as a keyword argument named after it;
* a map step is called once per element of its source array: ``def each(self, item)``;
* any step that declares a parameter named ``ctx`` also gets a :class:`StepContext`.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    TypeGuard,
    TypeVar,
    get_args,
    get_origin,
    overload,
)

from tideflow.errors import (
    CycleError,
    DuplicateStepError,
    FlowDefinitionError,
    InputNotSerializableError,
    MapSourceError,
    UnknownDependencyError,
)
from tideflow.flows.conditions import SKIP_MODES, SkipMode
from tideflow.flows.definition import (
    DEFAULT_MAX_STALLS,
    FlowDefinition,
    RetryPolicy,
    StepDefinition,
    check_slug,
)
from tideflow.flows.limits import check_limits
from tideflow.jsonutil import dumps

F = TypeVar("F", bound=Callable[..., Any])
if TYPE_CHECKING:
    # A default (PEP 696) keeps a bare ``Flow`` meaning ``Flow[Any]`` under mypy --strict;
    # typing_extensions ships with every type checker, so it is no dependency at run time.
    from typing_extensions import TypeVar as DefaultingTypeVar

    from tideflow.events.commands import Command, DispatchResult

    #: A flow's input type: ``class Checkout(Flow[CheckoutInput])``.
    InputT = DefaultingTypeVar("InputT", default=Any)
else:
    InputT = TypeVar("InputT")

_STEP_ATTR = "__tideflow_step__"


@dataclass(frozen=True)
class StepContext:
    """What a step can know about where it runs, beyond its input - and ``dispatch``, to send
    commands to the app's aggregates from a step."""

    run_id: str
    flow_slug: str
    flow_version: str
    step_slug: str
    task_index: int
    attempt: int
    run_input: Any
    dispatcher: Callable[[Command, str], DispatchResult] | None = field(
        default=None, repr=False, compare=False
    )
    _sent: list[int] = field(default_factory=lambda: [0], repr=False, compare=False)

    def dispatch(self, command: Command) -> DispatchResult:
        """Dispatch ``command`` (a ``tideflow.events.Command``) through the worker's app and
        return its ``DispatchResult``. It carries the run's correlation id when the run has one
        (a run a process manager started: the events come back to that instance). Without an
        ``idempotency_key`` of its own it gets ``step:<run id>:<step>:<task index>:<n>`` (the
        n-th dispatch of this task): a retried step that dispatches the same commands in the same
        order records each once. Blocking: an ``async def`` step awaits ``dispatch_async``."""
        if self.dispatcher is None:
            raise RuntimeError(
                f"step {self.step_slug!r} of flow {self.flow_slug!r} dispatched a command, but "
                "its worker has no dispatcher: run it with the App that has the aggregates "
                "(app.run_worker / tideflow worker --app)"
            )
        n = self._sent[0]
        self._sent[0] += 1
        key = f"step:{self.run_id}:{self.step_slug}:{self.task_index}:{n}"
        return self.dispatcher(command, key)

    async def dispatch_async(self, command: Command) -> DispatchResult:
        """``dispatch``, in a thread: for ``async def`` steps."""
        return await asyncio.to_thread(self.dispatch, command)


@dataclass(frozen=True)
class _StepSpec:
    slug: str | None
    depends_on: tuple[str, ...]
    map: bool
    max_attempts: int | None
    base_delay: float | None
    max_delay: float | None
    timeout: float | None
    start_delay: float
    max_stalls: int | None
    if_: Any = None
    if_not: Any = None
    when_unmet: SkipMode = "skip"
    when_failed: SkipMode = "fail"
    concurrency: int | None = None


@overload
def step(func: F, /) -> F: ...
@overload
def step(
    *,
    depends_on: Iterable[str] = (),
    map: bool = False,
    slug: str | None = None,
    max_attempts: int | None = None,
    base_delay: float | None = None,
    max_delay: float | None = None,
    timeout: float | None = None,
    start_delay: float = 0.0,
    max_stalls: int | None = None,
    if_: Any = None,
    if_not: Any = None,
    when_unmet: SkipMode = "skip",
    when_failed: SkipMode = "fail",
    concurrency: int | None = None,
) -> Callable[[F], F]: ...


def step(
    func: F | None = None,
    /,
    *,
    depends_on: Iterable[str] = (),
    map: bool = False,
    slug: str | None = None,
    max_attempts: int | None = None,
    base_delay: float | None = None,
    max_delay: float | None = None,
    timeout: float | None = None,
    start_delay: float = 0.0,
    max_stalls: int | None = None,
    if_: Any = None,
    if_not: Any = None,
    when_unmet: SkipMode = "skip",
    when_failed: SkipMode = "fail",
    concurrency: int | None = None,
) -> F | Callable[[F], F]:
    """Mark a method of a ``Flow`` as a step.

    ``map=True`` fans out: one task per element of the source array (the run input for a root
    step, else the single dependency's output); the step's output is the list of results in
    element order. Unset retry options, timeout and ``max_stalls`` fall back to the flow's.

    ``max_stalls`` bounds something other than ``max_attempts``: how often a task may be requeued
    because the worker running it died (its lease expired) - a kill is not the step's failure,
    so it costs no attempt, but a task that keeps killing its workers must stop somewhere.

    ``if_`` / ``if_not``: run the step only when its input contains (does not contain) this JSON
    pattern - the run input for a root step, ``{dependency slug: output}`` of its non-skipped
    dependencies for a dependent one - with PostgreSQL's ``@>`` meaning on both backends
    (``tideflow.flows.conditions``). ``when_unmet``: what an unmet condition does - ``"skip"``
    the step (its dependents run without its output), ``"skip_cascade"`` (skip it and every step
    after it) or ``"fail"`` the run. ``when_failed``: the same choice for a task that failed for
    good (out of attempts or stalls, or not retryable); ``"fail"``, the default, fails the run.

    ``concurrency``: at most that many of this step's tasks execute at once, across every worker
    (a queue limit: ``tideflow.flows.limits``).
    """
    if isinstance(depends_on, str):
        depends_on = (depends_on,)
    spec = _StepSpec(
        slug=slug,
        depends_on=tuple(depends_on),
        map=map,
        max_attempts=max_attempts,
        base_delay=base_delay,
        max_delay=max_delay,
        timeout=timeout,
        start_delay=start_delay,
        max_stalls=max_stalls,
        if_=if_,
        if_not=if_not,
        when_unmet=when_unmet,
        when_failed=when_failed,
        concurrency=concurrency,
    )

    def mark(fn: F) -> F:
        setattr(fn, _STEP_ATTR, spec)
        return fn

    return mark(func) if func is not None else mark


def _default_slug(class_name: str) -> str:
    """Snake case that keeps an acronym one word: ``HTTPFetch`` -> ``http_fetch``,
    ``OrderPipeline`` -> ``order_pipeline``, ``ETL2Job`` -> ``etl2_job``. (Releases up to 0.1.0
    split every capital, ``h_t_t_p_fetch``: a flow named so keeps its stored runs by passing
    that ``slug=`` explicitly.)"""
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", class_name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words).lower()


class Flow(Generic[InputT]):
    """Base class of every flow. Subclass it with class keywords for flow options:

    ``class Import(Flow, slug="import", max_attempts=3, base_delay=1, max_delay=300, timeout=60,
    max_stalls=3, reports=False)``.

    ``class Checkout(Flow[CheckoutInput])`` declares the run input's type (a dataclass, a
    TypedDict, a pydantic model...): ``start_flow`` checks the input against it before anything
    is written (``tideflow.typed.InputTypeError``), mypy checks ``start_flow(Checkout, ...)``
    calls, and steps that annotate a parameter with it get an instance.

    Queue limits, enforced by the claim across every worker (``tideflow.flows.limits``):
    ``concurrency=N`` (the flow's tasks executing at once), ``concurrency_key="customer_id"``
    with ``key_concurrency=N`` (per value of that field of the run input, or of a JSON path
    ``"$.customer.id"``; 1 unless given), ``rate_limit=(N, seconds)`` (claims per window), and
    ``@step(concurrency=N)``.

    ``reports=True``: every run's end is appended to the event log (``FlowRunCompleted``,
    ``FlowRunFailed``, ``FlowRunCancelled`` on stream ``run-<run id>``), in the transaction that
    ends it - for event handlers and process managers to follow. Runs a process manager starts
    report whatever this says.
    """

    definition: ClassVar[FlowDefinition]
    slug: ClassVar[str]
    reports: ClassVar[bool] = False
    #: The declared input type (``Flow[T]``), or None: any storable input.
    input_type: ClassVar[Any] = None

    def __init_subclass__(
        cls,
        *,
        slug: str | None = None,
        max_attempts: int = 3,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float | None = None,
        max_stalls: int = DEFAULT_MAX_STALLS,
        reports: bool = False,
        concurrency: int | None = None,
        concurrency_key: str | None = None,
        key_concurrency: int | None = None,
        rate_limit: tuple[int, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        flow_slug = slug if slug is not None else _default_slug(cls.__name__)
        check_slug(flow_slug, flow=str(flow_slug))
        _check_options(
            flow_slug, None, max_attempts, base_delay, max_delay, timeout, 0.0, max_stalls
        )
        retry = RetryPolicy(max_attempts, float(base_delay), float(max_delay))
        if not isinstance(reports, bool):
            raise FlowDefinitionError(flow_slug, f"reports must be True or False, got {reports!r}")
        cls.slug = flow_slug
        cls.reports = reports
        cls.input_type = _declared_input(cls)
        definition = _build_definition(cls, flow_slug, retry, timeout, max_stalls, reports)
        limits = check_limits(
            flow_slug,
            concurrency,
            concurrency_key,
            key_concurrency,
            rate_limit,
            _step_concurrency(cls, definition),
        )
        cls.definition = replace(definition, limits=limits) if limits else definition

    def __repr__(self) -> str:
        return f"<{type(self).__name__} flow {self.slug!r} v{self.definition.version}>"


def _step_concurrency(cls: type, definition: FlowDefinition) -> dict[str, object]:
    """The ``@step(concurrency=...)`` of each step that sets one, by step slug."""
    found: dict[str, object] = {}
    for step_def in definition.steps:
        spec = getattr(getattr(cls, step_def.method), _STEP_ATTR)
        if spec.concurrency is not None:
            found[step_def.slug] = spec.concurrency
    return found


def _declared_input(cls: type) -> Any:
    """``T`` of the nearest ``Flow[T]`` among the class's bases (None when none declares one)."""
    for klass in cls.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Flow):
                (arg,) = get_args(base)
                return None if isinstance(arg, TypeVar) else arg
    return None


def is_flow_class(obj: object) -> TypeGuard[type[Flow]]:
    return isinstance(obj, type) and issubclass(obj, Flow) and obj is not Flow


def _check_options(
    flow: str,
    step_slug: str | None,
    max_attempts: int | None,
    base_delay: float | None,
    max_delay: float | None,
    timeout: float | None,
    start_delay: float,
    max_stalls: int | None,
) -> None:
    def bad(msg: str) -> FlowDefinitionError:
        return FlowDefinitionError(flow, msg, step_slug)

    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise bad(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    for name, value in (("base_delay", base_delay), ("max_delay", max_delay)):
        if value is not None and (not isinstance(value, int | float) or value < 0):
            raise bad(f"{name} must be a number >= 0, got {value!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise bad(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
    if not isinstance(start_delay, int | float) or start_delay < 0:
        raise bad(f"start_delay must be a number of seconds >= 0, got {start_delay!r}")
    # 0 is allowed: the first lost lease fails the task (for a step that must not run twice if
    # it can help it). A bool is refused although Python counts it as an int: True is a typo.
    # None means "the flow's" on a step; a flow has nothing to fall back to.
    if (max_stalls is not None or step_slug is None) and (
        not isinstance(max_stalls, int) or isinstance(max_stalls, bool) or max_stalls < 0
    ):
        raise bad(
            f"max_stalls must be an int >= 0 (lease expiries requeued before the task "
            f"fails), got {max_stalls!r}"
        )


def _build_definition(
    cls: type,
    flow_slug: str,
    retry: RetryPolicy,
    flow_timeout: float | None,
    max_stalls: int,
    reports: bool,
) -> FlowDefinition:
    specs: dict[str, tuple[str, Callable[..., Any], _StepSpec]] = {}
    for klass in reversed(cls.__mro__):  # subclasses may override or add steps
        for attr, value in vars(klass).items():
            spec = getattr(value, _STEP_ATTR, None)
            if not isinstance(spec, _StepSpec):
                continue
            # ``slug=""`` is a mistake, not "use the method name": check_slug refuses it.
            step_slug = spec.slug if spec.slug is not None else attr
            check_slug(step_slug, flow=flow_slug, step=step_slug)
            if step_slug in specs and specs[step_slug][0] != attr:
                raise DuplicateStepError(
                    flow_slug,
                    f"methods {specs[step_slug][0]!r} and {attr!r} both declare this step slug; "
                    "give one of them another slug",
                    step_slug,
                )
            specs[step_slug] = (attr, value, spec)
    if not specs:
        raise FlowDefinitionError(flow_slug, "declares no steps; mark methods with @step")

    for step_slug, (_, _, spec) in specs.items():
        for dep in spec.depends_on:
            if dep not in specs:
                raise UnknownDependencyError(
                    flow_slug,
                    f"depends on unknown step {dep!r}; known steps: {', '.join(sorted(specs))}",
                    step_slug,
                )
            if dep == step_slug:
                raise CycleError(flow_slug, "depends on itself", step_slug)
        if len(set(spec.depends_on)) != len(spec.depends_on):
            raise FlowDefinitionError(flow_slug, "lists a dependency twice", step_slug)
        if spec.map and len(spec.depends_on) > 1:
            raise MapSourceError(
                flow_slug,
                f"a map step fans out over exactly one array, but this one depends on "
                f"{list(spec.depends_on)}; map over one step (or the run input) and join the "
                "others in a later step",
                step_slug,
            )

    order = _topological_order(flow_slug, {s: sp.depends_on for s, (_, _, sp) in specs.items()})
    step_specs = {s: sp for s, (_, _, sp) in specs.items()}
    steps = []
    for index, step_slug in enumerate(order):
        attr, fn, spec = specs[step_slug]
        _check_options(
            flow_slug,
            step_slug,
            spec.max_attempts,
            spec.base_delay,
            spec.max_delay,
            spec.timeout,
            spec.start_delay,
            spec.max_stalls,
        )
        wants_ctx = _check_signature(flow_slug, step_slug, fn, spec)
        _check_conditions(flow_slug, step_slug, spec)
        _check_skippable_inputs(flow_slug, step_slug, fn, spec, step_specs)
        steps.append(
            StepDefinition(
                slug=step_slug,
                index=index,
                depends_on=spec.depends_on,
                kind="map" if spec.map else "single",
                retry=RetryPolicy(
                    spec.max_attempts if spec.max_attempts is not None else retry.max_attempts,
                    float(spec.base_delay if spec.base_delay is not None else retry.base_delay),
                    float(spec.max_delay if spec.max_delay is not None else retry.max_delay),
                ),
                timeout=spec.timeout if spec.timeout is not None else flow_timeout,
                start_delay=float(spec.start_delay),
                method=attr,
                wants_ctx=wants_ctx,
                max_stalls=spec.max_stalls if spec.max_stalls is not None else max_stalls,
                if_pattern=spec.if_,
                if_not_pattern=spec.if_not,
                when_unmet=spec.when_unmet,
                when_failed=spec.when_failed,
            )
        )
    return FlowDefinition(
        slug=flow_slug,
        steps=tuple(steps),
        retry=retry,
        timeout=flow_timeout,
        max_stalls=max_stalls,
        reports=reports,
    )


def _check_conditions(flow_slug: str, step_slug: str, spec: _StepSpec) -> None:
    """Refuse conditions that could never mean what they say: a pattern that is not JSON, a
    dependent step's pattern that is not keyed by its dependencies (its input is
    ``{dependency: output}``, so any other key never matches), an unknown mode, or
    ``when_unmet`` without a condition."""

    def bad(msg: str) -> FlowDefinitionError:
        return FlowDefinitionError(flow_slug, msg, step_slug)

    for name, mode in (("when_unmet", spec.when_unmet), ("when_failed", spec.when_failed)):
        if mode not in SKIP_MODES:
            raise bad(f"{name} must be one of {', '.join(map(repr, SKIP_MODES))}, got {mode!r}")
    if spec.if_ is None and spec.if_not is None and spec.when_unmet != "skip":
        raise bad("when_unmet applies to a condition: give the step if_= or if_not= as well")
    for name, pattern in (("if_", spec.if_), ("if_not", spec.if_not)):
        if pattern is None:
            continue
        try:
            dumps(pattern, what=f"{name} of step {step_slug!r}")
        except InputNotSerializableError as exc:
            raise bad(f"{name} must be a JSON pattern: {exc}") from None
        if not spec.depends_on:
            continue
        if not isinstance(pattern, dict):
            raise bad(
                f"{name} of a dependent step is matched against {{dependency: output}}, so it "
                f"must be an object keyed by dependency, e.g. {{{spec.depends_on[0]!r}: ...}}; "
                f"got {pattern!r}"
            )
        unknown = sorted(set(pattern) - set(spec.depends_on))
        if unknown:
            raise bad(
                f"{name} names {', '.join(map(repr, unknown))}, which the step does not depend "
                f"on; its keys must be among depends_on ({', '.join(spec.depends_on)})"
            )


def _check_skippable_inputs(
    flow_slug: str,
    step_slug: str,
    fn: Callable[..., Any],
    spec: _StepSpec,
    specs: dict[str, _StepSpec],
) -> None:
    """A dependency that may be skipped while this step still runs - ``when_unmet="skip"``
    with a condition, or ``when_failed="skip"`` - passes no output then, so its parameter needs
    a default (or the step takes ``**deps``); refused here rather than as a TypeError in a run."""
    if spec.map or not spec.depends_on:
        return
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins and C callables
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for dep in spec.depends_on:
        d = specs[dep]
        if d.when_failed == "skip":
            why = 'when_failed="skip"'
        elif (d.if_ is not None or d.if_not is not None) and d.when_unmet == "skip":
            why = 'a condition and when_unmet="skip"'
        else:
            continue
        param = params.get(dep)
        if param is not None and param.default is param.empty:
            raise FlowDefinitionError(
                flow_slug,
                f"depends on step {dep!r}, which may be skipped ({why}) while this step runs, "
                f"and then passes no output: give the parameter a default ({dep}=None) or take "
                "**deps",
                step_slug,
            )


def _topological_order(flow_slug: str, deps: dict[str, tuple[str, ...]]) -> list[str]:
    """Kahn's algorithm, keeping declaration order among steps that are ready together."""
    remaining = {s: set(d) for s, d in deps.items()}
    order: list[str] = []
    while remaining:
        ready = [s for s, d in remaining.items() if not d]
        if not ready:
            cycle = _find_cycle(remaining)
            raise CycleError(
                flow_slug,
                "dependencies form a cycle "
                + " -> ".join(cycle)
                + "; remove one of these depends_on entries",
                cycle[0],
            )
        for s in ready:
            order.append(s)
            del remaining[s]
        for d in remaining.values():
            d.difference_update(ready)
    return order


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    start = next(iter(graph))
    path: list[str] = []
    node = start
    while node not in path:
        path.append(node)
        node = next(iter(graph[node]))
    return [*path[path.index(node) :], node]


def _check_signature(
    flow_slug: str, step_slug: str, fn: Callable[..., Any], spec: _StepSpec
) -> bool:
    """Refuse a method that could not be called with the inputs its position in the DAG gives."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins and C callables
        return False
    params = list(sig.parameters.values())[1:]  # drop self
    names = {p.name for p in params}
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    # Only a parameter named ``ctx`` asks for the context: ``**deps`` collects the
    # dependencies' outputs and nothing else, so it stays plain JSON data a step can pass on.
    wants_ctx = "ctx" in names
    positional = [
        p
        for p in params
        if p.name != "ctx" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if spec.map or not spec.depends_on:
        what = "each array element" if spec.map else "the run input"
        if not positional and not any(p.kind is p.VAR_POSITIONAL for p in params):
            raise FlowDefinitionError(
                flow_slug,
                f"must take one positional parameter for {what}, e.g. "
                f"def {fn.__name__}(self, {'item' if spec.map else 'input'})",
                step_slug,
            )
    else:
        missing = [d for d in spec.depends_on if d not in names]
        if missing and not has_var_kw:
            raise FlowDefinitionError(
                flow_slug,
                f"receives its dependencies' outputs as keyword arguments but has no parameter "
                f"named {', '.join(missing)}; add them (or **outputs)",
                step_slug,
            )
    return wants_ctx
