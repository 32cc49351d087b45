"""Given / when / then for aggregates: test decisions in memory, without a database.

    from tideflow.events.testing import given

    def test_removing_more_than_is_on_hand_is_refused():
        (given(Inventory, [("StockAdded", {"qty": 2})])
            .when(Command("RemoveStock", "sku-1", {"qty": 5}))
            .then_error(OutOfStock, match="only 2 on hand"))

    def test_removing_stock():
        (given(Inventory, [("StockAdded", {"qty": 5})])
            .when(Command("RemoveStock", "sku-1", {"qty": 2}))
            .then(("StockRemoved", {"qty": 2}))
            .then_state({"on_hand": 3}))

The helper runs the same code the dispatcher runs - ``initial_state``, ``apply`` over the given
history, ``execute``, the normalising of what a handler returns, the stamping of causation and
metadata - on events built in memory. What a database would change is simulated rather than
skipped: event data goes through a JSON round trip (a tuple comes back as a list, a datetime is
refused, as the store would), so a test cannot pass on data production could not store.

``then`` also applies the new events to the state, so an ``@applies`` method that breaks on an
event its own handler produces fails the test rather than the next load in production; and for
an aggregate with ``snapshot_every`` it checks that the state survives a snapshot round trip.

Failures are ``AssertionError`` with the given history, the command, and the expected and actual
events side by side, so pytest shows them as test failures, not errors.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

from tideflow.events.aggregate import (
    Aggregate,
    InvalidDecisionError,
    apply_event,
    as_aggregate,
    decide,
    evolve,
    stamp_events,
)
from tideflow.events.commands import Command, UnknownCommandError
from tideflow.events.model import NewEvent, RecordedEvent, encode_json
from tideflow.events.upcasting import Upcasters
from tideflow.jsonutil import loads

EventLike: TypeAlias = "NewEvent | RecordedEvent | tuple[str, dict[str, Any]]"
"""How a test writes an event: ``("StockAdded", {"qty": 5})``, a ``NewEvent``, or a
``RecordedEvent`` (only its type, data and metadata are used)."""

#: Every event built here is recorded "at" this moment: tests must not depend on the wall clock.
RECORDED_AT = datetime(2030, 1, 1, tzinfo=UTC)


def given(
    aggregate: type[Aggregate] | Aggregate,
    events: Iterable[EventLike] = (),
    *,
    upcasters: Upcasters | None = None,
) -> Scenario:
    """Start a scenario for ``aggregate`` (a class or an instance) whose stream already holds
    ``events`` (oldest first). With ``upcasters``, the events are read through them as the store
    would, to test that old shapes still load."""
    return Scenario(as_aggregate(aggregate), [_to_new_event(e, "given") for e in events], upcasters)


def _to_new_event(event: object, where: str) -> NewEvent:
    if isinstance(event, NewEvent):
        return event
    if isinstance(event, RecordedEvent):
        return NewEvent(
            event.event_type, event.data, event.metadata, schema_version=event.schema_version
        )
    if isinstance(event, tuple) and len(event) == 2 and isinstance(event[0], str):
        return NewEvent(event[0], event[1])
    raise TypeError(
        f"{where}: an event must be ('EventType', {{data}}), a NewEvent or a "
        f"RecordedEvent, got {type(event).__name__} {event!r:.80}"
    )


_UNCOPYABLE = object()
_UNSET = object()


def _copy(state: Any) -> Any:
    """A deep copy of the state, to catch a handler changing it; states that cannot be copied
    are not checked."""
    try:
        return copy.deepcopy(state)
    except Exception:
        return _UNCOPYABLE


def _json_round_trip(value: Any, what: str) -> Any:
    """``value`` as a reader would get it back from the store."""
    return loads(encode_json(value, what))


def _show(event_type: str, data: Any) -> str:
    return f"{event_type} {json.dumps(data, sort_keys=True, default=repr)}"


def _listing(lines: Sequence[str]) -> str:
    if not lines:
        return "    (no events)"
    return "\n".join(f"    {i}. {line}" for i, line in enumerate(lines, 1))


class Scenario:
    """An aggregate and the history of its stream; ``when`` dispatches a command to it."""

    def __init__(
        self, aggregate: Aggregate, history: list[NewEvent], upcasters: Upcasters | None
    ) -> None:
        self.aggregate = aggregate
        self.history = history
        self.upcasters = upcasters

    def when(self, command: Command) -> Outcome:
        """Decide ``command`` against the state the history folds to. A command type the
        aggregate does not handle raises ``UnknownCommandError`` at once: that is a mistake in
        the test, not an outcome."""
        aggregate = self.aggregate
        if command.command_type not in aggregate.command_types:
            raise UnknownCommandError(
                command.command_type,
                list(aggregate.command_types),
                f"aggregate {aggregate.aggregate_type!r}",
            )
        stream_id = aggregate.stream_id(command.aggregate_id)
        recorded = self._record(stream_id, self.history, 1, "given event")
        state = evolve(aggregate, aggregate.initial_state(command.aggregate_id), recorded)
        before = _copy(state)
        try:
            decided = decide(aggregate, state, command)
        except Exception as exc:
            return Outcome(self, command, state, error=exc)
        if before is not _UNCOPYABLE and before != state:
            return Outcome(
                self,
                command,
                before,
                error=InvalidDecisionError(
                    f"the handler of {command.command_type!r} changed the state it was given (from "
                    f"{before!r:.200} to {state!r:.200}); handlers decide, apply() changes the "
                    "state - in production the change would be lost, or leak into the snapshot"
                ),
            )
        return Outcome(self, command, state, events=stamp_events(decided, command, aggregate))

    def _record(
        self, stream_id: str, events: Sequence[NewEvent], first_version: int, what: str
    ) -> list[RecordedEvent]:
        """The events as the store would hand them back: JSON round trip, versions, upcasting."""
        recorded = []
        for i, event in enumerate(events):
            version = first_version + i
            where = f"{what} #{version} ({event.event_type!r})"
            recorded_event = RecordedEvent(
                event.event_id,
                event.event_type,
                stream_id,
                version,
                version,
                _json_round_trip(event.data, f"the data of {where}"),
                _json_round_trip(event.metadata, f"the metadata of {where}"),
                event.causation_id,
                event.correlation_id,
                RECORDED_AT,
                event.schema_version or 1,
            )
            if self.upcasters is not None:
                recorded_event = self.upcasters.upcast(recorded_event)
            recorded.append(recorded_event)
        return recorded


class Outcome:
    """What a command did in a scenario: events, or an error. Check it with ``then``,
    ``then_error`` and ``then_state``; each returns something to chain or inspect."""

    def __init__(
        self,
        scenario: Scenario,
        command: Command,
        state: Any,
        *,
        events: list[NewEvent] | None = None,
        error: Exception | None = None,
    ) -> None:
        self.scenario = scenario
        self.command = command
        self.state_before = state
        self.events = events
        self.error = error
        self._after: Any = _UNSET

    def _context(self) -> str:
        history = [_show(e.event_type, e.data) for e in self.scenario.history]
        c = self.command
        return (
            f"given:\n{_listing(history)}\n"
            f"when:\n    {_show(c.command_type, c.payload)} -> aggregate {c.aggregate_id!r}"
        )

    def _recorded(self, expectation: str) -> list[RecordedEvent]:
        """The produced events as the store would return them; fails the test with the error if
        the command raised, or if an event could not be stored."""
        if self.error is not None:
            raise AssertionError(
                f"{expectation}, but the command raised {type(self.error).__name__}: "
                f"{self.error}\n{self._context()}"
            ) from self.error
        assert self.events is not None
        stream_id = self.scenario.aggregate.stream_id(self.command.aggregate_id)
        try:
            return self.scenario._record(
                stream_id, self.events, len(self.scenario.history) + 1, "produced event"
            )
        except Exception as exc:
            raise AssertionError(f"{exc}\n{self._context()}") from exc

    def then(self, *expected: EventLike | Sequence[EventLike]) -> Outcome:
        """Assert the command produced exactly ``expected`` (type and data, in order; metadata
        too for an expected ``NewEvent`` that has some). ``then()`` expects no event; a single
        list works like its items."""
        items: Sequence[Any] = expected
        if len(expected) == 1 and isinstance(expected[0], list):
            items = expected[0]
        wanted = [_to_new_event(e, "then()") for e in items]
        recorded = self._recorded(f"expected {len(wanted)} event(s)")
        want = [
            _show(e.event_type, _json_round_trip(e.data, "an expected event's data"))
            for e in wanted
        ]
        got = [_show(e.event_type, e.data) for e in recorded]
        mismatch = next(
            (i for i, (w, g) in enumerate(zip(want, got, strict=False)) if w != g), None
        )
        if mismatch is None and len(want) != len(got):
            mismatch = min(len(want), len(got))
        if mismatch is None:
            for i, (w_event, g_event) in enumerate(zip(wanted, recorded, strict=True)):
                w_meta = _json_round_trip(w_event.metadata, "an expected event's metadata")
                if w_meta and any(g_event.metadata.get(k) != v for k, v in w_meta.items()):
                    raise AssertionError(
                        f"event #{i + 1} ({g_event.event_type}) has metadata "
                        f"{g_event.metadata}, expected it to include {w_meta}\n{self._context()}"
                    )
        else:
            raise AssertionError(
                f"the events differ from event #{mismatch + 1} on\n{self._context()}\n"
                f"expected:\n{_listing(want)}\nactual:\n{_listing(got)}"
            )
        self._check_evolution(recorded)
        return self

    def then_error(
        self,
        error_type: type[BaseException],
        match: str | None = None,
    ) -> BaseException:
        """Assert the command raised ``error_type`` (or a subclass), whose message matches the
        regular expression ``match`` if given (``re.search``, as in ``pytest.raises``).
        Returns the error, for checks on its attributes."""
        if self.error is None:
            got = [_show(e.event_type, e.data) for e in self.events or []]
            raise AssertionError(
                f"expected {error_type.__name__}, but the command succeeded "
                f"with:\n{_listing(got)}\n{self._context()}"
            )
        if not isinstance(self.error, error_type):
            raise AssertionError(
                f"expected {error_type.__name__}, but the command raised "
                f"{type(self.error).__name__}: {self.error}\n{self._context()}"
            ) from self.error
        if match is not None and not re.search(match, str(self.error)):
            raise AssertionError(
                f"{type(self.error).__name__} was raised, but its message {str(self.error)!r} "
                f"does not match {match!r}\n{self._context()}"
            ) from self.error
        return self.error

    def then_state(self, expected: Any) -> Outcome:
        """Assert the state after the history and the new events equals ``expected``."""
        state = self._check_evolution(self._recorded("expected a new state"))
        if state != expected:
            raise AssertionError(
                f"the state after the command differs\n{self._context()}\n"
                f"expected state:\n    {expected!r}\nactual state:\n"
                f"    {state!r}"
            )
        return self

    def _check_evolution(self, recorded: list[RecordedEvent]) -> Any:
        """Fold the new events into the state (an applier failing on them fails the test) and,
        for an aggregate that takes snapshots, check the state survives one. Once: appliers may
        change the state in place, so folding twice would apply the events twice."""
        if self._after is not _UNSET:
            return self._after
        aggregate = self.scenario.aggregate
        state = self.state_before
        for event in recorded:
            try:
                state = apply_event(aggregate, state, event)
            except Exception as exc:
                raise AssertionError(
                    f"apply() failed on produced event {_show(event.event_type, event.data)}: "
                    f"{type(exc).__name__}: {exc}\n{self._context()}"
                ) from exc
        if aggregate.snapshot_every is not None:
            _check_snapshot(aggregate, state)
        self._after = state
        return state


def _check_snapshot(aggregate: Aggregate, state: Any) -> None:
    """to_snapshot must give JSON, and from_snapshot must read it back to a state that
    snapshots the same: otherwise every snapshot would fail (logged, not raised) in production."""
    name = type(aggregate).__name__
    try:
        stored = encode_json(aggregate.to_snapshot(state), f"the snapshot of {name}")
        again = encode_json(
            aggregate.to_snapshot(aggregate.from_snapshot(loads(stored))),
            f"the snapshot of {name} after a round trip",
        )
    except Exception as exc:
        raise AssertionError(
            f"{name} takes snapshots (snapshot_every="
            f"{aggregate.snapshot_every}), but its state cannot be snapshotted: "
            f"{exc}"
        ) from exc
    if again != stored:
        raise AssertionError(
            f"{name}'s state changes in a snapshot round trip (to_snapshot -> JSON -> "
            f"from_snapshot -> to_snapshot):\n    before: {stored}\n    after:  {again}"
        )


__all__ = ["RECORDED_AT", "EventLike", "Outcome", "Scenario", "given"]
