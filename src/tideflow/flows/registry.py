"""FlowRegistry: which flow classes this process knows, by class and by slug.

Contract (after PgFlow.FlowRegistry, in Python terms): ``register`` takes a Flow class or an
import path ``"package.module:Class"``; ``get`` finds by class or slug; ``list`` returns all;
``unregister`` is idempotent. Unlike the Elixir original, a second class claiming a slug that is
already taken is refused with ``SlugConflictError`` instead of silently replacing the first: two
classes with one slug would make workers disagree about what a run means.

Reads vastly outnumber writes (every claimed task looks its flow up), so reads take no lock: they
read an immutable dict that writers replace wholesale under a lock (copy-on-write).
"""

from __future__ import annotations

import builtins
import importlib
import threading
from collections.abc import Iterator
from typing import Any

from tideflow.errors import FlowImportError, FlowNotFoundError, NotAFlowError, SlugConflictError
from tideflow.flows.dsl import Flow, is_flow_class
from tideflow.flows.jobs import Job, is_job

FlowRef = type[Flow] | str


class FlowRegistry:
    def __init__(self, flows: list[type[Flow] | Job[Any, Any] | str] | None = None) -> None:
        self._by_slug: dict[str, type[Flow]] = {}
        self._write_lock = threading.Lock()
        for flow in flows or []:
            self.register(flow)

    def register(self, flow: type[Flow] | Job[Any, Any] | str) -> type[Flow]:
        """Register a Flow class (or the class an import path names) and return it. A job
        (``@job``) registers its generated one-step flow class.

        Registering the same class twice is a no-op. Raises ``FlowImportError`` when the path
        cannot be loaded, ``NotAFlowError`` when the object is not a Flow subclass, and
        ``SlugConflictError`` when another class holds the slug.
        """
        cls = _load(flow) if isinstance(flow, str) else flow
        if is_job(cls):
            cls = cls.flow
        if not is_flow_class(cls):
            raise NotAFlowError(
                f"{_describe(cls)} is not a flow: subclass tideflow.Flow and mark steps with @step"
            )
        with self._write_lock:
            current = self._by_slug.get(cls.slug)
            if current is cls:
                return cls
            if current is not None and _qualname(current) != _qualname(cls):
                raise SlugConflictError(
                    f"slug {cls.slug!r} is already registered by {_qualname(current)}; "
                    f"{_qualname(cls)} cannot take it. Give one of them another slug "
                    "(class X(Flow, slug=...)) or unregister the first"
                )
            # Same qualified name but a new class object: a module reload. The new code wins.
            self._by_slug = {**self._by_slug, cls.slug: cls}
        return cls

    def find(self, slug: str) -> type[Flow] | None:
        """The class registered under ``slug``, or None."""
        return self._by_slug.get(slug)

    def get(self, flow: FlowRef) -> type[Flow]:
        """The registered class for a class or slug; ``FlowNotFoundError`` otherwise."""
        if isinstance(flow, str):
            found = self._by_slug.get(flow)
        else:
            found = flow if self._by_slug.get(getattr(flow, "slug", None) or "") is flow else None
        if found is None:
            name = flow if isinstance(flow, str) else _describe(flow)
            known = ", ".join(sorted(self._by_slug)) or "none"
            raise FlowNotFoundError(
                f"flow {name!r} is not registered (registered: {known}); "
                "register it with app.register(...) or tideflow worker --flow module:Class"
            )
        return found

    def list(self) -> builtins.list[type[Flow]]:
        """All registered flows, ordered by slug."""
        snapshot = self._by_slug
        return [snapshot[s] for s in sorted(snapshot)]

    def unregister(self, flow: FlowRef) -> None:
        """Forget a flow by class or slug. Unknown flows are ignored."""
        with self._write_lock:
            slug = flow if isinstance(flow, str) else getattr(flow, "slug", None)
            current = self._by_slug.get(slug or "")
            if current is None or (not isinstance(flow, str) and current is not flow):
                return
            self._by_slug = {k: v for k, v in self._by_slug.items() if k != slug}

    def slugs(self) -> builtins.list[str]:
        return sorted(self._by_slug)

    def __contains__(self, flow: object) -> bool:
        if isinstance(flow, str):
            return flow in self._by_slug
        return is_flow_class(flow) and self._by_slug.get(flow.slug) is flow

    def __iter__(self) -> Iterator[type[Flow]]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._by_slug)


def _load(path: str) -> object:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise FlowImportError(
            f"cannot load {path!r}: write an import path as 'package.module:ClassName'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise FlowImportError(
            f"cannot load {path!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise FlowImportError(
                f"cannot load {path!r}: module {module_name!r} has no attribute {attr!r}"
            ) from exc
    return obj


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(obj: object) -> str:
    return _qualname(obj) if isinstance(obj, type) else repr(obj)
