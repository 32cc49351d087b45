"""Jobs (issue 10 item 7): a function as a one-step task, enqueued now, later or once per key -
on both backends, through the same engine and tables as flows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import pytest

from tests.flows.driving import W, done
from tideflow import (
    App,
    FlowDefinitionError,
    InputNotSerializableError,
    InvalidDataError,
    JobKeyConflictError,
    SlugConflictError,
    StepContext,
    job,
)
from tideflow.client import InvalidArgumentError
from tideflow.clock import ManualClock
from tideflow.flows import Flow, step
from tideflow.storage.flow_contract import ClaimedTask, FlowStore


class Welcome(TypedDict):
    user: int


@job(max_attempts=4, base_delay=0, timeout=30)
def send_welcome(input: Welcome) -> dict[str, int]:
    return {"sent": input["user"]}


FLAKY_CALLS: list[int] = []


@job(max_attempts=3, base_delay=0)
def flaky(input: int, ctx: StepContext) -> dict[str, int]:
    FLAKY_CALLS.append(ctx.attempt)
    if ctx.attempt < 2:
        raise RuntimeError("first try fails")
    return {"value": input, "attempt": ctx.attempt}


@job(slug="async_square")
async def square(input: int) -> int:
    await asyncio.sleep(0)
    return input * input


def test_a_job_runs_as_a_one_step_run_listed_like_any_run(db_url: str) -> None:
    with App(db_url, jobs=[send_welcome, square]) as app:
        first = app.enqueue(send_welcome, {"user": 7})
        second = app.enqueue(square, 9)
        app.run_worker(until_idle=True, poll_interval=0.05)
        run = app.get_run(first)
        assert (run.status, run.flow_slug, run.output) == (
            "completed",
            "send_welcome",
            {"send_welcome": {"sent": 7}},
        )
        assert [s.step_slug for s in run.steps] == ["send_welcome"]
        assert app.get_run(second).output == {"async_square": 81}
        listed = {r.run_id: r.flow_slug for r in app.list_runs()}
        assert listed == {first: "send_welcome", second: "async_square"}
        assert {r.run_id for r in app.list_runs(flow="async_square")} == {second}


def test_a_job_is_retried_with_its_options_and_gets_its_context(db_url: str) -> None:
    FLAKY_CALLS.clear()
    with App(db_url, jobs=[flaky]) as app:
        run_id = app.enqueue(flaky, 5)
        app.run_worker(until_idle=True, poll_interval=0.05)
        run = app.get_run(run_id)
    assert run.status == "completed"
    assert run.output == {"flaky": {"value": 5, "attempt": 2}}
    assert FLAKY_CALLS == [1, 2]
    assert run.step("flaky").tasks[0].attempts == 2
    assert flaky.flow.definition.step("flaky").retry.max_attempts == 3


def test_a_delayed_job_is_claimable_from_its_time_on(clocked_app: App, clock: ManualClock) -> None:
    clocked_app.register_job(send_welcome)
    store = clocked_app.store

    def claim(store: FlowStore, slug: str) -> dict[str, ClaimedTask]:
        return {t.key.run_id: t for t in store.claim_tasks(W, [slug], 100, 30)}

    later = clocked_app.enqueue(send_welcome, {"user": 1}, delay=60)
    at = clocked_app.enqueue(send_welcome, {"user": 2}, at=clock.now() + timedelta(seconds=120))
    now = clocked_app.enqueue(send_welcome, {"user": 3}, delay=timedelta(0))
    past = clocked_app.enqueue(send_welcome, {"user": 4}, at=clock.now() - timedelta(days=1))
    assert set(claim(store, "send_welcome")) == {now, past}
    assert clocked_app.get_run(later).status == "started"  # the run exists; its task waits
    task = clocked_app.get_run(later).step("send_welcome").tasks[0]
    assert task.status == "queued" and task.visible_at == clock.now() + timedelta(seconds=60)
    clock.advance(59)
    assert claim(store, "send_welcome") == {}
    clock.advance(1)
    ready = claim(store, "send_welcome")
    assert list(ready) == [later]
    done(store, ready[later], {"sent": 1})
    clock.advance(60)
    assert list(claim(store, "send_welcome")) == [at]
    assert clocked_app.get_run(later).status == "completed"


def test_a_key_enqueues_once_and_refuses_other_input(db_url: str) -> None:
    with App(db_url, jobs=[send_welcome]) as app:
        first = app.enqueue(send_welcome, {"user": 1}, key="user-1")
        assert first == "send_welcome:user-1"
        assert app.enqueue(send_welcome, {"user": 1}, key="user-1", delay=30) == first
        with pytest.raises(JobKeyConflictError, match="user-1"):
            app.enqueue(send_welcome, {"user": 2}, key="user-1")
        assert [r.run_id for r in app.list_runs()] == [first]
        app.run_worker(until_idle=True, poll_interval=0.05)
        # A key names the work while its run is kept: done, it is still that run.
        assert app.enqueue(send_welcome, {"user": 1}, key="user-1") == first
        assert len(app.list_runs()) == 1
        assert app.enqueue(send_welcome, {"user": 2}, key="user-2") != first


async def test_the_async_client_enqueues(db_url: str) -> None:
    with App(db_url, jobs=[square]) as app:
        run_id = await app.aio.enqueue(square, 4, delay=0, key="four")
        assert run_id == "async_square:four"
        assert await app.aio.enqueue(square, 4, key="four") == run_id
        await asyncio.to_thread(app.run_worker, until_idle=True, poll_interval=0.05)
        assert (await app.aio.get_run(run_id)).output == {"async_square": 16}


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"delay": -1}, InvalidArgumentError, "delay must be"),
        ({"delay": float("nan")}, InvalidArgumentError, "delay must be"),
        ({"delay": True}, InvalidArgumentError, "delay must be"),
        ({"at": datetime(2030, 1, 1)}, InvalidArgumentError, "timezone-aware"),
        (
            {"delay": 1, "at": datetime(2030, 1, 1, tzinfo=UTC)},
            InvalidArgumentError,
            "not both",
        ),
        ({"key": ""}, InvalidArgumentError, "key must be"),
        ({"key": "x" * 300}, InvalidDataError, "run_id"),
    ],
)
def test_bad_enqueue_arguments_are_refused_and_write_nothing(
    db_url: str, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with App(db_url, jobs=[send_welcome]) as app:
        with pytest.raises(error, match=match):
            app.enqueue(send_welcome, {"user": 1}, **options)
        with pytest.raises(InputNotSerializableError, match="input of job 'send_welcome'"):
            app.enqueue(send_welcome, {"user": float("nan")})  # type: ignore[typeddict-item]
        with pytest.raises(InvalidArgumentError, match="takes a job"):
            app.enqueue("send_welcome", {"user": 1})  # type: ignore[arg-type]
        assert app.list_runs() == []


def test_bad_job_functions_are_refused_when_decorated() -> None:
    with pytest.raises(FlowDefinitionError, match="takes one parameter"):

        @job
        def no_input() -> None: ...

    with pytest.raises(FlowDefinitionError, match="other"):

        @job
        def two_inputs(a: int, other: int) -> None: ...

    with pytest.raises(FlowDefinitionError, match="max_attempts"):

        @job(max_attempts=0)
        def never(input: int) -> None: ...

    with pytest.raises(FlowDefinitionError, match="slug"):

        @job(slug="Bad Slug")
        def badly_named(input: int) -> None: ...

    with pytest.raises(FlowDefinitionError, match="a function"):
        job(int)

    with pytest.raises(FlowDefinitionError, match=r"@job\(slug='send_email'\)"):
        job("send_email")  # type: ignore[call-overload]

    @job
    def with_defaults(input: int, scale: int = 2, *, ctx: StepContext | None = None) -> int:
        return input * scale

    assert with_defaults(3) == 6  # still callable as plain code
    assert with_defaults.wants_ctx


def test_a_job_and_a_flow_cannot_share_a_slug() -> None:
    class Mailer(Flow, slug="send_welcome"):
        @step()
        def go(self, input: Any) -> Any:
            return input

    with pytest.raises(SlugConflictError, match="send_welcome"):
        App("sqlite:///:memory:", flows=[Mailer], jobs=[send_welcome])
