"""The collection clipq keeps in Milvus: field names, sizes, its creation, and pymilvus errors as clipq's."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError, StoreError, StoreUnavailableError
from .milvus_filters import META_FIELD
from .milvus_url import MilvusURL

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
ID_FIELD, SEQ_FIELD, VECTOR_FIELD = "id", "seq", "vector"
#: longest id (characters; Milvus' VARCHAR counts bytes, so 4 x this is reserved)
MAX_ID_CHARS = 1024
#: rows per insert call (Milvus' gRPC messages stay far below their 64 MiB limit at 512-d)
BATCH_ROWS = 5000
#: queries per search call, ids per ``id in [...]`` expression, rows per scan batch
QUERY_CHUNK, IDS_CHUNK, SCAN_BATCH = 1024, 2000, 4096
#: Milvus' largest top-k
MAX_TOPK = 16384
METRICS = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
INDEX_TYPES = ("HNSW", "IVF_FLAT", "FLAT")


class Caller:
    """Runs a pymilvus call; its exceptions become clipq's typed errors naming the URL."""

    def __init__(self, where: MilvusURL) -> None:
        self.where = where

    def __call__(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from pymilvus.exceptions import MilvusException

        try:
            return fn(*args, **kwargs)
        except MilvusException as e:
            msg = str(getattr(e, "message", None) or e)
            code = getattr(e, "code", None)
            if code in (2, 503) or "unavailable" in msg.lower() or "connect" in msg.lower():
                raise StoreUnavailableError(
                    f"{self.where.url}: {what}: Milvus is unavailable: {msg}"
                ) from None
            raise StoreError(f"{self.where.url}: {what} failed: {msg}") from None


def create_collection(
    client: Any,
    call: Caller,
    name: str,
    dim: int,
    space: str,
    index_type: str,
    params: dict[str, Any],
    model_id: str | None,
    model_hash: str | None,
) -> None:
    """Create clipq's collection (schema, vector index, properties)."""
    from pymilvus import DataType

    schema = client.create_schema(
        auto_id=False,
        enable_dynamic_field=False,
        description="clipq image index: string ids, vectors, JSON metadata",
    )
    schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=4 * MAX_ID_CHARS)
    schema.add_field(SEQ_FIELD, DataType.INT64)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(META_FIELD, DataType.JSON)
    index_params = client.prepare_index_params()
    index_params.add_index(VECTOR_FIELD, index_type=index_type, metric_type=METRICS[space], params=params)
    props = {
        "clipq.schema": SCHEMA_VERSION,
        "clipq.space": space,
        "clipq.model_id": model_id or "",
        "clipq.model_hash": model_hash or "",
    }
    call(
        "create_collection",
        client.create_collection,
        name,
        schema=schema,
        index_params=index_params,
        consistency_level="Strong",
        properties=props,
    )
    log.info("created Milvus collection %s: %d-d, %s %s %s", name, dim, index_type, METRICS[space], params)


def check_ids(id_list: Sequence[Any]) -> None:
    """Refuse ids Milvus' VARCHAR key or its expressions cannot carry (too long, control characters).

    Raises:
        InvalidInputError: naming the id and its position.
    """
    for n, item_id in enumerate(id_list):
        if isinstance(item_id, str) and (len(item_id) > MAX_ID_CHARS or any(ord(c) < 32 for c in item_id)):
            raise InvalidInputError(
                f"id {item_id[:80]!r} is longer than {MAX_ID_CHARS} characters or holds "
                "control characters (a Milvus store refuses those)",
                index=n,
            )
