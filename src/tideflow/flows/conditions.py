"""Step conditions: JSON containment, the one test behind ``@step(if_=..., if_not=...)``.

``contains(value, pattern)`` is PostgreSQL's ``jsonb @> jsonb`` written once, in Python, so a
condition means the same on both backends (SQLite has no ``@>``) and the flow store can check
it wherever a step becomes ready - starting a run, completing a dependency, retrying a run.
``tests/flows/test_conditions.py`` holds it to PostgreSQL's own operator case by case:

* an object contains a pattern object when it has each of the pattern's keys with a value that
  contains the pattern's value (other keys do not matter; ``{}`` matches any object);
* an array contains a pattern array when each element of the pattern is contained by some element
  of the array (order and repeats do not matter; ``[]`` matches any array);
* at the top level only, an array also contains a pattern that is a lone scalar it has as an
  element (``["a", "b"]`` contains ``"a"``), as ``@>`` does;
* scalars contain equal scalars: numbers by value (``1`` and ``1.0`` are equal), and ``true`` is
  not ``1``.
"""

from __future__ import annotations

from typing import Any, Literal

#: What happens to a step whose condition is unmet (``when_unmet``) or whose task failed for good
#: (``when_failed``): the run fails; the step is skipped and its dependents run without its output;
#: or the step and every step that depends on it, directly or not, are skipped.
SkipMode = Literal["fail", "skip", "skip_cascade"]
SKIP_MODES: tuple[SkipMode, ...] = ("fail", "skip", "skip_cascade")


def contains(value: Any, pattern: Any) -> bool:
    """Whether ``value`` contains ``pattern``, as PostgreSQL's ``value @> pattern`` says."""
    if isinstance(value, list) and not isinstance(pattern, dict | list):
        return any(_scalar_equal(v, pattern) for v in value)  # the top-level exception
    return _contains(value, pattern)


def _contains(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and _contains(value[k], p) for k, p in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(v, p) for v in value) for p in pattern)
    return _scalar_equal(value, pattern)


def _scalar_equal(value: Any, pattern: Any) -> bool:
    if isinstance(value, dict | list) or isinstance(pattern, dict | list):
        return False
    if isinstance(value, bool) or isinstance(pattern, bool):
        return type(value) is type(pattern) and value == pattern
    if isinstance(value, int | float) and isinstance(pattern, int | float):
        return value == pattern
    return type(value) is type(pattern) and value == pattern


def condition_met(value: Any, if_pattern: Any = None, if_not_pattern: Any = None) -> bool:
    """A step's condition on ``value`` (the run input for a root step, else its dependencies'
    outputs by slug): ``if_`` must be contained, ``if_not`` must not; ``None`` is no test."""
    if if_pattern is not None and not contains(value, if_pattern):
        return False
    return if_not_pattern is None or not contains(value, if_not_pattern)
