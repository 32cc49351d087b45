"""Upcasters: reading old event shapes as today's, without rewriting history.

Events are immutable once recorded, but the code that reads them changes. Each event carries the
``schema_version`` of its ``data`` (a column next to it). An upcaster turns the data of one
``(event_type, schema_version)`` into the data of ``schema_version + 1``; upcasters for
consecutive versions chain, so an event written at version 1 is read at the current version
however many steps lie between. The store applies them on *every* read path - ``read_stream``,
``read_all``, the events ``append`` returns - and snapshot upcasters on ``load_snapshot``, so no
handler ever sees an old shape.

An upcaster may also rename the event type (``rename_to``); the chain then continues at
``(rename_to, from_version + 1)``, and new events of the new type are written at that version
(see ``current_version``), so the shapes of old and new events line up.

    upcasters = Upcasters()

    @upcasters.upcaster("OrderPlaced", from_version=1)
    def _split_name(data):
        first, _, last = data.pop("name").partition(" ")
        return {**data, "first_name": first, "last_name": last}

    store = open_event_store(url, upcasters=upcasters)

Register upcasters before the store is used from several threads; reads only look them up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from tideflow.events.errors import InvalidUpcasterError, UpcastingError
from tideflow.events.model import RecordedEvent, Snapshot, check_name

UpcastFn = Callable[[dict[str, Any]], dict[str, Any]]
"""Takes the data (or snapshot state) of one schema version, returns that of the next. It may
change the dict it is given: every read decodes a fresh one."""

F = TypeVar("F", bound=UpcastFn)


@dataclass(frozen=True, slots=True)
class _Step:
    fn: UpcastFn
    rename_to: str | None


class _Chain:
    """Upcasters of one kind (events or snapshots), keyed by (type, from_version)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.steps: dict[tuple[str, int], _Step] = {}
        self.current: dict[str, int] = {}

    def add(self, type_name: str, from_version: int, fn: UpcastFn, rename_to: str | None) -> None:
        check_name(type_name, f"{self.kind} type", InvalidUpcasterError)
        if rename_to is not None:
            check_name(rename_to, "rename_to", InvalidUpcasterError)
        if type(from_version) is not int or from_version < 1:
            raise InvalidUpcasterError(
                f"from_version of the {self.kind} upcaster for "
                f"{type_name!r} must be an int >= 1, got {from_version!r}"
            )
        if not callable(fn):
            raise InvalidUpcasterError(
                f"the {self.kind} upcaster for {type_name!r} version "
                f"{from_version} must be callable, got {fn!r}"
            )
        key = (type_name, from_version)
        if key in self.steps:
            raise UpcastingError(
                f"an upcaster for {self.kind} {type_name!r} from schema version {from_version} is "
                "already registered; each version has one upcaster - fold both changes into it"
            )
        self.steps[key] = _Step(fn, rename_to)
        target = rename_to or type_name
        self.current[target] = max(self.current.get(target, 1), from_version + 1)

    def version_of(self, type_name: str) -> int:
        return self.current.get(type_name, 1)

    def apply(
        self, type_name: str, version: int, data: dict[str, Any], where: Callable[[], str]
    ) -> tuple[str, int, dict[str, Any]]:
        """Run the chain from (type_name, version); ``where()`` names the item in errors (a
        function, so that the hot read path formats nothing unless something fails)."""
        step = self.steps.get((type_name, version))
        while step is not None:
            try:
                data = step.fn(data)
            except Exception as exc:
                raise UpcastingError(
                    f"the upcaster of {self.kind} {type_name!r} from schema version {version} "
                    f"failed on {where()}: {exc!r}; fix the upcaster (the stored event is "
                    "unchanged)"
                ) from exc
            if not isinstance(data, dict):
                raise UpcastingError(
                    f"the upcaster of {self.kind} {type_name!r} from schema version {version} "
                    f"returned {type(data).__name__} on {where()}; it must return a dict"
                )
            type_name = step.rename_to or type_name
            version += 1
            step = self.steps.get((type_name, version))
        if version < self.current.get(type_name, 1):
            raise UpcastingError(
                f"{where()} is {self.kind} {type_name!r} at schema version {version}, but no "
                f"upcaster from version {version} is registered (the current version is "
                f"{self.current[type_name]}); register one for ({type_name!r}, {version})"
            )
        return type_name, version, data


class Upcasters:
    """The registry of event and snapshot upcasters one store applies on reads."""

    def __init__(self) -> None:
        self._events = _Chain("event")
        self._snapshots = _Chain("snapshot")

    def register(
        self, event_type: str, from_version: int, fn: UpcastFn, *, rename_to: str | None = None
    ) -> None:
        """Upcast the data of ``event_type`` events at ``from_version`` to ``from_version + 1``
        (renaming the type to ``rename_to`` if given). ``UpcastingError`` if one is already
        registered for that (type, version)."""
        self._events.add(event_type, from_version, fn, rename_to)

    def upcaster(
        self, event_type: str, from_version: int, *, rename_to: str | None = None
    ) -> Callable[[F], F]:
        """Decorator form of ``register``."""

        def decorate(fn: F) -> F:
            self.register(event_type, from_version, fn, rename_to=rename_to)
            return fn

        return decorate

    def register_snapshot(self, snapshot_type: str, from_version: int, fn: UpcastFn) -> None:
        """Upcast snapshot states of ``snapshot_type`` from ``from_version`` to the next one."""
        self._snapshots.add(snapshot_type, from_version, fn, None)

    def current_version(self, event_type: str) -> int:
        """The schema version new ``event_type`` events are written at: one past the highest
        registered upcaster into this type, else 1."""
        return self._events.version_of(event_type)

    def current_snapshot_version(self, snapshot_type: str) -> int:
        """The schema version new ``snapshot_type`` snapshots are saved at."""
        return self._snapshots.version_of(snapshot_type)

    def upcast_data(
        self, event_type: str, schema_version: int, data: dict[str, Any], where: str
    ) -> tuple[str, int, dict[str, Any]]:
        """(type, schema version, data) of an event as readers see it; ``where`` names the
        event in errors. The store runs this on appended events *before* writing them, so an
        event no reader could read (a gap in the chain) is refused rather than recorded."""
        if not self._events.steps:
            return event_type, schema_version, data
        return self._events.apply(event_type, schema_version, data, lambda: where)

    def upcast_all(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        """``upcast`` over a page of events; the page itself when no upcaster is registered (the
        common case, kept free of per-event calls because ``read_all`` is a hot loop)."""
        if not self._events.steps:
            return events
        return [self.upcast(e) for e in events]

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        """``event`` at the current schema version of its (possibly renamed) type."""
        if not self._events.steps:
            return event
        event_type, version, data = self._events.apply(
            event.event_type,
            event.schema_version,
            event.data,
            lambda: f"event at position {event.position} (stream {event.stream_id!r})",
        )
        if version == event.schema_version:
            return event
        return replace(event, event_type=event_type, schema_version=version, data=data)

    def upcast_snapshot(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` with its state at the current schema version of its type."""
        _, version, state = self._snapshots.apply(
            snapshot.snapshot_type,
            snapshot.schema_version,
            snapshot.state,
            lambda: f"the snapshot of stream {snapshot.stream_id!r}",
        )
        if version == snapshot.schema_version:
            return snapshot
        return replace(snapshot, schema_version=version, state=state)
