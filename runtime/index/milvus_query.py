"""The search half of :class:`~clipq.runtime.index.milvus.MilvusIndex`: Milvus' ANN, an exact scan, filters.

Queries go to Milvus ``QUERY_CHUNK`` at a time in one ``search`` call (one call per query costs a
round trip each: measured with Milvus Lite, 200 queries in one call at 751 queries/s against 18/s
one at a time). A filter Milvus can evaluate goes along as its expression; one it cannot is
evaluated by clipq over the stored metadata, and the search runs on the allowed ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .filters import MetadataFilter, allowed_labels
from .milvus_filters import META_FIELD, ids_expr, milvus_expr
from .milvus_schema import ID_FIELD, IDS_CHUNK, MAX_TOPK, QUERY_CHUNK, SCAN_BATCH, VECTOR_FIELD
from .query import SearchApi, SearchResult, exact_topk
from .validate import NO_METADATA


class MilvusQueryMixin(SearchApi):
    """Search over the collection; the store's state and calls come from :class:`MilvusIndex`."""

    dim: int
    space: str
    index_type: str
    nprobe: int
    _ef: int
    ef: int
    _client: Any
    collection: str

    _call: Callable[..., Any]
    _get: Callable[[Any, list[str]], dict[str, dict[str, Any]]]
    _scan: Callable[[str, list[str]], Iterator[dict[str, Any]]]
    __len__: Callable[[], int]

    def _recall_base(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Sampled recall queries start from the first ``n`` stored vectors Milvus returns."""
        rows = self._call(
            "query",
            self._client.query,
            self.collection,
            filter="",
            output_fields=[VECTOR_FIELD],
            limit=max(1, n),
        )
        if not rows:
            raise InvalidInputError("cannot check recall of an empty index")
        return np.asarray([r[VECTOR_FIELD] for r in rows], np.float32)

    def _search(
        self, q: np.ndarray, k: int, filt: MetadataFilter | None, exact: bool | None, num_threads: int = 1,
        *, objects: bool
    ) -> Any:
        """The search behind :class:`SearchApi`'s calls (``num_threads``: Milvus' own business)."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be an integer >= 1, not {k!r}")
        kk = min(int(k), MAX_TOPK)
        expr = milvus_expr(filt)
        exprs = [expr] if expr is not None else self._allowed_exprs(filt)
        rows: list[list[tuple[str, float]]] = [[] for _ in range(q.shape[0])]
        metas: dict[str, Any] = {}  # metadata that came back with the hits (one round trip, not two)
        if q.shape[0] and exprs:
            if exact:
                rows = self._exact(q, kk, exprs)
            else:
                for e in exprs:
                    rows = _merge(rows, self._ann(q, kk, e, metas if objects else None), kk)
        if q.shape[0] and not any(rows) and len(self) == 0:
            raise InvalidInputError("the index is empty: add items before searching")
        if not objects:
            width = min((len(r) for r in rows), default=0)
            ids = [[i for i, _ in r[:width]] for r in rows]
            return ids, np.array([[s for _, s in r[:width]] for r in rows], np.float32).reshape(
                len(rows), width
            )
        wanted = list(dict.fromkeys(i for r in rows for i, _ in r if i not in metas))
        if wanted:
            metas.update({i: row[META_FIELD] for i, row in self._get(wanted, [META_FIELD]).items()})
        return [[SearchResult(i, s, _view(metas[i])) for i, s in r] for r in rows]

    def _ann(
        self, q: np.ndarray, k: int, expr: str, metas: dict[str, Any] | None
    ) -> list[list[tuple[str, float]]]:
        """Milvus' search, ``QUERY_CHUNK`` queries a call; the hits' metadata into ``metas`` if given."""
        if self.index_type == "HNSW":
            params: dict[str, Any] = {"ef": max(self._ef, k)}
        elif self.index_type.startswith("IVF"):
            params = {"nprobe": self.nprobe}
        else:
            params = {}
        sign = -1.0 if self.space == "l2" else 1.0
        out: list[list[tuple[str, float]]] = []
        for s in range(0, q.shape[0], QUERY_CHUNK):
            res = self._call(
                "search",
                self._client.search,
                self.collection,
                data=q[s : s + QUERY_CHUNK],
                limit=k,
                filter=expr,
                output_fields=[] if metas is None else [META_FIELD],
                search_params={"params": params},
                anns_field=VECTOR_FIELD,
            )
            out += [[(h["id"], sign * float(h["distance"])) for h in hits] for hits in res]
            if metas is not None:
                metas.update((h["id"], h["entity"].get(META_FIELD)) for hits in res for h in hits)
        return out

    def _exact(self, q: np.ndarray, k: int, exprs: list[str]) -> list[list[tuple[str, float]]]:
        """Exact top-k by scanning every (allowed) vector through the client."""
        best: list[list[tuple[str, float]]] = [[] for _ in range(q.shape[0])]
        for e in exprs:
            batch_ids: list[str] = []
            batch_vecs: list[Any] = []
            for row in self._scan(e, [VECTOR_FIELD]):
                batch_ids.append(row[ID_FIELD])
                batch_vecs.append(row[VECTOR_FIELD])
                if len(batch_ids) >= SCAN_BATCH:
                    best = _merge(best, _topk_rows(q, batch_ids, batch_vecs, k, self.space), k)
                    batch_ids, batch_vecs = [], []
            if batch_ids:
                best = _merge(best, _topk_rows(q, batch_ids, batch_vecs, k, self.space), k)
        return best

    def _allowed_exprs(self, filt: MetadataFilter | None) -> list[str]:
        """A filter Milvus cannot evaluate: clipq scans the metadata, then searches by id lists."""
        meta = {r[ID_FIELD]: (r[META_FIELD] or NO_METADATA) for r in self._scan("", [META_FIELD])}
        allowed = allowed_labels(meta, filt)  # type: ignore[arg-type]
        return [ids_expr(allowed[s : s + IDS_CHUNK]) for s in range(0, len(allowed), IDS_CHUNK)]


def _view(meta: Any) -> Mapping[str, Any]:
    return MappingProxyType(meta) if meta else NO_METADATA


def _topk_rows(
    q: np.ndarray, ids: list[str], vecs: list[Any], k: int, space: str
) -> list[list[tuple[str, float]]]:
    labels, scores = exact_topk(q, np.asarray(vecs, np.float32), k, space=space)
    return [
        [(ids[j], float(s)) for j, s in zip(lrow, srow)]
        for lrow, srow in zip(labels.tolist(), scores.tolist())
    ]


def _merge(
    a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]], k: int
) -> list[list[tuple[str, float]]]:
    """Per query, the best k of two ranked lists (higher score first; ties keep ``a``'s order)."""
    return [sorted(x + y, key=lambda p: -p[1])[:k] if x else y[:k] for x, y in zip(a, b)]
