"""The hnswlib layer shared by the index's modules: spaces, the lazy import, new graphs, the version."""

from __future__ import annotations

from typing import Any

#: user-facing space -> hnswlib space. Cosine is served as inner product on vectors the wrapper
#: normalises itself, so that exact search and hnswlib score the very same stored vectors.
HNSW_SPACE = {"cosine": "ip", "ip": "ip", "l2": "l2"}
SPACES = tuple(HNSW_SPACE)


def import_hnswlib() -> Any:
    """The hnswlib module.

    Raises:
        MissingDependencyError: hnswlib is not installed.
    """
    try:
        import hnswlib
    except ImportError as e:  # pragma: no cover - a base dependency
        from ..errors import MissingDependencyError

        raise MissingDependencyError("hnswlib", "runtime", "the image index") from e
    return hnswlib


def new_graph(space: str, dim: int, capacity: int, *, M: int, ef_construction: int, seed: int, ef: int) -> Any:
    """An empty ``hnswlib.Index`` for the user-facing ``space``, ready for ``capacity`` items."""
    graph = import_hnswlib().Index(space=HNSW_SPACE[space], dim=dim)
    graph.init_index(max_elements=capacity, M=M, ef_construction=ef_construction, random_seed=seed)
    graph.set_ef(ef)
    return graph


def hnswlib_version() -> str:
    """``"hnswlib <version>"`` for the sidecar, or ``"hnswlib"`` when the version is unknown."""
    from importlib import metadata

    try:
        return f"hnswlib {metadata.version('hnswlib')}"
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "hnswlib"
