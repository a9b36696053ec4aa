"""Saving and loading the index: a directory holding the hnswlib graph and a JSON sidecar.

The sidecar is the commit point: the graph goes to a new uniquely named file first, then the
sidecar that names it is replaced atomically, so a save that fails half-way leaves the previous
index loadable. Loading checks the sidecar's schema version, the graph's size, hash and header,
and the encoder, because hnswlib's own loader checks none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import (
    ArtifactError,
    ConcurrentWriteError,
    DimensionMismatchError,
    IndexCorruptError,
    InvalidInputError,
    SchemaVersionError,
)
from ..manifest import atomic_write_json, sha256_file
from .graph import HNSW_SPACE, hnswlib_version, import_hnswlib
from .ingest import ImageEncoder
from .lock import RWLock
from .validate import NO_METADATA

if TYPE_CHECKING:
    from .store import ImageIndex

INDEX_SCHEMA_VERSION = 1
#: the sidecar version of an index of a faiss engine (several files; older clipq refuses it)
ENGINE_SCHEMA_VERSION = 2
SIDECAR_NAME = "index.json"
GRAPH_PREFIX = "hnsw-"
GRAPH_SUFFIX = ".bin"
#: the inter-process lock of an index directory (filelock: flock on POSIX, msvcrt on Windows)
LOCK_NAME = ".index.lock"
#: how long a writer waits for another process's write by default, in seconds
LOCK_TIMEOUT_S = 600.0

_locks: dict[str, Any] = {}
_locks_mutex = threading.Lock()


def directory_lock(root: str | os.PathLike[str], timeout: float = LOCK_TIMEOUT_S) -> Any:
    """The inter-process lock of an index directory (one reentrant ``filelock.FileLock`` per path).

    One object per path and process, so a save inside :meth:`PersistenceMixin.edit` re-enters the
    lock instead of blocking on it; filelock's per-thread counters make threads wait for each other too.
    """
    try:
        import filelock
    except ImportError as e:  # pragma: no cover - a base dependency
        from ..errors import MissingDependencyError

        raise MissingDependencyError("filelock", "runtime", "index writes across processes") from e
    key = os.path.realpath(root)
    with _locks_mutex:
        lock = _locks.get(key)
        if lock is None:
            Path(key).mkdir(parents=True, exist_ok=True)
            lock = _locks[key] = filelock.FileLock(os.path.join(key, LOCK_NAME), timeout=timeout)
    return lock


@contextlib.contextmanager
def _locked(root: Path, timeout: float) -> Iterator[None]:
    import filelock

    lock = directory_lock(root)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise ConcurrentWriteError(
            f"index {root} is being written by another process; gave up after {timeout:.0f} s"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _generation(root: Path) -> int | None:
    """The saved generation of the index at ``root`` (None: no index there)."""
    try:
        return int(json.loads((root / SIDECAR_NAME).read_text(encoding="utf-8")).get("generation", 0))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise IndexCorruptError(f"cannot read {root / SIDECAR_NAME}: {e}") from e

#: hnswlib's file header (hnswalg.h, saveIndex): offsetLevel0, max_elements, cur_element_count,
#: size_data_per_element, label_offset, offsetData (size_t); maxlevel (int); enterpoint (uint);
#: maxM, maxM0, M (size_t); mult (double); ef_construction (size_t)
_HEADER = struct.Struct("<6QiI3QdQ")


class PersistenceMixin:
    """The disk half of :class:`~clipq.runtime.index.ImageIndex`: :meth:`save` and :meth:`load`."""

    # provided by ImageIndex
    dim: int
    space: str
    M: int
    ef_construction: int
    ef: int
    seed: int
    model_id: str | None
    model_hash: str | None
    deleted_count: int
    _lock: RWLock
    _save_lock: threading.Lock
    _hnsw: Any
    _label_to_id: dict[int, str]
    _meta: dict[int, Mapping[str, Any]]
    _next_label: int
    #: (real path, generation) of the save this index was loaded from, or last saved to
    _source: tuple[str, int] | None = None

    @classmethod
    @contextlib.contextmanager
    def edit(cls, path: str | os.PathLike[str], *, timeout: float = LOCK_TIMEOUT_S,
             **load_kw: Any) -> Iterator[ImageIndex]:
        """Load, change and save an index as one step that other processes wait for.

        ``with ImageIndex.edit(path, encoder=enc) as index: index.add(...)`` holds the directory's
        inter-process lock from load to save, so two writers serialise and no change is lost. The
        index is saved only when the block ends without an exception.

        Raises:
            ConcurrentWriteError: another process held the lock for longer than ``timeout``.
            Everything :meth:`load` and :meth:`save` raise.
        """
        root = Path(path)
        with _locked(root, timeout):
            index = cls.load(root, **load_kw)
            yield index
            index.save(root, timeout=timeout)

    def save(self, path: str | os.PathLike[str], *, timeout: float = LOCK_TIMEOUT_S) -> Path:
        """Save atomically to the directory ``path`` (created if needed).

        The graph goes to a new uniquely named file (temp file, fsync, rename), then the sidecar
        ``index.json`` that names it is replaced atomically: the sidecar is the commit point, so a
        save that fails anywhere leaves the previous index intact and loadable. Older graph files
        are removed afterwards. Searches may run during a save; writes wait.

        Args:
            path: index directory.

        Returns:
            The sidecar's path.

        Saves from several processes are serialised by the directory's lock, and a save never
        overwrites a newer one: an index loaded from ``path`` (or last saved there) refuses to save
        over an index that another writer saved in between (use :meth:`edit` to load-modify-save).

        Raises:
            InvalidInputError: ``path`` is a file, or a non-empty directory that holds no index.
            ConcurrentWriteError: another writer saved ``path`` since this index was loaded from it,
                or held its lock for longer than ``timeout``.
            OSError: the disk refused (the previous index is left as it was).
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise InvalidInputError(f"index path is a file, expected a directory: {root}")
        with self._save_lock, _locked(root, timeout):
            if not (root / SIDECAR_NAME).exists() and any(p.name != LOCK_NAME for p in root.iterdir()):
                raise InvalidInputError(f"refusing to save an index into a non-empty directory that holds none: {root}")
            on_disk = _generation(root)
            real = os.path.realpath(root)
            if self._source is not None and self._source[0] == real and on_disk != self._source[1]:
                raise ConcurrentWriteError(
                    f"index {root} was saved by another writer since this one loaded it (generation "
                    f"{self._source[1]} -> {on_disk}); reload it and redo the change, or use ImageIndex.edit()"
                )
            generation = (on_disk or 0) + 1
            stem = f"{GRAPH_PREFIX}{uuid.uuid4().hex[:16]}"
            graph_name = f"{stem}{GRAPH_SUFFIX}"
            tmp = root / f".{graph_name}.tmp"
            fit_pending = getattr(self._hnsw, "fit_pending", None)
            if fit_pending is not None:  # a compressed engine still waiting for its expected size
                with self._lock.write():
                    fit_pending(getattr(self, "num_threads", -1))
            with self._lock.read():
                save_files = getattr(self._hnsw, "save_files", None)
                if save_files is not None:  # a faiss engine: codes, floats and positions
                    files = save_files(root, stem)
                    keep = {f["file"] for f in files}
                    sidecar = self._sidecar("", 0, "", files=files)
                else:
                    keep = {graph_name}
                    try:
                        self._hnsw.save_index(str(tmp))
                        _fsync_file(tmp)
                        size, digest = tmp.stat().st_size, sha256_file(tmp)
                        os.replace(tmp, root / graph_name)
                        sidecar = self._sidecar(graph_name, size, digest)
                    except BaseException:
                        tmp.unlink(missing_ok=True)
                        raise
                sidecar["generation"] = generation
            try:
                atomic_write_json(root / SIDECAR_NAME, sidecar)
            except BaseException:
                for name in keep:
                    (root / name).unlink(missing_ok=True)
                raise
            for old in root.iterdir():  # previous graphs and temp files of interrupted saves
                if old.name not in keep and old.name.lstrip(".").startswith(GRAPH_PREFIX):
                    old.unlink(missing_ok=True)
            self._source = (real, generation)
            return root / SIDECAR_NAME

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: ImageEncoder | None = None,
        model_id: str | None = None,
        dim: int | None = None,
        verify: bool = True,
        **kwargs: Any,
    ) -> ImageIndex:
        """Load an index saved by :meth:`save`, checking it against its sidecar.

        Args:
            path: index directory.
            encoder: if given, its ``dim`` and ``model_id`` must match the index's.
            model_id: expected encoder model id (alternative to ``encoder``).
            dim: expected dimension (alternative to ``encoder``).
            verify: check the graph file's sha256 (size is always checked).
            **kwargs: runtime settings that are not persisted: ``exact_threshold``,
                ``rebuild_threshold``, ``num_threads``.

        Returns:
            The index, with its saved ``ef`` restored (hnswlib resets it to 10).

        Raises:
            IndexCorruptError: the sidecar or graph is missing, truncated, corrupt or inconsistent.
            SchemaVersionError: the sidecar was written by another schema version.
            DimensionMismatchError: the index's dimension is not the expected one.
            ArtifactError: the index was built with another model than the expected one.
        """
        root = Path(path)
        side_path = root / SIDECAR_NAME
        if not side_path.is_file():
            raise IndexCorruptError(f"no index at {root}: {SIDECAR_NAME} is missing")
        try:
            side = json.loads(side_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexCorruptError(f"cannot read {side_path}: {e}") from e
        if not isinstance(side, dict):
            raise IndexCorruptError(f"{side_path}: not a JSON object")
        if side.get("schema_version") not in (INDEX_SCHEMA_VERSION, ENGINE_SCHEMA_VERSION):
            raise SchemaVersionError(
                f"{side_path} has index schema version {side.get('schema_version')!r}; "
                f"this clipq reads versions {INDEX_SCHEMA_VERSION} and {ENGINE_SCHEMA_VERSION}"
            )
        try:
            engine = side.get("engine") or {"name": "hnswlib"}
            engine_name = engine["name"]
            graph = side["graph"] if engine_name == "hnswlib" else {}
            d = int(side["dim"])
            space = side["space"]
            ids, labels, metas = side["ids"], side["labels"], side["metadata"]
            params = {
                "space": space,
                "M": int(side["M"]),
                "ef_construction": int(side["ef_construction"]),
                "ef": int(side["ef"]),
                "model_id": side["encoder"].get("model_id"),
                "model_hash": side["encoder"].get("hash"),
                "seed": int(side.get("seed", 100)),
                "engine": engine_name,
                "nprobe": int(engine.get("nprobe", 32)),
                "rescore": int(engine.get("rescore", 50)),
            }
            total, next_label = int(side["total"]), int(side["next_label"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IndexCorruptError(f"{side_path}: missing or malformed field: {e}") from e
        if space not in HNSW_SPACE:
            raise IndexCorruptError(f"{side_path}: unknown space {space!r}")
        if not (len(ids) == len(labels) == len(metas) == int(side.get("count", -1))):
            raise IndexCorruptError(f"{side_path}: id map, metadata and count disagree")
        expected_dim = dim if dim is not None else (int(encoder.dim) if encoder is not None else None)
        if expected_dim is not None and expected_dim != d:
            raise DimensionMismatchError(
                f"index {root} holds {d}-d vectors but the encoder/model gives {expected_dim}-d; "
                "rebuild the index with this model"
            )
        want_model = model_id if model_id is not None else getattr(encoder, "model_id", None)
        if want_model is not None and params["model_id"] is not None and want_model != params["model_id"]:
            raise ArtifactError(
                f"index {root} was built with model {params['model_id']!r}, not {want_model!r}; "
                "rebuild it with this model (`clipq index build`)"
            )
        if engine_name != "hnswlib":
            index = _load_engine(cls, root, side, engine, d, params, kwargs, verify)
            index._next_label = next_label
            _restore_items(index, side_path, ids, labels, metas, next_label)
            if not set(index._hnsw.get_ids_list()) == set(index._label_to_id):
                raise IndexCorruptError(f"index {root}: the sidecar's labels are not the engine's live items")
            if encoder is not None:
                index.check_encoder(encoder)
            index.build_recall = side.get("build_recall")
            index._source = (os.path.realpath(root), int(side.get("generation", 0)))
            return index
        graph_path = root / graph["file"]
        if not graph_path.is_file():
            raise IndexCorruptError(f"index {root}: graph file {graph['file']} is missing")
        size = graph_path.stat().st_size
        if size != graph.get("size"):
            raise IndexCorruptError(
                f"index {root}: {graph['file']} has {size} bytes, the sidecar says {graph.get('size')} (truncated?)"
            )
        if verify and sha256_file(graph_path) != graph.get("sha256"):
            raise IndexCorruptError(f"index {root}: sha256 of {graph['file']} does not match the sidecar (corrupt)")

        header = graph_header(graph_path)
        expected = {"dim": d, "count": total, "M": params["M"], "ef_construction": params["ef_construction"]}
        found = {key: header[key] for key in expected}
        if found != expected:
            raise IndexCorruptError(f"index {root}: the graph holds {found}, the sidecar says {expected}")

        index = cls(d, capacity=16, **params, **kwargs)
        graph_obj = import_hnswlib().Index(space=HNSW_SPACE[space], dim=d)
        try:
            graph_obj.load_index(str(graph_path), max_elements=max(header["max_elements"], total, 16))
        except (RuntimeError, ValueError, MemoryError) as e:
            raise IndexCorruptError(f"index {root}: hnswlib cannot read {graph['file']}: {e}") from e
        if graph_obj.get_current_count() != total:
            raise IndexCorruptError(f"index {root}: hnswlib read {graph_obj.get_current_count()} items, expected {total}")
        graph_obj.set_ef(params["ef"])  # hnswlib resets ef to 10 on load
        index._hnsw = graph_obj
        index._next_label = next_label
        _restore_items(index, side_path, ids, labels, metas, next_label)
        index.build_recall = side.get("build_recall")
        graph_labels = set(graph_obj.get_ids_list())
        if not graph_labels.issuperset(index._label_to_id):
            raise IndexCorruptError(f"index {root}: the sidecar names labels that are not in the graph")
        if encoder is not None:
            index.check_encoder(encoder)  # the model hash too, when both sides know one
        index._source = (os.path.realpath(root), int(side.get("generation", 0)))
        return index

    def _sidecar(self, graph_name: str, size: int, digest: str,
                 files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        labels = sorted(self._label_to_id)
        side = {
            "schema_version": INDEX_SCHEMA_VERSION if files is None else ENGINE_SCHEMA_VERSION,
            "format": "clipq.image_index",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dim": self.dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "seed": self.seed,
            "count": len(labels),
            "deleted": self.deleted_count,
            "total": self._hnsw.get_current_count(),
            "capacity": self._hnsw.get_max_elements(),
            "next_label": self._next_label,
            "encoder": {"model_id": self.model_id, "hash": self.model_hash},
            "graph": {"file": graph_name, "size": size, "sha256": digest, "library": hnswlib_version()},
            "ids": [self._label_to_id[lb] for lb in labels],
            "labels": labels,
            "metadata": [dict(self._meta[lb]) for lb in labels],
            "build_recall": getattr(self, "build_recall", None),
        }
        if files is not None:
            from .faiss_engine import faiss_version

            side["engine"] = self._hnsw.params()
            side["graph"] = {"library": faiss_version()}
            side["files"] = files
        return side


def _restore_items(index: Any, side_path: Path, ids: list[Any], labels: list[Any], metas: list[Any],
                   next_label: int) -> None:
    """Fill the id maps and metadata of a loading index from the sidecar's lists."""
    for item_id, label, meta in zip(ids, labels, metas):
        if not isinstance(item_id, str) or not isinstance(meta, dict) or not 0 <= label < next_label:
            raise IndexCorruptError(f"{side_path}: malformed entry for id {item_id!r}")
        index._id_to_label[item_id] = label
        index._label_to_id[label] = item_id
        index._meta[label] = MappingProxyType(meta) if meta else NO_METADATA
    if len(index._id_to_label) != len(ids) or len(index._label_to_id) != len(ids):
        raise IndexCorruptError(f"{side_path}: repeated ids or labels")


def _load_engine(cls: Any, root: Path, side: dict[str, Any], engine: dict[str, Any], dim: int,
                 params: dict[str, Any], kwargs: dict[str, Any], verify: bool) -> Any:
    """An index of a faiss engine: every file checked (size always, sha256 with ``verify``), then loaded."""
    from .engines import ENGINES

    if engine["name"] not in ENGINES:
        raise IndexCorruptError(f"index {root}: unknown engine {engine['name']!r}")
    try:
        files = {f["role"]: f for f in side["files"]}
        names = {role: str(f["file"]) for role, f in files.items()}
    except (KeyError, TypeError) as e:
        raise IndexCorruptError(f"index {root}: malformed file list in {SIDECAR_NAME}: {e}") from e
    for role in ("positions", "vectors"):
        if role not in files:
            raise IndexCorruptError(f"index {root}: {SIDECAR_NAME} names no {role} file")
    for role, f in files.items():
        path = root / names[role]
        if not path.is_file():
            raise IndexCorruptError(f"index {root}: {role} file {names[role]} is missing")
        if path.stat().st_size != f.get("size"):
            raise IndexCorruptError(
                f"index {root}: {names[role]} has {path.stat().st_size} bytes, the sidecar says {f.get('size')} (truncated?)"
            )
        if verify and sha256_file(path) != f.get("sha256"):
            raise IndexCorruptError(f"index {root}: sha256 of {names[role]} does not match the sidecar (corrupt)")
    index = cls(dim, capacity=16, **params, **kwargs)
    from .faiss_engine import FaissGraph

    hnsw = {"M": params["M"], "ef_construction": params["ef_construction"], "ef": params["ef"]}
    try:
        index._hnsw = FaissGraph.load_files(root, names, dim, params["space"], engine, hnsw)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError, MemoryError) as e:
        raise IndexCorruptError(f"index {root}: cannot read the {engine['name']} engine's files: {e}") from e
    if index._hnsw.get_current_count() != int(side["total"]):
        raise IndexCorruptError(f"index {root}: the engine holds {index._hnsw.get_current_count()} items, "
                                f"the sidecar says {side['total']}")
    return index


def graph_header(path: str | os.PathLike[str]) -> dict[str, int]:
    """Read an hnswlib graph file's header without loading the graph.

    hnswlib's own loader trusts the dimension the caller gives it, so a graph of another dimension
    "loads" and answers garbage; the header says what the file really holds.

    Returns:
        ``count`` (items, deleted included), ``max_elements``, ``dim`` (for float32 vectors), ``M``,
        ``ef_construction``.

    Raises:
        IndexCorruptError: the file is shorter than a header or the header is inconsistent.
    """
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise IndexCorruptError(f"{path}: {len(raw)} bytes, shorter than an hnswlib header")
    (_, max_elements, count, per_element, label_offset, offset_data, _, _, _, max_m0, m, _, efc) = _HEADER.unpack(raw)
    data_bytes = label_offset - offset_data
    if data_bytes <= 0 or data_bytes % 4 or offset_data != max_m0 * 4 + 4 or per_element != label_offset + 8:
        raise IndexCorruptError(f"{path}: not an hnswlib graph of float32 vectors (inconsistent header)")
    return {"count": count, "max_elements": max_elements, "dim": data_bytes // 4, "M": m, "ef_construction": efc}


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
