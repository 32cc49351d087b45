"""Flow engine benchmarks: python benchmarks/bench_flows.py [--backend ...] [--large].

Prints, per backend:
  (a) single-step no-op runs/s, 10,000 runs drained by one worker process
  (b) 3-step chain runs/s
  (c) wall time of one 1,000-element map step
  (d) start-to-completion latency p50/p99 of a 3-step flow on an idle system

Runs are started before the clock starts for (a)-(c); the worker is a separate process, as in
production. PostgreSQL figures use a database created for the run and dropped after.

--large (PostgreSQL only; issue 13, a few minutes of CPU): the same drain on an empty database
and on one with 1M runs of history (bulk-inserted, then ANALYZE) and a 50,000-run backlog, at the
default concurrency and at 256; the claim at 1k and 300k queued tasks, without and with
statistics; a batch of 256 completions with 256 and with 10,000 tasks in flight (statistics
taken before they started: the state that used to flip the plan); list_runs by status at 1M runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flows_defs import FLOWS, Chain3, MapThousand, NoOp
from benchdb import pg_database
from largedb import analyze, insert_runs, start_backlog, timed

from tideflow import App


def worker_main(url: str, until_idle: bool, concurrency: int, results: mp.Queue | None) -> None:
    app = App(url, flows=FLOWS)
    _ = app.store  # connect and migrate before the clock starts
    t0 = time.perf_counter()
    app.run_worker(until_idle=until_idle, concurrency=concurrency, poll_interval=0.05)
    if results is not None:
        results.put(time.perf_counter() - t0)
    app.close()


def drain_in_worker_process(url: str, concurrency: int = 256) -> float:
    """Seconds a fresh worker process takes to drain everything queued, from its first claim."""
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    p = ctx.Process(target=worker_main, args=(url, True, concurrency, results))
    p.start()
    elapsed = float(results.get(timeout=600))
    p.join()
    return elapsed


def start_many(app: App, flow: type, n: int, value: object) -> list[str]:
    return [app.start_flow(flow, value) for _ in range(n)]


def bench_throughput(url: str, flow: type, n: int) -> tuple[float, float]:
    app = App(url, flows=FLOWS)
    t0 = time.perf_counter()
    ids = start_many(app, flow, n, {"x": 1})
    start_rate = n / (time.perf_counter() - t0)
    elapsed = drain_in_worker_process(url)
    done = len(app.list_runs(status="completed", flow=flow.slug, limit=n + 10))
    assert done == len(ids), f"only {done} of {len(ids)} runs completed"
    app.close()
    return n / elapsed, start_rate


def bench_map(url: str) -> float:
    app = App(url, flows=FLOWS)
    run_id = app.start_flow(MapThousand, list(range(1000)))
    elapsed = drain_in_worker_process(url)
    assert app.get_run(run_id).status == "completed"
    app.close()
    return elapsed


def bench_latency(url: str, n: int = 200) -> tuple[float, float]:
    app = App(url, flows=FLOWS)
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=worker_main, args=(url, False, 8, None))
    p.start()
    try:
        app.wait_for_run(app.start_flow(Chain3, {"x": 1}), timeout=30)  # warm-up
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            run_id = app.start_flow(Chain3, {"x": 1})
            app.wait_for_run(run_id, timeout=30)
            samples.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.005)
    finally:
        p.terminate()
        p.join()
    app.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def run_backend(backend: str, runs: int) -> dict[str, str]:
    if backend == "postgres":
        url, drop = pg_database()
    else:
        tmp = tempfile.mkdtemp()
        url, drop = f"sqlite:///{tmp}/bench.db", lambda: None
    try:
        with App(url) as app:
            app.migrate()
        a, _ = bench_throughput(url, NoOp, runs)
        b, _ = bench_throughput(url, Chain3, runs // 5)
        c = bench_map(url)
        p50, p99 = bench_latency(url)
    finally:
        drop()
    return {
        "backend": backend,
        "(a) no-op runs/s": f"{a:,.0f}",
        "(b) 3-step runs/s": f"{b:,.0f}",
        "(c) 1,000-map wall s": f"{c:.2f}",
        "(d) latency p50 ms": f"{p50:.1f}",
        "(d) latency p99 ms": f"{p99:.1f}",
    }


CLAIM = "SELECT * FROM tideflow.claim_tasks_v1('bench', ARRAY['bench_history'], %(n)s, now(), 30)"
#: This release's completion (v3), and the first release's (v1) for comparison.
COMPLETE = "SELECT * FROM tideflow.complete_tasks_v3('bench-worker', %(rows)s::jsonb, now())"
COMPLETE_V1 = "SELECT tideflow.complete_tasks_v1('bench-worker', %(rows)s::jsonb, now())"
LIST_RUNS = (
    "SELECT run_id FROM tideflow.runs WHERE status = %(status)s "
    "ORDER BY started_at DESC, run_id LIMIT 50"
)


def _completions(prefix: str, n: int) -> dict[str, str]:
    rows = [
        {
            "run_id": f"{prefix}{i}",
            "step_slug": "only",
            "task_index": 0,
            "attempt": 1,
            "output": "1",
        }
        for i in range(1, n + 1)
    ]
    return {"rows": json.dumps(rows)}


def _drain(url: str, n: int, concurrency: int, prefix: str) -> float:
    start_backlog(url, NoOp.definition, n, prefix=prefix)
    return n / drain_in_worker_process(url, concurrency)


def run_large(history: int, backlog: int, small: int) -> None:
    figures: list[tuple[str, str, str]] = []  # (what, small database, large database)
    claims = {}
    for queued in (1_000, 300_000):
        url, drop = pg_database()
        try:
            with App(url) as app:
                app.migrate()
            insert_runs(url, queued, status="queued", prefix="q")
            without = [timed(url, CLAIM, {"n": n}) for n in (10, 256)]
            analyze(url)
            claims[queued] = [*without, *(timed(url, CLAIM, {"n": n}) for n in (10, 256))]
        finally:
            drop()
    url, drop = pg_database()
    try:
        with App(url, flows=FLOWS) as app:
            app.migrate()
            app.store.ensure_flow(NoOp.definition)
        empty = {c: _drain(url, small, c, f"e{c}-") for c in (10, 256)}
        print(f"history: {insert_runs(url, history):.0f} s to insert {history:,} runs", flush=True)
        analyze(url)
        large = {c: _drain(url, backlog, c, f"l{c}-") for c in (10, 256)}
        for c in (10, 256):
            figures.append(
                (
                    f"drain runs/s, concurrency {c}",
                    f"{empty[c]:,.0f} (empty, {small:,} runs)",
                    f"{large[c]:,.0f} ({history:,} history, {backlog:,} backlog): "
                    f"{large[c] / empty[c]:.0%}",
                )
            )
        for status in ("completed", "failed"):
            figures.append(
                (
                    f"list_runs status={status} ms",
                    "",
                    f"{timed(url, LIST_RUNS, {'status': status}):.2f} ({history:,} runs)",
                )
            )
        insert_runs(url, 256, status="started", prefix="c")
        batch = _completions("c", 256)
        few = [timed(url, sql, batch) for sql in (COMPLETE, COMPLETE_V1)]
        insert_runs(url, 10_000 - 256, status="started", prefix="d")
        stale = [timed(url, sql, batch) for sql in (COMPLETE, COMPLETE_V1)]
        analyze(url)
        fresh = [timed(url, sql, batch) for sql in (COMPLETE, COMPLETE_V1)]
        for i, version in enumerate(("v3", "v1")):
            figures.append(
                (
                    f"completion batch of 256 ms ({version})",
                    f"{few[i]:.1f} (256 in flight)",
                    f"{stale[i]:.1f} stale stats / {fresh[i]:.1f} fresh (10,000 in flight)",
                )
            )
    finally:
        drop()
    for i, n in enumerate((10, 256)):
        figures.append(
            (
                f"claim of {n} ms (no stats / stats)",
                f"{claims[1_000][i]:.2f} / {claims[1_000][i + 2]:.2f} (1,000 queued)",
                f"{claims[300_000][i]:.2f} / {claims[300_000][i + 2]:.2f} (300,000 queued)",
            )
        )
    width = max(len(f[0]) for f in figures)
    for what, small_db, large_db in figures:
        print(f"{what.ljust(width)} | {small_db} | {large_db}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--large", action="store_true", help="the large-database mode (PostgreSQL)")
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=50_000)
    args = parser.parse_args()
    if args.large:
        run_large(args.history, args.backlog, args.runs)
        return
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    rows = [run_backend(b, args.runs) for b in backends]
    keys = list(rows[0])
    widths = [max(len(k), *(len(r[k]) for r in rows)) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(r[k].ljust(w) for k, w in zip(keys, widths, strict=True)))


if __name__ == "__main__":
    main()
