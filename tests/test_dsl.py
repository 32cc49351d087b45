"""Flow definitions are validated when the class statement runs."""

from __future__ import annotations

import pytest

from tideflow import (
    CycleError,
    DuplicateStepError,
    Flow,
    FlowDefinitionError,
    InvalidSlugError,
    MapSourceError,
    UnknownDependencyError,
    step,
)


def test_definition_orders_steps_topologically_and_finds_leaves() -> None:
    class Pipeline(Flow, slug="pipeline", max_attempts=5, base_delay=2, timeout=10):
        @step(depends_on=["fetch"])
        def parse(self, fetch): ...

        @step()
        def fetch(self, input): ...

        @step(depends_on=["parse"], map=True, max_attempts=1, timeout=3)
        def each(self, item): ...

        @step(depends_on=["parse", "fetch"])
        def summary(self, parse, fetch, ctx): ...

    d = Pipeline.definition
    assert [s.slug for s in d.steps] == ["fetch", "parse", "each", "summary"]
    assert set(d.leaves) == {"each", "summary"}
    assert d.step("each").kind == "map"
    assert d.step("each").retry.max_attempts == 1
    assert d.step("parse").retry.max_attempts == 5
    assert d.step("parse").retry.base_delay == 2.0
    assert d.step("each").timeout == 3 and d.step("fetch").timeout == 10
    assert d.step("summary").wants_ctx and not d.step("fetch").wants_ctx
    assert Pipeline.slug == "pipeline"


def test_default_slug_is_snake_case_class_name() -> None:
    class ImportCustomers(Flow):
        @step
        def only(self, input): ...

    assert ImportCustomers.slug == "import_customers"


def test_version_depends_on_shape_not_options() -> None:
    class A(Flow, slug="versioned"):
        @step(max_attempts=1)
        def one(self, input): ...

    class B(Flow, slug="versioned"):
        @step(max_attempts=9, timeout=5)
        def one(self, input): ...

    class C(Flow, slug="versioned"):
        @step()
        def one(self, input): ...

        @step(depends_on=["one"])
        def two(self, one): ...

    assert A.definition.version == B.definition.version
    assert C.definition.version != A.definition.version


def test_unknown_dependency_names_flow_and_step() -> None:
    with pytest.raises(UnknownDependencyError) as err:

        class Bad(Flow, slug="bad_dep"):
            @step(depends_on=["nope"])
            def a(self, nope): ...

    assert "bad_dep" in str(err.value) and "'a'" in str(err.value) and "nope" in str(err.value)
    assert err.value.flow == "bad_dep" and err.value.step == "a"


def test_cycle_is_refused_with_the_cycle_spelled_out() -> None:
    with pytest.raises(CycleError) as err:

        class Loop(Flow, slug="loop"):
            @step(depends_on=["c"])
            def a(self, c): ...

            @step(depends_on=["a"])
            def b(self, a): ...

            @step(depends_on=["b"])
            def c(self, b): ...

    assert "->" in str(err.value) and "loop" in str(err.value)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(CycleError):

        class Selfish(Flow, slug="selfish"):
            @step(depends_on=["a"])
            def a(self, a): ...


def test_duplicate_step_slug() -> None:
    with pytest.raises(DuplicateStepError) as err:

        class Dup(Flow, slug="dup"):
            @step(slug="same")
            def a(self, input): ...

            @step(slug="same")
            def b(self, input): ...

    assert "same" in str(err.value)


def test_map_with_two_sources() -> None:
    with pytest.raises(MapSourceError) as err:

        class TwoSources(Flow, slug="two_sources"):
            @step()
            def a(self, input): ...

            @step()
            def b(self, input): ...

            @step(depends_on=["a", "b"], map=True)
            def m(self, item): ...

    assert "'m'" in str(err.value)


@pytest.mark.parametrize("slug", ["Bad", "1abc", "with-dash", "", "x" * 129, "input", "run"])
def test_bad_flow_slugs(slug: str) -> None:
    with pytest.raises(InvalidSlugError):

        class X(Flow, slug=slug):
            @step()
            def a(self, input): ...


def test_bad_step_slug() -> None:
    with pytest.raises(InvalidSlugError) as err:

        class Y(Flow, slug="ok_flow"):
            @step(slug="Not-OK")
            def a(self, input): ...

    assert "ok_flow" in str(err.value)


def test_reserved_step_name() -> None:
    with pytest.raises(InvalidSlugError):

        class Z(Flow, slug="reserved_step"):
            @step()
            def input(self, input): ...


def test_no_steps() -> None:
    with pytest.raises(FlowDefinitionError, match="no steps"):

        class Empty(Flow, slug="empty"):
            pass


def test_dependent_step_signature_must_accept_dependency_outputs() -> None:
    with pytest.raises(FlowDefinitionError, match="parameter named a"):

        class Sig(Flow, slug="sig"):
            @step()
            def a(self, input): ...

            @step(depends_on=["a"])
            def b(self, something_else): ...


def test_bad_options() -> None:
    with pytest.raises(FlowDefinitionError, match="max_attempts"):

        class O1(Flow, slug="o1", max_attempts=0):
            @step()
            def a(self, input): ...

    with pytest.raises(FlowDefinitionError, match="timeout"):

        class O2(Flow, slug="o2"):
            @step(timeout=-1)
            def a(self, input): ...


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("HTTPFetch", "http_fetch"),
        ("OrderPipeline", "order_pipeline"),
        ("URLToPDF", "url_to_pdf"),
        ("ETL2Job", "etl2_job"),
        ("S3Upload", "s3_upload"),
        ("OAuth2Login", "o_auth2_login"),
        ("MyETL", "my_etl"),
    ],
)
def test_default_slug_keeps_acronyms_one_word(name: str, slug: str) -> None:
    flow = type(name, (Flow,), {"only": step(lambda self, input: input)})
    assert flow.slug == slug


def test_empty_step_slug_is_refused_not_replaced_by_the_method_name() -> None:
    with pytest.raises(InvalidSlugError, match="step slug '' is invalid"):

        class EmptySlug(Flow, slug="empty_step_slug"):
            @step(slug="")
            def only(self, input): ...


def test_empty_flow_slug_is_refused() -> None:
    with pytest.raises(InvalidSlugError, match="flow slug '' is invalid"):

        class EmptyFlowSlug(Flow, slug=""):
            @step
            def only(self, input): ...


def test_var_keyword_parameter_does_not_ask_for_the_context() -> None:
    class Deps(Flow, slug="var_kw_deps"):
        @step()
        def a(self, input): ...

        @step(depends_on=["a"])
        def b(self, **deps): ...

        @step(depends_on=["a", "b"])
        def c(self, ctx, **deps): ...

    assert not Deps.definition.step("b").wants_ctx
    assert Deps.definition.step("c").wants_ctx
