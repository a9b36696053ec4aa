"""The float vectors behind a compressed engine: rescoring, ``get_vectors``, exact search, rebuilds.

A compressed engine (:mod:`.faiss_engine`) keeps only codes and the graph in memory; the float32
vectors it rescores its candidates against live in a ``.npy`` file that a loaded index maps into
memory (``numpy.load(mmap_mode="r")``): the operating system pages in the few rows a query
touches and may drop them again under memory pressure, so the resident cost per vector is the
codes and the graph. Rows added after a load go to an in-memory tail until the next save.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: rows copied per step when a store is written (bounds the extra memory of a save)
_COPY_ROWS = 65536


class FloatStore:
    """float32 rows by position: an optional memory-mapped base followed by an in-memory tail."""

    def __init__(self, dim: int, base: np.ndarray | None = None) -> None:
        self.dim = int(dim)
        self._base = base if base is not None else np.zeros((0, self.dim), np.float32)
        self._tail = np.zeros((0, self.dim), np.float32)
        self._tail_len = 0

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

    def __len__(self) -> int:
        return self._base.shape[0] + self._tail_len

    @property
    def mapped(self) -> bool:
        """Whether the base rows are a memory map of a file (not resident by default)."""
        return isinstance(self._base, np.memmap)

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

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """float32 [len(positions), dim] (positions in any order, repeats allowed)."""
        pos = np.asarray(positions, dtype=np.int64)
        nb = self._base.shape[0]
        if self._tail_len == 0 or (pos.size and pos.max() < nb):
            return np.asarray(self._base[pos], dtype=np.float32)
        if nb == 0:
            return self._tail[pos]
        out = np.empty((pos.size, self.dim), np.float32)
        in_base = pos < nb
        out[in_base] = self._base[pos[in_base]]
        out[~in_base] = self._tail[pos[~in_base] - nb]
        return out

    def chunks(self, step: int = _COPY_ROWS):  # noqa: ANN201 - a generator of arrays
        """Every row in order, ``step`` rows at a time."""
        for s in range(0, len(self), step):
            yield self.rows(np.arange(s, min(s + step, len(self))))

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write every row to a new ``.npy`` file (copied in chunks, then fsynced)."""
        out = np.lib.format.open_memmap(Path(path), mode="w+", dtype=np.float32, shape=(len(self), self.dim))
        for s, chunk in zip(range(0, len(self), _COPY_ROWS), self.chunks()):
            out[s : s + chunk.shape[0]] = chunk
        out.flush()
        del out
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
