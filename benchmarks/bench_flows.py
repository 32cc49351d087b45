"""Flow engine benchmarks: python benchmarks/bench_flows.py [--backend ...] [--large|--defaults].

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

--defaults (issue 12, a few minutes): the worker's default settings against tuned ones
(concurrency 256 and 1024), async def against def no-op steps, 1,000 against 10,000 queued, on
each backend, interleaved over --rounds; --baseline /work/main/src adds another checkout's
defaults to the same rounds (before/after). See run_defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flows_defs import FLOWS, Chain3, MapThousand, NoOp, NoOpSync
from benchdb import pg_database
from largedb import analyze, insert_runs, start_backlog, timed

from tideflow import App


def worker_main(
    url: str, until_idle: bool, concurrency: int | None, results: mp.Queue | None
) -> None:
    """``concurrency`` None: the worker's defaults, as a user who sets nothing gets them."""
    app = App(url, flows=FLOWS)
    _ = app.store  # connect and migrate before the clock starts
    t0 = time.perf_counter()
    tuned = {} if concurrency is None else {"concurrency": concurrency}
    app.run_worker(until_idle=until_idle, poll_interval=0.05, **tuned)
    if results is not None:
        results.put(time.perf_counter() - t0)
    app.close()


def drain_in_worker_process(url: str, concurrency: int | None = 256) -> float:
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


def _drain(url: str, n: int, concurrency: int | None, prefix: str) -> float:
    start_backlog(url, NoOp.definition, n, prefix=prefix)
    return n / drain_in_worker_process(url, concurrency)


def _label(concurrency: int | None) -> str:
    return "default" if concurrency is None else str(concurrency)


def run_large(
    history: int, backlog: int, small: int, levels: tuple[int | None, ...], drains_only: bool
) -> None:
    """``levels``: the worker concurrencies drained at (None: the worker's default).
    ``drains_only``: skip the claim, completion and listing figures (for interleaved rounds)."""
    figures: list[tuple[str, str, str]] = []  # (what, small database, large database)
    claims = {}
    for queued in () if drains_only else (1_000, 300_000):
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
        empty = {c: _drain(url, small, c, f"e{_label(c)}-") for c in levels}
        print(f"history: {insert_runs(url, history):.0f} s to insert {history:,} runs", flush=True)
        analyze(url)
        large = {c: _drain(url, backlog, c, f"l{_label(c)}-") for c in levels}
        for c in levels:
            figures.append(
                (
                    f"drain runs/s, concurrency {_label(c)}",
                    f"{empty[c]:,.0f} (empty, {small:,} runs)",
                    f"{large[c]:,.0f} ({history:,} history, {backlog:,} backlog): "
                    f"{large[c] / empty[c]:.0%}",
                )
            )
        for status in () if drains_only else ("completed", "failed"):
            figures.append(
                (
                    f"list_runs status={status} ms",
                    "",
                    f"{timed(url, LIST_RUNS, {'status': status}):.2f} ({history:,} runs)",
                )
            )
        if drains_only:
            _print(figures)
            return
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
    _print(figures)


def _print(figures: list[tuple[str, str, str]]) -> None:
    width = max(len(f[0]) for f in figures)
    for what, small_db, large_db in figures:
        print(f"{what.ljust(width)} | {small_db} | {large_db}", flush=True)


def drain_span(url: str, after: float) -> tuple[float, float]:
    """Seconds from the first claim to the last completion of the tasks started after the
    epoch time ``after``, read from the tasks' own timestamps (so a worker process's start-up -
    imports, connecting, LISTEN - is not counted: at 1,000 runs it would be a tenth of the
    figure), and the epoch time of that last completion (the next case's ``after``)."""
    if url.startswith("sqlite"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            first, last = conn.execute(
                "SELECT min(started_at), max(finished_at) FROM tasks WHERE started_at > ?",
                (after,),
            ).fetchone()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT extract(epoch FROM min(started_at))::float8, "
                "extract(epoch FROM max(finished_at))::float8 FROM tideflow.tasks "
                "WHERE started_at > to_timestamp(%s)",
                (after,),
            ).fetchone()
            assert found is not None
            first, last = found
    return float(last) - float(first), float(last)


TUNED = (256, 1024)
"""The tuned concurrencies the defaults are held against: 256 is where issue 12 measured
8,800 runs/s on PostgreSQL (2,600 at the old default of 10); 1024 is past ``max_batch``."""


