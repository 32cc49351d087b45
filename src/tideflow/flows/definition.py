"""The shape of a flow as data: what the database stores and the engine schedules from.

A ``FlowDefinition`` is built once, when a ``Flow`` class statement runs, and never changes. Its
``version`` is a hash of the *shape* only (step slugs, dependencies, kinds): changing a retry
option does not strand in-flight runs on an old version, while adding, removing or rewiring a step
does, so runs already started finish on the graph they started with. ``max_stalls`` is an option
like the retry options: outside the hash, so adding it kept every existing version.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from tideflow.codec import is_plain, to_json_value
from tideflow.errors import InvalidSlugError
from tideflow.flows.conditions import SkipMode
from tideflow.flows.limits import QueueLimits

SLUG_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_SLUG_LENGTH = 128
#: Words a step cannot be called: dependency outputs are passed as keyword arguments next to
#: ``input`` and ``ctx``, and the rest would read ambiguously in SQL and the CLI.
RESERVED_SLUGS = frozenset({"input", "ctx", "self", "run", "flow", "step", "output", "run_id"})

StepKind = Literal["single", "map"]

#: How many times a task may be requeued because its worker died (its lease expired) before it
#: fails: enough to ride out a deploy or a node loss or two, few enough that a task which itself
#: kills its worker (out of memory, a native crash) stops taking workers down with it.
DEFAULT_MAX_STALLS = 3


def check_slug(slug: object, *, flow: str, step: str | None = None) -> str:
    """Validate a flow or step slug, raising ``InvalidSlugError`` that says what would be valid."""
    what = "step" if step is not None else "flow"
    if not isinstance(slug, str):
        raise InvalidSlugError(flow, f"{what} slug must be a str, got {type(slug).__name__}", step)
    if not SLUG_RE.match(slug):
        raise InvalidSlugError(
            flow,
            f"{what} slug {slug!r} is invalid: use lowercase letters, digits and underscores, "
            "starting with a letter (^[a-z][a-z0-9_]*$)",
            step,
        )
    if len(slug) > MAX_SLUG_LENGTH:
        raise InvalidSlugError(
            flow, f"{what} slug is {len(slug)} characters; at most {MAX_SLUG_LENGTH}", step
        )
    if slug in RESERVED_SLUGS:
        raise InvalidSlugError(
            flow, f"{what} slug {slug!r} is reserved ({', '.join(sorted(RESERVED_SLUGS))})", step
        )
    return slug


@dataclass(frozen=True)
class RetryPolicy:
    """How often a task is tried and how long to wait between tries.

    Delay before attempt n+1 = min(max_delay, base_delay * 2**(n-1)), with up to 25% jitter
    removed so that a burst of failures does not retry in lock-step.
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 300.0


@dataclass(frozen=True)
class StepDefinition:
    slug: str
    index: int
    depends_on: tuple[str, ...]
    kind: StepKind
    retry: RetryPolicy
    timeout: float | None
    start_delay: float
    method: str
    wants_ctx: bool
    #: Lease expiries (worker killed or lost) requeued without counting an attempt; one more
    #: fails the task. See ``SqlEngine.requeue_stalled``.
    max_stalls: int = DEFAULT_MAX_STALLS
    #: JSON patterns the step's input must contain (``if_``) / must not contain (``if_not``) for
    #: the step to run - the run input for a root step, its dependencies' outputs by slug for a
    #: dependent one (``tideflow.flows.conditions``); None: no test.
    if_pattern: Any = None
    if_not_pattern: Any = None
    when_unmet: SkipMode = "skip"
    #: What a task that failed for good does to the run: fail it (the default), or skip the step.
    when_failed: SkipMode = "fail"

    @property
    def is_root(self) -> bool:
        return not self.depends_on

    @property
    def has_condition(self) -> bool:
        return self.if_pattern is not None or self.if_not_pattern is not None

    def conditions(self) -> dict[str, Any]:
        """The step's conditions and skip modes, only those set: part of the shape (and so of
        the version), since they decide which steps of a run execute - and absent when unset,
        so that every flow without them keeps the version it had."""
        found: dict[str, Any] = {}
        if self.if_pattern is not None:
            found["if"] = self.if_pattern
        if self.if_not_pattern is not None:
            found["if_not"] = self.if_not_pattern
        if self.has_condition:
            found["when_unmet"] = self.when_unmet
        if self.when_failed != "fail":
            found["when_failed"] = self.when_failed
        return found

    def shape(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "depends_on": sorted(self.depends_on),
            "kind": self.kind,
            **self.conditions(),
        }

    def options(self) -> dict[str, Any]:
        """Per-step settings copied onto each run's step row, so a run keeps the settings it
        started with even if the code changes them later."""
        return {
            "max_attempts": self.retry.max_attempts,
            "base_delay": self.retry.base_delay,
            "max_delay": self.retry.max_delay,
            "timeout": self.timeout,
            "start_delay": self.start_delay,
            "max_stalls": self.max_stalls,
        }


@dataclass(frozen=True)
class FlowDefinition:
    slug: str
    steps: tuple[StepDefinition, ...]  # topological order, ties in declaration order
    retry: RetryPolicy
    timeout: float | None
    max_stalls: int = DEFAULT_MAX_STALLS
    #: ``Flow(reports=True)``: runs append their end to the event log. An option, outside the
    #: version, stored with the shape so that a run started by slug alone reports too.
    reports: bool = False
    #: Queue limits (``tideflow.flows.limits``): options like ``reports``, outside the version,
    #: stored with the shape and in ``flow_limits``, where every worker's claim reads them.
    limits: QueueLimits | None = None
    version: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", version_of(self.shape()))

    def shape(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "steps": sorted((s.shape() for s in self.steps), key=lambda s: s["slug"]),
        }

    def step(self, slug: str) -> StepDefinition:
        for s in self.steps:
            if s.slug == slug:
                return s
        raise KeyError(slug)

    @property
    def conditional(self) -> bool:
        """Whether a run may skip steps: its transitions then run in the flow store's Python
        (on PostgreSQL too), where conditions are checked."""
        return any(s.has_condition or s.when_failed != "fail" for s in self.steps)

    @property
    def leaves(self) -> tuple[str, ...]:
        needed = {d for s in self.steps for d in s.depends_on}
        return tuple(s.slug for s in self.steps if s.slug not in needed)


def version_of(shape: dict[str, Any]) -> str:
    # Conditions may hold dates, enums...: hashed in the codec's form (plain shapes unchanged,
    # so versions stay what they were).
    value = shape if is_plain(shape) else to_json_value(shape)
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
