"""An HNSW image index (hnswlib) with string ids, JSON metadata, atomic persistence and a lock.

``ImageIndex`` wraps one ``hnswlib.Index`` and adds what a service needs around it:

- user string ids mapped to hnswlib's integer labels, and a JSON metadata dict per item;
- add / delete / update, with a rebuild once deleted items pass a share of the graph (hnswlib keeps
  walking deleted nodes, so a graph full of tombstones gets slower and less accurate);
- a metadata filter on search, answered exactly when the filter leaves few items;
- persistence as a directory holding the hnswlib graph and a JSON sidecar that is the commit point,
  so a save that fails half-way leaves the previous index loadable;
- a readers-writer lock: hnswlib allows parallel searches but not a search during an insert;
- an exact numpy search (for small collections, on request, and as the reference of
  :meth:`ImageIndex.recall_check`).

The hnswlib traps it guards against (measured, see MEASURED.md): ``knn_query`` does not check the
query's dimension; ``ef`` resets to 10 on load; a ``k`` above the live count raises an opaque
``RuntimeError``; ``get_current_count()`` still counts deleted items; loading a graph with another
dimension "succeeds". Scores are similarities, higher is better: the cosine (``space="cosine"``),
the inner product (``"ip"``) or the negative squared L2 distance (``"l2"``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import (
    ArtifactError,
    DimensionMismatchError,
    DuplicateIdError,
    IndexCorruptError,
    InvalidInputError,
    SchemaVersionError,
    ShapeError,
    UnknownIdError,
)
from .manifest import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

INDEX_SCHEMA_VERSION = 1
SIDECAR_NAME = "index.json"
GRAPH_PREFIX = "hnsw-"
GRAPH_SUFFIX = ".bin"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

#: user-facing space -> hnswlib space. Cosine is served as inner product on vectors the wrapper
#: normalises itself, so that exact search and hnswlib score the very same stored vectors.
_HNSW_SPACE = {"cosine": "ip", "ip": "ip", "l2": "l2"}
SPACES = tuple(_HNSW_SPACE)

#: largest score matrix (queries x items) one exact-search step materialises, in floats
_EXACT_BLOCK = 1 << 24
#: vectors copied out of the old graph at a time during a rebuild (bounds the extra memory)
_REBUILD_CHUNK = 8192

#: shared by every item without metadata: read-only, so sharing is safe, and it saves ~100 B an item
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})

MetadataFilter = Mapping[str, Any] | Callable[[Mapping[str, Any]], bool]


@runtime_checkable
class ImageEncoder(Protocol):
    """What the index needs from an encoder (``clipq.runtime.ClipEncoder`` is one)."""

    dim: int
    model_id: str

    def encode_images(self, images: Sequence[Any], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Return float32 [N, dim] L2-normalised embeddings."""
        ...


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


