"""Flows used by the flow tests (importable by worker subprocesses too)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tideflow import Flow, NonRetryableError, StepContext, step


class Chain(Flow, slug="chain"):
    @step()
    def first(self, input):
        return input["n"] + 1

    @step(depends_on=["first"])
    def second(self, first):
        return first * 10

    @step(depends_on=["second"])
    async def third(self, second, ctx: StepContext):
        return {"value": second, "run_input": ctx.run_input}


class Diamond(Flow, slug="diamond"):
    @step()
    def root(self, input):
        return input

    @step(depends_on=["root"])
    def left(self, root):
        return f"L{root}"

    @step(depends_on=["root"])
    def right(self, root):
        return f"R{root}"

    @step(depends_on=["left", "right"])
    def join(self, left, right):
        return left + right


class MapFlow(Flow, slug="map_flow"):
    @step()
    def numbers(self, input):
        return input

    @step(depends_on=["numbers"], map=True)
    def square(self, item):
        return item * item

    @step(depends_on=["square"])
    def total(self, square):
        return sum(square)


class RootMap(Flow, slug="root_map"):
    @step(map=True)
    async def double(self, item, ctx: StepContext):
        await asyncio.sleep(0)
        return {"i": ctx.task_index, "v": item * 2}


class Flaky(Flow, slug="flaky", max_attempts=3, base_delay=0.01, max_delay=0.02):
    """Fails until the input's counter file says it has been called `fail_times` times."""

    @step()
    def flaky(self, input):
        path = Path(input["counter"])
        calls = int(path.read_text()) if path.exists() else 0
        path.write_text(str(calls + 1))
        if calls < input["fail_times"]:
            raise RuntimeError(f"transient failure #{calls + 1}")
        return calls + 1


class Declined(NonRetryableError):
    pass


class Fatal(Flow, slug="fatal", max_attempts=5):
    @step()
    def charge(self, input):
        raise Declined("card declined")


class Slow(Flow, slug="slow"):
    @step(timeout=0.2, max_attempts=2, base_delay=0.01)
    async def sleepy(self, input):
        await asyncio.sleep(input.get("seconds", 5))
        return "woke"

    @step(timeout=0.2, max_attempts=1)
    def sync_sleepy(self, input):
        time.sleep(input.get("sync_seconds", 0))
        return "ok"


class BadOutput(Flow, slug="bad_output", max_attempts=3):
    @step()
    def make(self, input):
        return {"when": object()}


class Sleeper(Flow, slug="sleeper", max_attempts=3, base_delay=0.01):
    """Sleeps, then records each execution in a file: used to kill workers mid-task."""

    @step()
    def nap(self, input):
        marker = Path(input["dir"]) / f"started-{os.getpid()}-{time.monotonic_ns()}"
        marker.write_text("x")
        time.sleep(input["seconds"])
        done = Path(input["dir"]) / f"done-{os.getpid()}-{time.monotonic_ns()}"
        done.write_text("x")
        return os.getpid()


class OneShotSleeper(Sleeper, slug="one_shot_sleeper", max_attempts=1):
    """Sleeper without retries: a worker killed under it must not fail the run (a stall is not
    an attempt)."""


class FanFail(Flow, slug="fan_fail", max_attempts=1):
    """A map whose element 'boom' fails while its siblings are slow: the failure must cancel
    the siblings."""

    @step(map=True)
    async def work(self, item):
        if item == "boom":
            raise ValueError("boom")
        await asyncio.sleep(0.3)
        return item

    @step(depends_on=["work"])
    def after(self, work):
        return work


ALL_FLOWS = [
    Chain,
    Diamond,
    MapFlow,
    RootMap,
    Flaky,
    Fatal,
    Slow,
    BadOutput,
    Sleeper,
    OneShotSleeper,
    FanFail,
]


class Recorder(Flow, slug="recorder", max_attempts=2):
    """Each execution leaves a marker file named after task index, attempt and process."""

    @step(map=True)
    def record(self, item, ctx: StepContext):
        time.sleep(0.01)
        name = f"exec-{ctx.task_index}-{ctx.attempt}-{os.getpid()}-{ctx.run_id}"
        (Path(item["dir"]) / name).write_text("x")
        return ctx.task_index


ALL_FLOWS.append(Recorder)


class Crowd(Flow, slug="crowd", max_attempts=1):
    """Many slow ``async def`` tasks at once: marks each start and each end in a file."""

    @step(map=True)
    async def wait(self, item, ctx: StepContext):
        mark(item, "begun", ctx)
        await asyncio.sleep(item["seconds"])
        mark(item, "end", ctx)
        return ctx.task_index


class CrowdSync(Flow, slug="crowd_sync", max_attempts=1):
    """Crowd with a plain ``def`` step: its tasks run in the worker's threads."""

    @step(map=True)
    def wait(self, item, ctx: StepContext):
        mark(item, "begun", ctx)
        time.sleep(item["seconds"])
        mark(item, "end", ctx)
        return ctx.task_index


def mark(item, what, ctx: StepContext) -> None:
    name = f"{what}-{ctx.flow_slug}-{ctx.task_index}-{ctx.attempt}-{os.getpid()}"
    (Path(item["dir"]) / name).write_text("x")


ALL_FLOWS += [Crowd, CrowdSync]
