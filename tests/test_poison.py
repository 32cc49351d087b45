"""Values no backend may store, on both backends: refused before any SQL runs with a typed
``InvalidDataError`` naming the value, nothing written; a step output that is refused fails its
own task at once (no retries) and no other run of the worker's batch (issue 7, sections 3-4).
"""

from __future__ import annotations

import sqlite3
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from tideflow import App, Flow, NonRetryableError, step
from tideflow.errors import InvalidDataError, TideflowError
from tideflow.events import ANY, NewEvent, RecordedEvent
from tideflow.events.aggregate import Aggregate, handles
from tideflow.events.commands import Command
from tideflow.events.errors import (
    EventDataError,
    EventStoreError,
    InvalidIdempotencyKeyError,
    InvalidStreamIdError,
)
from tideflow.events.handling import EventHandler, HandlerContext
from tideflow.jsonutil import MAX_DEPTH, storable_text
from tideflow.worker.handlers import HandlerRunner, HandlerRunnerOptions

FAST = {"poll_interval": 0.02, "reap_interval": 0.2}


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


#: Values that are JSON but that no backend may store, by name.
POISON: dict[str, Any] = {
    "nul": {"note": "a\x00b"},
    "nul_key": {"k\x00": 1},
    "surrogate": {"note": ["ok", "\ud800"]},
    "surrogate_pair": {"note": "\ud83d\ude00"},  # two code points, not the emoji
    "deep": {"tree": nested(5000)},
    "just_too_deep": nested(MAX_DEPTH + 1),
}