@dataclass
class AddReport:
    """What :meth:`ImageIndex.add_images` did: ids added, and (source, reason) of items skipped."""

    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class RWLock:
    """Many readers or one writer. A waiting writer holds back new readers, so writes never starve.

    Not re-entrant: a thread that holds either side must not ask again (the index's public methods
    take the lock once and call unlocked helpers inside).
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        # guards hold no state, so one of each serves every thread (and saves an allocation per search)
        self._read_guard = _Guard(self.acquire_read, self.release_read)
        self._write_guard = _Guard(self.acquire_write, self.release_write)

    def acquire_read(self) -> None:
        with self._mutex:  # the common case, nobody writing: no Condition machinery on the hot path
            if not self._writer and not self._writers_waiting:
                self._readers += 1
                return
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            # only a writer ever waits for readers to leave; readers wait for writers
            if self._readers == 0 and self._writers_waiting:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    def read(self) -> _Guard:
        """Context manager holding the read side."""
        return self._read_guard

    def write(self) -> _Guard:
        """Context manager holding the write side."""
        return self._write_guard


class _Guard:
    __slots__ = ("_enter", "_exit")

    def __init__(self, enter: Callable[[], None], exit_: Callable[[], None]) -> None:
        self._enter, self._exit = enter, exit_

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()


def list_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (by extension), sorted so that builds are reproducible.

    Raises:
        InvalidInputError: the folder does not exist or holds no images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"not a folder: {root}")
    walk = root.rglob("*") if recursive else root.glob("*")
    paths = sorted(p for p in walk if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise InvalidInputError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}")
    return paths


def _import_hnswlib() -> Any:
    try:
        import hnswlib
    except ImportError as e:  # pragma: no cover - a base dependency
        from .errors import MissingDependencyError

        raise MissingDependencyError("hnswlib", "runtime", "the image index") from e
    return hnswlib


class ImageIndex:
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
    ) -> None:
        if space not in _HNSW_SPACE:
            raise InvalidInputError(f"space must be one of {', '.join(SPACES)}, not {space!r}")
        for name, value, low in (("dim", dim, 1), ("M", M, 2), ("ef_construction", ef_construction, 1), ("ef", ef, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise InvalidInputError(f"{name} must be an integer >= {low}, not {value!r}")
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
        self._lock = RWLock()
        self._save_lock = threading.Lock()  # two saves into one directory would delete each other's graph
        self._hnsw = self._new_graph(max(int(capacity), 16))
        self._id_to_label: dict[str, int] = {}
        self._label_to_id: dict[int, str] = {}
        self._meta: dict[int, Mapping[str, Any]] = {}  # label -> read-only view of a private dict
        self._next_label = 0
        self._dense: tuple[np.ndarray, np.ndarray] | None = None  # (labels, vectors) for exact search

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Mapping[str, Any]] | None = None,
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

    @classmethod
    def from_images(
        cls,
        images: str | os.PathLike[str] | Sequence[Any],
        encoder: ImageEncoder,
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Mapping[str, Any]] | None = None,
        batch_size: int = 64,
        progress: bool = True,
        skip_invalid: bool = False,
        **kwargs: Any,
    ) -> ImageIndex:
        """Encode images with ``encoder`` (any backend) and index them.

        Args:
            images: a folder (searched recursively), or a list of paths, bytes, PIL images or
                uint8 arrays.
            encoder: an :class:`ImageEncoder`; its ``dim`` and ``model_id`` are recorded.
            ids, metadata, batch_size, progress, skip_invalid: see :meth:`add_images`.
            **kwargs: :class:`ImageIndex` parameters.

        Returns:
            The index.

        Raises:
            InvalidInputError: no images, or an unreadable one (unless ``skip_invalid``).
        """
        kwargs.setdefault("model_id", getattr(encoder, "model_id", None))
        kwargs.setdefault("model_hash", getattr(encoder, "model_hash", None))
        index = cls(int(encoder.dim), **kwargs)
        index.add_images(
            images, encoder, ids=ids, metadata=metadata, batch_size=batch_size, progress=progress,
            skip_invalid=skip_invalid,
        )
        return index

    # -- properties ----------------------------------------------------------------------------
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
        }

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
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Mapping[str, Any]] | None = None,
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
        vecs = self._prepare(embeddings, what="embeddings")
        n = vecs.shape[0]
        with self._lock.write():
            labels = np.arange(self._next_label, self._next_label + n, dtype=np.int64)
            id_list = self._check_new_ids(ids, labels)
            metas = self._check_metadata(metadata, id_list)
            self._reserve(n)
            self._hnsw.add_items(vecs, labels, num_threads=self.num_threads)
            for label, item_id, meta in zip(labels.tolist(), id_list, metas):
                self._id_to_label[item_id] = label
                self._label_to_id[label] = item_id
                self._meta[label] = meta
            self._next_label += n
            self._dense = None
        return id_list

    def add_images(
        self,
        images: str | os.PathLike[str] | Sequence[Any],
        encoder: ImageEncoder,
        *,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Mapping[str, Any]] | None = None,
        batch_size: int = 64,
        progress: bool = True,
        skip_invalid: bool = False,
    ) -> AddReport:
        """Encode images in batches and add them, with a progress bar.

        Default ids: a folder's files get their path relative to the folder without the extension
        (``test_000123`` for a flat folder); listed paths get the path as given; bytes, PIL images
        and arrays get ``item-<n>``. Paths put ``{"path": <absolute path>}`` into the metadata,
        merged under what ``metadata`` gives.

        Args:
            images: a folder, or a list of paths, bytes, PIL images or uint8 HWC arrays.
            encoder: an :class:`ImageEncoder` whose ``dim`` (and ``model_id``, if the index has
                one) match the index.
            ids: one unique string per image (overrides the defaults).
            metadata: a list aligned with the images, or a mapping id -> dict.
            batch_size: images per encoder call.
            progress: show a progress bar.
            skip_invalid: skip images the encoder rejects (logged and reported) instead of failing.

        Returns:
            An :class:`AddReport`: ids added and items skipped.

        Raises:
            DimensionMismatchError / ArtifactError: the encoder does not match the index.
            InvalidInputError: an image is unusable (unless ``skip_invalid``), or ids/metadata are.
            DuplicateIdError: an id is already in the index.
        """
        self.check_encoder(encoder)
        items, default_ids, base_meta = self._expand_images(images)
        if ids is not None:
            if len(ids) != len(items):
                raise InvalidInputError(f"got {len(ids)} ids for {len(items)} images")
            default_ids = list(ids)
        id_list: list[str | None] = list(default_ids)
        self._check_ids_unique(id_list)
        user_meta = self._check_metadata(metadata, id_list)
        metas = [{**base, **dict(user)} for base, user in zip(base_meta, user_meta)]
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, not {batch_size}")

        from tqdm.auto import tqdm

        report = AddReport()
        with tqdm(total=len(items), unit="img", desc="indexing", disable=not progress) as bar:
            for start in range(0, len(items), batch_size):
                batch = list(range(start, min(start + batch_size, len(items))))
                kept, vecs = self._encode_batch(encoder, items, id_list, batch, skip_invalid, report)
                if kept:
                    report.added.extend(self.add(vecs, [id_list[i] for i in kept], [metas[i] for i in kept]))
                bar.update(len(batch))
        if self.model_id is None:
            self.model_id = getattr(encoder, "model_id", None)
            self.model_hash = getattr(encoder, "model_hash", None)
        return report

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
        vec = None if embedding is None else self._prepare(embedding, what="embedding")
        if vec is not None and vec.shape[0] != 1:
            raise ShapeError(f"update takes one vector, got {vec.shape[0]}")
        meta = None if metadata is None else self._check_metadata([metadata], [item_id])[0]
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

    # -- search --------------------------------------------------------------------------------
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
            num_threads: hnswlib threads for this query.

        Returns:
            Results best first.

        Raises:
            DimensionMismatchError: the vector's dimension is not the index's.
            InvalidInputError: NaN/inf values, a zero vector (cosine), k < 1, or an empty index.
        """
        vec = self._prepare(vector, what="query")
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
        vecs = self._prepare(vectors, what="queries", allow_empty=True)
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
        vecs = self._prepare(vectors, what="queries", allow_empty=True)
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
        """Recall@k of HNSW search against exact search, at the current ``ef``.

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
            with self._lock.read():
                labels = np.fromiter(self._label_to_id, dtype=np.int64, count=len(self._label_to_id))
                if labels.size == 0:
                    raise InvalidInputError("cannot check recall of an empty index")
                rng = np.random.default_rng(seed)
                pick = rng.choice(labels, size=min(n_queries, labels.size), replace=False)
                base = np.asarray(self._hnsw.get_items(pick.tolist()), dtype=np.float32)
            scale = noise * np.linalg.norm(base, axis=1, keepdims=True) / math.sqrt(self.dim)
            queries = base + rng.standard_normal(base.shape).astype(np.float32) * scale
        q = self._prepare(queries, what="queries")
        t0 = time.perf_counter()
        approx, _ = self.search_ids(q, k, exact=False)
        t1 = time.perf_counter()
        truth, _ = self.search_ids(q, k, exact=True)
        t2 = time.perf_counter()
        per_query = [len(set(a) & set(t)) / max(len(t), 1) for a, t in zip(approx, truth)]
        return RecallReport(
            k=k,
            n_queries=len(per_query),
            ef=self.ef,
            recall=float(np.mean(per_query)),
            min_recall=float(np.min(per_query)),
            hnsw_qps=len(per_query) / max(t1 - t0, 1e-9),
            exact_qps=len(per_query) / max(t2 - t1, 1e-9),
        )

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save atomically to the directory ``path`` (created if needed).

        The graph goes to a new uniquely named file (temp file, fsync, rename), then the sidecar
        ``index.json`` that names it is replaced atomically: the sidecar is the commit point, so a
        save that fails anywhere leaves the previous index intact and loadable. Older graph files
        are removed afterwards. Searches may run during a save; writes wait.

        Args:
            path: index directory.

        Returns:
            The sidecar's path.

        Raises:
            InvalidInputError: ``path`` is a file, or a non-empty directory that holds no index.
            OSError: the disk refused (the previous index is left as it was).
        """
        with self._save_lock:
            root = Path(path)
            if root.exists() and not root.is_dir():
                raise InvalidInputError(f"index path is a file, expected a directory: {root}")
            if root.is_dir() and not (root / SIDECAR_NAME).exists() and any(root.iterdir()):
                raise InvalidInputError(f"refusing to save an index into a non-empty directory that holds none: {root}")
            root.mkdir(parents=True, exist_ok=True)
            graph_name = f"{GRAPH_PREFIX}{uuid.uuid4().hex[:16]}{GRAPH_SUFFIX}"
            tmp = root / f".{graph_name}.tmp"
            with self._lock.read():
                try:
                    self._hnsw.save_index(str(tmp))
                    _fsync_file(tmp)
                    size, digest = tmp.stat().st_size, sha256_file(tmp)
                    os.replace(tmp, root / graph_name)
                    sidecar = self._sidecar(graph_name, size, digest)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            try:
                atomic_write_json(root / SIDECAR_NAME, sidecar)
            except BaseException:
                (root / graph_name).unlink(missing_ok=True)
                raise
            for old in root.iterdir():  # previous graphs and temp files of interrupted saves
                if old.name != graph_name and old.name.lstrip(".").startswith(GRAPH_PREFIX):
                    old.unlink(missing_ok=True)
            return root / SIDECAR_NAME

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: ImageEncoder | None = None,
        model_id: str | None = None,
        dim: int | None = None,
        verify: bool = True,
        **kwargs: Any,
    ) -> ImageIndex:
        """Load an index saved by :meth:`save`, checking it against its sidecar.

        Args:
            path: index directory.
            encoder: if given, its ``dim`` and ``model_id`` must match the index's.
            model_id: expected encoder model id (alternative to ``encoder``).
            dim: expected dimension (alternative to ``encoder``).
            verify: check the graph file's sha256 (size is always checked).
            **kwargs: runtime settings that are not persisted: ``exact_threshold``,
                ``rebuild_threshold``, ``num_threads``.

        Returns:
            The index, with its saved ``ef`` restored (hnswlib resets it to 10).

        Raises:
            IndexCorruptError: the sidecar or graph is missing, truncated, corrupt or inconsistent.
            SchemaVersionError: the sidecar was written by another schema version.
            DimensionMismatchError: the index's dimension is not the expected one.
            ArtifactError: the index was built with another model than the expected one.
        """
        root = Path(path)
        side_path = root / SIDECAR_NAME
        if not side_path.is_file():
            raise IndexCorruptError(f"no index at {root}: {SIDECAR_NAME} is missing")
        try:
            side = json.loads(side_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexCorruptError(f"cannot read {side_path}: {e}") from e
        if not isinstance(side, dict):
            raise IndexCorruptError(f"{side_path}: not a JSON object")
        if side.get("schema_version") != INDEX_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{side_path} has index schema version {side.get('schema_version')!r}; "
                f"this clipq reads version {INDEX_SCHEMA_VERSION}"
            )
        try:
            graph = side["graph"]
            graph_path = root / graph["file"]
            d = int(side["dim"])
            space = side["space"]
            ids, labels, metas = side["ids"], side["labels"], side["metadata"]
            params = {
                "space": space,
                "M": int(side["M"]),
                "ef_construction": int(side["ef_construction"]),
                "ef": int(side["ef"]),
                "model_id": side["encoder"].get("model_id"),
                "model_hash": side["encoder"].get("hash"),
                "seed": int(side.get("seed", 100)),
            }
            total, next_label = int(side["total"]), int(side["next_label"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IndexCorruptError(f"{side_path}: missing or malformed field: {e}") from e
        if space not in _HNSW_SPACE:
            raise IndexCorruptError(f"{side_path}: unknown space {space!r}")
        if not (len(ids) == len(labels) == len(metas) == int(side.get("count", -1))):
            raise IndexCorruptError(f"{side_path}: id map, metadata and count disagree")
        expected_dim = dim if dim is not None else (int(encoder.dim) if encoder is not None else None)
        if expected_dim is not None and expected_dim != d:
            raise DimensionMismatchError(
                f"index {root} holds {d}-d vectors but the encoder/model gives {expected_dim}-d; "
                "rebuild the index with this model"
            )
        want_model = model_id if model_id is not None else getattr(encoder, "model_id", None)
        if want_model is not None and params["model_id"] is not None and want_model != params["model_id"]:
            raise ArtifactError(
                f"index {root} was built with model {params['model_id']!r}, not {want_model!r}; "
                "rebuild it with this model (`clipq index build`)"
            )
        if not graph_path.is_file():
            raise IndexCorruptError(f"index {root}: graph file {graph['file']} is missing")
        size = graph_path.stat().st_size
        if size != graph.get("size"):
            raise IndexCorruptError(
                f"index {root}: {graph['file']} has {size} bytes, the sidecar says {graph.get('size')} (truncated?)"
            )
        if verify and sha256_file(graph_path) != graph.get("sha256"):
            raise IndexCorruptError(f"index {root}: sha256 of {graph['file']} does not match the sidecar (corrupt)")

        header = graph_header(graph_path)
        expected = {"dim": d, "count": total, "M": params["M"], "ef_construction": params["ef_construction"]}
        found = {key: header[key] for key in expected}
        if found != expected:
            raise IndexCorruptError(f"index {root}: the graph holds {found}, the sidecar says {expected}")

        index = cls(d, capacity=16, **params, **kwargs)
        hnswlib = _import_hnswlib()
        graph_obj = hnswlib.Index(space=_HNSW_SPACE[space], dim=d)
        try:
            graph_obj.load_index(str(graph_path), max_elements=max(header["max_elements"], total, 16))
        except (RuntimeError, ValueError, MemoryError) as e:
            raise IndexCorruptError(f"index {root}: hnswlib cannot read {graph['file']}: {e}") from e
        if graph_obj.get_current_count() != total:
            raise IndexCorruptError(f"index {root}: hnswlib read {graph_obj.get_current_count()} items, expected {total}")
        graph_obj.set_ef(params["ef"])  # hnswlib resets ef to 10 on load
        index._hnsw = graph_obj
        index._next_label = next_label
        for item_id, label, meta in zip(ids, labels, metas):
            if not isinstance(item_id, str) or not isinstance(meta, dict) or not 0 <= label < next_label:
                raise IndexCorruptError(f"{side_path}: malformed entry for id {item_id!r}")
            index._id_to_label[item_id] = label
            index._label_to_id[label] = item_id
            index._meta[label] = MappingProxyType(meta) if meta else _NO_METADATA
        if len(index._id_to_label) != len(ids) or len(index._label_to_id) != len(ids):
            raise IndexCorruptError(f"{side_path}: repeated ids or labels")
        graph_labels = set(graph_obj.get_ids_list())
        if not graph_labels.issuperset(index._label_to_id):
            raise IndexCorruptError(f"index {root}: the sidecar names labels that are not in the graph")
        if encoder is not None:
            index.check_encoder(encoder)  # the model hash too, when both sides know one
        return index

    # -- internals -----------------------------------------------------------------------------
    def _new_graph(self, capacity: int) -> Any:
        hnswlib = _import_hnswlib()
        graph = hnswlib.Index(space=_HNSW_SPACE[self.space], dim=self.dim)
        graph.init_index(max_elements=capacity, M=self.M, ef_construction=self.ef_construction, random_seed=self.seed)
        graph.set_ef(self._ef)
        return graph

    def _label(self, item_id: str) -> int:
        try:
            return self._id_to_label[item_id]
        except (KeyError, TypeError):
            raise UnknownIdError(f"id {item_id!r} is not in the index") from None

    def _prepare(self, data: Any, *, what: str, allow_empty: bool = False) -> np.ndarray:
        """Validate and convert to C-contiguous float32 [N, dim]; normalise for cosine."""
        try:
            arr = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"{what} must be a float array: {e}") from e
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ShapeError(f"{what} must be [N, {self.dim}] or [{self.dim}], got shape {arr.shape}")
        if arr.shape[1] != self.dim:
            # hnswlib would read past the vector (or short of it) and return garbage
            raise DimensionMismatchError(f"{what} have dimension {arr.shape[1]}, the index holds {self.dim}-d vectors")
        if arr.shape[0] == 0 and not allow_empty:
            raise InvalidInputError(f"{what}: no vectors given")
        # The squared norms give finiteness too: a NaN or inf anywhere in a row makes its entry
        # non-finite. One query is the hot path of a service, where numpy's per-call overhead
        # outweighs the arithmetic, hence the scalar branch.
        if arr.shape[0] == 1:
            sq1 = float(np.dot(arr[0], arr[0]))
            if math.isfinite(sq1):
                if self.space == "cosine":
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
        if self.space == "cosine" and arr.shape[0]:
            if not (sq > 0).all():
                raise InvalidInputError(f"{what}: a zero vector has no direction", index=int(np.argmin(sq)))
            arr = arr / np.sqrt(sq)[:, None]
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        return arr

    def _check_new_ids(self, ids: Sequence[str | None] | None, labels: np.ndarray) -> list[str]:
        if ids is None:
            ids = [None] * labels.size
        elif isinstance(ids, str):
            ids = [ids]
        if len(ids) != labels.size:
            raise InvalidInputError(f"got {len(ids)} ids for {labels.size} vectors")
        id_list = [f"item-{label}" if i is None else i for i, label in zip(ids, labels.tolist())]
        self._check_ids_unique(id_list)
        return id_list

    def _check_ids_unique(self, id_list: Sequence[Any]) -> None:
        seen: set[str] = set()
        for n, item_id in enumerate(id_list):
            if item_id is None:  # assigned later from the label
                continue
            if not isinstance(item_id, str) or not item_id:
                raise InvalidInputError(f"ids must be non-empty strings, got {item_id!r}", index=n)
            if item_id in seen:
                raise DuplicateIdError(f"id {item_id!r} repeats in this call", index=n)
            if item_id in self._id_to_label:
                raise DuplicateIdError(f"id {item_id!r} is already in the index (use update)", index=n)
            seen.add(item_id)

    @staticmethod
    def _check_metadata(
        metadata: Sequence[Mapping[str, Any] | None] | Mapping[str, Mapping[str, Any]] | None,
        id_list: Sequence[str | None],
    ) -> list[Mapping[str, Any]]:
        if metadata is None:
            return [_NO_METADATA] * len(id_list)
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
            out.append(MappingProxyType(clean) if clean else _NO_METADATA)
        return out

    def _expand_images(self, images: Any) -> tuple[list[Any], list[str | None], list[dict[str, Any]]]:
        if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
            root = Path(images)
            paths = list_images(root)
            ids: list[str | None] = [p.relative_to(root).with_suffix("").as_posix() for p in paths]
            return [str(p) for p in paths], ids, [{"path": str(p.resolve())} for p in paths]
        if isinstance(images, (str, os.PathLike, bytes)):
            images = [images]
        items = list(images)
        if not items:
            raise InvalidInputError("no images given")
        ids, metas = [], []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                ids.append(os.fspath(item))
                metas.append({"path": str(Path(item).resolve())})
            else:
                ids.append(None)
                metas.append({})
        return [os.fspath(i) if isinstance(i, os.PathLike) else i for i in items], ids, metas

    @staticmethod
    def _encode_batch(
        encoder: ImageEncoder,
        items: Sequence[Any],
        id_list: Sequence[str | None],
        batch: list[int],
        skip_invalid: bool,
        report: AddReport,
    ) -> tuple[list[int], np.ndarray]:
        try:
            return batch, encoder.encode_images([items[i] for i in batch], batch_size=len(batch))
        except InvalidInputError as e:
            if not skip_invalid:
                # the encoder counts within its batch; the caller wants the position in the call
                pos = batch[e.index] if e.index is not None and e.index < len(batch) else None
                source = id_list[pos] if pos is not None else e.source
                raise type(e)(e.reason, index=pos, source=source) from e
        # one bad image spoils its batch: encode that batch one by one to find and skip it
        kept, vecs = [], []
        for i in batch:
            try:
                vecs.append(encoder.encode_images([items[i]], batch_size=1))
                kept.append(i)
            except InvalidInputError as e:
                name = id_list[i] or f"image {i}"
                log.warning("skipping %s: %s", name, e)
                report.skipped.append((name, str(e)))
        return kept, (np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32))

    def _reserve(self, n: int) -> None:
        need = self._hnsw.get_current_count() + n
        cap = self._hnsw.get_max_elements()
        if need > cap:
            # grow geometrically: hnswlib reallocates the whole level-0 block on every resize
            self._hnsw.resize_index(max(need, int(cap * 1.5) + 16))

    def _rebuild_unlocked(self) -> None:
        labels = sorted(self._label_to_id)
        t0 = time.perf_counter()
        graph = self._new_graph(max(len(labels) * 5 // 4, 16))
        for start in range(0, len(labels), _REBUILD_CHUNK):
            chunk = labels[start : start + _REBUILD_CHUNK]
            vecs = np.asarray(self._hnsw.get_items(chunk), dtype=np.float32)
            graph.add_items(vecs, np.asarray(chunk, np.int64), num_threads=self.num_threads)
        dropped = self._hnsw.get_current_count() - len(labels)
        self._hnsw = graph
        self._dense = None
        log.info("rebuilt index: %d live items, %d deleted dropped, %.2f s", len(labels), dropped, time.perf_counter() - t0)

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

    def _allowed_labels(self, filt: MetadataFilter) -> list[int]:
        if callable(filt):
            return [label for label, meta in self._meta.items() if filt(meta)]
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
        for label, meta in self._meta.items():
            for key, many, want in conds:
                value = meta.get(key, missing)
                if value is missing or (value not in want if many else value != want):
                    break
            else:
                out.append(label)
        return out

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
                allowed = self._allowed_labels(filt)
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
        if allowed is None:
            labels, vecs = self._dense_view()
        else:
            labels = np.array(sorted(allowed), dtype=np.int64)
            vecs = np.asarray(self._hnsw.get_items(labels.tolist()), dtype=np.float32)
        return exact_topk(q, vecs, k, space=self.space, labels=labels)

    def _sidecar(self, graph_name: str, size: int, digest: str) -> dict[str, Any]:
        labels = sorted(self._label_to_id)
        return {
            "schema_version": INDEX_SCHEMA_VERSION,
            "format": "clipq.image_index",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dim": self.dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "seed": self.seed,
            "count": len(labels),
            "deleted": self.deleted_count,
            "total": self._hnsw.get_current_count(),
            "capacity": self._hnsw.get_max_elements(),
            "next_label": self._next_label,
            "encoder": {"model_id": self.model_id, "hash": self.model_hash},
            "graph": {"file": graph_name, "size": size, "sha256": digest, "library": _hnswlib_version()},
            "ids": [self._label_to_id[lb] for lb in labels],
            "labels": labels,
            "metadata": [dict(self._meta[lb]) for lb in labels],
        }


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


#: hnswlib's file header (hnswalg.h, saveIndex): offsetLevel0, max_elements, cur_element_count,
#: size_data_per_element, label_offset, offsetData (size_t); maxlevel (int); enterpoint (uint);
#: maxM, maxM0, M (size_t); mult (double); ef_construction (size_t)
_HEADER = struct.Struct("<6QiI3QdQ")


def graph_header(path: str | os.PathLike[str]) -> dict[str, int]:
    """Read an hnswlib graph file's header without loading the graph.

    hnswlib's own loader trusts the dimension the caller gives it, so a graph of another dimension
    "loads" and answers garbage; the header says what the file really holds.

    Returns:
        ``count`` (items, deleted included), ``max_elements``, ``dim`` (for float32 vectors), ``M``,
        ``ef_construction``.

    Raises:
        IndexCorruptError: the file is shorter than a header or the header is inconsistent.
    """
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise IndexCorruptError(f"{path}: {len(raw)} bytes, shorter than an hnswlib header")
    (_, max_elements, count, per_element, label_offset, offset_data, _, _, _, max_m0, m, _, efc) = _HEADER.unpack(raw)
    data_bytes = label_offset - offset_data
    if data_bytes <= 0 or data_bytes % 4 or offset_data != max_m0 * 4 + 4 or per_element != label_offset + 8:
        raise IndexCorruptError(f"{path}: not an hnswlib graph of float32 vectors (inconsistent header)")
    return {"count": count, "max_elements": max_elements, "dim": data_bytes // 4, "M": m, "ef_construction": efc}


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hnswlib_version() -> str:
    from importlib import metadata

    try:
        return f"hnswlib {metadata.version('hnswlib')}"
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "hnswlib"
