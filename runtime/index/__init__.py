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

The hnswlib traps it guards against (seen with hnswlib 0.8): ``knn_query`` does not check the
query's dimension; ``ef`` resets to 10 on load; a ``k`` above the live count raises an opaque
``RuntimeError``; ``get_current_count()`` still counts deleted items; loading a graph with another
dimension "succeeds". Scores are similarities, higher is better: the cosine (``space="cosine"``),
the inner product (``"ip"``) or the negative squared L2 distance (``"l2"``).

Modules: :mod:`.store` (``ImageIndex``: ids, graph, metadata, writes), :mod:`.query` (search,
exact fallback, recall check), :mod:`.ingest` (images through an encoder), :mod:`.persistence`
(save/load), :mod:`.filters` (metadata filters), :mod:`.validate` (input checks), :mod:`.lock`,
:mod:`.graph` (the hnswlib layer); :mod:`.milvus` (``MilvusIndex``: the same API over a Milvus
collection) and :mod:`.stores` (``open_store``: a directory or a ``milvus://`` URL).
"""

from __future__ import annotations

from .filters import MetadataFilter
from .graph import SPACES
from .ingest import IMAGE_EXTENSIONS, AddReport, ImageEncoder, encode_batch, list_images
from .lock import RWLock
from .milvus import MilvusIndex, NoCollectionError  # pymilvus itself loads on first use
from .persistence import (
    GRAPH_PREFIX,
    GRAPH_SUFFIX,
    INDEX_SCHEMA_VERSION,
    LOCK_NAME,
    SIDECAR_NAME,
    directory_lock,
    graph_header,
)
from .query import RecallReport, RunningTopK, SearchResult, exact_topk
from .store import ImageIndex
from .stores import is_store_url, open_store

__all__ = [
    "GRAPH_PREFIX",
    "GRAPH_SUFFIX",
    "IMAGE_EXTENSIONS",
    "INDEX_SCHEMA_VERSION",
    "LOCK_NAME",
    "SIDECAR_NAME",
    "directory_lock",
    "SPACES",
    "AddReport",
    "ImageEncoder",
    "ImageIndex",
    "MilvusIndex",
    "NoCollectionError",
    "MetadataFilter",
    "RWLock",
    "RecallReport",
    "SearchResult",
    "RunningTopK",
    "exact_topk",
    "graph_header",
    "encode_batch",
    "list_images",
    "is_store_url",
    "open_store",
]
