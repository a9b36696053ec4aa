"""Compressed engines on faiss: HNSW over 8- or 4-bit scalar codes, and IVF-PQ; float rescoring.

:class:`FaissGraph` speaks the part of ``hnswlib.Index``'s interface that
:class:`~clipq.runtime.index.ImageIndex` uses (``add_items``, ``mark_deleted``, ``get_items``,
``set_ef``, counts), so ids, metadata, filters, the lock and persistence stay one code path for
every engine. What differs, and why:

- **Codes in memory, floats on disk.** faiss holds the graph and the quantised codes; the float32
  vectors live in a :class:`~.vectorstore.FloatStore` that a loaded index memory-maps. A query asks
  faiss for ``rescore`` candidates (50 by default) and re-ranks them by the exact float score, which
  is what turns an 8-bit index's recall@10 of about 0.95 into about 0.98 (issue 30's measurement).
- **Calibration.** The scalar quantiser's per-dimension ranges and the IVF/PQ codebooks are fitted
  on the collection's own vectors: training waits until ``min_train`` vectors are in (smaller
  collections are searched exactly, from the floats), and :meth:`rebuilt` fits them again.
- **Deletes are tombstones.** faiss's HNSW cannot remove a node, so a deleted (or updated) item's
  position stays in the graph and an ``IDSelectorBitmap`` of live positions keeps it out of
  results; ``ImageIndex``'s rebuild threshold drops tombstones by rebuilding, as with hnswlib.
- **Metadata filters** become the same bitmap restricted to the allowed positions.

faiss was chosen over usearch for the compressed HNSW because usearch's int8 quantises to a fixed
range (recall@10 0.72 at ef 128 on 1M clustered CLIP-like vectors) where faiss calibrates its 8-bit
scalar quantiser on the data (0.947, 0.981 after rescoring), and because faiss brings IVF-PQ too.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..manifest import sha256_file
from .vectorstore import FloatStore

#: engine name -> faiss scalar quantiser type name (HNSW engines) or None (IVF-PQ)
FAISS_ENGINES = {"sq8": "QT_8bit", "sq4": "QT_4bit", "ivfpq": None}
#: vectors needed before the codes are fitted (below it, searches are exact over the floats)
MIN_TRAIN = 1000
#: vectors a quantiser is fitted on at most (a random sample of the collection)
TRAIN_SAMPLE = 200_000
#: collections from this size log the fitting and encoding as they go
PROGRESS_FROM = 1_000_000

log = logging.getLogger(__name__)
#: queries rescored per step (bounds the gathered [queries, candidates, dim] block)
_RESCORE_STEP = 64


def import_faiss() -> Any:
    """The faiss module.

    Raises:
        MissingDependencyError: faiss-cpu is not installed (``pip install 'clipq[index]'``).
    """
    try:
        import faiss
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("faiss-cpu", "index", "the compressed index engines") from e
    return faiss


def faiss_version() -> str:
    try:
        return f"faiss {import_faiss().__version__}"
    except AttributeError:  # pragma: no cover
        return "faiss"


#: k-means training points per IVF list (faiss's own cap is 256)
IVF_TRAIN_PER_LIST = 64


def ivf_lists(n: int) -> int:
    """IVF lists for ``n`` vectors: 4 sqrt(n) (4,000 for 1M; faiss's guide says 4-16 sqrt(n)), with at
    least 39 training points per list.

    Measured on 1M x 512 clustered vectors (2-core Zen 5, PQ 64 x 4-bit, rescore 100, one query
    thread): 1,000 lists gave recall@10 0.936 at nprobe 128 (5,938 queries/s), 2,000 lists 0.960 at
    nprobe 64 (8,772), 4,000 lists 0.981 at nprobe 8 (10,800); training 4,000 lists on 200,000 vectors
    took 34 s and encoding 1M 19 s on 2 threads.
    """
    return int(max(1, min(4 * np.sqrt(max(n, 1)), n // 39, 65536)))


def pq_subquantizers(dim: int) -> int:
    """PQ sub-vectors: 8 dimensions each (64 for 512-d) but at least 16 (or ``dim``), dividing ``dim``."""
    for m in range(max(dim // 8, min(dim, 16)), 0, -1):
        if dim % m == 0:
            return m
    return 1  # pragma: no cover


class FaissGraph:
    """A faiss index over positions, labels mapped on top, float vectors for rescoring.

    Args:
        kind: ``"sq8"``, ``"sq4"`` (HNSW over scalar codes) or ``"ivfpq"``.
        space: ``"cosine"``/``"ip"`` (inner product on the stored vectors) or ``"l2"``.
        dim: vector dimension.
        M / ef_construction / ef: HNSW parameters (``ef`` is the search breadth).
        nprobe: IVF lists visited per query (IVF-PQ).
        rescore: candidates re-ranked by their float score (0: the codes' order as is).
        capacity: reported capacity (storage grows by itself).
    """

    def __init__(
        self,
        kind: str,
        space: str,
        dim: int,
        *,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        nprobe: int = 32,
        rescore: int = 50,
        capacity: int = 16,
        nlist: int | None = None,
        train_at: int = MIN_TRAIN,
    ) -> None:
        if kind not in FAISS_ENGINES:
            raise InvalidInputError(f"unknown faiss engine {kind!r}; choose from {', '.join(FAISS_ENGINES)}")
        self.faiss = import_faiss()
        self.kind, self.space, self.dim = kind, space, int(dim)
        self.M, self.ef_construction, self.ef = int(M), int(ef_construction), int(ef)
        self.nprobe, self.rescore, self.nlist = int(nprobe), int(rescore), nlist
        self.capacity = int(capacity)
        #: vectors awaited before the codes are fitted: the expected collection size, so that a
        #: build in batches calibrates on all of it (``fit_pending`` fits whatever is there)
        self.train_at = max(MIN_TRAIN, int(train_at))
        self.index: Any = None  # None until trained: searches then fall back to exact
        self.vectors = FloatStore(self.dim)
        self._pos_label = np.zeros(0, np.int64)  # position -> label (-1: tombstone)
        self._label_pos = np.zeros(0, np.int64)  # label -> live position (-1: none)
        self._n = 0
        self._dead = 0
        self._live_bits: np.ndarray | None = None  # packed live bitmap, cached until a write

    # -- the hnswlib-like surface ImageIndex uses ----------------------------------------------
    def params(self) -> dict[str, Any]:
        """What the sidecar records to make this engine again."""
        out: dict[str, Any] = {"name": self.kind, "rescore": self.rescore, "trained": self.index is not None}
        if self.kind == "ivfpq":
            out.update(nprobe=self.nprobe, nlist=self.nlist, pq_m=pq_subquantizers(self.dim), pq_bits=4)
        return out

    def set_ef(self, ef: int) -> None:
        self.ef = int(ef)

    def get_current_count(self) -> int:
        return self._n

    def get_max_elements(self) -> int:
        return max(self.capacity, self._n)

    def resize_index(self, n: int) -> None:
        self.capacity = int(n)

    def get_ids_list(self) -> list[int]:
        return self._pos_label[: self._n][self._pos_label[: self._n] >= 0].tolist()

    def get_items(self, labels: Any) -> np.ndarray:
        return self.vectors.rows(self._label_pos[np.asarray(labels, np.int64)])

    def add_items(self, vecs: np.ndarray, labels: Any, num_threads: int = -1, *, defer: bool = False) -> None:
        """Append vectors under ``labels``; a label already present is replaced (tombstone + append)."""
        labels = np.asarray(labels, np.int64).reshape(-1)
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        n = labels.size
        if labels.size and labels.max() >= self._label_pos.size:
            grown = np.full(max(int(labels.max()) + 1, int(self._label_pos.size * 1.5) + 1024), -1, np.int64)
            grown[: self._label_pos.size] = self._label_pos
            self._label_pos = grown
        old = self._label_pos[labels]
        for pos in old[old >= 0].tolist():
            self._pos_label[pos] = -1
            self._dead += 1
        if self._n + n > self._pos_label.size:
            grown = np.full(max(self._n + n, int(self._pos_label.size * 1.5) + 1024), -1, np.int64)
            grown[: self._n] = self._pos_label[: self._n]
            self._pos_label = grown
        positions = np.arange(self._n, self._n + n, dtype=np.int64)
        self.vectors.append(vecs)
        self._pos_label[positions] = labels
        self._label_pos[labels] = positions
        self._n += n
        self._live_bits = None
        if self.index is not None:
            with _threads(self.faiss, num_threads):
                self.index.add(vecs)
        elif not defer and self._n >= self.train_at:
            self.train(num_threads)

    def mark_deleted(self, label: int) -> None:
        pos = int(self._label_pos[label])
        self._pos_label[pos] = -1
        self._label_pos[label] = -1
        self._dead += 1
        self._live_bits = None

    def fit_pending(self, num_threads: int = -1) -> None:
        """Fit the codes now if they wait for more vectors than came (at least ``MIN_TRAIN`` live)."""
        if self.index is None and self._n - self._dead >= MIN_TRAIN:
            self.train(num_threads)

    def train(self, num_threads: int = -1) -> None:
        """Fit the codes on (a sample of) the stored vectors and index every position."""
        faiss = self.faiss
        rng = np.random.default_rng(0)
        live = np.flatnonzero(self._pos_label[: self._n] >= 0)
        size = TRAIN_SAMPLE
        if self.kind == "ivfpq":
            self.nlist = self.nlist or ivf_lists(live.size)
            # 64 points a list, at least faiss's 39 a list where that is more than TRAIN_SAMPLE
            size = min(max(size, 39 * self.nlist), max(IVF_TRAIN_PER_LIST * self.nlist, 10_000))
        sample = np.sort(rng.choice(live, size=min(size, live.size), replace=False))
        x = self.vectors.rows(sample)
        metric = faiss.METRIC_L2 if self.space == "l2" else faiss.METRIC_INNER_PRODUCT
        if self.kind == "ivfpq":
            index = faiss.index_factory(
                self.dim, f"IVF{self.nlist},PQ{pq_subquantizers(self.dim)}x4fs", metric
            )
        else:
            qtype = getattr(faiss.ScalarQuantizer, FAISS_ENGINES[self.kind])
            index = faiss.IndexHNSWSQ(self.dim, qtype, self.M, metric)
            index.hnsw.efConstruction = self.ef_construction
        big = self._n >= PROGRESS_FROM
        if big:
            log.info("%s: fitting the codes on %d of %d vectors", self.kind, len(x), self._n)
        t0 = t_log = time.perf_counter()
        with _threads(faiss, num_threads):
            index.train(x)
            if big:
                log.info("%s: codes fitted in %.0f s; encoding %d vectors", self.kind, time.perf_counter() - t0, self._n)
            for chunk in self.vectors.chunks():
                index.add(np.ascontiguousarray(chunk))
                if big and time.perf_counter() - t_log > 30:  # long work shows progress
                    log.info("%s: %d of %d vectors encoded", self.kind, index.ntotal, self._n)
                    t_log = time.perf_counter()
        if big:
            log.info("%s: %d vectors indexed in %.0f s", self.kind, self._n, time.perf_counter() - t0)
        self.index = index

    def rebuilt(self, labels: list[int], num_threads: int = -1) -> FaissGraph:
        """A new engine holding only ``labels`` (refitted on them), tombstones dropped."""
        new = FaissGraph(
            self.kind,
            self.space,
            self.dim,
            M=self.M,
            ef_construction=self.ef_construction,
            ef=self.ef,
            nprobe=self.nprobe,
            rescore=self.rescore,
            capacity=max(len(labels), 16),
        )
        arr = np.asarray(labels, np.int64)
        for s in range(0, arr.size, 65536):
            part = arr[s : s + 65536]
            new.add_items(self.get_items(part), part, defer=True)
        if new._n >= MIN_TRAIN:
            new.train(num_threads)
        return new

    def search_labels(
        self, q: np.ndarray, k: int, allowed: list[int] | None, num_threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels [Q, k], similarity scores [Q, k]) best first, rescored against the floats.

        Raises:
            RuntimeError: not trained yet, or fewer than ``k`` results (the caller answers exactly).
        """
        if self.index is None:
            raise RuntimeError("the codes are not fitted yet")
        faiss = self.faiss
        kc = max(k, self.rescore)
        bits = self._bitmap(allowed)
        sel = None if bits is None else faiss.IDSelectorBitmap(self._n, faiss.swig_ptr(bits))
        params = self._params(kc, sel)
        with _threads(faiss, num_threads):
            dist, pos = self.index.search(np.ascontiguousarray(q, np.float32), kc, params=params)
        del bits  # kept alive until here: the selector points into it
        if (pos[:, k - 1] < 0).any():
            raise RuntimeError(f"fewer than k={k} results")
        if self.rescore <= 0:
            sims = -dist if self.space == "l2" else dist
            return self._pos_label[pos[:, :k]], sims[:, :k].astype(np.float32)
        return self._rescored(q, pos, k)

    def exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact (labels, scores) [Q, k] over the live floats, read chunk by chunk (no resident copy)."""
        from .query import exact_topk

        best_lab = np.zeros((q.shape[0], 0), np.int64)
        best_sc = np.zeros((q.shape[0], 0), np.float32)
        for s, chunk in zip(range(0, self._n, 65536), self.vectors.chunks()):
            labels = self._pos_label[s : s + chunk.shape[0]]
            live = labels >= 0
            if not live.any():
                continue
            lab, sc = exact_topk(q, chunk[live], k, space=self.space, labels=labels[live])
            lab, sc = np.concatenate([best_lab, lab], axis=1), np.concatenate([best_sc, sc], axis=1)
            order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
            best_lab, best_sc = np.take_along_axis(lab, order, axis=1), np.take_along_axis(sc, order, axis=1)
        return best_lab, best_sc

    # -- persistence ---------------------------------------------------------------------------
    def save_files(self, root: Path, stem: str) -> list[dict[str, Any]]:
        """Write the codes (``.faiss``), the floats and the position map; returns the file entries.

        Each file goes to a temp name, is fsynced and renamed: the caller's sidecar is the commit point.
        """
        entries = []
        writers = [("positions", ".positions.npy", lambda p: _save_npy(p, self._pos_label[: self._n]))]
        writers.append(("vectors", ".vectors.npy", self.vectors.write))
        if self.index is not None:
            writers.append(("codes", ".faiss", lambda p: self.faiss.write_index(self.index, str(p))))
        for role, suffix, write in writers:
            name = f"{stem}{suffix}"
            tmp = root / f".{name}.tmp"
            try:
                write(tmp)
                _fsync(tmp)
                size, digest = tmp.stat().st_size, sha256_file(tmp)
                os.replace(tmp, root / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                for done in entries:
                    (root / done["file"]).unlink(missing_ok=True)
                raise
            entries.append({"role": role, "file": name, "size": size, "sha256": digest})
        return entries

    @classmethod
    def load_files(
        cls,
        root: Path,
        files: dict[str, str],
        dim: int,
        space: str,
        params: dict[str, Any],
        hnsw: dict[str, int],
    ) -> FaissGraph:
        """The engine saved by :meth:`save_files` (files already checked by the caller).

        Raises:
            ValueError / RuntimeError: a file is not what the sidecar says.
        """
        g = cls(
            params["name"],
            space,
            dim,
            nprobe=int(params.get("nprobe", 32)),
            rescore=int(params["rescore"]),
            nlist=params.get("nlist"),
            **hnsw,
        )
        positions = np.load(root / files["positions"], allow_pickle=False)
        vectors = FloatStore.open(root / files["vectors"], dim)
        if positions.dtype != np.int64 or positions.ndim != 1 or positions.size != len(vectors):
            raise ValueError(f"{files['positions']} does not match {files['vectors']}")
        g.vectors, g._n = vectors, positions.size
        g._pos_label = positions.copy()
        live = positions >= 0
        g._dead = int((~live).sum())
        g._label_pos = np.full(int(positions.max(initial=-1)) + 1, -1, np.int64)
        g._label_pos[positions[live]] = np.flatnonzero(live)
        if "codes" in files:
            g.index = g.faiss.read_index(str(root / files["codes"]))
            if g.index.d != dim or g.index.ntotal != g._n:
                raise ValueError(
                    f"{files['codes']} holds {g.index.ntotal} x {g.index.d}, expected {g._n} x {dim}"
                )
        elif params.get("trained"):
            raise ValueError("the sidecar says the codes are fitted, but names no codes file")
        return g

    # -- internals -----------------------------------------------------------------------------
    def _bitmap(self, allowed: list[int] | None) -> np.ndarray | None:
        if allowed is None:
            if self._dead == 0:
                return None
            if self._live_bits is None:
                self._live_bits = np.packbits(self._pos_label[: self._n] >= 0, bitorder="little")
            return self._live_bits
        mask = np.zeros(self._n, bool)
        pos = self._label_pos[np.asarray(allowed, np.int64)]
        mask[pos[pos >= 0]] = True
        return np.packbits(mask, bitorder="little")

    def _params(self, kc: int, sel: Any) -> Any:
        """faiss search parameters; the unfiltered ones are cached (building them costs microseconds)."""
        key = (self.ef, self.nprobe, kc)
        if sel is None and getattr(self, "_cached_params", (None, None))[0] == key:
            return self._cached_params[1]
        faiss = self.faiss
        if self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(nprobe=self.nprobe, sel=sel)
        else:
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef, kc), sel=sel)
        if sel is None:
            self._cached_params = (key, params)
        return params

    def _rescored(self, q: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if q.shape[0] == 1 and pos[0, -1] >= 0:  # one query, every candidate found: the service's path
            p = pos[0]
            rows = self.vectors.rows(p)
            # einsum, not `@`: a 50 x 512 product gains nothing from BLAS threads, and on busy cores
            # handing it to them cost milliseconds a call (measured here: 13 ms against tens of us)
            diff = rows - q[0] if self.space == "l2" else None
            sc = np.einsum("cd,d->c", rows, q[0]) if diff is None else -np.einsum("cd,cd->c", diff, diff)
            top = np.argsort(-sc, kind="stable")[:k]
            return self._pos_label[p[top]][None, :], sc[top].astype(np.float32)[None, :]
        labels = np.empty((q.shape[0], k), np.int64)
        sims = np.empty((q.shape[0], k), np.float32)
        for s in range(0, q.shape[0], _RESCORE_STEP):
            p = pos[s : s + _RESCORE_STEP]
            qb = q[s : s + _RESCORE_STEP]
            valid = p >= 0
            rows = self.vectors.rows(np.where(valid, p, 0).ravel()).reshape(*p.shape, self.dim)
            if self.space == "l2":
                diff = rows - qb[:, None, :]
                sc = -np.einsum("qcd,qcd->qc", diff, diff)
            else:
                sc = np.einsum("qcd,qd->qc", rows, qb)
            sc = np.where(valid, sc, -np.inf).astype(np.float32)
            top = np.argpartition(-sc, k - 1, axis=1)[:, :k] if k < sc.shape[1] else np.argsort(-sc, axis=1)
            top_sc = np.take_along_axis(sc, top, axis=1)
            order = np.argsort(-top_sc, axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            labels[s : s + p.shape[0]] = self._pos_label[np.take_along_axis(p, top, axis=1)]
            sims[s : s + p.shape[0]] = np.take_along_axis(top_sc, order, axis=1)
        return labels, sims


class _threads:
    """faiss's OpenMP thread count for one call (-1: every core), restored afterwards."""

    def __init__(self, faiss: Any, n: int) -> None:
        self.faiss, self.n = faiss, (os.cpu_count() or 1) if n is None or n < 1 else int(n)

    def __enter__(self) -> None:
        self.before = self.faiss.omp_get_max_threads()
        if self.before != self.n:
            self.faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.before != self.n:
            self.faiss.omp_set_num_threads(self.before)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