def table_counts(url: str) -> dict[str, int]:
    """Rows per tideflow table: 'nothing written' is checked, not assumed."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' AND name <> 'schema_migrations'"
                )
            ]
            return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    with psycopg.connect(url) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'tideflow' "
                "AND tablename <> 'schema_migrations'"
            )
        ]
        return {
            n: conn.execute(f'SELECT count(*) FROM tideflow."{n}"').fetchone()[0] for n in names
        }


class Echo(Flow, slug="poison_echo"):
    @step()
    def make(self, input):
        return {"got": input}


class Emit(Flow, slug="poison_emit"):
    """Its step returns the poison named by the run input, or a plain value for "ok"."""

    @step()
    def make(self, input):
        if input == "ok":
            return {"ok": True}
        if input == "raise":
            raise NonRetryableError("bad \x00 text \ud800 from the user")
        return POISON[input]

    @step(depends_on=["make"])
    def after(self, make):
        return make


class Stock(Aggregate):
    aggregate_type = "stock"

    @handles("Add")
    def add(self, state: Any, command: Command) -> Any:
        return ("Added", dict(command.payload))

    @handles("AddPoison")
    def add_poison(self, state: Any, command: Command) -> Any:
        # Not from the payload (that is checked when the command is built): made up here.
        return ("Added", {"v": POISON[command.payload["kind"]]})


@pytest.fixture
def flows(app: App) -> App:
    app.register(Echo)
    app.register(Emit)
    app.aggregate(Stock)
    app.migrate()  # the tables exist before the first count
    return app


@pytest.mark.parametrize("kind", sorted(POISON))
def test_run_input_is_refused_and_nothing_written(flows: App, db_url: str, kind: str) -> None:
    before = table_counts(db_url)
    with pytest.raises(InvalidDataError, match="run input of flow 'poison_echo'") as info:
        flows.start_flow(Echo, POISON[kind])
    assert info.value.field == "run input of flow 'poison_echo'"
    assert table_counts(db_url) == before


@pytest.mark.parametrize("run_id", ["a\x00b", "a\ud800", "", "x" * 201])
def test_bad_run_id_is_refused_and_nothing_written(flows: App, db_url: str, run_id: str) -> None:
    before = table_counts(db_url)
    with pytest.raises(InvalidDataError, match="run_id") as info:
        flows.start_flow(Echo, {"n": 1}, run_id=run_id)
    assert info.value.field == "run_id"
    assert table_counts(db_url) == before


def test_refused_step_output_fails_only_its_run_at_once(flows: App) -> None:
    """The issue's group-commit poisoning: the worker completes a batch of tasks in one
    transaction; bad outputs fail their own runs at the first attempt, the others complete."""
    kinds = sorted(POISON)
    bad = {flows.start_flow(Emit, kind): kind for kind in kinds}
    good = [flows.start_flow(Emit, "ok") for _ in range(6)]
    flows.run_worker(until_idle=True, concurrency=16, **FAST)
    for run_id, kind in bad.items():
        run = flows.get_run(run_id)
        assert run.status == "failed", kind
        assert run.step("make").attempts == 1, kind
        assert "output of step 'make'" in (run.error or ""), (kind, run.error)
        assert run.step("after").status == "skipped"
    for run_id in good:
        run = flows.get_run(run_id)
        assert run.status == "completed" and run.output == {"after": {"ok": True}}


def test_error_text_with_nul_and_surrogates_is_stored(flows: App) -> None:
    """A user's exception message holding NUL and a lone surrogate must not fail the failure
    path: the text is stored with U+FFFD and '?' in their place."""
    run_id = flows.start_flow(Emit, "raise")
    flows.run_worker(until_idle=True, **FAST)
    run = flows.get_run(run_id)
    assert run.status == "failed" and run.step("make").attempts == 1
    assert run.error is not None and "bad \ufffd text ? from the user" in run.error
    assert storable_text("a\x00b\ud800") == "a\ufffdb?"


@pytest.mark.parametrize("kind", sorted(POISON))
@pytest.mark.parametrize("part", ["data", "metadata"])
def test_event_data_and_metadata_are_refused(flows: App, db_url: str, kind: str, part: str) -> None:
    value = POISON[kind] if isinstance(POISON[kind], dict) else {"v": POISON[kind]}
    event = NewEvent("Happened", **{part: value})
    before = table_counts(db_url)
    with pytest.raises(EventDataError, match=rf"the {part} of event #1 \('Happened'\)") as info:
        flows.event_store.append("s-1", [NewEvent("Fine", {"n": 1}), event], ANY)
    assert isinstance(info.value, InvalidDataError) and isinstance(info.value, EventStoreError)
    assert table_counts(db_url) == before
    with flows.event_store.transaction() as tx:  # inside a transaction too: it stays usable
        with pytest.raises(EventDataError):
            tx.append("s-1", [event], ANY)
        tx.append("s-2", [NewEvent("Fine")], ANY)
    assert table_counts(db_url)["events"] == before["events"] + 1


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800", "", "x" * 201])
def test_bad_ids_in_the_event_store_are_refused(flows: App, db_url: str, bad: str) -> None:
    before = table_counts(db_url)
    with pytest.raises(InvalidStreamIdError) as stream_error:
        flows.event_store.append(bad, [NewEvent("E")], ANY)
    with pytest.raises(InvalidIdempotencyKeyError) as key_error:
        flows.event_store.append("s-1", [NewEvent("E")], ANY, idempotency_key=bad)
    with pytest.raises(InvalidDataError) as type_error:
        NewEvent(bad)
    for error in (stream_error, key_error, type_error):
        assert isinstance(error.value, InvalidDataError) and isinstance(error.value, TideflowError)
    assert table_counts(db_url) == before


@pytest.mark.parametrize("result", ['{"r": "\\u0000"}', '"\\ud800"', "[" * 300 + "]" * 300])
def test_bad_idempotent_result_is_refused(flows: App, db_url: str, result: str) -> None:
    before = table_counts(db_url)
    with pytest.raises(EventDataError, match="result_json"):
        flows.event_store.append(
            "s-1", [NewEvent("E")], ANY, idempotency_key="k-1", result_json=result
        )
    assert table_counts(db_url) == before


@pytest.mark.parametrize("kind", sorted(POISON))
def test_command_payload_is_refused_and_event_data_too(flows: App, db_url: str, kind: str) -> None:
    payload = POISON[kind] if isinstance(POISON[kind], dict) else {"v": POISON[kind]}
    with pytest.raises(InvalidDataError, match="payload of command 'Add'") as info:
        Command("Add", "sku-1", payload)
    assert getattr(info.value, "field", None) == "payload"
    with pytest.raises(InvalidDataError, match="metadata of command 'Add'"):
        Command("Add", "sku-1", {}, metadata=payload)
    for bad_id in ("a\x00", "\udfff"):
        with pytest.raises(InvalidDataError) as id_info:
            Command("Add", bad_id, {})
        assert getattr(id_info.value, "field", None) == "aggregate_id"
    before = table_counts(db_url)
    with pytest.raises(EventDataError):  # decided by the aggregate: refused at the append
        flows.dispatch(
            Command("AddPoison", "sku-1", {"kind": kind}, idempotency_key=f"k-{uuid4()}")
        )
    assert table_counts(db_url) == before
    assert flows.dispatch(Command("Add", "sku-1", {"n": 1})).version == 1


def test_big_numbers_read_back_exactly(flows: App) -> None:
    """jsonb stores numbers as numeric and prints them without exponent; big floats are
    written out so that they come back as the same floats, big ints as the same ints."""
    value = {
        "floats": [1e16, 1.5e300, -1e308, 1.7976931348623157e308, 1e-7, 5e-324, 0.1],
        "ints": [2**63, -(2**64) - 1, 10**40],
        "text": "1e+16",
    }
    run_id = flows.start_flow(Echo, value)
    assert flows.get_run(run_id).input == value
    flows.run_worker(until_idle=True, **FAST)
    output = flows.get_run(run_id).output["make"]["got"]
    assert output == value
    assert [type(f) for f in output["floats"]] == [float] * 7
    recorded = flows.event_store.append("nums", [NewEvent("N", value)], ANY)[0]
    read = next(flows.event_store.read_stream("nums"))
    assert read.data == recorded.data == value
    assert [type(f) for f in read.data["floats"]] == [float] * 7


def test_dead_letter_error_text_with_nul_and_surrogates_is_stored(flows: App) -> None:
    """A handler's exception text holding NUL and a lone surrogate: the dead letter is recorded
    (U+FFFD and '?' in their place) instead of the failure path failing on PostgreSQL."""

    class Fails(EventHandler):
        name = "poison_fails"
        max_attempts = 1

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            raise NonRetryableError("bad \x00 text \ud800")

    flows.event_store.append("s-1", [NewEvent("E")], ANY)
    HandlerRunner(
        flows.event_store,
        flows.handler_store,
        [Fails()],
        options=HandlerRunnerOptions(poll_interval=0.02),
    ).run_until_idle()
    [dead] = flows.handler_store.list_dead_letters("poison_fails")
    assert dead.error == "NonRetryableError: bad \ufffd text ?"


@pytest.mark.parametrize("big", [2**63, 2**70])
def test_numbers_beyond_64_bits_are_bad_input_not_driver_overflows(flows: App, big: int) -> None:
    """Versions, positions and limits live in 64-bit integers on both backends: a larger one
    is refused as bad input, where SQLite's driver would raise a bare OverflowError and
    PostgreSQL an out-of-range error."""
    store = flows.event_store
    store.append("s", [NewEvent("Happened", {})], ANY)
    calls = {
        "read_stream from_version": lambda: list(store.read_stream("s", big)),
        "read_stream limit": lambda: list(store.read_stream("s", None, big)),
        "read_all from_position": lambda: list(store.read_all(big)),
        "read_all to_position": lambda: list(store.read_all(0, to_position=big)),
        "append expected_version": lambda: store.append("s", [NewEvent("Happened", {})], big),
    }
    for what, call in calls.items():
        with pytest.raises(TideflowError):
            call()
            pytest.fail(f"{what} accepted {big}")
    assert [e.version for e in store.read_stream("s")] == [1]
