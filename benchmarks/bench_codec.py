"""Encode + decode cost of stored values: tideflow's codec before and after the tagged types, and
orjson / msgspec for comparison (when installed; they are not dependencies).

    python benchmarks/bench_codec.py [--rounds 7] [--seconds 0.2]

Payloads (realistic shapes):
  * event   - a small event's data: {"sku": "tea", "qty": 3, "note": None};
  * step    - a step output of about 1 KB: an order with 8 lines (str, int, float, bool, nested);
  * bulk    - a step output of about 20 KB: 150 records;
  * typed   - the step payload with a datetime, a Decimal per line, a UUID and an enum.

Options, measured interleaved (each round runs every option once; the best round is shown, in
microseconds per encode + decode of one value):
  * before  - json's C encoder + ``check_text`` and ``json.loads`` (tideflow until this change;
    it refuses the typed payload);
  * after   - ``jsonutil.encode`` + ``jsonutil.loads`` (the type walk, then the same encoder;
    the tag hook only for a text holding ``{"$``);
  * orjson  - ``orjson.dumps``/``loads`` + ``check_text``: datetimes and UUIDs become plain
    strings (they come back as str), Decimal is refused, NaN silently becomes null, and int keys
    are refused (not converted): no exact round trip;
  * msgspec - ``msgspec.json`` encode/decode + ``check_text``; the same untyped loss of types
    (a typed round trip needs the type at decode time, which an untyped run input has not).
"""

from __future__ import annotations

import argparse
import enum
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tideflow import jsonutil
from tideflow.jsonutil import check_text

try:
    import orjson
except ImportError:  # pragma: no cover - optional
    orjson = None
try:
    import msgspec
except ImportError:  # pragma: no cover - optional
    msgspec = None


class Tier(enum.Enum):
    GOLD = "gold"


def payloads() -> dict[str, Any]:
    line = {"sku": "sku-0001", "qty": 2, "price": 12.5, "gift": False, "tags": ["a", "b"]}
    step = {
        "order_id": "ord-8841",
        "customer": {"id": "c-17", "email": "ann@example.com", "vip": True},
        "lines": [dict(line, sku=f"sku-{i:04}") for i in range(8)],
        "total": 200.0,
        "currency": "EUR",
        "shipping": {"method": "express", "address": {"city": "Lyon", "zip": "69001"}},
    }
    bulk = {"records": [dict(line, n=i, name=f"record number {i}") for i in range(150)]}
    typed = dict(
        step,
        order_id=uuid.UUID("7f0c2a64-55a3-4c1e-9e43-6f1f1b7e2a10"),
        placed_at=datetime(2026, 12, 7, 21, 7, tzinfo=UTC),
        lines=[dict(line, price=Decimal("12.50")) for _ in range(8)],
        tier=Tier.GOLD,
    )
    return {
        "event": {"sku": "tea", "qty": 3, "note": None},
        "step": step,
        "bulk": bulk,
        "typed": typed,
    }


_OLD = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def before(value: Any) -> Any:
    return json.loads(check_text(_OLD.encode(value), value, what="x"))


def after(value: Any) -> Any:
    return jsonutil.loads(jsonutil.encode(value, what="x"))


def with_orjson(value: Any) -> Any:
    assert orjson is not None
    return orjson.loads(check_text(orjson.dumps(value).decode(), value, what="x"))


def with_msgspec(value: Any) -> Any:
    assert msgspec is not None
    return msgspec.json.decode(check_text(msgspec.json.encode(value).decode(), value, what="x"))


def options() -> dict[str, Callable[[Any], Any]]:
    found: dict[str, Callable[[Any], Any]] = {"before": before, "after": after}
    if orjson is not None:
        found["orjson"] = with_orjson
    if msgspec is not None:
        found["msgspec"] = with_msgspec
    return found


def per_call(fn: Callable[[Any], Any], value: Any, seconds: float) -> float | None:
    """Microseconds per call (best of the batches in ``seconds``), None if ``fn`` refuses it."""
    try:
        fn(value)
    except Exception:
        return None
    n, spent = 1, 0.0
    while spent < seconds / 10:  # size a batch to about a tenth of the budget
        n *= 2
        start = time.perf_counter()
        for _ in range(n):
            fn(value)
        spent = time.perf_counter() - start
    best = spent / n
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(n):
            fn(value)
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def round_trips(value: Any) -> dict[str, str]:
    """Whether each option gives back a value equal to the input with the same types."""
    out = {}
    for name, fn in options().items():
        try:
            back = fn(value)
        except Exception as exc:
            out[name] = f"refused ({type(exc).__name__})"
            continue
        out[name] = "exact" if _same(back, value) else "types lost"
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, list | tuple):
        return isinstance(a, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.2, help="per option, per round")
    args = parser.parse_args()
    values = payloads()
    names = list(options())
    best: dict[tuple[str, str], float | None] = {}
    for _ in range(args.rounds):
        for payload, value in values.items():
            for name in names:
                us = per_call(options()[name], value, args.seconds)
                key = (payload, name)
                if us is None:
                    best[key] = None
                else:
                    prev = best.get(key)
                    best[key] = us if prev is None else min(prev, us)
    size = {
        p: len(json.dumps(jsonutil.loads(jsonutil.encode(v, what="x")), default=str))
        for p, v in values.items()
    }
    print(f"encode + decode, µs per value (best of {args.rounds} interleaved rounds)")
    print(f"| payload | bytes | {' | '.join(names)} | after/before |")
    print(f"|---|---:|{'---:|' * len(names)}---:|")
    for payload in values:
        cells = []
        for name in names:
            us = best[(payload, name)]
            cells.append("refused" if us is None else f"{us:.2f}")
        b, a = best[(payload, "before")], best[(payload, "after")]
        ratio = "-" if b is None or a is None else f"{a / b:.2f}"
        print(f"| {payload} | {size[payload]} | {' | '.join(cells)} | {ratio} |")
    print()
    print("round trip of the typed payload:", round_trips(values["typed"]))
    print("round trip of the step payload:", round_trips(values["step"]))


if __name__ == "__main__":
    main()
