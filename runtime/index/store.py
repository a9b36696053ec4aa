"""``ImageIndex``: string ids <-> hnswlib labels, the graph, metadata, and the writes that keep them in step.

Search (:mod:`.query`), images through an encoder (:mod:`.ingest`) and save/load (:mod:`.persistence`)
are mixed in; this module owns the state they share and every write to it, under the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ArtifactError, DimensionMismatchError, InvalidInputError, ShapeError, UnknownIdError
from .engines import ENGINE_CHOICES, choose_engine, new_engine
from .graph import HNSW_SPACE, SPACES
from .ingest import IngestMixin
from .lock import RWLock
from .persistence import PersistenceMixin
from .query import QueryMixin
from .validate import MetadataArg, check_ids_unique, check_metadata, prepare_vectors

log = logging.getLogger(__name__)

#: vectors copied out of the old graph at a time during a rebuild (bounds the extra memory)
_REBUILD_CHUNK = 8192


class ImageIndex(QueryMixin, IngestMixin, PersistenceMixin):
    """HNSW index of embeddings with string ids and JSON metadata; thread-safe.

    Args:
        dim: embedding dimension.
        space: ``"cosine"`` (vectors normalised on the way in; the default for CLIP embeddings),
            ``"ip"`` (raw inner product) or ``"l2"`` (squared Euclidean).
        M: HNSW graph degree (memory and recall grow with it).
        ef_construction: candidate list size while building (build time and recall grow with it).
        ef: candidate list size while searching (the recall/speed knob; at least k is used).
        capacity: initial number of slots; the index grows by itself.
        model_id: id of the encoder that made the vectors (``ClipEncoder.model_id``); checked
            against the encoder on load and on add.
        model_hash: optional content hash of that encoder's graph, recorded and checked alongside.
        exact_threshold: collections up to this many live items are searched exactly (numpy),
            which is both faster and exact at that size.
        rebuild_threshold: share of deleted items in the graph that triggers a rebuild.
        num_threads: threads hnswlib uses for inserts (-1: all cores).
        seed: hnswlib's random seed (level assignment), for reproducible graphs.
        engine: ``"hnswlib"`` (float32 HNSW, the default), ``"sq8"`` / ``"sq4"`` (faiss HNSW over
            8- / 4-bit scalar codes, rescored against memory-mapped floats), ``"ivfpq"`` (faiss
            IVF-PQ, for collections larger than memory) or ``"auto"`` (chosen from ``capacity``
            and ``memory_budget`` by :func:`~clipq.runtime.index.engines.choose_engine`).
        memory_budget: bytes the index may keep in memory, for ``engine="auto"`` (default: half
            of this machine's memory).
        nprobe: IVF lists visited per query (``ivfpq``).
        rescore: candidates re-ranked by their float score (compressed engines; 0: none).

    Raises:
        InvalidInputError: a parameter is out of range.
    """

    def __init__(
        self,
        dim: int,
        *,
        space: str = "cosine",
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        capacity: int = 1024,
        model_id: str | None = None,
        model_hash: str | None = None,
        exact_threshold: int = 1000,
        rebuild_threshold: float = 0.25,
        num_threads: int = -1,
        seed: int = 100,
        engine: str = "hnswlib",
        memory_budget: int | None = None,
        nprobe: int = 32,
        rescore: int = 50,
    ) -> None:
        if space not in HNSW_SPACE:
            raise InvalidInputError(f"space must be one of {', '.join(SPACES)}, not {space!r}")
        for name, value, low in (("dim", dim, 1), ("M", M, 2), ("ef_construction", ef_construction, 1), ("ef", ef, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, not {value!r}")
        if engine not in ENGINE_CHOICES:
            raise InvalidInputError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, not {engine!r}")
        for name, value in (("nprobe", nprobe), ("rescore", rescore)):
            if not isinstance(value, (int, np.integer)) or value < (0 if name == "rescore" else 1):
                raise InvalidInputError(f"{name} must be an integer >= {0 if name == 'rescore' else 1}, not {value!r}")
        if engine == "auto":
            engine = choose_engine(max(int(capacity), 1), int(dim), memory_budget=memory_budget, M=int(M))
        if not 0.0 < rebuild_threshold <= 1.0:
            raise InvalidInputError(f"rebuild_threshold must be in (0, 1], not {rebuild_threshold!r}")
        self.dim = int(dim)
        self.space = space
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.model_id = model_id
        self.model_hash = model_hash
        self.exact_threshold = int(exact_threshold)
        self.rebuild_threshold = float(rebuild_threshold)
        self.num_threads = int(num_threads)
        self.seed = int(seed)
        self._ef = int(ef)
        self.engine = engine
        self.nprobe = int(nprobe)
        self.rescore = int(rescore)
        #: the recall self-check of the last build (``ImageIndex.check_build``), saved in the sidecar
        self.build_recall: dict[str, Any] | None = None
        self._lock = RWLock()
        self._save_lock = threading.Lock()  # two saves into one directory would delete each other's graph
        self._hnsw = self._new_graph(max(int(capacity), 16))
        self._id_to_label: dict[str, int] = {}
        self._label_to_id: dict[int, str] = {}
        self._meta: dict[int, Mapping[str, Any]] = {}  # label -> read-only view of a private dict
        self._next_label = 0
        self._dense: tuple[np.ndarray, np.ndarray] | None = None  # (labels, vectors) for exact search

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        ids: Sequence[str] | None = None,
        metadata: MetadataArg = None,
        **kwargs: Any,
    ) -> ImageIndex:
        """Build an index from precomputed embeddings.

        Args:
            embeddings: float [N, dim].
            ids: one unique string per row; default ``item-<n>``.
            metadata: a list aligned with the rows, or a mapping id -> dict.
            **kwargs: :class:`ImageIndex` parameters (``space``, ``M``, ``ef``, ``model_id`` ...).

        Returns:
            The index.

        Raises:
            ShapeError / InvalidInputError / DuplicateIdError: see :meth:`add`.
        """
        arr = np.asarray(embeddings)
        if arr.ndim != 2:
            raise ShapeError(f"embeddings must be 2-D [N, dim], got shape {arr.shape}")
        kwargs.setdefault("capacity", max(arr.shape[0], 16))
        index = cls(arr.shape[1], **kwargs)
        index.add(arr, ids, metadata)
        return index

    # -- properties and reads ------------------------------------------------------------------
    @property
    def ef(self) -> int:
        """Search candidate list size (the recall/speed knob)."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"ef must be an integer >= 1, not {value!r}")
        with self._lock.write():
            self._ef = int(value)
            self._hnsw.set_ef(self._ef)

    @property
    def deleted_count(self) -> int:
        """Items marked deleted but still walked by the graph (until the next rebuild)."""
        return self._hnsw.get_current_count() - len(self._id_to_label)

    @property
    def capacity(self) -> int:
        return self._hnsw.get_max_elements()

    def __len__(self) -> int:
        return len(self._id_to_label)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._id_to_label

    def ids(self) -> list[str]:
        """Live ids in insertion order."""
        with self._lock.read():
            return [self._label_to_id[label] for label in sorted(self._label_to_id)]

    def metadata(self, item_id: str) -> dict[str, Any]:
        """A copy of an item's metadata.

        Raises:
            UnknownIdError: no such id.
        """
        with self._lock.read():
            return dict(self._meta[self._label(item_id)])

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of ``ids`` (normalised for ``space="cosine"``), float32 [N, dim].

        Raises:
            UnknownIdError: an id is not in the index.
        """
        with self._lock.read():
            labels = [self._label(i) for i in ids]
            if not labels:
                return np.zeros((0, self.dim), np.float32)
            return np.asarray(self._hnsw.get_items(labels), dtype=np.float32)

    def info(self) -> dict[str, Any]:
        """Summary for humans and ``--json``: sizes, parameters, model."""
        return {
            "count": len(self),
            "deleted": self.deleted_count,
            "capacity": self.capacity,
            "dim": self.dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "model_id": self.model_id,
            "model_hash": self.model_hash,
            "engine": self.engine_params(),
            "build_recall": self.build_recall,
        }

    def engine_params(self) -> dict[str, Any]:
        """The engine's name and settings (``{"name": "hnswlib"}`` for float HNSW)."""
        params = getattr(self._hnsw, "params", None)
        return params() if callable(params) else {"name": "hnswlib"}

    def set_search_params(self, *, ef: int | None = None, nprobe: int | None = None, rescore: int | None = None) -> None:
        """Change the search knobs: ``ef`` (HNSW), ``nprobe`` (IVF-PQ), ``rescore`` (compressed engines).

        Raises:
            InvalidInputError: a value is out of range.
        """
        if ef is not None:
            self.ef = ef
        for name, value, low in (("nprobe", nprobe, 1), ("rescore", rescore, 0)):
            if value is None:
                continue
            if not isinstance(value, (int, np.integer)) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, not {value!r}")
            with self._lock.write():
                setattr(self, name, int(value))
                if hasattr(self._hnsw, name):
                    setattr(self._hnsw, name, int(value))

    def check_encoder(self, encoder: Any) -> None:
        """Refuse an encoder whose dimension or model differs from the index's.

        Raises:
            DimensionMismatchError: the dimensions differ.
            ArtifactError: both model ids (or hashes) are known and differ.
        """
        enc_dim = int(getattr(encoder, "dim", -1))
        if enc_dim != self.dim:
            raise DimensionMismatchError(f"encoder gives {enc_dim}-d embeddings, the index holds {self.dim}-d")
        for attr in ("model_id", "model_hash"):
            mine, theirs = getattr(self, attr), getattr(encoder, attr, None)
            if mine is not None and theirs is not None and mine != theirs:
                raise ArtifactError(
                    f"index was built with a model of {attr} {mine!r}, the encoder has {theirs!r}; "
                    "rebuild the index with this model"
                )

    # -- writes --------------------------------------------------------------------------------
    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str] | None = None,
        metadata: MetadataArg = None,
    ) -> list[str]:
        """Add vectors. All-or-nothing: every check runs before the graph changes.

        Searches wait while the vectors go in: add a large collection in batches (as
        :meth:`add_images` does) to let them through in between.

        Args:
            embeddings: float [N, dim] (or [dim] for one item); finite; non-zero for cosine.
            ids: N unique strings not already in the index; ``None`` (for all, or per item) gives
                ``item-<label>``.
            metadata: JSON-serialisable dicts: a list aligned with the rows, or a mapping id -> dict.

        Returns:
            The ids added.

        Raises:
            DimensionMismatchError: the vectors' dimension is not the index's.
            InvalidInputError: NaN/inf values, a zero vector (cosine), bad ids or metadata.
            DuplicateIdError: an id repeats within the call or is already in the index.
        """
        vecs = prepare_vectors(embeddings, self.dim, self.space, what="embeddings")
        n = vecs.shape[0]
        with self._lock.write():
            labels = np.arange(self._next_label, self._next_label + n, dtype=np.int64)
            id_list = self._check_new_ids(ids, labels)
            metas = check_metadata(metadata, id_list)
            self._reserve(n)
            self._hnsw.add_items(vecs, labels, num_threads=self.num_threads)
            for label, item_id, meta in zip(labels.tolist(), id_list, metas):
                self._id_to_label[item_id] = label
                self._label_to_id[label] = item_id
                self._meta[label] = meta
            self._next_label += n
            self._dense = None
        return id_list

    def delete(self, ids: str | Sequence[str]) -> int:
        """Delete items (marked deleted in the graph; rebuilt once they pass ``rebuild_threshold``).

        Args:
            ids: one id or several (repeats count once). All-or-nothing: an unknown id deletes
                nothing.

        Returns:
            The number of items deleted.

        Raises:
            UnknownIdError: an id is not in the index.
        """
        id_list = list(dict.fromkeys([ids] if isinstance(ids, str) else ids))
        with self._lock.write():
            labels = [self._label(i) for i in id_list]
            for item_id, label in zip(id_list, labels):
                self._hnsw.mark_deleted(label)
                del self._id_to_label[item_id], self._label_to_id[label], self._meta[label]
            self._dense = None
            total = self._hnsw.get_current_count()
            if total and (total - len(self._id_to_label)) / total > self.rebuild_threshold:
                self._rebuild_unlocked()
        return len(labels)

    def update(
        self, item_id: str, embedding: np.ndarray | None = None, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Replace an item's vector and/or its metadata (the whole dict), keeping its id.

        Raises:
            UnknownIdError: no such id.
            DimensionMismatchError / InvalidInputError: the vector or metadata is unusable.
        """
        vec = None if embedding is None else prepare_vectors(embedding, self.dim, self.space, what="embedding")
        if vec is not None and vec.shape[0] != 1:
            raise ShapeError(f"update takes one vector, got {vec.shape[0]}")
        meta = None if metadata is None else check_metadata([metadata], [item_id])[0]
        with self._lock.write():
            label = self._label(item_id)
            if vec is not None:
                # hnswlib updates an existing label in place and repairs its links
                self._hnsw.add_items(vec, np.array([label], np.int64), num_threads=1)
                self._dense = None
            if meta is not None:
                self._meta[label] = meta

    def rebuild(self) -> None:
        """Rebuild the graph from the live items, dropping deleted ones; ids and labels stay."""
        with self._lock.write():
            self._rebuild_unlocked()

    # -- internals -----------------------------------------------------------------------------
    def _new_graph(self, capacity: int) -> Any:
        return new_engine(
            self.engine, self.space, self.dim, capacity, M=self.M, ef_construction=self.ef_construction,
            seed=self.seed, ef=self._ef, nprobe=self.nprobe, rescore=self.rescore,
        )

    def _label(self, item_id: str) -> int:
        try:
            return self._id_to_label[item_id]
        except (KeyError, TypeError):
            raise UnknownIdError(f"id {item_id!r} is not in the index") from None

    def _check_new_ids(self, ids: Sequence[str | None] | None, labels: np.ndarray) -> list[str]:
        if ids is None:
            ids = [None] * labels.size
        elif isinstance(ids, str):
            ids = [ids]
        if len(ids) != labels.size:
            raise InvalidInputError(f"got {len(ids)} ids for {labels.size} vectors")
        id_list = [f"item-{label}" if i is None else i for i, label in zip(ids, labels.tolist())]
        check_ids_unique(id_list, self._id_to_label)
        return id_list

    def _reserve(self, n: int) -> None:
        need = self._hnsw.get_current_count() + n
        cap = self._hnsw.get_max_elements()
        if need > cap:
            # grow geometrically: hnswlib reallocates the whole level-0 block on every resize
            self._hnsw.resize_index(max(need, int(cap * 1.5) + 16))

    def _rebuild_unlocked(self) -> None:
        labels = sorted(self._label_to_id)
        t0 = time.perf_counter()
        if hasattr(self._hnsw, "rebuilt"):  # a compressed engine refits its codes on the live items
            dropped = self._hnsw.get_current_count() - len(labels)
            self._hnsw = self._hnsw.rebuilt(labels, self.num_threads)
            self._dense = None
            log.info("rebuilt index: %d live items, %d deleted dropped, %.2f s", len(labels), dropped,
                     time.perf_counter() - t0)
            return
        graph = self._new_graph(max(len(labels) * 5 // 4, 16))
        for start in range(0, len(labels), _REBUILD_CHUNK):
            chunk = labels[start : start + _REBUILD_CHUNK]
            vecs = np.asarray(self._hnsw.get_items(chunk), dtype=np.float32)
            graph.add_items(vecs, np.asarray(chunk, np.int64), num_threads=self.num_threads)
        dropped = self._hnsw.get_current_count() - len(labels)
        self._hnsw = graph
        self._dense = None
        log.info("rebuilt index: %d live items, %d deleted dropped, %.2f s", len(labels), dropped, time.perf_counter() - t0)
