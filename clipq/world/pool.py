"""The worker processes that draw images: one per core for a large world, none for a small one.

Every image is drawn from its own seeded stream, so the files are byte-identical whatever the
number of workers. The workers are spawned (not forked), so what they run must be a module-level
function of an importable module (:func:`clipq.world.layout._scene_job`, ...).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from clipq.runtime.errors import InvalidInputError


def _ordered_map(fn: Any, jobs: list[Any], bar: Any, pool: Any) -> Iterator[Any]:
    """``fn`` over ``jobs`` in order: in this process, or in ``pool``'s workers (every image is drawn
    from its own seeded stream, so both give byte-identical files)."""
    results = map(fn, jobs) if pool is None else pool.map(fn, jobs, chunksize=64)
    for r in results:
        bar.update(1)
        yield r


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


#: worlds with fewer images than this are drawn in-process (the small test world: starting workers
#: would cost more than it saves)
_PARALLEL_FROM = 2000


def _worker_pool(total: int, workers: int | None) -> ProcessPoolExecutor | None:
    """The processes that draw ``total`` images (None: draw in this process).

    Raises:
        InvalidInputError: ``workers`` below 1.
    """
    n_workers = _default_workers(total) if workers is None else int(workers)
    if n_workers < 1:
        raise InvalidInputError(f"workers must be >= 1, got {workers}")
    # spawn, not fork: the caller may hold torch's or BLAS's thread pools, which do not survive a fork
    return ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn")) if n_workers > 1 else None


def _default_workers(total: int) -> int:
    """One process per usable core (at most 8) for a world worth it (a worker starts in about 0.3 s)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if total < _PARALLEL_FROM else max(1, min(cores, 8))
