"""The float vectors behind a compressed engine: rescoring, ``get_vectors``, exact search, rebuilds.

A compressed engine (:mod:`.faiss_engine`) keeps only codes and the graph in memory; the float32
vectors it rescores its candidates against live in a ``.npy`` file that a loaded index maps into
memory (``numpy.load(mmap_mode="r")``): the operating system pages in the few rows a query
touches and may drop them again under memory pressure, so the resident cost per vector is the
codes and the graph.

Rows added after a load (or to a new index) go to an in-memory tail; once the tail holds
``spill_rows`` rows (1M: 2 GB at 512-d, ``CLIPQ_SPILL_ROWS``) it is written to a temporary ``.npy``
segment (under ``CLIPQ_SPILL_DIR``, default the system's temporary directory) and mapped, so that
a collection larger than memory builds in batches: 10M x 512 floats are 20 GB on disk, not in RAM.
The segments are removed when the store is dropped; :meth:`FloatStore.write` copies every row into
the index's own file at save.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

#: rows copied per step when a store is written (bounds the extra memory of a save)
_COPY_ROWS = 65536
#: tail rows kept in memory before they are written to a mapped segment (``CLIPQ_SPILL_ROWS`` overrides)
SPILL_ROWS = 1 << 20


def _spill_rows() -> int:
    raw = os.environ.get("CLIPQ_SPILL_ROWS")
    if raw is None:
        return SPILL_ROWS
    try:
        rows = int(raw)
    except ValueError:
        rows = -1
    if rows < 0:
        from ..errors import InvalidInputError

        raise InvalidInputError(f"CLIPQ_SPILL_ROWS must be a number of rows >= 0 (0: never spill), not {raw!r}")
    return rows


class FloatStore:
    """float32 rows by position: memory-mapped (or in-memory) segments followed by an in-memory tail.

    Args:
        dim: the vector dimension.
        base: the first segment (a loaded index's mapped file), if any.
        spill_rows: tail rows before a spill to disk (default :data:`SPILL_ROWS`; 0: never).
    """

    def __init__(self, dim: int, base: np.ndarray | None = None, *, spill_rows: int | None = None) -> None:
        self.dim = int(dim)
        self._segments: list[np.ndarray] = [] if base is None or base.shape[0] == 0 else [base]
        # the start position of each segment, then the tail's
        self._starts = np.cumsum([0, *(s.shape[0] for s in self._segments)], dtype=np.int64)
        self._tail = np.zeros((0, self.dim), np.float32)
        self._tail_len = 0
        self.spill_rows = _spill_rows() if spill_rows is None else int(spill_rows)
        self._spill_dir: Path | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], dim: int) -> FloatStore:
        """Map the ``.npy`` file at ``path`` read-only.

        Raises:
            ValueError: the file is not a float32 [N, dim] array.
        """
        arr = np.load(str(path), mmap_mode="r", allow_pickle=False)
        if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[1] != dim:
            raise ValueError(f"{path} holds {arr.dtype} {arr.shape}, expected float32 [N, {dim}]")
        return cls(dim, arr)

    @property
    def _mapped_rows(self) -> int:
        return int(self._starts[-1])

    def __len__(self) -> int:
        return self._mapped_rows + self._tail_len

    @property
    def mapped(self) -> bool:
        """Whether the rows before the tail are memory maps of files (not resident by default)."""
        return bool(self._segments) and all(isinstance(s, np.memmap) for s in self._segments)

    @property
    def spilled_segments(self) -> int:
        """Temporary segments written by this store (see the module's docstring)."""
        return 0 if self._spill_dir is None else len(list(self._spill_dir.glob("*.npy")))

    def append(self, vecs: np.ndarray) -> None:
        n = vecs.shape[0]
        need = self._tail_len + n
        if need > self._tail.shape[0]:
            # grow geometrically, like a list: appends in batches stay linear overall
            grown = np.empty((max(need, int(self._tail.shape[0] * 1.5) + 1024), self.dim), np.float32)
            grown[: self._tail_len] = self._tail[: self._tail_len]
            self._tail = grown
        self._tail[self._tail_len : need] = vecs
        self._tail_len = need
        if self.spill_rows and self._tail_len >= self.spill_rows:
            self._spill()

    def _spill(self) -> None:
        """Write the tail to a temporary ``.npy`` segment and map it (removed with the store)."""
        if self._spill_dir is None:
            root = os.environ.get("CLIPQ_SPILL_DIR") or None
            self._spill_dir = Path(tempfile.mkdtemp(prefix="clipq-vectors-", dir=root))
            weakref.finalize(self, shutil.rmtree, str(self._spill_dir), True)
        path = self._spill_dir / f"segment-{len(self._segments):05d}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self._tail_len, self.dim))
        out[:] = self._tail[: self._tail_len]
        out.flush()
        del out
        self._segments.append(np.load(str(path), mmap_mode="r", allow_pickle=False))
        self._starts = np.append(self._starts, self._starts[-1] + self._tail_len)
        self._tail = np.zeros((0, self.dim), np.float32)
        self._tail_len = 0

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """float32 [len(positions), dim] (positions in any order, repeats allowed)."""
        pos = np.asarray(positions, dtype=np.int64)
        nb = self._mapped_rows
        if len(self._segments) == 1 and (self._tail_len == 0 or (pos.size and pos.max() < nb)):
            return np.asarray(self._segments[0][pos], dtype=np.float32)
        if not self._segments:
            return self._tail[pos]
        out = np.empty((pos.size, self.dim), np.float32)
        seg = np.searchsorted(self._starts, pos, side="right") - 1  # == len(segments): the tail
        for i in np.unique(seg).tolist():
            sel = seg == i
            src = self._tail if i == len(self._segments) else self._segments[i]
            out[sel] = src[pos[sel] - self._starts[i]]
        return out

    def chunks(self, step: int = _COPY_ROWS):  # noqa: ANN201 - a generator of arrays
        """Every row in order, ``step`` rows at a time (contiguous reads, segment by segment)."""
        parts = [*self._segments, self._tail[: self._tail_len]]
        for part in parts:
            for s in range(0, part.shape[0], step):
                yield np.asarray(part[s : s + step], dtype=np.float32)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write every row to a new ``.npy`` file (copied in chunks, then fsynced)."""
        out = np.lib.format.open_memmap(Path(path), mode="w+", dtype=np.float32, shape=(len(self), self.dim))
        s = 0
        for chunk in self.chunks():
            out[s : s + chunk.shape[0]] = chunk
            s += chunk.shape[0]
        out.flush()
        del out
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
