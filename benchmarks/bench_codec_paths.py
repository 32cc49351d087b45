"""The codec's share of the hot paths, before and after a change, on plain JSON payloads:

    python benchmarks/bench_codec_paths.py [--before PATH/src] [--rounds 5]

Measures, in-process and without a database (the database part of each path is unchanged by
the codec), the Python work each hot path does per value:

  * append 1  - ``prepare_append`` of one small event (checks, encode, the decode for upcasting);
  * append 10 - the same for ten events of about 120 bytes;
  * read 1000 - ``decode_objects`` of 1,000 stored event texts (what ``read_all`` decodes);
  * complete  - ``jsonutil.dumps`` of a 1 KB step output (what a completion encodes);
  * claim     - ``jsonutil.loads`` of a 1 KB step input (what the worker decodes after a claim).

``--before`` names the ``src`` directory of the tree to compare with (e.g. a ``git archive`` of
main's commit); each round runs it and this tree in turn, in fresh interpreters, and the best
round is shown. Without it, only this tree is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure() -> dict[str, float]:
    """Microseconds per operation for the tideflow on ``sys.path``."""
    from tideflow import jsonutil
    from tideflow.events import ANY, NewEvent
    from tideflow.events.upcasting import Upcasters
    from tideflow.storage.event_contract import decode_objects, prepare_append

    line = {"sku": "sku-0001", "qty": 2, "price": 12.5, "gift": False, "tags": ["a", "b"]}
    output = {
        "order_id": "ord-8841",
        "customer": {"id": "c-17", "email": "ann@example.com", "vip": True},
        "lines": [dict(line, sku=f"sku-{i:04}") for i in range(8)],
        "total": 200.0,
    }
    text = jsonutil.dumps(output, what="x")
    upcasters = Upcasters()
    one = [NewEvent("StockAdded", {"sku": "tea", "qty": 3})]
    ten = [NewEvent("LineAdded", dict(line, n=i), {"user": "u-1"}) for i in range(10)]
    stored = [json.dumps({"sku": f"s-{i}", "qty": i, "note": None}) for i in range(1000)]
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "append 1": (lambda: prepare_append("s-1", one, ANY, None, None, upcasters), 1),
        "append 10": (lambda: prepare_append("s-1", ten, ANY, None, None, upcasters), 1),
        "read 1000": (lambda: decode_objects(stored), 1),
        "complete": (lambda: jsonutil.dumps(output, what="x"), 1),
        "claim": (lambda: jsonutil.loads(text), 1),
    }
    result = {}
    for name, (fn, _) in cases.items():
        n, spent = 1, 0.0
        while spent < 0.02:
            n *= 2
            start = time.perf_counter()
            for _ in range(n):
                fn()
            spent = time.perf_counter() - start
        best = spent / n
        for _ in range(15):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - start) / n)
        result[name] = best * 1e6
    return result


def run(src: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(out.stderr)
    figures = json.loads(out.stdout)
    imported = Path(figures.pop("from"))
    if not imported.is_relative_to(src.resolve()):  # an editable install can shadow PYTHONPATH
        raise SystemExit(f"asked for tideflow from {src}, got {imported}")
    return dict(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="src/ of the tree to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import tideflow

        print(json.dumps({**measure(), "from": tideflow.__file__}))
        return
    trees = {"after": HERE.parent / "src"}
    if args.before:
        trees = {"before": args.before, **trees}
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for label, src in trees.items():
            for case, us in run(src).items():
                slot = best.setdefault(case, {})
                slot[label] = min(slot.get(label, us), us)
    labels = list(trees)
    print(f"µs per operation, plain JSON (best of {args.rounds} interleaved rounds)")
    ratio = " after/before |" if "before" in trees else ""
    print(f"| path | {' | '.join(labels)} |{ratio}")
    print(f"|---|{'---:|' * len(labels)}{'---:|' if ratio else ''}")
    for case, figures in best.items():
        cells = " | ".join(f"{figures[label]:.2f}" for label in labels)
        extra = f" {figures['after'] / figures['before']:.2f} |" if ratio else ""
        print(f"| {case} | {cells} |{extra}")


if __name__ == "__main__":
    main()
