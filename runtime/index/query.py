"""Search over the index: HNSW, the exact numpy fallback, and the recall check between the two.

Scores are similarities, higher is better: the cosine (``space="cosine"``), the inner product
(``"ip"``) or the negative squared L2 distance (``"l2"``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ShapeError
from ..metrics import neighbour_recall
from .filters import MetadataFilter, allowed_labels
from .lock import RWLock
from .validate import prepare_vectors

log = logging.getLogger(__name__)

#: largest score matrix (queries x items) one exact-search step materialises, in floats
_EXACT_BLOCK = 1 << 24


@dataclass(slots=True)
class SearchResult:
    """One hit: the item's id, its score (higher is better) and its metadata (read-only view)."""

    id: str
    score: float
    metadata: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "metadata": dict(self.metadata)}


@dataclass(frozen=True)
class RecallReport:
    """Recall@k of the HNSW search against exact search on sampled queries."""

    k: int
    n_queries: int
    ef: int
    recall: float  # mean over queries of |hnsw top-k & exact top-k| / k
    min_recall: float  # worst single query
    hnsw_qps: float
    exact_qps: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SearchApi:
    """The public search calls of every store (:class:`ImageIndex`, ``MilvusIndex``) over two hooks.

    A store implements ``_search(vectors, k, filter, exact, num_threads, objects=...)`` (ids and a
    score matrix, or :class:`SearchResult` rows) and ``_recall_base(n, rng)`` (up to ``n`` stored
    vectors, float32, for sampled recall queries; InvalidInputError when it is empty).
    """

    dim: int
    space: str
    ef: int
    _search: Any
    _recall_base: Any

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        num_threads: int = 1,
    ) -> list[SearchResult]:
        """Nearest items to one vector.

        Args:
            vector: float [dim] (or [1, dim]).
            k: results wanted; an index with fewer (matching) live items returns them all.
            filter: metadata filter: a dict ``{key: value}`` (all must match; a list/tuple/set value
                matches any of its members), or a callable ``metadata -> bool``.
            exact: True for exact numpy search, False for HNSW; None picks exact for collections up
                to ``exact_threshold`` items and for filters that leave few items.
            num_threads: engine threads for this query (a Milvus store's server decides its own).

        Returns:
            Results best first.

        Raises:
            DimensionMismatchError: the vector's dimension is not the index's.
            InvalidInputError: NaN/inf values, a zero vector (cosine), k < 1, or an empty index.
        """
        vec = prepare_vectors(vector, self.dim, self.space, what="query")
        if vec.shape[0] != 1:
            raise ShapeError(f"search takes one vector, got {vec.shape[0]}; use search_batch")
        return self._search(vec, k, filter, exact, num_threads, objects=True)[0]

    def search_batch(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        num_threads: int = 1,
    ) -> list[list[SearchResult]]:
        """Nearest items to each of several vectors ([N, dim]); see :meth:`search`."""
        vecs = prepare_vectors(vectors, self.dim, self.space, what="queries", allow_empty=True)
        return self._search(vecs, k, filter, exact, num_threads, objects=True)

    def search_ids(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        num_threads: int = 1,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Like :meth:`search_batch` but returns ids and a float32 [N, k'] score matrix.

        ``k' = min(k, live items matching the filter)``, the same for every row.
        """
        vecs = prepare_vectors(vectors, self.dim, self.space, what="queries", allow_empty=True)
        return self._search(vecs, k, filter, exact, num_threads, objects=False)

    def recall_check(
        self,
        k: int = 10,
        n_queries: int = 200,
        *,
        queries: np.ndarray | None = None,
        noise: float = 0.1,
        seed: int = 0,
    ) -> RecallReport:
        """Recall@k of the approximate search against exact search, at the current settings.

        Args:
            k: neighbours compared.
            n_queries: queries sampled when ``queries`` is not given: stored vectors moved by
                Gaussian noise (``noise`` times their norm), so that a query is near the data but is
                not itself a stored item.
            queries: explicit query vectors [N, dim] instead.
            noise: relative noise of the sampled queries.
            seed: sampling seed.

        Returns:
            A :class:`RecallReport`.

        Raises:
            InvalidInputError: the index is empty.
        """
        if queries is None:
            rng = np.random.default_rng(seed)
            base = self._recall_base(n_queries, rng)
            scale = noise * np.linalg.norm(base, axis=1, keepdims=True) / math.sqrt(self.dim)
            queries = base + rng.standard_normal(base.shape).astype(np.float32) * scale
        q = prepare_vectors(queries, self.dim, self.space, what="queries")
        t0 = time.perf_counter()
        approx, _ = self.search_ids(q, k, exact=False)
        t1 = time.perf_counter()
        truth, _ = self.search_ids(q, k, exact=True)
        t2 = time.perf_counter()
        per_query = neighbour_recall(approx, truth)  # every row has the same k', so these are [N, k'] arrays
        return RecallReport(
            k=k,
            n_queries=len(per_query),
            ef=self.ef,
            recall=float(per_query.mean()),
            min_recall=float(per_query.min()),
            hnsw_qps=len(per_query) / max(t1 - t0, 1e-9),
            exact_qps=len(per_query) / max(t2 - t1, 1e-9),
        )



class QueryMixin(SearchApi):
    """The search half of :class:`~clipq.runtime.index.ImageIndex`: reads under the read lock."""

    dim: int
    space: str
    ef: int
    exact_threshold: int
    _lock: RWLock
    _hnsw: Any
    _label_to_id: dict[int, str]
    _meta: dict[int, Mapping[str, Any]]
    _dense: tuple[np.ndarray, np.ndarray] | None
    build_recall: dict[str, Any] | None

    def _recall_base(self, n: int, rng: np.random.Generator) -> np.ndarray:
        with self._lock.read():
            labels = np.fromiter(self._label_to_id, dtype=np.int64, count=len(self._label_to_id))
            if labels.size == 0:
                raise InvalidInputError("cannot check recall of an empty index")
            pick = rng.choice(labels, size=min(n, labels.size), replace=False)
            return np.asarray(self._hnsw.get_items(pick.tolist()), dtype=np.float32)

    def check_build(self, k: int = 10, n_queries: int = 200, *, seed: int = 0) -> dict[str, Any]:
        """The build-time recall self-check: :meth:`recall_check` at the current settings, recorded.

        The result goes to ``self.build_recall``, which :meth:`save` writes to the sidecar and
        ``clipq index info`` shows.

        Returns:
            ``{"engine", "k", "n_queries", "recall", "min_recall", "ef", "nprobe", "rescore", "qps", "exact_qps"}``.
        """
        rep = self.recall_check(k=k, n_queries=n_queries, seed=seed)
        engine = getattr(self, "engine", "hnswlib")
        out = {
            "engine": engine, "k": rep.k, "n_queries": rep.n_queries, "recall": round(rep.recall, 4),
            "min_recall": round(rep.min_recall, 4), "ef": rep.ef, "qps": round(rep.hnsw_qps, 1),
            "exact_qps": round(rep.exact_qps, 1),
        }
        if engine != "hnswlib":
            out.update(nprobe=getattr(self, "nprobe", None), rescore=getattr(self, "rescore", None))
        self.build_recall = out
        return out

    # -- internals -----------------------------------------------------------------------------
    def _dense_view(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels [n], vectors [n, dim]) of live items, cached until the next write."""
        dense = self._dense
        if dense is None:
            labels = np.array(sorted(self._label_to_id), dtype=np.int64)
            vecs = (
                np.asarray(self._hnsw.get_items(labels.tolist()), dtype=np.float32)
                if labels.size
                else np.zeros((0, self.dim), np.float32)
            )
            # concurrent readers may both build it; they build the same thing, and no writer can
            # run (and invalidate it) while a reader holds the lock
            dense = self._dense = (labels, vecs)
        return dense

    def _search(
        self,
        q: np.ndarray,
        k: int,
        filt: MetadataFilter | None,
        exact: bool | None,
        num_threads: int,
        *,
        objects: bool,
    ) -> Any:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be an integer >= 1, not {k!r}")
        with self._lock.read():
            live = len(self._label_to_id)
            if live == 0:
                raise InvalidInputError("the index is empty: add items before searching")
            allowed: list[int] | None = None
            n_candidates = live
            if filt is not None:
                allowed = allowed_labels(self._meta, filt)
                n_candidates = len(allowed)
            kk = min(int(k), n_candidates)
            if q.shape[0] == 0 or kk == 0:
                labels = np.zeros((q.shape[0], 0), np.int64)
                scores = np.zeros((q.shape[0], 0), np.float32)
            else:
                if exact is None:
                    # HNSW gains nothing on a small set, and a filtered HNSW walk degrades when the
                    # filter rejects most nodes it visits
                    exact = n_candidates <= self.exact_threshold or (
                        allowed is not None and n_candidates < 0.05 * live
                    )
                if exact:
                    labels, scores = self._exact(q, kk, allowed)
                else:
                    labels, scores = self._hnsw_query(q, kk, allowed, num_threads)
            if not objects:
                return [[self._label_to_id[lb] for lb in row] for row in labels.tolist()], scores
            ids, meta = self._label_to_id, self._meta
            return [
                [SearchResult(ids[lb], sc, meta[lb]) for lb, sc in zip(lrow, srow)]
                for lrow, srow in zip(labels.tolist(), scores.tolist())
            ]

    def _hnsw_query(
        self, q: np.ndarray, k: int, allowed: list[int] | None, num_threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        search_labels = getattr(self._hnsw, "search_labels", None)  # a faiss engine: scores already
        if search_labels is not None:
            try:
                return search_labels(q, k, allowed, num_threads)
            except RuntimeError:
                log.debug("the engine returned fewer than k=%d results; falling back to exact search", k)
                return self._exact(q, k, allowed)
        flt = None if allowed is None else set(allowed).__contains__
        try:
            labels, dists = self._hnsw.knn_query(q, k=k, num_threads=num_threads, filter=flt)
        except RuntimeError:
            # hnswlib found fewer than k reachable items (many deletions, a strict filter, a small
            # ef): answer exactly rather than fail
            log.debug("hnswlib returned fewer than k=%d results; falling back to exact search", k)
            return self._exact(q, k, allowed)
        # labels stay uint64 (tolist() gives ints either way); float32 - python float stays float32
        return labels, (-dists if self.space == "l2" else 1.0 - dists)

    def _exact(self, q: np.ndarray, k: int, allowed: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
        streamed = getattr(self._hnsw, "exact", None)
        if allowed is None and streamed is not None:
            # a compressed engine: the floats are on disk, read them in chunks rather than keep a copy
            return streamed(q, k)
        if allowed is None:
            labels, vecs = self._dense_view()
        else:
            labels = np.array(sorted(allowed), dtype=np.int64)
            vecs = np.asarray(self._hnsw.get_items(labels.tolist()), dtype=np.float32)
        return exact_topk(q, vecs, k, space=self.space, labels=labels)


def exact_topk(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    *,
    space: str = "cosine",
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by batched matrix products (the reference for HNSW recall).

    Args:
        queries: float32 [Q, D] (normalised already for cosine).
        vectors: float32 [N, D].
        k: neighbours per query (<= N).
        space: ``"cosine"``/``"ip"`` (score = dot product) or ``"l2"`` (score = -squared distance).
        labels: int [N] returned in place of row numbers.

    Returns:
        (labels [Q, k], scores [Q, k]) best first.
    """
    n = vectors.shape[0]
    k = min(k, n)
    out_idx = np.empty((queries.shape[0], k), np.int64)
    out_sc = np.empty((queries.shape[0], k), np.float32)
    sq = (vectors * vectors).sum(axis=1) if space == "l2" else None
    step = max(1, _EXACT_BLOCK // max(n, 1))
    for s in range(0, queries.shape[0], step):
        block = queries[s : s + step]
        scores = block @ vectors.T  # [q, N]
        if sq is not None:
            scores = 2.0 * scores - sq[None, :] - (block * block).sum(axis=1, keepdims=True)
        if k < n:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(n), (block.shape[0], n))
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        out_idx[s : s + step] = np.take_along_axis(part, order, axis=1)
        out_sc[s : s + step] = np.take_along_axis(top, order, axis=1)
    if labels is not None:
        out_idx = labels[out_idx]
    return out_idx, out_sc


class RunningTopK:
    """Exact top-k of a few queries over a collection that arrives in blocks (larger than memory).

    ``update`` scores each block with one matrix product and keeps the best ``k`` per query so far:
    one pass over 10M x 512 floats (a generator, or a memory-mapped file read in order) gives
    :func:`exact_topk`'s answer with ``k`` numbers per query in memory.

    Args:
        queries: float32 [Q, D] (normalised already for cosine).
        k: neighbours per query.
        space: ``"cosine"``/``"ip"`` or ``"l2"``, as in :func:`exact_topk`.
    """

    def __init__(self, queries: np.ndarray, k: int, *, space: str = "cosine") -> None:
        self.q = np.ascontiguousarray(queries, dtype=np.float32)
        self.k, self.space = int(k), space
        self.idx = np.full((self.q.shape[0], 0), -1, np.int64)
        self.sc = np.zeros((self.q.shape[0], 0), np.float32)
        self.seen = 0
        self._q_sq = (self.q * self.q).sum(axis=1, keepdims=True) if space == "l2" else None

    def update(self, block: np.ndarray) -> None:
        """Score the next ``block`` [B, D] of rows (numbered from the rows already seen)."""
        block = np.asarray(block, dtype=np.float32)
        scores = self.q @ block.T
        if self._q_sq is not None:
            scores = 2.0 * scores - (block * block).sum(axis=1)[None, :] - self._q_sq
        idx = np.concatenate([self.idx, np.broadcast_to(np.arange(self.seen, self.seen + block.shape[0]), scores.shape)], 1)
        sc = np.concatenate([self.sc, scores], 1)
        if sc.shape[1] > self.k:
            part = np.argpartition(-sc, self.k - 1, axis=1)[:, : self.k]
            idx, sc = np.take_along_axis(idx, part, 1), np.take_along_axis(sc, part, 1)
        self.idx, self.sc = idx, sc
        self.seen += block.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers [Q, k], scores [Q, k]) best first."""
        order = np.argsort(-self.sc, axis=1, kind="stable")
        return np.take_along_axis(self.idx, order, 1), np.take_along_axis(self.sc, order, 1)
