"""JSON encoding with tideflow's errors.

Inputs and outputs are stored as JSON so that any tool reading the database understands them. We
refuse what ``json`` cannot encode rather than guess (no ``default=str``): a datetime silently
turned into a string would come back as a different type on the next step.
"""

from __future__ import annotations

import json
from typing import Any

from tideflow.errors import InputNotSerializableError


def dumps(value: Any, *, what: str) -> str:
    """Encode ``value``; ``what`` names it in the error ("run input of flow 'x'")."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputNotSerializableError(
            f"{what} is not JSON-serialisable ({type(value).__name__}): {exc}. "
            "Pass only dict, list, str, int, float, bool and None (convert dates, decimals and "
            "objects to strings or numbers first)."
        ) from exc


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
