"""Declared types for stored values: validate a value against an annotation and build it.

A flow declares its input type (``class Checkout(Flow[CheckoutInput])``); a step annotates its
parameters and its return type. tideflow stores JSON (``tideflow.codec``), so a dataclass comes
back from the database as a dict of its fields: ``coerce`` turns it back into the declared type,
and refuses - naming the field and what was expected - a value that does not fit, so that a
malformed input fails when the run starts, with nothing written, rather than in a step later.

Understood: dataclasses, ``TypedDict``, pydantic models (when the user's type is one - pydantic is
never imported here), ``list``/``tuple``/``dict``/``Mapping``/``Sequence`` of those, unions and
``Optional``, ``Literal``, enums, and the scalars (``str``, ``int``, ``float`` - an int is
accepted -, ``bool``, ``datetime``, ``date``, ``Decimal``, ``UUID``). ``Any``, ``object`` and
anything else not understood accept any value unchanged. Scalars are not converted from strings:
the codec already gives back a datetime for a datetime.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin, is_typeddict

from tideflow.codec import is_pydantic_model
from tideflow.errors import InvalidDataError


class InputTypeError(InvalidDataError):
    """A value does not fit its declared type (a flow's input type, a step's annotation, a
    command payload's class): ``field`` is where (``$.items[2].qty``). Nothing was written."""


class _Mismatch(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def coerce(value: Any, tp: Any, *, what: str) -> Any:
    """``value`` as an instance of ``tp`` (a dict becomes the declared dataclass or pydantic
    model; a TypedDict stays a dict), or ``InputTypeError`` naming ``what`` and the field."""
    try:
        return _coerce(value, tp, "$")
    except _Mismatch as exc:
        raise InputTypeError(
            f"{what} does not fit its declared type {type_name(tp)}: {exc}. Pass a "
            f"{type_name(tp)} (or a dict of its fields). Nothing was written.",
            exc.path,
        ) from None


def is_structured(tp: Any) -> bool:
    """Whether values of ``tp`` need building from what JSON gives back: ``tp`` is or holds
    a dataclass, a TypedDict, a pydantic model or an enum. Other annotations (``dict``,
    ``int``, ``Any``...) are left alone at run time, as before types were declared."""
    if isinstance(tp, type):
        return (
            dataclasses.is_dataclass(tp)
            or is_typeddict(tp)
            or is_pydantic_model(tp)
            or issubclass(tp, Enum)
        )
    return any(is_structured(arg) for arg in get_args(tp) if arg is not Ellipsis)


def type_name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else str(tp).replace("typing.", "")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls``; none (fields unchecked) when they cannot be
    resolved, so that a broken annotation never turns a check into a NameError."""
    found = _HINTS.get(cls)
    if found is None:
        try:
            found = typing.get_type_hints(cls)
        except Exception:  # a NameError, or anything a broken annotation raises
            found = {}
        _HINTS[cls] = found
    return found


def _coerce(value: Any, tp: Any, path: str) -> Any:
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        if value is None:
            return None
        raise _mismatch(path, "None", value)
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _union(value, get_args(tp), path)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _Mismatch(path, f"expected one of {list(get_args(tp))!r}, got {value!r}")
    if origin is not None:
        return _generic(value, origin, get_args(tp), path)
    if not isinstance(tp, type):
        return value  # a TypeVar, a NewType, an unresolved string: not checked
    if is_typeddict(tp):
        return _typeddict(value, tp, path)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        if dataclasses.is_dataclass(tp) and type(value) is tp:
            for f in dataclasses.fields(tp):
                _coerce(getattr(value, f.name), _hints(tp).get(f.name, Any), f"{path}.{f.name}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            values = [m.value for m in tp]
            raise _Mismatch(
                path, f"expected a {tp.__qualname__} (one of {values!r}), got {value!r}"
            ) from None
    if dataclasses.is_dataclass(tp):
        return _dataclass(value, tp, path)
    if is_pydantic_model(tp):
        try:
            return tp.model_validate(value)  # type: ignore[attr-defined]
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise _Mismatch(path, " ".join(str(exc).split())) from None
    raise _mismatch(path, tp.__qualname__, value)


def _mismatch(path: str, expected: str, value: Any) -> _Mismatch:
    return _Mismatch(path, f"expected {expected}, got {type(value).__name__} {value!r:.60}")


def _union(value: Any, options: tuple[Any, ...], path: str) -> Any:
    for option in options:  # an exact fit first: 1 stays an int in ``int | float``
        if isinstance(option, type) and type(value) is option:
            return value
    problems = []
    for option in options:
        try:
            return _coerce(value, option, path)
        except _Mismatch as exc:
            problems.append(str(exc).partition(": ")[2])
    raise _Mismatch(path, "fits none of the union: " + "; ".join(problems))


def _generic(value: Any, origin: Any, args: tuple[Any, ...], path: str) -> Any:
    if origin in (list, set, frozenset) or origin is Sequence or origin is tuple:
        if not isinstance(value, list | tuple):
            raise _mismatch(path, f"a {origin.__name__}", value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _Mismatch(path, f"expected {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in pairs)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or origin is typing.Mapping:
        if not isinstance(value, Mapping):
            raise _mismatch(path, "a dict", value)
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, item, f"{path}[{k!r}]") for k, v in value.items()}
    return value  # another generic (a Callable, a user generic): not checked


def _fields_from(value: Any, tp: type, path: str, allowed: set[str], required: set[str]) -> None:
    if not isinstance(value, Mapping):
        raise _mismatch(path, f"a {tp.__qualname__} or a dict of its fields", value)
    unknown = [k for k in value if k not in allowed]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _Mismatch(
            f"{path}.{unknown[0]}",
            f"{tp.__qualname__} has no field {unknown[0]!r}{hint}; its fields are "
            f"{', '.join(sorted(allowed))}",
        )
    missing = sorted(required - set(value))
    if missing:
        raise _Mismatch(f"{path}.{missing[0]}", f"missing field(s) {', '.join(missing)}")


def _dataclass(value: Any, tp: type, path: str) -> Any:
    fields = [f for f in dataclasses.fields(tp) if f.init]
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    _fields_from(value, tp, path, {f.name for f in fields}, required)
    hints = _hints(tp)
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{path}.{k}") for k, v in value.items()}
    return tp(**kwargs)


def _typeddict(value: Any, tp: type, path: str) -> Any:
    hints = _hints(tp)
    _fields_from(value, tp, path, set(hints), set(getattr(tp, "__required_keys__", ())))
    return {k: _coerce(v, hints[k], f"{path}.{k}") for k, v in value.items()}


@dataclasses.dataclass(frozen=True)
class StepTypes:
    """What a step declares that needs building: its parameters' types by name (only the
    structured ones, ``is_structured``), the first positional parameter's name (where a root or
    map step gets its value), and its return type (None when not structured)."""

    params: dict[str, Any]
    first: str | None
    returns: Any


_STEP_TYPES: dict[Any, StepTypes] = {}


def step_types(fn: Any) -> StepTypes:
    """The ``StepTypes`` of a step method, resolved once. Annotations that cannot be resolved
    (a name defined inside a function) are not used: the step gets the stored JSON, as an
    unannotated one does."""
    func = getattr(fn, "__func__", fn)
    found = _STEP_TYPES.get(func)
    if found is not None:
        return found
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # a NameError, or anything a broken annotation raises
        hints = {}
    params = list(inspect.signature(func).parameters.values())[1:]  # drop self
    first = next(
        (
            p.name
            for p in params
            if p.name != "ctx" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ),
        None,
    )
    returns = hints.get("return")
    found = _STEP_TYPES[func] = StepTypes(
        {
            name: tp
            for name, tp in hints.items()
            if name not in ("return", "ctx") and is_structured(tp)
        },
        first,
        returns if returns is not None and is_structured(returns) else None,
    )
    return found
