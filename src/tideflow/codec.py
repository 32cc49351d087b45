"""The values tideflow stores beyond plain JSON, and how they look in the database.

Run inputs and outputs, step outputs, event data and metadata, command payloads and snapshots are
stored as JSON text (SQLite) or ``jsonb`` (PostgreSQL) so that any SQL tool can read them. Plain
JSON values (dict with str keys, list, str, int, float, bool, None) are stored as they are. A few
Python types that JSON lacks are stored as a *tagged object* - an object with exactly one key, the
tag - and come back as the same type, equal to what was written:

=================  ================================================  =============================
Python             stored as                                         notes
=================  ================================================  =============================
``datetime``       ``{"$datetime": "2026-12-07T21:07:00.5+01:00"}``  ISO 8601; naive ones have no
                                                                     offset; a ``ZoneInfo`` zone
                                                                     is kept after the offset:
                                                                     ``...+01:00[Europe/Paris]``
``date``           ``{"$date": "2026-12-07"}``
``Decimal``        ``{"$decimal": "12.50"}``                         the exact digits and exponent
``UUID``           ``{"$uuid": "7f0c...-..."}``                      hyphenated, lower case
``Enum`` member    ``{"$enum": "shop.models:Color.RED"}``            module, class, member name
=================  ================================================  =============================

A tuple is stored as a list (and comes back as a list). A dataclass instance or a pydantic model is
stored as the object of its fields (values converted as above); it comes back as that class where a
type is declared (a flow's input type, a step's annotation - ``tideflow.typed``), as a dict
elsewhere.

Refused with ``UnencodableValue`` (each caller turns it into its own typed error) rather than
silently changed: a dict key that is not a ``str`` (``{1: "a"}`` would come back as ``{"1": "a"}``),
a dict of the shape of a tag (``{"$date": "..."}``) - it would come back as a date -, a non-finite
``Decimal``, an ``Enum`` defined inside a function (it could not be found when read back), sets,
bytes and any other object. (NaN, infinities, NUL characters and nesting are refused by
``tideflow.jsonutil``, which encodes.)

Plain JSON costs one walk that only checks types: the encoding of a value that needs no tag is
unchanged, and decoding looks for tags only in a text that holds ``{"$``, which a text without
tags almost never does.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tideflow.errors import InvalidDataError

DATETIME, DATE, DECIMAL, UUID_TAG, ENUM = "$datetime", "$date", "$decimal", "$uuid", "$enum"
TAGS = frozenset({DATETIME, DATE, DECIMAL, UUID_TAG, ENUM})
#: Every tagged object begins so, in the text json writes and in the text ``jsonb`` prints.
TAG_MARK = '{"$'


def may_hold_tags(text: str) -> bool:
    """Whether ``text`` may hold a tagged object: ``"$"`` first, which ``memchr`` finds at
    memory speed and most JSON lacks altogether, then the mark."""
    return "$" in text and TAG_MARK in text


_PLAIN = frozenset({str, int, float, bool, type(None)})

#: What the error messages list as storable.
SUPPORTED = (
    "dict (str keys), list, tuple, str, int, float, bool, None, datetime, date, Decimal, UUID, "
    "Enum, dataclasses and pydantic models"
)


class UnencodableValue(TypeError):
    """A value the codec refuses; ``path`` says where (``$['items'][2]``). Callers re-raise it as
    their own typed error (``InputNotSerializableError``, ``EventNotSerializableError``...)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{problem} at {path}")


# --- encoding -------------------------------------------------------------------------------------


def is_plain(value: Any) -> bool:
    """Whether ``value`` is plain JSON with str keys (json encodes it as it is); False when it
    holds anything ``to_json_value`` must convert or refuse. Types only, no allocation: the cost
    added to every encode."""
    cls = value.__class__
    if cls is dict:
        for key, item in value.items():
            if key.__class__ is not str:
                return False
            c = item.__class__
            if c in _PLAIN:
                continue
            if (c is dict or c is list) and is_plain(item):
                continue
            return False
        return True
    if cls is list:
        for item in value:
            c = item.__class__
            if c in _PLAIN:
                continue
            if (c is dict or c is list) and is_plain(item):
                continue
            return False
        return True
    return cls in _PLAIN


