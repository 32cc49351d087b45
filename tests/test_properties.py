"""Property tests over the three ways values get in - ``start_flow``, ``dispatch``, ``append`` -
on both backends, with arbitrary JSON-like values and ids (NUL, surrogates, deep nesting, big
ints and floats included): each call either succeeds and reads back exactly, or raises a
``TideflowError`` and writes nothing. Whether it must succeed is decided by an oracle written
independently of ``tideflow.jsonutil``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_poison import nested, table_counts
from tideflow import App, Flow, step
from tideflow.errors import TideflowError
from tideflow.events import ANY, NewEvent
from tideflow.events.aggregate import Aggregate, handles
from tideflow.events.commands import Command
from tideflow.events.model import MAX_ID_LENGTH
from tideflow.jsonutil import MAX_DEPTH

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Text with every code point, surrogates included, and the troublemakers often.
TEXT = st.text(
    st.characters(exclude_categories=()) | st.sampled_from(["\x00", "\ud800", "\udfff"]),
    max_size=12,
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | TEXT
    | st.floats(allow_nan=False, allow_infinity=False)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=16,
) | st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3).map(nested)
IDS = TEXT | st.text(min_size=195, max_size=205)


def storable(value: Any, depth: int = 0) -> bool:
    """The oracle: no NUL or surrogate in any string or key, at most MAX_DEPTH containers
    deep. (Recursive on purpose - the opposite of the code under test - and bounded by the
    strategies above.)"""
    if isinstance(value, str):
        return good_text(value)
    if isinstance(value, list):
        return depth < MAX_DEPTH and all(storable(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return depth < MAX_DEPTH and all(
            good_text(k) and storable(v, depth + 1) for k, v in value.items()
        )
    return True


def good_text(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def good_id(text: str, limit: int = MAX_ID_LENGTH) -> bool:
    return 0 < len(text) <= limit and good_text(text)


def same(a: Any, b: Any) -> bool:
    """Equal, and floats still floats (PostgreSQL's numeric would make 1e16 an int)."""
    if isinstance(a, float):
        return isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


class Keep(Flow, slug="prop_keep"):
    @step()
    def only(self, input):
        return input


class Box(Aggregate):
    aggregate_type = "box"

    @handles("Put")
    def put(self, state: Any, command: Command) -> Any:
        return ("Put", dict(command.payload))


@pytest.fixture
def props(app: App) -> App:
    app.register(Keep)
    app.aggregate(Box)
    app.migrate()
    return app


def attempt(app: App, db_url: str, must_succeed: bool, call: Any) -> Any:
    before = table_counts(db_url)
    try:
        result = call()
    except TideflowError as exc:
        assert not must_succeed, f"refused a storable value: {exc}"
        assert table_counts(db_url) == before, "a refused call wrote rows"
        return None
    assert must_succeed, "accepted a value a backend cannot store"
    return result


def test_start_flow(props: App, db_url: str) -> None:
    seen: set[str] = set()

    @SETTINGS
    @given(value=VALUES, run_id=IDS)
    def check(value: Any, run_id: str) -> None:
        ok = storable(value) and good_id(run_id, 200) and run_id not in seen
        started = attempt(props, db_url, ok, lambda: props.start_flow(Keep, value, run_id=run_id))
        if started is not None:
            seen.add(run_id)
            run = props.get_run(run_id)
            assert run.run_id == run_id and same(value, run.input)

    check()


def test_dispatch(props: App, db_url: str) -> None:
    room = MAX_ID_LENGTH - len("box") - 1

    @SETTINGS
    @given(value=VALUES, aggregate_id=IDS)
    def check(value: Any, aggregate_id: str) -> None:
        ok = storable({"v": value}) and good_id(aggregate_id, room)
        result = attempt(
            props, db_url, ok, lambda: props.dispatch(Command("Put", aggregate_id, {"v": value}))
        )
        if result is not None:
            read = list(props.event_store.read_stream(result.stream_id))[-1]
            assert same({"v": value}, read.data) and same(read.data, result.events[0].data)

    check()


def test_append(props: App, db_url: str) -> None:
    @SETTINGS
    @given(data=VALUES, metadata=VALUES, stream_id=IDS, event_type=IDS)
    def check(data: Any, metadata: Any, stream_id: str, event_type: str) -> None:
        ok = (
            storable({"d": data})
            and storable({"m": metadata})
            and good_id(stream_id)
            and good_id(event_type)
        )

        def append() -> Any:
            return props.event_store.append(
                stream_id, [NewEvent(event_type, {"d": data}, {"m": metadata})], ANY
            )

        recorded = attempt(props, db_url, ok, append)
        if recorded is not None:
            read = list(props.event_store.read_stream(stream_id))[-1]
            assert read.event_type == event_type
            assert same({"d": data}, read.data) and same({"m": metadata}, read.metadata)
            assert same(read.data, recorded[0].data)

    check()
