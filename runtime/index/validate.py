"""Checks on what goes into the index: vectors (dimension, finiteness, norm), ids and metadata.

Everything is checked before the graph changes, so that a bad call leaves the index as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Container, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, DuplicateIdError, InvalidInputError, ShapeError
from ..vectors import l2_normalize

#: shared by every item without metadata: read-only, so sharing is safe, and it saves ~100 B an item
NO_METADATA: Mapping[str, Any] = MappingProxyType({})

#: metadata as callers give it: a list aligned with the rows, or a mapping id -> dict
MetadataArg = Sequence[Mapping[str, Any] | None] | Mapping[str, Mapping[str, Any]] | None


def prepare_vectors(data: Any, dim: int, space: str, *, what: str, allow_empty: bool = False) -> np.ndarray:
    """Validate and convert to C-contiguous float32 [N, dim]; normalise for cosine.

    Args:
        data: [N, dim] or [dim] numbers.
        dim: the index's dimension.
        space: the index's space (``"cosine"`` normalises).
        what: what the vectors are, for error messages (``"query"``, ``"embeddings"`` ...).
        allow_empty: accept N = 0.

    Returns:
        float32 [N, dim], C-contiguous.

    Raises:
        ShapeError: not 1-D or 2-D.
        DimensionMismatchError: the dimension is not ``dim``.
        InvalidInputError: not numbers, no rows (unless ``allow_empty``), NaN/inf, a zero vector (cosine).
    """
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{what} must be a float array: {e}") from e
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ShapeError(f"{what} must be [N, {dim}] or [{dim}], got shape {arr.shape}")
    if arr.shape[1] != dim:
        # hnswlib would read past the vector (or short of it) and return garbage
        raise DimensionMismatchError(f"{what} have dimension {arr.shape[1]}, the index holds {dim}-d vectors")
    if arr.shape[0] == 0 and not allow_empty:
        raise InvalidInputError(f"{what}: no vectors given")
    # The squared norms give finiteness too: a NaN or inf anywhere in a row makes its entry
    # non-finite. One query is the hot path of a service, where numpy's per-call overhead
    # outweighs the arithmetic, hence the scalar branch.
    if arr.shape[0] == 1:
        sq1 = float(np.dot(arr[0], arr[0]))
        if math.isfinite(sq1):
            if space == "cosine":
                if sq1 <= 0.0:
                    raise InvalidInputError(f"{what}: a zero vector has no direction", index=0)
                arr = arr * np.float32(1.0 / math.sqrt(sq1))
            return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    sq = np.einsum("ij,ij->i", arr, arr)
    if not np.isfinite(sq).all():
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            raise InvalidInputError(f"{what} contain NaN or inf values", index=int(np.argmin(finite)))
        sq = np.einsum("ij,ij->i", arr, arr, dtype=np.float64)  # finite but float32 overflowed
    if space == "cosine" and arr.shape[0]:
        if not (sq > 0).all():
            raise InvalidInputError(f"{what}: a zero vector has no direction", index=int(np.argmin(sq)))
        # l2_normalize takes the norm in float32, which overflows to inf (and so gives zero vectors)
        # for the rare rows whose squared norm does; those were measured in float64 above
        arr = l2_normalize(arr) if sq.dtype == np.float32 else arr / np.sqrt(sq)[:, None]
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr


def check_ids_unique(id_list: Sequence[Any], existing: Container[str]) -> None:
    """Refuse ids that are not non-empty strings, repeat within ``id_list`` or are in ``existing``.

    ``None`` entries pass (the index assigns them from the label later).

    Raises:
        InvalidInputError: an id is not a non-empty string.
        DuplicateIdError: an id repeats in the call or is already in the index.
    """
    seen: set[str] = set()
    for n, item_id in enumerate(id_list):
        if item_id is None:  # assigned later from the label
            continue
        if not isinstance(item_id, str) or not item_id:
            raise InvalidInputError(f"ids must be non-empty strings, got {item_id!r}", index=n)
        if item_id in seen:
            raise DuplicateIdError(f"id {item_id!r} repeats in this call", index=n)
        if item_id in existing:
            raise DuplicateIdError(f"id {item_id!r} is already in the index (use update)", index=n)
        seen.add(item_id)


def check_metadata(metadata: MetadataArg, id_list: Sequence[str | None]) -> list[Mapping[str, Any]]:
    """One read-only, JSON-clean metadata dict per id.

    Args:
        metadata: a list aligned with ``id_list``, a mapping id -> dict, or None (no metadata).
        id_list: the ids of the items.

    Returns:
        Read-only views, detached from the caller's objects.

    Raises:
        InvalidInputError: the list has another length, an entry is not a dict or not JSON-serialisable.
    """
    if metadata is None:
        return [NO_METADATA] * len(id_list)
    if isinstance(metadata, Mapping):
        rows: list[Any] = [metadata.get(i) for i in id_list]
    else:
        rows = list(metadata)
        if len(rows) != len(id_list):
            raise InvalidInputError(f"got {len(rows)} metadata entries for {len(id_list)} items")
    out: list[Mapping[str, Any]] = []
    for n, row in enumerate(rows):
        row = {} if row is None else row
        if not isinstance(row, Mapping):
            raise InvalidInputError(f"metadata must be a dict, got {type(row).__name__}", index=n)
        try:
            # a JSON round trip both checks that the sidecar can hold it and detaches it from
            # the caller's objects
            clean = json.loads(json.dumps(dict(row), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"metadata is not JSON-serialisable: {e}", index=n) from e
        out.append(MappingProxyType(clean) if clean else NO_METADATA)
    return out
