"""Preprocessed batches from a bounded pool of threads, decoding the next batch while the engine runs this one.

Pillow releases the GIL while it decodes, reduces and resizes, so threads keep every core busy
without pickling pixels between processes (threads against processes: docs/export.md, "Images
at the size the model needs"). One pool per process, as many threads as the process may use
cores (``CLIPQ_DECODE_THREADS`` overrides); the engine keeps its own threads, and the two share
the cores as the work comes: while a batch is in the engine, the pool decodes the next one.

:class:`BatchFeed` serves the calls a task path builds (``make_call(start, end)``, in order): the
batch asked for is gathered (in input order; the first bad image in that order raises, naming its
index), and the next batch of the same size is submitted before it returns. At most two batches
are in memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def decode_threads() -> int:
    """Threads of the decode pool: ``$CLIPQ_DECODE_THREADS``, else one per usable core."""
    env = os.environ.get("CLIPQ_DECODE_THREADS", "").strip()
    return max(1, int(env)) if env else usable_cores()


def decode_pool() -> ThreadPoolExecutor:
    """The process's decode pool (created on first use, shared by every path and index build)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(decode_threads(), thread_name_prefix="clipq-decode")
        return _POOL


class BatchFeed:
    """``feed(start, end)`` -> float32 [end - start, 3, S, S] of ``items[start:end]``, one batch ahead.

    Args:
        pre: An :class:`~clipq.runtime.preprocess.ImagePreprocessor` (its ``one(x, index)``).
        items: The images, in the caller's order.
        batch: Rows per call: after ``[s, e)`` the feed starts decoding ``[e, e + batch)``.
        pool: Threads to decode in (default :func:`decode_pool`); ``None`` workers = serial.
    """

    def __init__(self, pre: Any, items: Sequence[Any], batch: int, pool: ThreadPoolExecutor | None = None) -> None:
        self.pre = pre
        self.items = items
        self.batch = max(1, int(batch))
        self.pool = pool if pool is not None else decode_pool()
        self._pending: dict[int, tuple[int, list[Future[np.ndarray]]]] = {}

    def _submit(self, s: int, e: int) -> None:
        if s < e and s not in self._pending:
            self._pending[s] = (e, [self.pool.submit(self.pre.one, self.items[i], i) for i in range(s, e)])

    def __call__(self, s: int, e: int) -> np.ndarray:
        """The preprocessed rows ``[s, e)`` (the index of an error counts from 0 in ``items``).

        Raises:
            InvalidImageError, DTypeError, ShapeError: the first bad image of the batch, in order.
        """
        got = self._pending.get(s)
        if got is None or got[0] != e:
            self.close()
            self._submit(s, e)
        _, futures = self._pending.pop(s)
        self._submit(e, min(len(self.items), e + self.batch))
        try:
            rows = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            self.close()
            raise
        return np.stack(rows) if rows else np.zeros((0, 3, self.pre.size, self.pre.size), np.float32)

    def close(self) -> None:
        """Cancel what is queued and not started (a started image finishes and is dropped)."""
        for _, futures in self._pending.values():
            for f in futures:
                f.cancel()
        self._pending.clear()
