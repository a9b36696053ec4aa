"""One opener for every place clipq keeps an index: a directory (``ImageIndex``) or a Milvus URL.

``open_store("runs/index", encoder=enc)`` loads an hnswlib index directory;
``open_store("milvus://db:19530/photos", encoder=enc)`` opens a Milvus collection;
``open_store("milvus-lite://runs/photos.db/photos", create=True, dim=512)`` creates a collection in
a Milvus Lite file. The CLI's ``--store`` and the app go through it, so both kinds serve the same
calls (see :class:`~clipq.runtime.index.milvus.MilvusIndex`).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from ..errors import InvalidInputError
from .milvus_url import MilvusURL, is_store_url

__all__ = ["is_store_url", "open_store"]

#: what MilvusIndex.open takes besides the target; what ImageIndex.load takes
_MILVUS_OPTIONS = {
    "space",
    "model_id",
    "model_hash",
    "index_type",
    "M",
    "ef_construction",
    "ef",
    "nlist",
    "nprobe",
    "replace",
    "token",
    "timeout",
    "batch_rows",
}
_LOAD_OPTIONS = {"exact_threshold", "rebuild_threshold", "num_threads", "verify", "model_id"}


def open_store(
    target: str | os.PathLike[str],
    *,
    encoder: Any = None,
    create: bool = False,
    dim: int | None = None,
    **kwargs: Any,
) -> Any:
    """An :class:`ImageIndex` for a directory, or a :class:`MilvusIndex` for a ``milvus*://`` URL.

    Args:
        target: an index directory, ``milvus://HOST:PORT/COLLECTION`` or ``milvus-lite://PATH.db/COLLECTION``.
        encoder: checked against the index (dimension, model id); recorded when creating.
        create: a new index: an empty in-memory ``ImageIndex`` for a directory (the caller saves
            it), or the collection created in Milvus when it does not exist yet.
        dim: the dimension of a new index (default ``encoder.dim``); checked against an existing one.
        **kwargs: index options (``space``, ``ef``; ``M``, ``ef_construction`` for HNSW; Milvus'
            ``index_type``, ``nlist``, ``nprobe``, ``replace``, ``token``, ``timeout``).

    Raises:
        StoreError / StoreUnavailableError: a bad URL, a missing collection, Milvus down.
        DimensionMismatchError / ArtifactError: the index does not match ``dim`` / the encoder.
        InvalidInputError, IndexCorruptError, ...: as :meth:`ImageIndex.load` raises them.
    """
    if is_store_url(target) or (isinstance(target, str) and "://" in target):
        from .milvus import MilvusIndex

        opts = {k: v for k, v in kwargs.items() if k in _MILVUS_OPTIONS}
        return MilvusIndex.open(MilvusURL.parse(str(target)), create=create, dim=dim, encoder=encoder, **opts)
    from .store import ImageIndex

    # what this ImageIndex takes (its engines may add parameters); Milvus' own options are dropped
    accepted = set(inspect.signature(ImageIndex.__init__).parameters)
    if create:
        d = dim if dim is not None else getattr(encoder, "dim", None)
        if d is None:
            raise InvalidInputError(f"a new index at {target} needs its dimension (dim= or an encoder)")
        opts = {k: v for k, v in kwargs.items() if k in accepted}
        opts.setdefault("model_id", getattr(encoder, "model_id", None))
        opts.setdefault("model_hash", getattr(encoder, "model_hash", None))
        return ImageIndex(int(d), **opts)
    load_opts = {k: v for k, v in kwargs.items() if k in _LOAD_OPTIONS}
    index = ImageIndex.load(target, encoder=encoder, dim=dim, **load_opts)
    if kwargs.get("ef"):
        index.ef = int(kwargs["ef"])
    return index