def to_json_value(value: Any, path: str = "$") -> Any:
    """``value`` with every non-JSON type replaced by its tagged form (module docstring);
    ``UnencodableValue`` for what has none."""
    cls = value.__class__
    if cls in _PLAIN:
        return value
    if isinstance(value, Mapping):
        return _object(value, path)
    if cls is list or cls is tuple:
        return [to_json_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Enum):
        return {ENUM: enum_reference(value, path)}
    if isinstance(value, bool | int | float | str):  # a subclass: json writes its value
        return value
    if isinstance(value, datetime):
        return {DATETIME: format_datetime(value)}
    if isinstance(value, date):
        return {DATE: value.isoformat()}
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise UnencodableValue(
                path, f"Decimal {value} is not a number JSON can hold (NaN or an infinity)"
            )
        return {DECIMAL: str(value)}
    if isinstance(value, UUID):
        return {UUID_TAG: str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json_value(getattr(value, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(value)
        }
    if is_pydantic_model(cls):
        return _object(value.model_dump(mode="python", by_alias=True), path)
    if isinstance(value, list | tuple):
        return [to_json_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    hint = " (encode bytes as base64 text)" if isinstance(value, bytes | bytearray) else ""
    raise UnencodableValue(
        path, f"a {cls.__name__} ({value!r:.60}), which tideflow cannot store{hint}"
    )


def _object(value: Mapping[Any, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key.__class__ is not str:
            raise UnencodableValue(
                f"{path} (the key {key!r})",
                f"a dict key of type {type(key).__name__}, which JSON would turn into the string "
                f"{str(key)!r} (keys are strings): convert the keys yourself (str(key)) or "
                "store a list of pairs",
            )
        out[key] = to_json_value(item, f"{path}[{key!r}]")
    if len(out) == 1 and next(iter(out)) in TAGS:
        raise tag_shaped(path, next(iter(out)))
    return out


def tag_shaped(path: str, key: str) -> UnencodableValue:
    return UnencodableValue(
        path,
        f"an object whose only key is {key!r}, which is how tideflow stores a "
        f"{key[1:]} (it would come back as one): rename the key or add another one",
    )


def find_tag_shaped(value: Any) -> UnencodableValue | None:
    """The error for the first dict in plain ``value`` shaped like a tag, if any: checked only
    when the encoded text holds ``{"$``."""
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        path, item = stack.pop()
        if item.__class__ is dict:
            if len(item) == 1 and next(iter(item)) in TAGS:
                return tag_shaped(path, next(iter(item)))
            stack.extend((f"{path}[{k!r}]", v) for k, v in item.items())
        elif item.__class__ is list:
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
    return None


def format_datetime(value: datetime) -> str:
    text = value.isoformat()
    key = getattr(value.tzinfo, "key", None)
    if isinstance(value.tzinfo, ZoneInfo) and key:
        text += f"[{key}]"
    return text


def enum_reference(member: Enum, path: str = "$") -> str:
    cls = type(member)
    if "<locals>" in cls.__qualname__:
        raise UnencodableValue(
            path,
            f"a member of enum {cls.__qualname__}, which is defined inside a function and "
            "could not be found when the value is read back: define it at module level",
        )
    return f"{cls.__module__}:{cls.__qualname__}.{member.name}"


def is_pydantic_model(cls: type) -> bool:
    """Whether ``cls`` is a pydantic model, without importing pydantic."""
    return hasattr(cls, "model_dump") and any(
        c.__module__.startswith("pydantic") for c in cls.__mro__[1:]
    )


# --- decoding -------------------------------------------------------------------------------------


def untag(obj: dict[str, Any]) -> Any:
    """json's ``object_hook``: a tagged object as its value, any other object unchanged."""
    if len(obj) != 1:
        return obj
    ((key, text),) = obj.items()
    decode = _DECODERS.get(key)
    if decode is None:
        return obj
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        return decode(text)
    except (ValueError, ArithmeticError, LookupError, ImportError, ZoneInfoNotFoundError) as exc:
        raise InvalidDataError(
            f"stored value {{{key!r}: {text!r:.80}}} cannot be read back as a {key[1:]} ({exc}); "
            "it was not written by tideflow's codec, or its type has moved: fix the stored "
            "value or restore the type",
            key,
        ) from None


def parse_datetime(text: str) -> datetime:
    if not text.endswith("]"):
        return datetime.fromisoformat(text)
    base, _, zone = text[:-1].partition("[")
    fixed = datetime.fromisoformat(base)
    # The wall time as written, in its zone; the offset written beside it says which ``fold``
    # (an ambiguous hour, or a time in a gap, has one offset per fold). Converting the instant
    # instead would move a time in a gap to another wall time.
    zoned = fixed.replace(tzinfo=ZoneInfo(zone))
    if zoned.utcoffset() != fixed.utcoffset():
        zoned = zoned.replace(fold=1)
    return zoned


_ENUMS: dict[str, type[Enum]] = {}


def resolve_enum(reference: str) -> Enum:
    """The member ``module:Class.MEMBER`` names. Imports the module if it is not yet; only an
    ``Enum`` subclass is accepted, so stored data cannot make tideflow build anything else."""
    where, _, name = reference.rpartition(".")
    cls = _ENUMS.get(where)
    if cls is None:
        module_name, _, qualname = where.partition(":")
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
        found: Any = module
        for part in qualname.split("."):
            found = getattr(found, part)
        if not (isinstance(found, type) and issubclass(found, Enum)):
            raise ValueError(f"{where} is not an Enum")
        cls = _ENUMS[where] = found
    return cls[name]


_DECODERS: dict[str, Callable[[str], Any]] = {
    DATETIME: parse_datetime,
    DATE: date.fromisoformat,
    DECIMAL: Decimal,
    UUID_TAG: UUID,
    ENUM: resolve_enum,
}
