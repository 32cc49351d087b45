"""A process with OpenTelemetry's SDK and its in-memory exporter, for test_tracing.py:

    python -m tests.observability.traced_process URL OUT start     start a run of obs_traced
    python -m tests.observability.traced_process URL OUT first     work until 'second' is done
    python -m tests.observability.traced_process URL OUT rest      work until nothing is left
    python -m tests.observability.traced_process URL OUT saga      the order saga example

Each writes the spans it finished to OUT (JSON lines), with its pid."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.observability.flows import Traced
from tideflow import App


def main(url: str, out: str, mode: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if mode == "saga":
        from tests.test_examples import load_example

        load_example("order_saga").main(url)
        write(exporter, out)
        return
    with App(url, flows=[Traced]) as app:
        if mode == "start":
            print(app.start_flow(Traced, {"n": 1}), flush=True)
        elif mode == "first":
            worker = app.worker(poll_interval=0.02)

            def stop_when_second_is_done() -> None:
                while True:
                    run = app.list_runs(flow="obs_traced")[0]
                    if app.get_run(run.run_id).step("second").status == "completed":
                        worker.stop()
                        return
                    time.sleep(0.02)

            threading.Thread(target=stop_when_second_is_done, daemon=True).start()
            asyncio.run(worker.run())
        else:
            app.run_worker(until_idle=True, poll_interval=0.02)
    write(exporter, out)


def write(exporter: InMemorySpanExporter, out: str) -> None:
    with open(out, "w") as f:
        for span in exporter.get_finished_spans():
            ctx, parent = span.context, span.parent
            assert ctx is not None
            f.write(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": f"{ctx.trace_id:032x}",
                        "span_id": f"{ctx.span_id:016x}",
                        "parent_id": None if parent is None else f"{parent.span_id:016x}",
                        "attributes": dict(span.attributes or {}),
                        "error": span.status.status_code.name == "ERROR",
                        "pid": os.getpid(),
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main(*sys.argv[1:4])
