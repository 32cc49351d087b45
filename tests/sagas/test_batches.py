"""A process manager's batch reads its instances in one statement and saves them in one
(``runtime/instance_batch.py``), on both backends. What is checked: the result is exactly that
of delivering the events one batch at a time (several events of one instance in a batch, an
instance that ends and starts again inside one, commands dispatched to one aggregate twice in a
batch); a save that fails at the end of the batch rolls it back and the events are applied
exactly once on the retry; a ``process_id()`` that raises is charged to its own event, and the
events before it commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from tideflow import App
from tideflow.events import Aggregate, Command, NewEvent, RecordedEvent, handles
from tideflow.sagas import Action, ProcessManager
from tideflow.worker.handlers import HandlerRunnerOptions

FAST = HandlerRunnerOptions(poll_interval=0.02, acquire_interval=0.05)


class Ledger(Aggregate):
    @handles("Note")
    def note(self, state: Any, command: Command) -> tuple[str, dict[str, Any]]:
        return ("Noted", {"tally": command.aggregate_id, "n": command.payload["n"]})


class Tally(ProcessManager):
    """Counts the events of a tally between Opened and Closed; notes every second count on a
    ledger (two commands to one aggregate in a batch)."""

    name = "tally"
    event_types: ClassVar[list[str]] = ["Opened", "Counted", "Closed", "Noted"]
    starts_with: ClassVar[list[str]] = ["Opened"]
    stops_with: ClassVar[list[str]] = ["Closed"]
    base_delay = 0.0

    def process_id(self, event: RecordedEvent) -> str | None:
        tally = event.data.get("tally")
        if tally == "poison":
            raise ValueError("cannot route a poisoned tally")
        return None if tally is None else str(tally)

    def initial_state(self, process_id: str) -> Any:
        return {"counted": 0, "noted": [], "events": []}

    def react(self, state: Any, event: RecordedEvent) -> list[Action]:
        if event.event_type == "Counted" and state["counted"] % 2 == 1:
            return [Command("Note", "book", {"n": state["counted"] + 1})]
        return []

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        counted = state["counted"] + (event.event_type == "Counted")
        noted = state["noted"] + ([event.data["n"]] if event.event_type == "Noted" else [])
        return {"counted": counted, "noted": noted, "events": [*state["events"], event.position]}


class OneByOne(Tally):
    name = "tally_one_by_one"
    batch_size = 1


LOG: list[tuple[str, str]] = [
    ("a", "Opened"),
    ("a", "Counted"),
    ("b", "Opened"),
    ("a", "Counted"),
    ("b", "Counted"),
    ("a", "Counted"),
    ("a", "Closed"),
    ("a", "Counted"),  # after a's end: ignored
    ("a", "Opened"),  # a new instance a, in the same batch as the old one's end
    ("a", "Counted"),
    ("b", "Counted"),
    ("c", "Counted"),  # not a starting event: no instance
]


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    app = App(db_url, aggregates=[Ledger], handlers=[Tally, OneByOne])
    yield app
    app.close()


def append_log(app: App, log: list[tuple[str, str]]) -> None:
    for n, (tally, event_type) in enumerate(log):
        app.event_store.append(f"tally-{tally}-{n}", [NewEvent(event_type, {"tally": tally})], 0)


def instances(app: App, manager: str) -> dict[str, tuple[Any, ...]]:
    return {
        i.process_id: (i.status, i.state, i.version)
        for i in app.process_store.list_instances(manager)
    }


def test_a_batch_leaves_what_one_event_per_batch_leaves(app: App) -> None:
    append_log(app, LOG)
    app.handler_runner(options=FAST).run_until_idle()
    batched, single = instances(app, "tally"), instances(app, "tally_one_by_one")
    assert {k: (*v[:1], v[1]["counted"], v[2]) for k, v in batched.items()} == {
        "a": ("running", 1, 2),  # the second instance a: Opened, Counted
        "b": ("running", 2, 3),
    }
    noted = [e.data["n"] for e in app.event_store.read_stream("ledger-book")]
    # Both managers noted the same counts: a's first instance at 2 and b at 2, each twice.
    assert sorted(noted) == [2, 2, 2, 2]
    # Each manager's instances saw the same events in the same order, and the same Noted events
    # came back to them: the states agree but for those positions' owners.
    for pid in ("a", "b"):
        assert batched[pid][0] == single[pid][0]
        assert batched[pid][1]["counted"] == single[pid][1]["counted"]
        assert len(batched[pid][1]["noted"]) == len(single[pid][1]["noted"])
        assert batched[pid][2] == single[pid][2]


def test_a_save_that_fails_at_the_end_of_a_batch_rolls_it_back_and_applies_it_once(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_log(app, LOG[:4])
    store = app.process_store
    save_many = store.save_many
    failures: list[int] = []

    def flaky(tx: Any, writes: Any) -> None:
        if not failures:
            failures.append(len(writes))
            raise RuntimeError("the save failed")
        save_many(tx, writes)

    monkeypatch.setattr(store, "save_many", flaky)
    app.handlers = [Tally]
    app.handler_runner(options=FAST).run_until_idle()
    assert failures == [2]  # instances a and b, saved together at the end of the batch
    assert {k: (v[1]["counted"], v[2]) for k, v in instances(app, "tally").items()} == {
        "a": (2, 3),
        "b": (0, 1),
    }
    noted = [e.data["n"] for e in app.event_store.read_stream("ledger-book")]
    assert noted == [2]  # the rolled-back batch's command is gone; the retry's is there once


def test_a_process_id_that_raises_is_charged_to_its_own_event(app: App) -> None:
    append_log(app, [("a", "Opened"), ("a", "Counted"), ("poison", "Counted"), ("a", "Counted")])
    app.handlers = [Tally]
    app.handler_runner(options=FAST).run_until_idle()
    [record] = [r for r in app.handler_store.list_handlers() if r.name == "tally"]
    poisoned = [e for e in app.event_store.read_all() if e.data.get("tally") == "poison"]
    assert record.status == "stopped"
    assert record.failing_position == poisoned[0].position
    assert "cannot route a poisoned tally" in (record.stopped_reason or "")
    # The events before the poisoned one committed; the one after it waits.
    assert instances(app, "tally")["a"][1]["counted"] == 1