def drain_with_settings(url: str, concurrency: int | None, src: str | None) -> float:
    """Drain what is queued with one worker process (``bench_worker.py``) at ``concurrency``
    (None: the defaults), running the tideflow in ``src`` if given; the CPU seconds it took."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "bench_worker.py"),
            url,
            "default" if concurrency is None else str(concurrency),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(done.stdout.split()[-1])


def run_defaults(
    backends: list[str], rounds: int, sizes: tuple[int, ...], baseline: str | None
) -> None:
    """The worker's defaults against tuned settings (concurrency 256 and 1024), ``async def``
    against ``def`` no-op steps, and a 1,000 against a 10,000 backlog, on each backend: the
    drain rate of one worker process, runs/s, from its first claim to its last completion, and
    the worker's CPU time per run (a figure other load on the machine disturbs less).
    With ``baseline`` (the ``src`` folder of another checkout, e.g. /work/main/src) its
    defaults are measured too, in the same rounds. The cases run interleaved, ``rounds``
    times over, so that a machine shared with other work slows all of them alike; each cell
    is the median and the range (min-max) over the rounds, and the ratios the defaults are
    held to are computed from medians."""
    variants: list[tuple[str, int | None, str | None]] = [
        ("default", None, None),
        *((f"c={c}", c, None) for c in TUNED),
        *([("baseline default", None, baseline)] if baseline else []),
    ]
    rows = [(flow, n) for n in sizes for flow in (NoOp, NoOpSync)]
    for backend in backends:
        if backend == "postgres":
            url, drop = pg_database()
        else:
            tmp = tempfile.mkdtemp()
            url, drop = f"sqlite:///{tmp}/bench.db", lambda: None
        rates: dict[tuple[str, int, str], list[float]] = {}
        cpu: dict[tuple[str, int, str], list[float]] = {}
        watermark = 0.0
        try:
            with App(url, flows=FLOWS) as app:
                app.migrate()
                for _ in range(rounds):
                    for flow, n in rows:
                        for label, conc, src in variants:
                            for i in range(0, n, 1000):
                                app.start_flows(flow, [{"x": 1}] * min(1000, n - i))
                            spent = drain_with_settings(url, conc, src)
                            span, watermark = drain_span(url, watermark)
                            rates.setdefault((flow.slug, n, label), []).append(n / span)
                            cpu.setdefault((flow.slug, n, label), []).append(spent / n * 1e6)
        finally:
            drop()
        med = {k: statistics.median(v) for k, v in rates.items()}
        labels = [v[0] for v in variants]
        print(f"\n{backend}: drain runs/s of one worker, median (min-max) of {rounds} rounds")
        print(
            f"{'step':<10}{'queued':>7}  "
            + "  ".join(f"{x:>22}" for x in labels)
            + "  default/best"
        )
        for flow, n in rows:
            cells = []
            for label in labels:
                x = rates[(flow.slug, n, label)]
                cells.append(f"{statistics.median(x):,.0f} ({min(x):,.0f}-{max(x):,.0f})")
            best = max(med[(flow.slug, n, f"c={c}")] for c in TUNED)
            kind = "async def" if flow is NoOp else "def"
            ratio = med[(flow.slug, n, "default")] / best
            print(f"{kind:<10}{n:>7,}  " + "  ".join(f"{c:>22}" for c in cells) + f"  {ratio:.0%}")
            used = [f"{statistics.median(cpu[(flow.slug, n, label)]):.0f} us" for label in labels]
            print(f"{'  CPU/run':<17}  " + "  ".join(f"{c:>22}" for c in used))
        big, small = max(sizes), min(sizes)
        for label in labels:
            sync = med[(NoOpSync.slug, small, label)] / med[(NoOp.slug, small, label)]
            grow = med[(NoOp.slug, big, label)] / med[(NoOp.slug, small, label)]
            sync_big = med[(NoOpSync.slug, big, label)] / med[(NoOp.slug, big, label)]
            print(
                f"  {label}: def/async {sync:.0%} ({small:,} queued), {sync_big:.0%} "
                f"({big:,}); async {big:,} vs {small:,} queued {grow:.0%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--large", action="store_true", help="the large-database mode (PostgreSQL)")
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument(
        "--levels",
        default="default,256",
        help="with --large: the worker concurrencies drained at, comma-separated "
        "('default': the worker's own, e.g. default,256,10)",
    )
    parser.add_argument(
        "--drains-only",
        action="store_true",
        help="with --large: only the drains (empty vs large database), for interleaved rounds",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="default vs tuned (concurrency 256, 1024), async vs def steps, 1k vs 10k queued",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --defaults: repetitions")
    parser.add_argument(
        "--sizes",
        default="1000,10000",
        help="with --defaults: backlog sizes, comma-separated",
    )
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="with --defaults: also measure the defaults of the tideflow in this src folder "
        "(e.g. /work/main/src), interleaved with this one's",
    )
    args = parser.parse_args()
    if args.defaults:
        chosen = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
        sizes = tuple(int(x) for x in args.sizes.split(","))
        run_defaults(chosen, args.rounds, sizes, args.baseline)
        return
    if args.large:
        levels = tuple(
            None if x == "default" else int(x) for x in args.levels.split(",") if x.strip()
        )
        run_large(args.history, args.backlog, args.runs, levels, args.drains_only)
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
