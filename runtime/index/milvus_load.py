"""Bulk loads into a Milvus store that resume: ``clipq index build --from-embeddings DIR --store URL``.

Millions of vectors do not go in one call, and a load can stop half-way (a server restart, a
killed job). The source is a list of shards read one at a time (a ``clipq embed`` output); rows go
in batches of ``batch_rows``, and after each batch the position (shard, row) is recorded in the
collection's properties under ``clipq.load.<key>`` (``key`` names the source). A rerun with the
same key starts at the recorded position; the one batch that may have been written without its
record is checked id by id, and the ids already there are skipped, so nothing is written twice.
A load that starts on an empty collection trusts the source's ids to be unique across batches (a
``clipq embed`` output's are) and does not look each batch up in Milvus; one into a collection that
already holds items looks every batch up first.

Every batch is checked before it is written (vector dimension and values, ids, metadata, ids
already in the collection from something else: :class:`DuplicateIdError`). A failing batch is
rolled back by :meth:`MilvusIndex.insert_rows`, so the collection always holds whole batches, and
the record says which.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .milvus import MilvusIndex, check_ids
from .validate import check_ids_unique, check_metadata, prepare_vectors

log = logging.getLogger(__name__)

#: a shard: () -> (ids, vectors [n, dim], metadata dicts), read when its turn comes
ShardReader = Callable[[], tuple[Sequence[str], np.ndarray, Sequence[Mapping[str, Any]]]]

PROGRESS_PREFIX = "clipq.load."


@dataclass
class LoadReport:
    """What :func:`bulk_load` did."""

    key: str
    rows: int  # rows in the source
    inserted: int  # rows this run wrote
    present: int  # rows skipped: written by an earlier, interrupted run
    resumed_at: tuple[int, int] | None  # (shard, row) an earlier run had reached, or None
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.inserted / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "rows": self.rows,
            "inserted": self.inserted,
            "present": self.present,
            "resumed_at": list(self.resumed_at) if self.resumed_at else None,
            "seconds": self.seconds,
            "rows_per_s": self.rows_per_s,
        }


def load_progress(index: MilvusIndex, key: str) -> dict[str, Any] | None:
    """The recorded position of the load ``key`` (``{"shard", "row", "done"}``), or None."""
    raw = index.properties().get(PROGRESS_PREFIX + key)
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None


def bulk_load(
    index: MilvusIndex,
    shards: Sequence[ShardReader],
    counts: Sequence[int],
    key: str,
    *,
    progress: bool = True,
) -> LoadReport:
    """Insert every shard's rows into ``index``, resuming where a run with the same ``key`` stopped.

    Args:
        index: the store.
        shards: readers of the shards, in order.
        counts: rows in each shard (for the progress bar and the report).
        key: names the source (a digest of it): the progress record's name.
        progress: show a progress bar.

    Returns:
        A :class:`LoadReport`.

    Raises:
        DimensionMismatchError / InvalidInputError / DuplicateIdError: a batch is unusable (the batches
            before it stay, recorded: fix the source or the collection and run again).
        StoreError / StoreUnavailableError: Milvus refused or went away (run again to resume).
    """
    from tqdm.auto import tqdm

    rec = load_progress(index, key)
    total = int(sum(counts))
    t0 = time.perf_counter()
    if rec and rec.get("done"):
        log.info("%s: load %s already complete (%d rows)", index.url, key, total)
        return LoadReport(key, total, 0, 0, None, 0.0)
    start_shard, start_row = (int(rec["shard"]), int(rec["row"])) if rec else (0, 0)
    resumed = (start_shard, start_row) if rec else None
    inserted = present = 0
    first = rec is not None  # the batch at the recorded position may be in already
    # A load that starts on an empty collection checks its ids within each batch only: looking each
    # batch's ids up in Milvus costs as much as inserting them (Milvus Lite: 0.6 s per 2,000 ids),
    # and `clipq embed` ids are unique by construction. Into a collection that held items, every
    # batch is looked up first (DuplicateIdError rather than a second row under one id).
    fresh = bool(rec.get("fresh")) if rec else len(index) == 0
    skipped_rows = sum(counts[:start_shard]) + start_row
    with tqdm(total=total, initial=skipped_rows, unit="vec", desc="loading", disable=not progress) as bar:
        for n in range(start_shard, len(shards)):
            ids, vecs, metas = shards[n]()
            if len(ids) != len(vecs) or len(ids) != len(metas):
                from ..errors import InvalidInputError

                raise InvalidInputError(
                    f"shard {n}: {len(vecs)} vectors, {len(ids)} ids, {len(metas)} metadata rows"
                )
            row0 = start_row if n == start_shard else 0
            for s in range(row0, len(ids), index.batch_rows):
                chunk = list(ids[s : s + index.batch_rows])
                vec = prepare_vectors(
                    vecs[s : s + index.batch_rows], index.dim, index.space, what=f"shard {n} vectors"
                )
                check_ids(chunk)
                there = index._existing(chunk) if first or not fresh else set()
                if first and there:
                    keep = [j for j, i in enumerate(chunk) if i not in there]
                    present += len(chunk) - len(keep)
                    chunk, vec = [chunk[j] for j in keep], vec[keep]
                    meta_rows = [metas[s + j] for j in keep]
                    there = set()
                else:
                    meta_rows = list(metas[s : s + index.batch_rows])
                first = False
                check_ids_unique(chunk, there)
                if chunk:
                    index.insert_rows(chunk, vec, check_metadata(meta_rows, chunk))
                inserted += len(chunk)
                end = s + index.batch_rows
                pos = {"shard": n, "row": end} if end < len(ids) else {"shard": n + 1, "row": 0}
                pos["fresh"] = fresh
                index.set_properties({PROGRESS_PREFIX + key: json.dumps(pos)})
                bar.update(min(index.batch_rows, len(ids) - s))
    index.set_properties({PROGRESS_PREFIX + key: json.dumps({"shard": len(shards), "row": 0, "done": True})})
    return LoadReport(key, total, inserted, present, resumed, time.perf_counter() - t0)
