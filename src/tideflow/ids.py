"""Identifiers made before anything is stored, by whichever layer needs one first.

A run id is drawn by the client that starts the run (so that a retried start after an outage
names the same run) and by the storage engine for runs started inside a transaction; neither
should import the other for it.
"""

from __future__ import annotations

import uuid


def new_run_id() -> str:
    """A fresh run id: a random UUID, as text."""
    return str(uuid.uuid4())
