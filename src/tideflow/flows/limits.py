"""Queue limits: how many of a flow's tasks may run at once, per key, per step, per period.

Declared on the flow class (``class Charge(Flow, concurrency=5, concurrency_key="customer_id",
key_concurrency=1, rate_limit=(100, 60.0))``, ``@step(concurrency=2)``), checked when the class
statement runs, stored with the flow's shape and in ``flow_limits`` (the claim's table), and
enforced by the claim in the database, across every worker. What each one counts:

* ``concurrency``: tasks of the flow executing at once (claimed, holding a lease);
* ``@step(concurrency=N)``: tasks of that step executing at once;
* ``concurrency_key`` + ``key_concurrency``: tasks executing at once per value of the key, read
  from the run input - a field name (``"customer_id"``) or a JSON path of field names
  (``"$.customer.id"``); runs whose input lacks it share the key ``null``;
* ``rate_limit=(N, seconds)``: claims of the flow's tasks in any window of that many seconds.

Options, not shape: outside the version hash, so adding or changing a limit strands no run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tideflow.errors import FlowDefinitionError

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class QueueLimits:
    """A flow's queue limits, as checked; ``None`` / empty: no such limit."""

    concurrency: int | None = None
    key: str | None = None
    key_concurrency: int | None = None
    rate: int | None = None
    per: float | None = None
    #: (step slug, concurrency), in slug order.
    steps: tuple[tuple[str, int], ...] = ()

    @property
    def key_path(self) -> tuple[str, ...]:
        """The key's field names from the root of the run input."""
        if self.key is None:
            return ()
        return tuple(self.key[2:].split(".")) if self.key.startswith("$.") else (self.key,)

    def to_json(self) -> dict[str, Any]:
        """What the shape and ``flow_limits.limits`` hold: only the limits set, the key as its
        path of field names (both dialects read the run input with it)."""
        out: dict[str, Any] = {}
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.key is not None:
            out["key"] = list(self.key_path)
            out["key_concurrency"] = self.key_concurrency
        if self.rate is not None:
            out["rate"] = self.rate
            out["per"] = self.per
        if self.steps:
            out["steps"] = dict(self.steps)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueueLimits:
        key = data.get("key")
        return cls(
            concurrency=data.get("concurrency"),
            key=None if not key else "$." + ".".join(key),
            key_concurrency=data.get("key_concurrency"),
            rate=data.get("rate"),
            per=data.get("per"),
            steps=tuple(sorted((data.get("steps") or {}).items())),
        )


def _positive(flow: str, name: str, value: object, step: str | None = None) -> int:
    # A bool is refused although Python counts it as an int: True is a typo.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FlowDefinitionError(
            flow,
            f"{name} must be an int >= 1 (at most that many at once), got {value!r}; "
            "leave it out for no limit",
            step,
        )
    return value


def check_limits(
    flow: str,
    concurrency: object,
    concurrency_key: object,
    key_concurrency: object,
    rate_limit: object,
    steps: dict[str, object],
) -> QueueLimits | None:
    """The flow's limits as a ``QueueLimits``, or None when it sets none; a
    ``FlowDefinitionError`` naming the option and the fix for a limit that could not mean what
    it says (0, negative, not an int, a key that is not a field name or JSON path, a
    ``key_concurrency`` without a key, a rate that is not ``(N, seconds)``)."""
    flow_limit = None if concurrency is None else _positive(flow, "concurrency", concurrency)
    key = _check_key(flow, concurrency_key)
    per_key: int | None = None
    if key_concurrency is not None:
        if key is None:
            raise FlowDefinitionError(
                flow,
                "key_concurrency limits runs per concurrency key: give concurrency_key too "
                "(e.g. concurrency_key='customer_id')",
            )
        per_key = _positive(flow, "key_concurrency", key_concurrency)
    elif key is not None:
        per_key = 1
    rate, per = _check_rate(flow, rate_limit)
    limits = QueueLimits(
        concurrency=flow_limit,
        key=key,
        key_concurrency=per_key,
        rate=rate,
        per=per,
        steps=tuple(
            sorted((slug, _positive(flow, "concurrency", n, slug)) for slug, n in steps.items())
        ),
    )
    return limits if limits.to_json() else None


def _check_key(flow: str, key: object) -> str | None:
    if key is None:
        return None
    if isinstance(key, str):
        fields = key[2:].split(".") if key.startswith("$.") else [key]
        if all(_FIELD.match(f) for f in fields):
            return key
    raise FlowDefinitionError(
        flow,
        f"concurrency_key must be a field of the run input ('customer_id') or a JSON path of "
        f"field names ('$.customer.id'), got {key!r}",
    )


def _check_rate(flow: str, rate_limit: object) -> tuple[int | None, float | None]:
    if rate_limit is None:
        return None, None
    if isinstance(rate_limit, tuple | list) and len(rate_limit) == 2:
        n, seconds = rate_limit
        if (
            isinstance(n, int)
            and not isinstance(n, bool)
            and n >= 1
            and isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and seconds > 0
        ):
            return n, float(seconds)
    raise FlowDefinitionError(
        flow,
        f"rate_limit must be (N, seconds): at most N claims of the flow's tasks in any window "
        f"of that many seconds, N an int >= 1, seconds > 0; got {rate_limit!r}",
    )
