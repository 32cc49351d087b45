"""JSON encoding with tideflow's errors: the one check every stored value passes.

Inputs and outputs are stored as JSON so that any tool reading the database understands them.
Datetimes, dates, decimals, UUIDs, enums, dataclasses and pydantic models are stored in the
tagged form of ``tideflow.codec`` and come back as what was written; anything else is refused
rather than guessed (no ``default=str``): a value silently turned into a string would come back
as a different type on the next step, and ``{1: "a"}`` as ``{"1": "a"}``.

We also refuse JSON that one of the backends could not store or give back unchanged, *before*
any SQL runs and the same way on every backend (SQLite refuses what PostgreSQL would refuse: one
contract). Otherwise a single bad value fails the statement that carries it - on PostgreSQL a
whole group commit of other runs' completions - and what SQLite accepts would break the day the
application moves to PostgreSQL. ``InvalidDataError`` (naming the value) for:

* a NUL character (U+0000) in any string or key: PostgreSQL's ``jsonb`` and ``text`` cannot
  hold it;
* a surrogate code point (U+D800-U+DFFF) in any string or key: it is not a character, has no
  UTF-8 encoding, and a pair of them would come back from ``jsonb`` as the one character they
  encode in UTF-16, not as what was written;
* nesting deeper than ``MAX_DEPTH`` containers;
* NaN and infinities (``InputNotSerializableError``: they are not JSON at all).

Floats of magnitude 1e16 and above are written out in full (``1e+16`` as
``10000000000000000.0``): ``jsonb`` stores numbers as ``numeric`` and prints them without
exponent, so ``1e+16`` would come back as the int ``10000000000000000`` and ``1e308`` as an int
that is not even equal to it. With the ``.0`` both backends give back the float that was
written. Ints of any size round-trip exactly on both (``numeric`` has no 64-bit limit; SQLite
keeps the JSON text). ``-0.0`` comes back from PostgreSQL as ``0.0`` (equal, not identical).
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

from tideflow.codec import (
    SUPPORTED,
    UnencodableValue,
    find_tag_shaped,
    is_plain,
    may_hold_tags,
    to_json_value,
    untag,
)
from tideflow.errors import InputNotSerializableError, InvalidDataError

#: Deepest nesting of lists and objects a stored value may have (``{"a": [1]}`` is 2 deep).
#: Python's ``json`` encodes and decodes recursively and gives up near the interpreter's
#: recursion limit (1000 frames, shared with the caller's own stack), so a value much deeper
#: than a few hundred could be stored but not read back; PostgreSQL's ``jsonb`` is bounded by
#: ``max_stack_depth`` too. 256 leaves room for the levels tideflow adds around a value (a step's
#: input wraps its dependencies' outputs, a run's output its leaves') and for deep call stacks,
#: while no hand-written document comes near it.
MAX_DEPTH = 256

_NUL_ESCAPE = "\\u0000"  # json escapes U+0000 even with ensure_ascii=False
_REAL_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # not the text "\u0000" (escaped backslash)
_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_STRING_OR_BIG_FLOAT = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*")|(-?\d+(?:\.\d+)?e\+\d+)')
_BRACKETS = re.compile(r"[\[\]{}]")
#: One encoder: ``json.dumps`` with options builds a new one per call, which costs as much as
#: the checks below. ``ensure_ascii=False`` keeps surrogates visible to ``check_text``.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def dumps(value: Any, *, what: str, field: str | None = None) -> str:
    """Encode ``value`` for storage (``tideflow.codec``: datetimes, decimals... as tagged
    objects); ``what`` names it in the error ("run input of flow 'x'"), ``field`` (default
    ``what``) becomes ``InvalidDataError.field``. Raises ``InputNotSerializableError`` for what
    tideflow cannot store, ``InvalidDataError`` for JSON no backend may store (see the module
    docstring); never ``RecursionError``."""
    try:
        return encode(value, what=what, field=field)
    except RecursionError:
        raise too_deep(what, field) from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidDataError):
            raise
        raise InputNotSerializableError(
            f"{what} cannot be stored: {exc}. Storable: {SUPPORTED}. Nothing was written."
        ) from exc


def encode(value: Any, *, what: str, field: str | None = None) -> str:
    """``dumps`` without its error translation: raises ``UnencodableValue`` (a TypeError),
    json's ValueError (NaN), ``RecursionError`` or ``InvalidDataError``, for callers that raise
    errors of their own kind."""
    try:
        try:
            plain = is_plain(value)
        except RecursionError:
            # Too deep, or circular: json's encoder tells which (RecursionError, ValueError).
            plain = True
        if plain:
            text = _ENCODER.encode(value)
            if may_hold_tags(text):
                shaped = find_tag_shaped(value)
                if shaped is not None:
                    raise shaped
        else:
            text = _ENCODER.encode(to_json_value(value))
    except ValueError as exc:
        if "Circular reference" in str(exc):
            raise UnencodableValue(
                "$", "a circular reference (a container inside itself)"
            ) from None
        if "JSON compliant" not in str(exc):
            raise
        raise UnencodableValue(
            _non_finite_at(value, "$") or "$",
            "a float NaN or infinity, which is not JSON (store None or a string instead)",
        ) from None
    return check_text(text, value, what=what, field=field)


def _non_finite_at(value: Any, path: str) -> str | None:
    """Where the first NaN or infinity in ``value`` is (``$['a'][2]``), for the error only: json
    says that there is one, not where. A value converted first (a dataclass...) is not walked:
    its place is then ``$``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite_at(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def check_text(text: str, value: Any, *, what: str, field: str | None = None) -> str:
    """``text`` (``value`` encoded by json with ``ensure_ascii=False``) if it may be stored,
    with big floats written out (module docstring); else ``InvalidDataError``. A few scans of
    the text in C: a 1 KB document costs about a microsecond."""
    if (_NUL_ESCAPE in text and _REAL_NUL.search(text)) or (
        not text.isascii() and _has_surrogate(text)
    ):
        raise _bad_string(value, what, field)
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise too_deep(what, field)
    if "e+" in text:
        text = _STRING_OR_BIG_FLOAT.sub(_expand_float, text)
    return text


def loads(text: str | None) -> Any:
    """A stored value, tagged objects decoded (``tideflow.codec``); the hook runs only for a
    text that may hold one."""
    if text is None:
        return None
    if may_hold_tags(text):
        return json.loads(text, object_hook=untag)
    return json.loads(text)


def too_deep(what: str, field: str | None = None) -> InvalidDataError:
    return InvalidDataError(
        f"{what} is nested more than {MAX_DEPTH} lists/objects deep "
        f"(tideflow.jsonutil.MAX_DEPTH); flatten it. Nothing was written.",
        field or what,
    )


def check_id(value: object, what: str, *, max_length: int = 200) -> str:
    """An id (run id, stream id, key...): a non-empty str of at most ``max_length`` characters
    without NUL or surrogates - PostgreSQL ``text`` cannot hold them, so SQLite must not
    either. ``InvalidDataError`` naming ``what`` otherwise."""
    if not isinstance(value, str):
        raise InvalidDataError(f"{what} must be a str, got {type(value).__name__} {value!r}", what)
    if not value or len(value) > max_length:
        raise InvalidDataError(
            f"{what} must be a non-empty str of at most {max_length} characters, got "
            f"{len(value)} characters ({value[:40]!r}{'...' if len(value) > 40 else ''}): use "
            "a shorter id (a uuid, a hash)",
            what,
        )
    bad = bad_character(value)
    if bad is not None:
        raise InvalidDataError(
            f"{what} {value[:60]!r} contains {bad}, which the database cannot store: remove it",
            what,
        )
    return value


def bad_character(text: str) -> str | None:
    """What in ``text`` no backend may store ("a NUL character (U+0000)"...), or None."""
    if "\x00" in text:
        return "a NUL character (U+0000)"
    found = _SURROGATE.search(text)
    if found is not None:
        return f"a lone surrogate (U+{ord(found.group()):04X})"
    return None


def storable_text(text: str) -> str:
    """``text`` made safe for a ``text`` column on every backend: NUL becomes U+FFFD and
    surrogates ``?``. For error messages, which come from user exceptions and must never make
    the failure path fail."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if _SURROGATE.search(text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


# --- the slow paths: only when something is wrong or unusual ------------------------------------


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate code point: the one thing UTF-8 cannot encode. Six
    times faster than a regex search, and a surrogate is rare."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _depth(text: str) -> int:
    """The deepest nesting in JSON ``text``: brackets outside strings, counted iteratively."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _expand_float(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return match.group(1)
    return f"{int(Decimal(match.group(2)))}.0"


def _bad_string(value: Any, what: str, field: str | None) -> InvalidDataError:
    where, bad = _find_bad_string(value)
    return InvalidDataError(
        f"{what} contains {bad} at {where}, which PostgreSQL cannot store in JSON (and SQLite "
        "refuses too, so both backends accept the same values): remove it, or encode binary "
        "data as base64. Nothing was written.",
        field or what,
    )


def _find_bad_string(value: Any) -> tuple[str, str]:
    """The path ("$['items'][2]") and the problem of the first string or key no backend may
    store; an iterative walk, so depth cannot make it fail."""
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            bad = bad_character(item)
            if bad is not None:
                return path, bad
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if isinstance(key, str):
                    bad = bad_character(key)
                    if bad is not None:
                        return f"{path} (the key {key!r})", bad
                stack.append((f"{path}[{key!r}]", child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return "$", "a NUL character or a lone surrogate"
