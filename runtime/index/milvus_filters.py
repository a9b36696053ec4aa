"""clipq's metadata filters as Milvus boolean expressions on the JSON ``meta`` field.

A dict filter ``{key: value}`` (all keys must match; a list/tuple/set value matches any of its
members) becomes ``meta["key"] == value and (meta["k2"] == a or meta["k2"] == b)``. Milvus compares
JSON numbers and booleans as Python does (measured with Milvus Lite 3.2: ``1 == 1.0 == true``,
``"1" != 1``, a missing key or a list value never equals a scalar), so such a filter selects the
same items that :func:`clipq.runtime.index.filters.allowed_labels` lets through, and the search runs
inside Milvus. ``in`` is not used: Milvus Lite accepts it on fields only, not on JSON paths.

What cannot be written that way is evaluated by clipq instead: a callable, ``None`` (Milvus'
``is null`` also matches a missing key, which clipq's filter never does), list or dict values,
an empty list, integers beyond 2**53, strings or keys with control characters. :func:`milvus_expr` returns None for
those and the store scans the metadata with :func:`allowed_labels` itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputError
from .filters import MetadataFilter

#: the JSON field that holds an item's metadata
META_FIELD = "meta"

_MAX_EXACT_INT = 2**53


def _literal(value: Any) -> str | None:
    """A Milvus expression literal equal to ``value`` under Python's ``==``, or None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < _MAX_EXACT_INT else None
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        return _quoted(value)
    return None


def _quoted(text: str) -> str | None:
    if any(ord(ch) < 32 for ch in text):
        return None
    # Milvus' parser takes backslash escapes for quote and backslash, but not \\u: keep non-ASCII as is
    return json.dumps(text, ensure_ascii=False)


def milvus_expr(filt: MetadataFilter | None) -> str | None:
    """The Milvus expression of a dict filter; ``""`` for no filter; None when clipq must evaluate it.

    Raises:
        InvalidInputError: ``filt`` is neither a dict nor a callable.
    """
    if filt is None:
        return ""
    if callable(filt):
        return None
    if not isinstance(filt, Mapping):
        raise InvalidInputError(f"filter must be a dict or a callable, not {type(filt).__name__}")
    clauses = []
    for key, want in filt.items():
        path = _quoted(key) if isinstance(key, str) else None
        if path is None:
            return None
        values = list(want) if isinstance(want, (list, tuple, set, frozenset)) else [want]
        lits = [_literal(v) for v in values]
        if any(lit is None for lit in lits):
            return None
        if not lits:  # an empty list matches nothing: rare, left to clipq
            return None
        ors = " or ".join(f"{META_FIELD}[{path}] == {lit}" for lit in lits)
        clauses.append(f"({ors})" if len(lits) > 1 else ors)
    return " and ".join(clauses)


def ids_expr(ids: list[str], field: str = "id") -> str:
    """``id in ["a", "b"]`` (ids with control characters cannot be written; they never reach here:
    the store refuses them on the way in)."""
    quoted = [json.dumps(i, ensure_ascii=False) for i in ids]
    return f"{field} in [{', '.join(quoted)}]"
