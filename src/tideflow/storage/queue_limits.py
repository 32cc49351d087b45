"""Queue limits in the flow store: keeping ``flow_limits`` in step with the code, and SQLite's
limited claim.

What the limits mean is in ``tideflow.flows.limits``; how the claim enforces them, and why it
costs a flow without limits nothing, in the header of migration 0019 (PostgreSQL). On PostgreSQL
the claim (``claim_tasks_v1``) does all of it in the server, in one call. SQLite has no stored
functions, so there the flow store calls ``claim_limited`` below before its plain claim - the
same statements, in the claim's transaction, which holds SQLite's single write lock from its
``BEGIN IMMEDIATE``: nothing can claim or finish a task between the counts and the claim.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tideflow.flows.definition import FlowDefinition
from tideflow.storage.database import Database, Row, Tx


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def sync_limits(db: Database, tx_of: Any, definition: FlowDefinition, now: datetime) -> None:
    """Make ``flow_limits`` say what ``definition`` (a worker's code) says: its limits replace
    the stored ones, and a flow whose code declares none loses its row - the latest worker's
    code is the truth, as for step options. A read first, so that a worker whose limits are
    stored already writes nothing as it starts. ``tx_of``: the store's transaction factory."""
    wanted = definition.limits.to_json() if definition.limits else None
    found = db.rows("get_flow_limits", flow_slug=definition.slug)
    stored = _json(found[0]["limits"]) if found else None
    if stored == wanted:
        return
    with tx_of() as tx:
        if wanted is None:
            tx.run("delete_flow_limits", flow_slug=definition.slug)
        else:
            tx.run("set_flow_limits", flow_slug=definition.slug, limits=json.dumps(wanted), now=now)


def claim_limited(
    tx: Tx,
    worker_id: str,
    flow_slugs: list[str],
    limit: int,
    now: datetime,
    margin: float,
) -> list[Row]:
    """SQLite: up to ``limit`` tasks of the limited flows among ``flow_slugs``, within their
    limits, one flow at a time in slug order (PostgreSQL's ``_claim_limited_v1``); the rows
    ``claim_tasks`` returns."""
    claimed: list[Row] = []
    epoch = now.timestamp()
    for flow in tx.rows("limited_flows", flow_slugs=json.dumps(flow_slugs)):
        left = limit - len(claimed)
        if left <= 0:
            break
        limits = _json(flow["limits"])
        recent: list[float] = []
        if "rate" in limits:  # the claims of the last `per` seconds
            recent = [t for t in _json(flow["recent_claims"]) if t > epoch - limits["per"]]
            left = min(left, limits["rate"] - len(recent))
        if "concurrency" in limits:
            busy = tx.rows("count_limited_started", flow_slug=flow["flow_slug"])[0]["n"]
            left = min(left, limits["concurrency"] - int(busy))
        if left <= 0:
            continue
        key = limits.get("key")
        rows = tx.rows(
            "claim_limited_tasks",
            flow_slug=flow["flow_slug"],
            worker_id=worker_id,
            now=now,
            margin=margin,
            allow=left,
            key_path="$." + ".".join(key) if key else None,
            key_concurrency=limits.get("key_concurrency"),
            steps=json.dumps(limits.get("steps") or {}),
        )
        if "rate" in limits:
            tx.run(
                "record_rate_claims",
                flow_slug=flow["flow_slug"],
                recent_claims=json.dumps(recent + [epoch] * len(rows)),
            )
        claimed.extend(rows)
    return claimed
