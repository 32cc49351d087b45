"""Property tests of the codec: arbitrary nestings of JSON and of the types the codec tags
(datetimes naive, fixed-offset and zoned - gaps and folds included -, dates, decimals, UUIDs,
enum members), with the poison mixed in (non-str keys, non-finite decimals, tag-shaped dicts,
NaN, NUL). Each value is either stored and read back with the same types and values, or refused
with a TideflowError and nothing written - decided by an oracle written apart from the codec.
Pure encode/decode, then through ``start_flow`` and ``append`` on both backends."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_poison import table_counts
from tideflow import App
from tideflow.errors import TideflowError
from tideflow.events import ANY, NewEvent
from tideflow.jsonutil import dumps, loads

from .flows_typed import Priority, Tier, Untyped

TAG_NAMES = ["$datetime", "$date", "$decimal", "$uuid", "$enum"]
KEYS = st.text(max_size=6) | st.sampled_from(TAG_NAMES)
OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
EXTRA = (
    st.datetimes(timezones=st.none() | st.timezones() | OFFSETS, allow_imaginary=True)
    | st.dates()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.uuids()
    | st.sampled_from([*Tier, *Priority])
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.floats(allow_nan=True, allow_infinity=True)
    | EXTRA
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEYS, children, max_size=3)
        | st.dictionaries(
            st.integers() | st.none() | st.booleans(), children, min_size=1, max_size=2
        )
    ),
    max_leaves=12,
)
SETTINGS = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def storable(value: Any) -> bool:
    """The oracle (recursive, unlike the codec's walk)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Decimal):
        return value.is_finite()
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return all(map(storable, value))
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in TAG_NAMES:
            return False
        return all(isinstance(k, str) and storable(k) and storable(v) for k, v in value.items())
    return True


def same(a: Any, b: Any) -> bool:
    """Equal with the same types; datetimes with the same offset and zone, Decimals with the
    same digits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, datetime):
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.utcoffset() == b.utcoffset()
            and getattr(a.tzinfo, "key", None) == getattr(b.tzinfo, "key", None)
        )
    if isinstance(a, Decimal):
        return str(a) == str(b)
    return bool(a == b)


@SETTINGS
@given(value=VALUES)
def test_encode_decode_round_trips_or_refuses(value: Any) -> None:
    try:
        text = dumps(value, what="value")
    except TideflowError:
        assert not storable(value), f"refused a storable value {value!r}"
        return
    assert storable(value), f"accepted {value!r} as {text}"
    assert same(value, loads(text)), text


def test_through_runs_and_events(app: App, db_url: str) -> None:
    app.register(Untyped)
    app.migrate()

    @settings(SETTINGS, max_examples=40)
    @given(value=st.dictionaries(KEYS, VALUES, max_size=3))
    def check(value: Any) -> None:
        before = table_counts(db_url)
        ok = storable(value)
        try:
            run_id = app.start_flow(Untyped, value)
            recorded = app.event_store.append("s", [NewEvent("E", value, value)], ANY)[0]
        except TideflowError:
            assert not ok, f"refused a storable value {value!r}"
            assert table_counts(db_url) == before, "a refused call wrote rows"
            return
        assert ok, f"accepted {value!r}"
        assert same(value, app.get_run(run_id).input)
        [read] = [e for e in app.event_store.read_stream("s") if e.event_id == recorded.event_id]
        assert same(value, read.data) and same(value, read.metadata)

    check()
