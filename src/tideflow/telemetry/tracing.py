"""OpenTelemetry spans: ``start_flow`` -> the run -> each task attempt, on whichever worker runs it.

The trace context of the run's span is stored with the run (``runs.trace_context``, W3C
``traceparent``/``tracestate`` as JSON); a worker that claims a task reads it and opens the
attempt's span as its child, so one trace covers a run across processes and machines.

Only ``opentelemetry-api`` is used: without an SDK configured by the application (a
``TracerProvider`` set with ``trace.set_tracer_provider``) - or without the package - nothing is
recorded, nothing is stored and no query is made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:  # an extra: pip install 'tideflow[otel]'
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the dev extra installs it
    trace = None  # type: ignore[assignment]
    propagate = None  # type: ignore[assignment]

from tideflow.storage.flow_contract import ClaimedTask

TRACER = "tideflow"


#: The API's own switch for a provider named in the environment, read once (as the API does).
_PROVIDER_FROM_ENV = bool(os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"))


def enabled() -> bool:
    """Whether an SDK records spans: the API's default provider records nothing. Asked several
    times per event and per task, so the common answer - nothing set up - is found without
    ``get_tracer_provider()``, which reads the environment on every call while no provider is
    set (a twentieth of a process manager's step on SQLite)."""
    if trace is None:
        return False
    if getattr(trace, "_TRACER_PROVIDER", ...) is None and not _PROVIDER_FROM_ENV:
        return False  # no provider set yet: the API would hand out its no-op proxy
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


@contextmanager
def start_flow_span(flow_slug: str, run_id: str) -> Iterator[str | None]:
    """The ``start_flow`` span and, inside it, the run's span; yields the run span's context to
    store with the run (None when tracing is off)."""
    if not enabled():
        yield None
        return
    tracer = trace.get_tracer(TRACER)
    attributes = {"tideflow.flow": flow_slug, "tideflow.run_id": run_id}
    with tracer.start_as_current_span(
        f"start_flow {flow_slug}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ):
        with tracer.start_as_current_span(f"run {flow_slug}", attributes=attributes):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        yield json.dumps(carrier) if carrier else None


class AttemptSpan:
    """The span of one task attempt; ``failed`` marks it as an error."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def failed(self, error: str, error_type: str | None) -> None:
        if self._span is None:
            return
        self._span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        if error_type:
            self._span.set_attribute("error.type", error_type)


@contextmanager
def attempt_span(task: ClaimedTask, trace_context: str | None) -> Iterator[AttemptSpan]:
    """The span of ``task``'s attempt, a child of its run's span when ``trace_context`` is
    known; current while the step runs, so the step's own spans (and what it dispatches) nest
    under it."""
    if not enabled():
        yield AttemptSpan(None)
        return
    parent = propagate.extract(json.loads(trace_context)) if trace_context else None
    key = task.key
    with trace.get_tracer(TRACER).start_as_current_span(
        f"task {task.flow_slug}.{key.step_slug}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "tideflow.flow": task.flow_slug,
            "tideflow.run_id": key.run_id,
            "tideflow.step": key.step_slug,
            "tideflow.task_index": key.task_index,
            "tideflow.attempt": task.attempt,
        },
    ) as span:
        yield AttemptSpan(span)


# --- events: dispatch -> append -> handler -> process manager reaction -> its commands -----------

#: The event metadata keys that carry the trace context of the dispatch that recorded an event
#: (W3C names), so that a handler on any machine continues that trace.
TRACE_KEYS = ("traceparent", "tracestate")


@contextmanager
def span(name: str, attributes: dict[str, Any] | None = None) -> Iterator[None]:
    """A span around a piece of work (``dispatch``, ``append``); nothing without an SDK."""
    if not enabled():
        yield
        return
    with trace.get_tracer(TRACER).start_as_current_span(name, attributes=attributes or {}):
        yield


def trace_metadata() -> dict[str, str]:
    """The current span's context as event metadata (empty without an SDK)."""
    if not enabled():
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in TRACE_KEYS}


@contextmanager
def handler_span(handler: str, kind: str, event: Any) -> Iterator[None]:
    """The span of one handler's delivery of one event, a child of the span that recorded the
    event when its metadata carries one."""
    if not enabled():
        yield
        return
    metadata = getattr(event, "metadata", None) or {}
    carrier = {k: str(metadata[k]) for k in TRACE_KEYS if k in metadata}
    parent = propagate.extract(carrier) if carrier else None
    verb = "react" if kind == "process_manager" else "handle"
    with trace.get_tracer(TRACER).start_as_current_span(
        f"{verb} {handler} {event.event_type}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "tideflow.handler": handler,
            "tideflow.event_type": event.event_type,
            "tideflow.position": int(event.position),
            "tideflow.stream_id": str(event.stream_id),
        },
    ):
        yield
