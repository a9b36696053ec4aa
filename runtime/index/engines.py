"""Index engines behind :class:`~clipq.runtime.index.ImageIndex`, and the rule that picks one.

=========  ===========================================  ==========================================
engine     what is in memory                            for
=========  ===========================================  ==========================================
hnswlib    float32 vectors + HNSW graph (hnswlib)       collections whose floats fit in memory
sq8        8-bit codes + HNSW graph (faiss), floats     about 4x more vectors in the same memory
           memory-mapped on disk for rescoring
sq4        4-bit codes + HNSW graph (faiss), floats     about 6x more; the <= 400 B/vector point
           memory-mapped on disk for rescoring
ivfpq      4-bit PQ codes + ids (faiss IVF-PQ fast      collections far larger than memory
           scan), floats memory-mapped for rescoring
=========  ===========================================  ==========================================

``engine="auto"`` (:func:`choose_engine`) takes the first engine, in the order above, whose
estimated resident memory (:func:`memory_estimate`, bytes per vector measured on 1M x 512 by
``clipq bench --target index --large``) fits the memory budget: the float engine while it fits,
because it needs no disk reads and no extra dependency, then the compressed ones by falling
memory. The figures behind it are in docs/retrieval.md.
"""

from __future__ import annotations

from typing import Any

ENGINES = ("hnswlib", "sq8", "sq4", "ivfpq")
ENGINE_CHOICES = ("auto", *ENGINES)
#: clipq's own memory per item besides the engine: the id maps and the metadata reference
#: (Python dicts of str ids; measured 210-230 B/item at 1M items)
WRAPPER_BYTES = 210


def memory_estimate(engine: str, n: int, dim: int, M: int = 16) -> int:
    """Estimated resident bytes of ``n`` vectors of ``dim`` in ``engine``, wrapper included.

    Per vector: the engine's bytes (below, fitted to the 1M measurement) plus ``WRAPPER_BYTES``.
    The float vectors of the compressed engines are on disk (memory-mapped), not counted.
    """
    from ..errors import InvalidInputError

    # fitted to `clipq bench --target index --large` (1M x 512, M 16; resident after a load, wrapper
    # included): hnswlib 2,581 B (its graph file 2,197 B + per-item lock, label map, pointers),
    # ivfpq 266 B (codes 32 B + id 8 B + lists); faiss HNSW: codes + 2M int32 links + offsets and
    # levels (about 17 B), as its index file measures; + 16 B of position maps for the faiss engines
    per = {
        "hnswlib": 4 * dim + 8 * M + 195,
        "sq8": dim + 8 * M + 17 + 16,
        "sq4": (dim + 1) // 2 + 8 * M + 17 + 16,
        "ivfpq": (dim // 8 + 1) // 2 + 8 + 3 + 16,
    }
    if engine not in per:
        raise InvalidInputError(f"unknown index engine {engine!r}; choose from {', '.join(ENGINE_CHOICES)}")
    return int(n) * (per[engine] + WRAPPER_BYTES)


def default_memory_budget() -> int:
    """Half of this machine's physical memory, in bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().total // 2)
    except ImportError:  # pragma: no cover - psutil is a base dependency
        return 8 << 30


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_engine(n: int, dim: int, *, memory_budget: int | None = None, M: int = 16) -> str:
    """The engine ``engine="auto"`` picks for ``n`` vectors of ``dim`` within ``memory_budget`` bytes.

    The first of hnswlib, sq8, sq4, ivfpq whose :func:`memory_estimate` fits; hnswlib whenever
    faiss is not installed (its engines are the ``clipq[index]`` extra), and ivfpq when nothing fits.

    Raises:
        InvalidInputError: a non-positive budget.
    """
    from ..errors import InvalidInputError

    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise InvalidInputError(f"memory budget must be positive, not {memory_budget!r}")
    if not faiss_available():
        return "hnswlib"
    for engine in ENGINES:
        if memory_estimate(engine, n, dim, M) <= budget:
            return engine
    return "ivfpq"


def new_engine(
    engine: str,
    space: str,
    dim: int,
    capacity: int,
    *,
    M: int,
    ef_construction: int,
    seed: int,
    ef: int,
    nprobe: int,
    rescore: int,
) -> Any:
    """An empty engine: an ``hnswlib.Index`` or a :class:`~.faiss_engine.FaissGraph`.

    Raises:
        InvalidInputError: an unknown engine.
        MissingDependencyError: a faiss engine without faiss-cpu installed.
    """
    from .graph import new_graph

    if engine == "hnswlib":
        return new_graph(space, dim, capacity, M=M, ef_construction=ef_construction, seed=seed, ef=ef)
    from .faiss_engine import FaissGraph

    return FaissGraph(
        engine,
        space,
        dim,
        M=M,
        ef_construction=ef_construction,
        ef=ef,
        nprobe=nprobe,
        rescore=rescore,
        capacity=capacity,
        train_at=capacity,
    )


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"`` or a plain number of bytes -> bytes.

    Raises:
        InvalidInputError: not a size.
    """
    from ..errors import InvalidInputError

    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    for unit, mult in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if s.endswith(unit):
            s, scale = s[:-1], mult
            break
    try:
        value = float(s) * scale
    except ValueError:
        raise InvalidInputError(f"not a memory size: {text!r} (say 8G, 512M or a number of bytes)") from None
    if value <= 0:
        raise InvalidInputError(f"memory size must be positive: {text!r}")
    return int(value)
