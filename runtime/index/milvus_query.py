"""The search half of :class:`~clipq.runtime.index.milvus.MilvusIndex`: Milvus' ANN, an exact scan, filters.

Queries go to Milvus ``QUERY_CHUNK`` at a time in one ``search`` call (one call per query costs a
round trip each: measured with Milvus Lite, 200 queries in one call at 751 queries/s against 18/s
one at a time). A filter Milvus can evaluate goes along as its expression; one it cannot is
evaluated by clipq over the stored metadata, and the search runs on the allowed ids.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ShapeError
from .filters import MetadataFilter, allowed_labels
from .milvus_filters import META_FIELD, ids_expr, milvus_expr
from .milvus_schema import ID_FIELD, IDS_CHUNK, MAX_TOPK, QUERY_CHUNK, SCAN_BATCH, VECTOR_FIELD
from .query import RecallReport, SearchResult, exact_topk
from .validate import NO_METADATA, prepare_vectors


class MilvusQueryMixin:
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

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        num_threads: int = 1,
    ) -> list[SearchResult]:
        """Nearest items to one vector; see :meth:`ImageIndex.search` (``num_threads`` is Milvus' business)."""
        vec = prepare_vectors(vector, self.dim, self.space, what="query")
        if vec.shape[0] != 1:
            raise ShapeError(f"search takes one vector, got {vec.shape[0]}; use search_batch")
        return self._search(vec, k, filter, exact, objects=True)[0]

    def search_batch(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        num_threads: int = 1,
    ) -> list[list[SearchResult]]:
        """Nearest items to each of several vectors ([N, dim]), in as few Milvus calls as possible."""
        vecs = prepare_vectors(vectors, self.dim, self.space, what="queries", allow_empty=True)
        return self._search(vecs, k, filter, exact, objects=True)

    def search_ids(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        num_threads: int = 1,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Like :meth:`search_batch` but ids and a float32 [N, k'] score matrix (k' the shortest row)."""
        vecs = prepare_vectors(vectors, self.dim, self.space, what="queries", allow_empty=True)
        return self._search(vecs, k, filter, exact, objects=False)

    def recall_check(
        self,
        k: int = 10,
        n_queries: int = 200,
        *,
        queries: np.ndarray | None = None,
        noise: float = 0.1,
        seed: int = 0,
    ) -> RecallReport:
        """Recall@k of Milvus' search against an exact scan, as :meth:`ImageIndex.recall_check`.

        Sampled queries are stored vectors (the first ``n_queries`` Milvus returns) moved by noise.
        """
        if queries is None:
            rows = self._call(
                "query",
                self._client.query,
                self.collection,
                filter="",
                output_fields=[VECTOR_FIELD],
                limit=max(1, n_queries),
            )
            if not rows:
                raise InvalidInputError("cannot check recall of an empty index")
            base = np.asarray([r[VECTOR_FIELD] for r in rows], np.float32)
            rng = np.random.default_rng(seed)
            scale = noise * np.linalg.norm(base, axis=1, keepdims=True) / math.sqrt(self.dim)
            queries = base + rng.standard_normal(base.shape).astype(np.float32) * scale
        q = prepare_vectors(queries, self.dim, self.space, what="queries")
        t0 = time.perf_counter()
        approx, _ = self.search_ids(q, k, exact=False)
        t1 = time.perf_counter()
        truth, _ = self.search_ids(q, k, exact=True)
        t2 = time.perf_counter()
        per_query = np.array([len(set(a) & set(t)) / max(len(t), 1) for a, t in zip(approx, truth)])
        return RecallReport(
            k=k,
            n_queries=len(per_query),
            ef=self.ef,
            recall=float(per_query.mean()),
            min_recall=float(per_query.min()),
            hnsw_qps=len(per_query) / max(t1 - t0, 1e-9),
            exact_qps=len(per_query) / max(t2 - t1, 1e-9),
        )

    def _search(
        self, q: np.ndarray, k: int, filt: MetadataFilter | None, exact: bool | None, *, objects: bool
    ) -> Any:
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
