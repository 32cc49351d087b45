"""Flows run end to end by a real worker (asyncio loop, thread pool), on both backends."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from tests.flows.flows_for_tests import (
    ALL_FLOWS,
    BadOutput,
    Chain,
    Diamond,
    FanFail,
    Fatal,
    Flaky,
    MapFlow,
    RootMap,
    Sleeper,
    Slow,
)
from tests.polling import wait_until
from tideflow import (
    App,
    FlowNotFoundError,
    InputNotSerializableError,
    RunTimeoutError,
)

FAST = {"poll_interval": 0.02, "reap_interval": 0.2}


@pytest.fixture
def flows_app(app: App) -> App:
    for flow in ALL_FLOWS:
        app.register(flow)
    return app


def drain(app: App, **options: object) -> None:
    app.run_worker(until_idle=True, **{**FAST, **options})


def test_chain_diamond_and_map_complete(flows_app: App) -> None:
    a = flows_app.start_flow(Chain, {"n": 1})
    b = flows_app.start_flow("diamond", "x")
    c = flows_app.start_flow(MapFlow, [1, 2, 3])
    d = flows_app.start_flow(RootMap, [5, 6])
    drain(flows_app)
    assert flows_app.get_run(a).output == {"third": {"value": 20, "run_input": {"n": 1}}}
    assert flows_app.get_run(b).output == {"join": "LxRx"}
    assert flows_app.get_run(c).output == {"total": 14}
    assert flows_app.get_run(d).output == {"double": [{"i": 0, "v": 10}, {"i": 1, "v": 12}]}
    run = flows_app.get_run(c)
    assert run.step("square").output == [1, 4, 9]
    assert all(s.started_at and s.finished_at for s in run.steps)


def test_retries_until_success(flows_app: App, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    run_id = flows_app.start_flow(Flaky, {"counter": str(counter), "fail_times": 2})
    drain(flows_app)
    run = flows_app.get_run(run_id)
    assert run.status == "completed" and run.output == {"flaky": 3}
    assert run.step("flaky").attempts == 3
    assert counter.read_text() == "3"


def test_retries_exhausted_fail_the_run(flows_app: App, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    run_id = flows_app.start_flow(Flaky, {"counter": str(counter), "fail_times": 10})
    drain(flows_app)
    run = flows_app.get_run(run_id)
    assert run.status == "failed" and counter.read_text() == "3"
    assert "RuntimeError: transient failure #3" in (run.error or "")


def test_non_retryable_error_subclass_fails_at_once(flows_app: App) -> None:
    run_id = flows_app.start_flow(Fatal, {})
    drain(flows_app)
    run = flows_app.get_run(run_id)
    assert run.status == "failed" and run.step("charge").attempts == 1
    assert "Declined: card declined" in (run.error or "")


def test_timeout_cancels_the_step_and_retries_then_fails(flows_app: App) -> None:
    run_id = flows_app.start_flow(Slow, {"seconds": 5})
    started = time.monotonic()
    drain(flows_app)
    assert time.monotonic() - started < 4
    run = flows_app.get_run(run_id)
    assert run.status == "failed"
    assert "timed out after 0.2s" in (run.error or "")
    assert run.step("sleepy").attempts == 2


def test_sync_step_timeout(flows_app: App) -> None:
    run_id = flows_app.start_flow(Slow, {"seconds": 0, "sync_seconds": 1})
    drain(flows_app)
    run = flows_app.get_run(run_id)
    assert run.status == "failed" and "sync_sleepy" in (run.error or "")


def test_output_that_is_not_json_fails_without_retry(flows_app: App) -> None:
    run_id = flows_app.start_flow(BadOutput, None)
    drain(flows_app)
    run = flows_app.get_run(run_id)
    assert run.status == "failed" and run.step("make").attempts == 1
    assert "output of step 'make'" in (run.error or "") and "dict" in (run.error or "")


def test_failure_cancels_running_and_queued_siblings(flows_app: App) -> None:
    run_id = flows_app.start_flow(FanFail, ["a", "b", "boom", "c", "d"])
    drain(flows_app, concurrency=3)
    run = flows_app.get_run(run_id)
    assert run.status == "failed"
    statuses = [t.status for t in run.step("work").tasks]
    assert statuses[2] == "failed"
    assert "queued" not in statuses and "started" not in statuses
    assert "cancelled" in statuses
    assert run.step("after").status == "skipped"


def test_input_that_is_not_json_is_refused_and_nothing_written(flows_app: App) -> None:
    with pytest.raises(InputNotSerializableError, match="chain"):
        flows_app.start_flow(Chain, {"when": object()})
    with pytest.raises(InputNotSerializableError):
        flows_app.start_flow(Chain, {"nan": float("nan")})
    assert flows_app.list_runs() == []


def test_unknown_flow_is_refused_and_nothing_written(flows_app: App) -> None:
    with pytest.raises(FlowNotFoundError, match="nope"):
        flows_app.start_flow("nope", {})
    assert flows_app.list_runs() == []


def test_wait_for_run(flows_app: App) -> None:
    run_id = flows_app.start_flow(Chain, {"n": 2})
    with pytest.raises(RunTimeoutError, match=run_id):
        flows_app.wait_for_run(run_id, timeout=0.05)
    worker = flows_app.worker(**FAST)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    try:
        run = flows_app.wait_for_run(run_id, timeout=10)
    finally:
        worker.stop()
        thread.join()
    assert run.status == "completed" and run.output["third"]["value"] == 30


async def test_async_client(flows_app: App) -> None:
    client = flows_app.aio
    run_id = await client.start_flow("diamond", "y")
    await asyncio.to_thread(drain, flows_app)
    run = await client.wait_for_run(run_id, timeout=5)
    assert run.output == {"join": "LyRy"}
    assert [r.run_id for r in await client.list_runs(flow="diamond")] == [run_id]
    assert await client.cancel_run(run_id) is False


def test_graceful_shutdown_finishes_running_tasks(flows_app: App, tmp_path: Path) -> None:
    run_id = flows_app.start_flow(Sleeper, {"dir": str(tmp_path), "seconds": 0.5})
    worker = flows_app.worker(**FAST, shutdown_grace=10)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    wait_until(lambda: list(tmp_path.glob("started-*")), what="the step to start")
    worker.stop()
    thread.join(timeout=10)
    run = flows_app.get_run(run_id)
    assert run.status == "completed" and run.step("nap").attempts == 1


def test_shutdown_past_grace_releases_tasks_without_counting_attempts(
    flows_app: App, tmp_path: Path
) -> None:
    run_id = flows_app.start_flow(Sleeper, {"dir": str(tmp_path), "seconds": 3})
    worker = flows_app.worker(**FAST, shutdown_grace=0.1)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    wait_until(lambda: list(tmp_path.glob("started-*")), what="the step to start")
    worker.stop()
    thread.join(timeout=10)
    task = flows_app.get_run(run_id).step("nap").tasks[0]
    assert task.status == "queued" and task.attempts == 0


def test_list_runs_validates_filters(flows_app: App) -> None:
    with pytest.raises(ValueError, match="unknown run status"):
        flows_app.list_runs(status="done")


def test_diamond_registered_by_slug(flows_app: App) -> None:
    assert flows_app.registry.get("diamond") is Diamond


def test_in_flight_run_finishes_on_its_version_after_the_shape_changes(app: App) -> None:
    from tideflow import Flow, step

    class ShipV1(Flow, slug="ship"):
        @step()
        def pack(self, input):
            return "box"

        @step(depends_on=["pack"])
        def send(self, pack):
            return f"sent {pack}"

    class ShipV2(Flow, slug="ship"):
        @step()
        def pack(self, input):
            return "box"

        @step(depends_on=["pack"])
        def send(self, pack):
            return f"sent {pack}"

        @step(depends_on=["pack"])
        def notify(self, pack):
            return "mailed"

    old = app.start_flow(ShipV1, {})  # started by code that still had the old shape
    app.register(ShipV2)  # the worker runs the new code
    new = app.start_flow("ship", {})
    drain(app)
    old_run, new_run = app.get_run(old), app.get_run(new)
    assert old_run.flow_version == ShipV1.definition.version
    assert old_run.status == "completed" and old_run.output == {"send": "sent box"}
    assert new_run.output == {"send": "sent box", "notify": "mailed"}


def test_step_removed_from_the_code_fails_the_old_run_clearly(app: App) -> None:
    from tideflow import Flow, step

    class Old(Flow, slug="shrinking"):
        @step()
        def a(self, input):
            return 1

        @step(depends_on=["a"])
        def gone(self, a):
            return 2

    class New(Flow, slug="shrinking"):
        @step()
        def a(self, input):
            return 1

    run_id = app.start_flow(Old, {})
    app.register(New)
    drain(app)
    run = app.get_run(run_id)
    assert run.status == "failed"
    assert "'gone'" in (run.error or "") and "does not define it" in (run.error or "")
    assert run.step("gone").attempts == 1


def test_var_keyword_step_receives_the_dependencies_only(app: App) -> None:
    """``**deps`` gets the dependencies' outputs and nothing else: JSON data the step can
    encode or pass on (it used to get the context too, and json.dumps failed the run)."""
    import json

    from tideflow import Flow, step

    class Gather(Flow, slug="gather_var_kw"):
        @step()
        def a(self, input):
            return input + 1

        @step()
        def b(self, input):
            return input * 2

        @step(depends_on=["a", "b"])
        def joined(self, **deps):
            return json.dumps(deps, sort_keys=True)

        @step(depends_on=["joined"])
        def with_ctx(self, ctx, **deps):
            return {"deps": deps, "step": ctx.step_slug}

    app.register(Gather)
    run_id = app.start_flow(Gather, 3)
    drain(app)
    run = app.get_run(run_id)
    assert run.status == "completed", run.error
    assert run.output == {"with_ctx": {"deps": {"joined": '{"a": 4, "b": 6}'}, "step": "with_ctx"}}
