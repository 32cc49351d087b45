"""A process manager driven by its events' data, for the timer tests (and their worker process).

Each ``Did`` event (command ``Do`` on aggregate ``ctl``) names its instance (``process``) and
lists what the instance does about it: schedule or cancel a timer, finish, or send a command that
is refused (its compensation is refused too, so the instance fails). A timer's event is noted
on stream ``ctl-note-<process>`` and in the instance's state (``fired``), so a test can count how
often each timer fired and whether the instance reacted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tideflow import App
from tideflow.clock import Clock
from tideflow.events import Aggregate, Command, DomainError, RecordedEvent, handles
from tideflow.sagas import Action, CancelTimer, ProcessManager, ScheduleTimer

Data = dict[str, Any]


class Refused(DomainError):
    pass


class Ctl(Aggregate):
    @handles("Do")
    def do(self, state: Any, command: Command) -> tuple[str, Data]:
        return ("Did", dict(command.payload))

    @handles("Note")
    def note(self, state: Any, command: Command) -> tuple[str, Data]:
        return ("Noted", dict(command.payload))

    @handles("Refuse")
    def refuse(self, state: Any, command: Command) -> tuple[str, Data]:
        raise Refused(f"{command.aggregate_id} refuses")


def _name(text: str) -> str:
    return text.replace("<NUL>", "\x00")  # events cannot carry one; a test's timer name can


def _action(spec: Data, process: str) -> Action:
    if "cancel" in spec:
        return CancelTimer(_name(spec["cancel"]))
    if "refuse" in spec:
        return Command("Refuse", f"refuse-{process}")
    at = spec.get("at")
    return ScheduleTimer(
        _name(spec["schedule"]),
        after=spec.get("after"),
        at=None if at is None else datetime.fromisoformat(at),
        event_type=spec.get("event_type", "TimerElapsed"),
        data=spec.get("data", {}),
    )


class Timed(ProcessManager):
    name = "timed"
    event_types = ["Did", "TimerElapsed", "Late"]
    starts_with = ["Did"]
    max_attempts = 1  # a bad action stops the manager at once

    def process_id(self, event: RecordedEvent) -> str | None:
        process = event.data.get("process")
        return None if process is None else str(process)

    def initial_state(self, process_id: str) -> Data:
        return {"process": process_id, "fired": [], "done": False}

    def react(self, state: Data, event: RecordedEvent) -> list[Action]:
        if event.event_type == "Did":
            return [_action(spec, state["process"]) for spec in event.data.get("do", [])]
        return [Command("Note", f"note-{state['process']}", {"timer": event.data["timer"]})]

    def apply(self, state: Data, event: RecordedEvent) -> Data:
        if event.event_type == "Did":
            return {**state, "done": state["done"] or bool(event.data.get("finish"))}
        return {**state, "fired": [*state["fired"], event.data["timer"]]}

    def compensate(self, state: Data, command: Command, error: Exception) -> list[Command]:
        return [Command("Refuse", f"undo-{state['process']}")]  # refused too: the instance fails

    def is_done(self, state: Data) -> bool:
        return bool(state["done"])


def timed_app(url: str, clock: Clock | None = None) -> App:
    return App(url, aggregates=[Ctl], handlers=[Timed], clock=clock)


def do(app: App, process: str, *actions: Data, finish: bool = False) -> None:
    payload: Data = {"process": process, "do": list(actions)}
    if finish:
        payload["finish"] = True
    app.dispatch(Command("Do", "ctl", payload))
