"""``MilvusIndex``: the image index in a Milvus collection, behind ``ImageIndex``'s API.

When one machine's memory no longer holds the vectors, the collection lives in Milvus (a cluster,
or a Milvus Lite file for one machine and the tests) and clipq keeps the same calls: ``add`` /
``delete`` / ``update`` with string ids and JSON metadata, ``search`` / ``search_batch`` /
``search_ids`` with the same metadata filters and scores, ``len``, ``ids``, ``metadata``,
``get_vectors``, ``check_encoder``, ``add_images``, ``recall_check``. :class:`ImageSearch`, the CLI
(``--store URL``) and the app use it as they use an :class:`ImageIndex`.

The collection clipq creates (see docs/deploy.md, "Milvus"): ``id`` VARCHAR primary key (the
string id), ``seq`` INT64 (insertion order, for :meth:`ids`), ``vector`` FLOAT_VECTOR [dim],
``meta`` JSON; one vector index (HNSW by default; IVF_FLAT or FLAT on request) with the metric of
the space (COSINE, IP or L2); consistency level Strong (a search sees every write before it);
``clipq.*`` collection properties record the schema version, the space and the encoder's model id.

Differences from :class:`ImageIndex`, each deliberate: Milvus has no multi-call transactions, so a
large ``add`` goes in batches and is rolled back (the batches already in are deleted) when a later
batch fails; ids are checked against the collection before writing, but two writers adding the same
new id at the same moment can both succeed (Milvus keeps the newer row); ``exact=True`` scans every
vector through the client (correct, and slow on a large collection: a recall check's tool);
``exact=None`` lets Milvus search (exact itself on a FLAT index and on not-yet-indexed segments).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import (
    ArtifactError,
    DimensionMismatchError,
    InvalidInputError,
    ShapeError,
    StoreError,
    UnknownIdError,
)
from .ingest import IngestMixin, _expand_images
from .milvus_filters import META_FIELD, ids_expr
from .milvus_query import MilvusQueryMixin
from .milvus_schema import (
    BATCH_ROWS,
    ID_FIELD,
    IDS_CHUNK,
    INDEX_TYPES,
    METRICS,
    SCAN_BATCH,
    SCHEMA_VERSION,
    SEQ_FIELD,
    VECTOR_FIELD,
    Caller,
    check_ids,
    create_collection,
)
from .milvus_url import CONNECT_TIMEOUT_S, MilvusURL, connect
from .validate import MetadataArg, check_ids_unique, check_metadata, prepare_vectors

log = logging.getLogger(__name__)

__all__ = ["MilvusIndex", "NoCollectionError", "check_ids"]


class NoCollectionError(StoreError):
    """The store URL names a collection that does not exist (create it with ``create=True``)."""


class MilvusIndex(MilvusQueryMixin, IngestMixin):
    """An image index stored in a Milvus collection; open one with :meth:`open`.

    Thread-safe as far as pymilvus' client is (one gRPC channel; calls may run in parallel).
    """

    def __init__(
        self,
        client: Any,
        where: MilvusURL,
        *,
        dim: int,
        space: str,
        model_id: str | None,
        model_hash: str | None,
        index_type: str,
        ef: int = 64,
        nprobe: int = 16,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self._client, self.where = client, where
        self.url, self.collection = where.url, where.collection
        self.dim, self.space, self.index_type = int(dim), space, index_type
        self._model_id, self._model_hash = model_id, model_hash
        self._ef, self.nprobe, self.batch_rows = int(ef), int(nprobe), int(batch_rows)
        self._last_seq = 0
        self._known: set[str] | None = None  # ids found present before add_images (see _id_to_label)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        url: str | MilvusURL,
        *,
        create: bool = False,
        dim: int | None = None,
        encoder: Any = None,
        space: str = "cosine",
        model_id: str | None = None,
        model_hash: str | None = None,
        index_type: str = "HNSW",
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        nlist: int = 1024,
        nprobe: int = 16,
        replace: bool = False,
        token: str | None = None,
        timeout: float = CONNECT_TIMEOUT_S,
        batch_rows: int = BATCH_ROWS,
    ) -> MilvusIndex:
        """Open (or create) the collection a store URL names.

        Args:
            url: ``milvus://HOST:PORT/COLLECTION`` or ``milvus-lite://PATH.db/COLLECTION``.
            create: create the collection when it does not exist (needs ``dim`` or ``encoder``).
            dim: the vectors' dimension; checked against an existing collection.
            encoder: an encoder whose ``dim`` and ``model_id`` are checked (or recorded on creation).
            space, model_id, model_hash: recorded on creation (an existing collection keeps its own).
            index_type: ``HNSW`` (``M``, ``ef_construction``), ``IVF_FLAT`` (``nlist``) or ``FLAT``.
            ef, nprobe: search parameters (HNSW, IVF).
            replace: drop an existing collection first (``--force``).
            token: a Milvus token (default ``$CLIPQ_MILVUS_TOKEN``).
            timeout: seconds to wait for a server.
            batch_rows: rows per insert call.

        Raises:
            StoreError: a bad URL; no such collection (without ``create``); a collection clipq did not make.
            StoreUnavailableError: the server does not answer.
            DimensionMismatchError: the collection holds vectors of another dimension.
            ArtifactError: the encoder's model differs from the collection's.
        """
        where = url if isinstance(url, MilvusURL) else MilvusURL.parse(url)
        if space not in METRICS:
            raise InvalidInputError(f"space must be one of {', '.join(METRICS)}, not {space!r}")
        if index_type not in INDEX_TYPES:
            raise InvalidInputError(f"index_type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
        want_dim = int(encoder.dim) if encoder is not None and dim is None else dim
        client = connect(where, token=token, timeout=timeout)
        try:
            call = Caller(where)
            exists = call("has_collection", client.has_collection, where.collection)
            if exists and replace:
                call("drop_collection", client.drop_collection, where.collection)
                exists = False
            if not exists:
                if not create:
                    raise NoCollectionError(
                        f"{where.url}: no collection {where.collection!r} in this Milvus "
                        "(create it with `clipq index build --store URL`)"
                    )
                if want_dim is None or want_dim < 1:
                    raise InvalidInputError(f"{where.url}: creating a collection needs its dimension")
                if encoder is not None:
                    model_id = model_id or getattr(encoder, "model_id", None)
                    model_hash = model_hash or getattr(encoder, "model_hash", None)
                params = (
                    {"M": M, "efConstruction": ef_construction}
                    if index_type == "HNSW"
                    else ({"nlist": nlist} if index_type == "IVF_FLAT" else {})
                )
                create_collection(
                    client,
                    call,
                    where.collection,
                    int(want_dim),
                    space,
                    index_type,
                    params,
                    model_id,
                    model_hash,
                )
            desc = call("describe_collection", client.describe_collection, where.collection)
            props = desc.get("properties") or {}
            fields = {f["name"]: f for f in desc.get("fields", [])}
            if props.get("clipq.schema") != SCHEMA_VERSION or not {ID_FIELD, VECTOR_FIELD, META_FIELD} <= set(
                fields
            ):
                raise StoreError(
                    f"{where.url}: collection {where.collection!r} was not created by clipq "
                    f"(fields {sorted(fields)}, clipq.schema {props.get('clipq.schema')!r})"
                )
            have_dim = int(fields[VECTOR_FIELD]["params"]["dim"])
            if want_dim is not None and int(want_dim) != have_dim:
                what = "the encoder gives" if encoder is not None and dim is None else "expected"
                raise DimensionMismatchError(
                    f"{where.url}: collection {where.collection!r} holds {have_dim}-d "
                    f"vectors, {what} {int(want_dim)}-d"
                )
            idx = call("describe_index", client.describe_index, where.collection, VECTOR_FIELD) or {}
            call("load_collection", client.load_collection, where.collection)
            index = cls(
                client,
                where,
                dim=have_dim,
                space=props.get("clipq.space", "cosine"),
                model_id=props.get("clipq.model_id") or None,
                model_hash=props.get("clipq.model_hash") or None,
                index_type=str(idx.get("index_type", index_type)),
                ef=ef,
                nprobe=nprobe,
                batch_rows=batch_rows,
            )
            if encoder is not None:
                index.check_encoder(encoder)
            return index
        except BaseException:
            client.close()
            raise

    def close(self) -> None:
        """Close the client (a Milvus Lite engine stops with its last client)."""
        self._client.close()

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties and reads ------------------------------------------------------------------
    @property
    def ef(self) -> int:
        """HNSW search candidate list size (at least k is used)."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"ef must be an integer >= 1, not {value!r}")
        self._ef = int(value)

    @property
    def model_id(self) -> str | None:
        return self._model_id

    @model_id.setter
    def model_id(self, value: str | None) -> None:
        self._set_props({"clipq.model_id": value or ""})
        self._model_id = value

    @property
    def model_hash(self) -> str | None:
        return self._model_hash

    @model_hash.setter
    def model_hash(self, value: str | None) -> None:
        self._set_props({"clipq.model_hash": value or ""})
        self._model_hash = value

    @property
    def deleted_count(self) -> int:
        """Always 0: Milvus compacts deleted rows by itself."""
        return 0

    def __len__(self) -> int:
        rows = self._call("count", self._client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str) or not item_id:
            return False
        return bool(self._existing([item_id]))

    def ids(self) -> list[str]:
        """Live ids in insertion order (one pass over the collection)."""
        pairs = [(r[SEQ_FIELD], r[ID_FIELD]) for r in self._scan("", [SEQ_FIELD])]
        pairs.sort()
        return [i for _, i in pairs]

    def metadata(self, item_id: str) -> dict[str, Any]:
        """A copy of an item's metadata.

        Raises:
            UnknownIdError: no such id.
        """
        return dict(self.metadata_many([item_id])[item_id])

    def metadata_many(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """id -> metadata of several items in few calls.

        Raises:
            UnknownIdError: an id is not in the index.
        """
        rows = self._get(ids, [META_FIELD])
        return {i: dict(rows[i][META_FIELD] or {}) for i in ids}

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of ``ids`` (normalised for ``space="cosine"``), float32 [N, dim].

        Raises:
            UnknownIdError: an id is not in the index.
        """
        ids = list(ids)
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        rows = self._get(ids, [VECTOR_FIELD])
        return np.asarray([rows[i][VECTOR_FIELD] for i in ids], dtype=np.float32)

    def info(self) -> dict[str, Any]:
        """Summary for humans and ``--json``: where, sizes, parameters, model."""
        idx = self._call("describe_index", self._client.describe_index, self.collection, VECTOR_FIELD) or {}
        params = {
            k: v
            for k, v in idx.items()
            if k
            not in ("field_name", "index_name", "total_rows", "indexed_rows", "pending_index_rows", "state")
        }
        return {
            "store": self.url,
            "collection": self.collection,
            "count": len(self),
            "deleted": 0,
            "dim": self.dim,
            "space": self.space,
            "index": params,
            "ef": self.ef,
            "nprobe": self.nprobe,
            "model_id": self.model_id,
            "model_hash": self.model_hash,
        }

    def check_encoder(self, encoder: Any) -> None:
        """Refuse an encoder whose dimension or model differs from the collection's.

        Raises:
            DimensionMismatchError: the dimensions differ.
            ArtifactError: both model ids (or hashes) are known and differ.
        """
        enc_dim = int(getattr(encoder, "dim", -1))
        if enc_dim != self.dim:
            raise DimensionMismatchError(
                f"{self.url}: the encoder gives {enc_dim}-d embeddings, the collection holds {self.dim}-d"
            )
        for attr in ("model_id", "model_hash"):
            mine, theirs = getattr(self, attr), getattr(encoder, attr, None)
            if mine is not None and theirs is not None and mine != theirs:
                raise ArtifactError(
                    f"{self.url}: the collection was built with a model of {attr} {mine!r}, the "
                    f"encoder has {theirs!r}; rebuild it with this model"
                )

    # -- writes --------------------------------------------------------------------------------
    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str | None] | None = None,
        metadata: MetadataArg = None,
    ) -> list[str]:
        """Add vectors; all-or-nothing (see :class:`ImageIndex.add`).

        Every check runs before the first write; the rows then go in batches of ``batch_rows``, and
        a failing batch deletes the ones this call wrote before it, so the collection is as before.

        Raises:
            DimensionMismatchError, InvalidInputError, DuplicateIdError: as :meth:`ImageIndex.add`.
            StoreError / StoreUnavailableError: Milvus refused or is down (nothing of this call stays).
        """
        vecs = prepare_vectors(embeddings, self.dim, self.space, what="embeddings")
        n = vecs.shape[0]
        seqs = self._next_seqs(n)
        if ids is None:
            ids = [None] * n
        elif isinstance(ids, str):
            ids = [ids]
        if len(ids) != n:
            raise InvalidInputError(f"got {len(ids)} ids for {n} vectors")
        id_list = [f"item-{s}" if i is None else i for i, s in zip(ids, seqs)]
        check_ids(id_list)
        check_ids_unique(id_list, self._existing(id_list))
        metas = check_metadata(metadata, id_list)
        self.insert_rows(id_list, vecs, metas, seqs)
        return id_list

    def insert_rows(
        self,
        id_list: Sequence[str],
        vecs: np.ndarray,
        metas: Sequence[Mapping[str, Any]],
        seqs: Sequence[int] | None = None,
    ) -> None:
        """Insert rows already checked (ids new and valid, vectors prepared), rolling back on failure."""
        seqs = self._next_seqs(len(id_list)) if seqs is None else seqs
        done: list[str] = []
        try:
            for s in range(0, len(id_list), self.batch_rows):
                chunk = id_list[s : s + self.batch_rows]
                rows = [
                    {ID_FIELD: i, SEQ_FIELD: q, VECTOR_FIELD: v, META_FIELD: dict(m)}
                    for i, q, v, m in zip(
                        chunk,
                        seqs[s : s + self.batch_rows],
                        vecs[s : s + self.batch_rows],
                        metas[s : s + self.batch_rows],
                    )
                ]
                self._call("insert", self._client.insert, self.collection, rows)
                done += chunk
        except BaseException:
            if done:
                log.warning("%s: insert failed after %d rows; deleting them", self.url, len(done))
                try:
                    for s in range(0, len(done), IDS_CHUNK):
                        self._client.delete(self.collection, ids=done[s : s + IDS_CHUNK])
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    log.error("%s: could not roll back %d rows of a failed add", self.url, len(done))
            raise

    def delete(self, ids: str | Sequence[str]) -> int:
        """Delete items; all-or-nothing: an unknown id deletes nothing.

        Raises:
            UnknownIdError: an id is not in the index.
        """
        id_list = list(dict.fromkeys([ids] if isinstance(ids, str) else ids))
        present = self._existing(id_list)
        for item_id in id_list:
            if item_id not in present:
                raise UnknownIdError(f"id {item_id!r} is not in the index ({self.url})")
        for s in range(0, len(id_list), IDS_CHUNK):
            self._call("delete", self._client.delete, self.collection, ids=id_list[s : s + IDS_CHUNK])
        return len(id_list)

    def update(
        self, item_id: str, embedding: np.ndarray | None = None, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Replace an item's vector and/or metadata (the whole dict), keeping its id and place.

        Raises:
            UnknownIdError: no such id.
            DimensionMismatchError / InvalidInputError: the vector or metadata is unusable.
        """
        vec = (
            None if embedding is None else prepare_vectors(embedding, self.dim, self.space, what="embedding")
        )
        if vec is not None and vec.shape[0] != 1:
            raise ShapeError(f"update takes one vector, got {vec.shape[0]}")
        meta = None if metadata is None else check_metadata([metadata], [item_id])[0]
        row = self._get([item_id], [SEQ_FIELD, VECTOR_FIELD, META_FIELD])[item_id]
        new = {
            ID_FIELD: item_id,
            SEQ_FIELD: row[SEQ_FIELD],
            VECTOR_FIELD: row[VECTOR_FIELD] if vec is None else vec[0],
            META_FIELD: row[META_FIELD] if meta is None else dict(meta),
        }
        self._call("upsert", self._client.upsert, self.collection, [new])

    def add_images(
        self, images: Any, encoder: Any, *, ids: Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        """Encode images and add them (see :meth:`ImageIndex.add_images`); ids checked in one pass first."""
        _, default_ids, _ = _expand_images(images)
        wanted = [i for i in (list(ids) if ids is not None else default_ids) if isinstance(i, str)]
        self._known = self._existing(wanted)
        try:
            return super().add_images(images, encoder, ids=ids, **kwargs)
        finally:
            self._known = None

    @property
    def _id_to_label(self) -> set[str]:
        # IngestMixin checks new ids against this container before encoding anything
        return self._known if self._known is not None else set()

    # -- internals -----------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return Caller(self.where)(what, fn, *args, **kwargs)

    def _set_props(self, props: dict[str, str]) -> None:
        self._call(
            "alter_collection_properties",
            self._client.alter_collection_properties,
            self.collection,
            properties=props,
        )

    def properties(self) -> dict[str, str]:
        """The collection's properties (clipq's are ``clipq.*``)."""
        desc = self._call("describe_collection", self._client.describe_collection, self.collection)
        return dict(desc.get("properties") or {})

    def set_properties(self, props: dict[str, str]) -> None:
        """Record collection properties (a bulk load's progress)."""
        self._set_props(props)

    def wait_indexed(self, timeout: float = 600.0, poll: float = 0.5) -> float:
        """Flush, then wait until Milvus has indexed every row (searches are slower until then).

        Returns:
            Seconds waited.

        Raises:
            StoreError: the index is not built within ``timeout`` seconds.
        """
        t0 = time.perf_counter()
        self._call("flush", self._client.flush, self.collection)
        while True:
            idx = (
                self._call("describe_index", self._client.describe_index, self.collection, VECTOR_FIELD) or {}
            )
            if int(idx.get("pending_index_rows", 0)) == 0 and int(idx.get("indexed_rows", 0)) >= int(
                idx.get("total_rows", 0)
            ):
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise StoreError(f"{self.url}: the vector index is not built after {timeout:g} s ({idx})")
            time.sleep(poll)

    def _next_seqs(self, n: int) -> list[int]:
        start = max(time.time_ns(), self._last_seq + 1)
        self._last_seq = start + n - 1
        return list(range(start, start + n))

    def _existing(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are in the collection (in calls of ``IDS_CHUNK``)."""
        found: set[str] = set()
        for s in range(0, len(ids), IDS_CHUNK):
            chunk = [i for i in ids[s : s + IDS_CHUNK] if isinstance(i, str) and i]
            if chunk:
                rows = self._call(
                    "query",
                    self._client.query,
                    self.collection,
                    filter=ids_expr(chunk),
                    output_fields=[ID_FIELD],
                )
                found.update(r[ID_FIELD] for r in rows)
        return found

    def _get(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in range(0, len(ids), IDS_CHUNK):
            chunk = list(ids[s : s + IDS_CHUNK])
            if any(not isinstance(i, str) or not i for i in chunk):
                bad = next(i for i in chunk if not isinstance(i, str) or not i)
                raise UnknownIdError(f"id {bad!r} is not in the index ({self.url})")
            for r in self._call("get", self._client.get, self.collection, ids=chunk, output_fields=fields):
                out[r[ID_FIELD]] = r
        for i in ids:
            if i not in out:
                raise UnknownIdError(f"id {i!r} is not in the index ({self.url})")
        return out

    def _scan(self, expr: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        """Every row matching ``expr`` (``""``: all), ``fields`` plus the id, in batches."""
        it = self._call(
            "query_iterator",
            self._client.query_iterator,
            self.collection,
            batch_size=SCAN_BATCH,
            filter=expr,
            output_fields=fields,
        )
        try:
            while True:
                batch = self._call("query_iterator", it.next)
                if not batch:
                    return
                yield from batch
        finally:
            it.close()
