"""Metadata filters on search: which live items a filter lets through."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidInputError

#: a dict ``{key: value}`` (all must match; a list/tuple/set value matches any of its members), or a
#: callable ``metadata -> bool``
MetadataFilter = Mapping[str, Any] | Callable[[Mapping[str, Any]], bool]


def allowed_labels(meta: Mapping[int, Mapping[str, Any]], filt: MetadataFilter) -> list[int]:
    """Labels whose metadata passes ``filt``, in ``meta``'s order.

    Args:
        meta: label -> metadata of the live items.
        filt: a :data:`MetadataFilter`. A key missing from an item's metadata never matches.

    Returns:
        The labels that pass.

    Raises:
        InvalidInputError: ``filt`` is neither a dict nor a callable.
    """
    if callable(filt):
        return [label for label, m in meta.items() if filt(m)]
    if not isinstance(filt, Mapping):
        raise InvalidInputError(f"filter must be a dict or a callable, not {type(filt).__name__}")
    conds = []
    for key, want in filt.items():
        if isinstance(want, (list, tuple, set, frozenset)):
            conds.append((key, True, want if isinstance(want, (set, frozenset)) else tuple(want)))
        else:
            conds.append((key, False, want))
    missing = object()
    out = []
    for label, m in meta.items():
        for key, many, want in conds:
            value = m.get(key, missing)
            if value is missing or (value not in want if many else value != want):
                break
        else:
            out.append(label)
    return out
