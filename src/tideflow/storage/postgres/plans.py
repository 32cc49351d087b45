"""Planner settings that some of tideflow's PostgreSQL transactions run under (sync and async)."""

from __future__ import annotations

#: The planner settings of ``read_together``'s transaction: its reads are a few runs' rows by key
#: (``= ANY`` of their ids) and each allowed plan is index lookups. A generic plan (a prepared
#: statement's, after five runs) estimates ``= ANY`` of an unknown array as thousands of rows and
#: hashed the ids' runs against a whole ``run_steps`` or ``tasks`` read (tests/test_plans.py).
KEYED_READS = (
    b"SELECT set_config('enable_seqscan', 'off', true), "
    b"set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
)
