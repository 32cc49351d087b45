"""Conditional steps and skips (pgflow 0.14's if / ifNot / whenUnmet / whenFailed), through the
flow store on SQLite, PostgreSQL and PostgreSQL without fast paths, with a manual clock.

A step runs only when its input - the run input for a root step, ``{dependency: output}`` of its
completed dependencies for a dependent one - contains ``if_`` and does not contain ``if_not``
(JSON containment, PostgreSQL's ``@>``, checked in Python for both backends: the last test
holds it to PostgreSQL's own operator). Unmet: skip it, skip it with every step after it, or fail
the run. A task that fails for good can skip its step the same way (``when_failed``).
"""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.conftest import FLOW_BACKENDS
from tests.flows.driving import W, claim, done, fail
from tideflow import Flow, FlowDefinitionError, MapInputError, step
from tideflow.clock import ManualClock
from tideflow.flows.conditions import contains
from tideflow.storage.flow_contract import FlowStore, TaskCompletion


@pytest.fixture(params=FLOW_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def statuses(store: FlowStore, run_id: str = "r1") -> dict[str, tuple[str, str | None]]:
    return {s.step_slug: (s.status, s.skip_reason) for s in store.get_run(run_id).steps}


class Roots(Flow, slug="cond_roots"):
    @step(if_={"premium": True})
    def gift(self, input):
        return "gift"

    @step(if_not={"country": "XX"})
    def ship(self, input):
        return "shipped"

    @step(depends_on=["gift", "ship"])
    def summary(self, gift=None, ship=None): ...


def test_a_root_step_runs_only_when_the_run_input_contains_its_pattern(store: FlowStore) -> None:
    store.start_run(Roots.definition, "r1", json.dumps({"premium": True, "country": "FR"}))
    assert set(claim(store, "cond_roots")) == {("gift", 0), ("ship", 0)}

    store.start_run(Roots.definition, "r2", json.dumps({"premium": False, "country": "FR"}))
    tasks = claim(store, "cond_roots")
    assert set(tasks) == {("ship", 0)}
    assert statuses(store, "r2")["gift"] == ("skipped", "condition_unmet")
    done(store, tasks[("ship", 0)], "shipped")
    # The dependent gets the outputs of its completed dependencies only: no "gift" key.
    (summary,) = claim(store, "cond_roots").values()
    assert json.loads(summary.input_json) == {"ship": "shipped"}
    done(store, summary, "ok")
    assert store.get_run("r2").output == {"summary": "ok"}


class Cascade(Flow, slug="cond_cascade"):
    @step(if_={"go": True}, when_unmet="skip_cascade")
    def a(self, input): ...

    @step(depends_on=["a"])
    def b(self, a): ...

    @step(depends_on=["b"], map=True)
    def c(self, item): ...

    @step()
    def d(self, input): ...


def test_skip_cascade_skips_every_step_after_it_and_the_run_completes(store: FlowStore) -> None:
    store.start_run(Cascade.definition, "r1", json.dumps({"go": False}))
    assert statuses(store) == {
        "a": ("skipped", "condition_unmet"),
        "d": ("started", None),
        "b": ("skipped", "dependency_skipped"),
        "c": ("skipped", "dependency_skipped"),
    }
    done(store, claim(store, "cond_cascade")[("d", 0)], "d")
    run = store.get_run("r1")
    assert run.status == "completed" and run.output == {"d": "d"}  # skipped leaf c left out


class Unmet(Flow, slug="cond_fail"):
    @step()
    def check(self, input):
        return input

    @step(depends_on=["check"], if_={"check": {"ok": True}}, when_unmet="fail")
    def charge(self, check): ...


def test_when_unmet_fail_fails_the_run_naming_the_condition(store: FlowStore) -> None:
    store.start_run(Unmet.definition, "r1", "null")
    done(store, claim(store, "cond_fail")[("check", 0)], {"ok": False})
    run = store.get_run("r1")
    assert run.status == "failed"
    assert run.error == (
        "step 'charge' has an unmet condition (its dependencies' outputs must contain "
        '{"check": {"ok": true}}) and when_unmet=\'fail\''
    )
    assert run.step("charge").status == "failed"


class Branches(Flow, slug="cond_branches"):
    @step()
    def check(self, input):
        return input

    @step(depends_on=["check"], if_={"check": {"ok": True}})
    def on_ok(self, check): ...

    @step(depends_on=["check"], if_not={"check": {"ok": True}})
    def on_error(self, check): ...

    @step(depends_on=["on_ok"], map=True)
    def each(self, item): ...

    @step(depends_on=["each", "on_error"])
    def report(self, each, on_error=None): ...


def test_dependent_conditions_route_a_run_and_a_map_over_a_skipped_step_is_empty(
    store: FlowStore,
) -> None:
    store.start_run(Branches.definition, "r1", "null")
    done(store, claim(store, "cond_branches")[("check", 0)], {"ok": False, "tries": 3})
    (on_error,) = claim(store, "cond_branches").values()
    assert on_error.key.step_slug == "on_error"
    assert json.loads(on_error.input_json) == {"check": {"ok": False, "tries": 3}}
    assert statuses(store)["on_ok"] == ("skipped", "condition_unmet")
    # each maps over a skipped step: nothing to map, it completes with [] (as in pgflow)
    assert store.get_run("r1").step("each").status == "completed"
    assert store.get_run("r1").step("each").output == []
    done(store, on_error, "alerted")
    (report,) = claim(store, "cond_branches").values()
    assert json.loads(report.input_json) == {"each": [], "on_error": "alerted"}


class Optional(Flow, slug="cond_failed", max_attempts=1):
    @step()
    def root(self, input):
        return input

    @step(depends_on=["root"], when_failed="skip")
    def enrich(self, root): ...

    @step(depends_on=["root"], map=True, when_failed="skip_cascade")
    def fan(self, item): ...

    @step(depends_on=["fan"])
    def after_fan(self, fan): ...

    @step(depends_on=["root", "enrich"])
    def final(self, root, enrich=None): ...


def test_when_failed_skips_instead_of_failing_the_run(store: FlowStore) -> None:
    store.start_run(Optional.definition, "r1", "null")
    done(store, claim(store, "cond_failed")[("root", 0)], [1, 2, 3])
    tasks = claim(store, "cond_failed")
    assert set(tasks) == {("enrich", 0), ("fan", 0), ("fan", 1), ("fan", 2)}
    done(store, tasks[("fan", 0)], 1)
    fail(store, tasks[("fan", 1)])  # skip_cascade: the other elements are cancelled
    fail(store, tasks[("enrich", 0)])  # skip: final runs without it
    run = store.get_run("r1")
    assert run.status == "started"
    assert statuses(store)["fan"] == ("skipped", "handler_failed")
    assert statuses(store)["after_fan"] == ("skipped", "dependency_skipped")
    assert statuses(store)["enrich"] == ("skipped", "handler_failed")
    assert "boom" in (run.step("enrich").error or "")
    assert [t.status for t in run.step("fan").tasks] == ["completed", "failed", "cancelled"]
    done(store, tasks[("fan", 2)], 3)  # a late answer of a cancelled task changes nothing
    (final,) = claim(store, "cond_failed").values()
    assert json.loads(final.input_json) == {"root": [1, 2, 3]}
    done(store, final, "done")
    run = store.get_run("r1")
    assert run.status == "completed" and run.output == {"final": "done"}


class Stalls(Flow, slug="cond_stalls", max_stalls=0):
    @step(when_failed="skip")
    def fragile(self, input): ...

    @step()
    def solid(self, input): ...


def test_a_task_out_of_stalls_skips_its_step_too(store: FlowStore, clock: ManualClock) -> None:
    store.start_run(Stalls.definition, "r1", "null")
    tasks = claim(store, "cond_stalls")
    done(store, tasks[("solid", 0)], "solid")
    clock.advance(31)  # fragile's lease expires: out of stalls at once (max_stalls=0)
    assert store.requeue_stalled() == 1
    run = store.get_run("r1")
    assert run.step("fragile").status == "skipped"
    assert run.step("fragile").skip_reason == "handler_failed"
    assert "stalled 1 time" in (run.step("fragile").error or "")
    assert run.status == "completed" and run.output == {"solid": "solid"}


def test_all_leaves_skipped_gives_an_empty_output(store: FlowStore) -> None:
    class AllSkipped(Flow, slug="cond_all_skipped"):
        @step(if_={"x": 1})
        def only(self, input): ...

    store.start_run(AllSkipped.definition, "r1", "{}")
    run = store.get_run("r1")
    assert run.status == "completed" and run.output == {}
    assert claim(store, "cond_all_skipped") == {}


def test_retry_keeps_steps_skipped_on_purpose(store: FlowStore) -> None:
    class Mixed(Flow, slug="cond_retry", max_attempts=1):
        @step(if_={"x": 1})
        def maybe(self, input): ...

        @step()
        def flaky(self, input): ...

    store.start_run(Mixed.definition, "r1", "{}")
    fail(store, claim(store, "cond_retry")[("flaky", 0)])
    assert store.get_run("r1").status == "failed"
    store.retry_run("r1")
    assert statuses(store)["maybe"] == ("skipped", "condition_unmet")
    done(store, claim(store, "cond_retry")[("flaky", 0)], "ok")
    assert store.get_run("r1").output == {"flaky": "ok"}


def test_completions_of_conditional_and_plain_runs_in_one_batch(store: FlowStore) -> None:
    """On PostgreSQL the fast path hands a conditional run's completions back to Python in the
    same transaction; each kind of run moves on as it should."""

    class Plain(Flow, slug="cond_plain"):
        @step()
        def a(self, input):
            return input

        @step(depends_on=["a"])
        def b(self, a): ...

    store.start_run(Plain.definition, "p1", "1")
    store.start_run(Roots.definition, "r1", json.dumps({"premium": True, "country": "XX"}))
    batch = [*claim(store, "cond_plain").values(), *claim(store, "cond_roots").values()]
    assert len(batch) == 2
    store.complete_tasks(W, [TaskCompletion(t.key, t.attempt, '"out"') for t in batch])
    assert set(claim(store, "cond_plain")) == {("b", 0)}
    (summary,) = claim(store, "cond_roots").values()
    assert json.loads(summary.input_json) == {"gift": "out"}


def test_a_root_map_whose_condition_is_unmet_takes_any_input(store: FlowStore) -> None:
    class MaybeMap(Flow, slug="cond_root_map"):
        @step(map=True, if_not={"skip": True})
        def each(self, item): ...

    store.start_run(MaybeMap.definition, "r1", json.dumps({"skip": True}))
    assert statuses(store) == {"each": ("skipped", "condition_unmet")}
    with pytest.raises(MapInputError):
        store.start_run(MaybeMap.definition, "r2", json.dumps({"skip": False}))


# --- the definition -------------------------------------------------------------------------------


def test_conditions_are_part_of_the_version_and_absent_ones_change_nothing() -> None:
    class A(Flow, slug="cond_version"):
        @step()
        def a(self, input): ...

    class B(Flow, slug="cond_version"):
        @step(if_={"x": 1})
        def a(self, input): ...

    class C(Flow, slug="cond_version"):
        @step(if_={"x": 1}, when_unmet="skip_cascade")
        def a(self, input): ...

    versions = {A.definition.version, B.definition.version, C.definition.version}
    assert len(versions) == 3
    assert A.definition.shape() == {
        "slug": "cond_version",
        "steps": [{"slug": "a", "depends_on": [], "kind": "single"}],
    }
    assert not A.definition.conditional and B.definition.conditional


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (
            {"when_unmet": "skip-cascade"},
            "when_unmet must be one of 'fail', 'skip', 'skip_cascade'",
        ),
        ({"when_failed": "ignore"}, "when_failed must be one of"),
        ({"when_unmet": "fail"}, "when_unmet applies to a condition"),
        ({"if_": {"when": object()}}, "if_ must be a JSON pattern"),
        ({"if_": [1]}, "must be an object keyed by dependency, e.g. {'root': ...}"),
        ({"if_not": {"rot": 1}}, "if_not names 'rot', which the step does not depend on"),
    ],
)
def test_conditions_that_cannot_mean_what_they_say_are_refused(
    options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(FlowDefinitionError) as err:

        class Bad(Flow, slug="cond_bad"):
            @step()
            def root(self, input): ...

            @step(depends_on=["root"], **options)  # type: ignore[arg-type]
            def dependent(self, root): ...

    assert fragment in str(err.value) and "'dependent'" in str(err.value)


def test_a_parameter_for_a_dependency_that_may_be_skipped_needs_a_default() -> None:
    with pytest.raises(FlowDefinitionError) as err:

        class NoDefault(Flow, slug="cond_no_default"):
            @step(when_failed="skip")
            def maybe(self, input): ...

            @step(depends_on=["maybe"])
            def after(self, maybe): ...

    assert "step 'after'" in str(err.value)
    assert "depends on step 'maybe', which may be skipped (when_failed=\"skip\")" in str(err.value)
    assert "give the parameter a default (maybe=None) or take **deps" in str(err.value)

    class Fine(Flow, slug="cond_defaults"):  # a default, **deps, a cascade, a map: all fine
        @step(if_={"x": 1})
        def maybe(self, input): ...

        @step(if_={"x": 1}, when_unmet="skip_cascade")
        def all_or_nothing(self, input): ...

        @step(depends_on=["maybe"])
        def with_default(self, maybe=None): ...

        @step(depends_on=["maybe"])
        def with_var_kw(self, **deps): ...

        @step(depends_on=["all_or_nothing"])
        def cascaded(self, all_or_nothing): ...

        @step(depends_on=["maybe"], map=True)
        def each(self, item): ...

    assert Fine.definition.conditional


# --- containment: the same answers as PostgreSQL's @> ---------------------------------------------

CASES = [
    ({"a": 1, "b": 2}, {"a": 1}),
    ({"a": 1}, {"a": 1, "b": 2}),
    ({"a": {"b": [1, 2, 3], "c": "x"}}, {"a": {"b": [3, 1]}}),
    ({"a": {"b": [1, 2, 3]}}, {"a": {"b": 3}}),
    ({"a": [{"x": 1, "y": 2}, {"x": 3}]}, {"a": [{"x": 3}]}),
    (["a", "b"], "a"),
    (["a", "b"], ["a"]),
    ("a", ["a"]),
    ([1, [2]], [[2]]),
    ([1, [2]], [2]),
    ([[1, 2]], [1]),
    (1, 1.0),
    ({"n": 1.5}, {"n": 1.50}),
    (True, 1),
    ({"ok": True}, {"ok": 1}),
    (0, False),
    (None, None),
    ([None], None),
    ({"a": None}, {"a": None}),
    ({"a": None}, {"b": None}),
    ({}, {}),
    ([], {}),
    ({}, []),
    ([], []),
    ([1, 1], [1, 1, 1]),
    ("x", "x"),
    ("x", "X"),
    ({"s": "1"}, {"s": 1}),
    ({"a": [[1, 2], [3]]}, {"a": [[3]]}),
    ({"a": [[1, 2], [3]]}, {"a": [3]}),
]


def test_containment_agrees_with_postgresql(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        for value, pattern in CASES:
            row = conn.execute(
                "SELECT %s::jsonb @> %s::jsonb", (json.dumps(value), json.dumps(pattern))
            ).fetchone()
            assert row is not None
            assert contains(value, pattern) is row[0], (value, pattern)
