"""Compact embeddings: int8 and binary codes calibrated on a collection, and shorter ``dimensions`` by PCA.

- :class:`Int8Codec`: 8-bit scalar codes, one range per dimension from the collection's quantiles
  (robust to outlier coordinates), saved and loaded as a small ``.npz``;
- :func:`int8_search`: float queries against int8 codes, the top candidates rescored with float vectors;
- :func:`pack_binary` / :func:`hamming_topk` / :func:`binary_search`: sign codes, 8 dimensions a byte,
  and a search that takes Hamming candidates and rescores them with the float vectors;
- :class:`Projection`: a PCA fitted on the collection (``d_in -> d_out``, re-normalised), stored as
  ``projection.npz`` in the index directory; :func:`project_index` writes a projected index,
  :func:`query_projection` (used by :class:`~clipq.runtime.search.ImageSearch`) applies the index's
  projection to queries, :class:`ProjectedEncoder` to anything an encoder embeds;
- :func:`quantize` / :func:`encode_rows`: embeddings in the ``/v1/embeddings`` encodings (float, base64,
  int8, uint8, binary, ubinary), as arrays or as JSON rows.

Numpy only; :func:`hamming_topk` uses faiss's binary flat index when installed.
"""

from __future__ import annotations

from .formats import ENCODING_FORMATS, encode_rows, quantize
from .projection import (
    INT8_NAME,
    PROJECTION_NAME,
    ProjectedEncoder,
    Projection,
    collection_codec,
    encoder_for_index,
    index_projection,
    is_projected_id,
    project_index,
    query_projection,
)
from .quant import (
    BINARY_FORMATS,
    INT8_FORMATS,
    Int8Codec,
    binary_search,
    hamming_topk,
    int8_search,
    pack_binary,
    unpack_binary,
)

__all__ = [
    "BINARY_FORMATS",
    "ENCODING_FORMATS",
    "INT8_FORMATS",
    "INT8_NAME",
    "PROJECTION_NAME",
    "Int8Codec",
    "ProjectedEncoder",
    "Projection",
    "binary_search",
    "collection_codec",
    "encode_rows",
    "encoder_for_index",
    "hamming_topk",
    "index_projection",
    "int8_search",
    "is_projected_id",
    "pack_binary",
    "project_index",
    "quantize",
    "query_projection",
    "unpack_binary",
]
