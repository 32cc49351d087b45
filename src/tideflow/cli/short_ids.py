"""Short run ids: what tables show, and how a command finds the run a short id means.

A run id is a UUID (36 characters) unless the caller chose one. Tables show a UUID by the
shortest prefix of at least ``SHORT`` characters that tells the listed ids apart - git's habit -
so that an 80-column table has room for the flow and the status; ``--full-ids`` shows them whole.
An id the caller chose is always shown whole: it means something to them, and its prefix could
be another run's whole id (``order-12`` of ``order-1234``).

Every command that takes a run id takes such a prefix too: an exact id always wins (a chosen id
like ``order-1`` is never read as the prefix of ``order-12``); else the one run whose id starts
with it; else ``AmbiguousRunIdError`` naming some of the candidates, or ``RunNotFoundError``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tideflow.cli.errors import CliUsageError
from tideflow.errors import RunNotFoundError
from tideflow.storage.flow_contract import FlowStore

SHORT = 8
"""Characters of a shortened id: 4 billion values of a UUID's random hex, enough that two
runs among thousands share one rarely (and then the table shows more)."""

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class AmbiguousRunIdError(CliUsageError):
    """A short run id matches more than one run."""


def short_ids(ids: Sequence[str], *, full: bool = False) -> dict[str, str]:
    """Each id and how to show it: a generated one (a UUID) by its shortest prefix of at least
    ``SHORT`` characters that no other listed id starts with; any other, or all with ``full``,
    whole."""
    if full:
        return {i: i for i in ids}
    shown: dict[str, str] = {}
    ordered = sorted(set(ids))
    for n, run_id in enumerate(ordered):
        if not _UUID.fullmatch(run_id):
            shown[run_id] = run_id
            continue
        # Only the neighbours in sorted order can share the longest prefix with it.
        common = max(
            (_common(run_id, ordered[m]) for m in (n - 1, n + 1) if 0 <= m < len(ordered)),
            default=0,
        )
        length = max(SHORT, common + 1)
        shown[run_id] = run_id[:length]
    return shown


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def resolve_run_id(store: FlowStore, text: str) -> str:
    """The id of the run ``text`` names: itself if a run has that id, else the one run whose
    id starts with it. ``AmbiguousRunIdError`` if several do, ``RunNotFoundError`` if none."""
    try:
        store.get_run(text, with_steps=False)
        return text  # by its primary key: the prefix search below is a scan on PostgreSQL
    except RunNotFoundError:
        pass
    found = store.run_ids_with_prefix(text, limit=4)
    if not found:
        return text  # unknown: the command's own lookup says so in its words
    if len(found) == 1:
        return found[0]
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    raise AmbiguousRunIdError(
        f"run id {text!r} is ambiguous: it starts {'more than 3' if len(found) > 3 else len(found)}"
        f" runs' ids ({shown}); give more characters (tideflow runs --full-ids shows whole ids)"
    )
