"""Strict JSON for everything securefl writes: no ``NaN``, ``Infinity`` or
``-Infinity`` tokens, which RFC 8259 forbids and many parsers reject.

Non-finite floats are written with a documented meaning instead:
``NaN`` becomes ``null`` (no value: e.g. an accountant that cannot bound the
history), ``+inf`` the string ``"inf"`` and ``-inf`` the string ``"-inf"``
(e.g. the epsilon of a run without noise).  :func:`dumps` always passes
``allow_nan=False``, so a forgotten conversion fails loudly instead of
writing invalid JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "sanitize"]


def sanitize(value: Any) -> Any:
    """``value`` with every non-finite float replaced (recursively through
    dicts, lists and tuples): NaN -> None, inf -> ``"inf"``, -inf ->
    ``"-inf"``.  Other values are returned as they are."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps(sanitize(value), allow_nan=False, **kwargs)``.

    Raises:
        TypeError: for a value JSON cannot represent.
    """
    return json.dumps(sanitize(value), allow_nan=False, **kwargs)
