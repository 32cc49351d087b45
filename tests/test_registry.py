"""FlowRegistry: register by class or import path, get by class or slug, typed errors."""

from __future__ import annotations

import threading

import pytest

from tideflow import (
    Flow,
    FlowImportError,
    FlowNotFoundError,
    FlowRegistry,
    NotAFlowError,
    SlugConflictError,
    step,
)


class Alpha(Flow, slug="alpha"):
    @step()
    def a(self, input):
        return input


class Beta(Flow, slug="beta"):
    @step()
    def b(self, input):
        return input


NOT_A_FLOW = 42


def test_register_get_list_unregister() -> None:
    reg = FlowRegistry()
    assert reg.register(Alpha) is Alpha
    reg.register(Beta)
    assert reg.get(Alpha) is Alpha
    assert reg.get("beta") is Beta
    assert reg.list() == [Alpha, Beta]
    assert "alpha" in reg and Alpha in reg and len(reg) == 2
    reg.unregister(Alpha)
    reg.unregister(Alpha)  # idempotent
    reg.unregister("nope")
    assert reg.list() == [Beta]
    with pytest.raises(FlowNotFoundError, match="alpha"):
        reg.get("alpha")


def test_register_twice_is_a_no_op() -> None:
    reg = FlowRegistry([Alpha])
    reg.register(Alpha)
    assert reg.list() == [Alpha]


def test_register_by_import_path() -> None:
    reg = FlowRegistry()
    cls = reg.register("tests.test_registry:Alpha")
    assert cls is Alpha and reg.get("alpha") is Alpha


@pytest.mark.parametrize(
    "path",
    [
        "no_such_module_xyz:Flow",
        "tests.test_registry:Missing",
        "no-colon-here",
        "tests.test_registry:",
    ],
)
def test_import_path_that_cannot_be_loaded(path: str) -> None:
    with pytest.raises(FlowImportError) as err:
        FlowRegistry().register(path)
    assert path in str(err.value)


@pytest.mark.parametrize("obj", ["tests.test_registry:NOT_A_FLOW", int, Flow, object()])
def test_object_that_is_not_a_flow(obj: object) -> None:
    with pytest.raises(NotAFlowError, match="not a flow"):
        FlowRegistry().register(obj)  # type: ignore[arg-type]


def test_different_class_claiming_a_taken_slug_is_refused() -> None:
    class Impostor(Flow, slug="alpha"):
        @step()
        def x(self, input): ...

    reg = FlowRegistry([Alpha])
    with pytest.raises(SlugConflictError) as err:
        reg.register(Impostor)
    assert "alpha" in str(err.value) and "Impostor" in str(err.value)
    assert reg.get("alpha") is Alpha


def test_get_unregistered_class() -> None:
    with pytest.raises(FlowNotFoundError):
        FlowRegistry([Beta]).get(Alpha)


def test_concurrent_readers_and_writers() -> None:
    reg = FlowRegistry()
    classes = []
    for i in range(40):

        def method(self, input):
            return input

        cls = type(f"F{i}", (Flow,), {"go": step()(method)}, slug=f"f{i}")
        classes.append(cls)
    errors: list[BaseException] = []

    def write(chunk: list[type[Flow]]) -> None:
        for c in chunk:
            reg.register(c)

    def read() -> None:
        try:
            for _ in range(2000):
                for c in reg.list():
                    assert reg.get(c.slug) is c
        except BaseException as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(classes[i::4],)) for i in range(4)]
    threads += [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(reg) == 40
