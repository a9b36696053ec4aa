"""Shorter embeddings: a linear projection fitted on the collection (PCA), stored with the index.

CLIP's embeddings cannot be cut (they are not Matryoshka-trained: the first 256 of 512 numbers are not a
256-d embedding), but most of a collection's variance lies in fewer directions. :meth:`Projection.fit`
finds them: the top eigenvectors of the collection's second-moment matrix ``X^T X`` (PCA without
centring by default, so that a text query, whose embeddings sit apart from the images' (CLIP's modality
gap), is not shifted by the images' mean; ``center=True`` subtracts it: on the demo the two differ by
at most 0.6 points of text -> image R@5 at 64, 32, 16 or 8 dimensions, neither ahead throughout). :meth:`Projection.apply` maps ``[N, d_in] -> [N, d_out]`` and re-normalises, so the output is a
unit vector as CLIP's are.

The projection is stored in the index directory as ``projection.npz`` and the index records the
*projected* model id (``<model id>+pca<d>-<fingerprint>``), so the query side and the index side always
use the same one: :class:`~clipq.runtime.search.ImageSearch` projects its queries with the index's
file, ``clipq index add`` projects new images with it, and an encoder (or a projection) that does not
match is refused with a typed error instead of answering garbage.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, DimensionMismatchError, InvalidInputError
from .quant import CALIBRATION_SAMPLE, Int8Codec, _matrix, _sample

__all__ = [
    "INT8_NAME",
    "PROJECTION_NAME",
    "ProjectedEncoder",
    "Projection",
    "collection_codec",
    "encoder_for_index",
    "index_projection",
    "project_index",
    "query_projection",
]

log = logging.getLogger(__name__)

#: the projection's file in an index directory
PROJECTION_NAME = "projection.npz"
#: saved int8 ranges in an index directory (optional: :func:`collection_codec` fits them otherwise)
INT8_NAME = "int8.npz"
#: int8 ranges per index object (weakly held: they go with the index)
_codecs: weakref.WeakKeyDictionary[Any, Int8Codec] = weakref.WeakKeyDictionary()
_codecs_lock = threading.Lock()
#: marks a projected model id: ``<model id>+pca<d>-<fingerprint>``
_MARK = "+pca"


@dataclass(frozen=True)
class Projection:
    """``y = normalise((x - mean) @ components)``: float32 ``components`` [d_in, d_out], ``mean`` [d_in].

    Attributes:
        model_id: the id of the encoder whose embeddings it was fitted on (None: unknown).
        kept: share of the collection's second moment (variance, when centred) the output keeps.
    """

    components: np.ndarray
    mean: np.ndarray
    model_id: str | None = None
    kept: float = 1.0

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def fingerprint(self) -> str:
        """12 hex digits of the sha256 of the matrices: tells two projections apart."""
        h = hashlib.sha256(np.ascontiguousarray(self.components, "<f4").tobytes())
        h.update(np.ascontiguousarray(self.mean, "<f4").tobytes())
        return h.hexdigest()[:12]

    def projected_id(self, model_id: str | None = None) -> str:
        """The model id an index of projected vectors records: ``<model id>+pca<d>-<fingerprint>``."""
        base = model_id if model_id is not None else self.model_id
        return f"{base or ''}{_MARK}{self.dim}-{self.fingerprint}"

    @classmethod
    def fit(cls, vectors: np.ndarray, dimensions: int, *, center: bool = False, model_id: str | None = None,
            sample: int = CALIBRATION_SAMPLE, seed: int = 0) -> Projection:
        """The top ``dimensions`` principal directions of ``vectors`` (a random ``sample`` of rows if larger).

        numpy's ``eigh`` of the d x d second-moment matrix: exact, and d <= a few thousand for any
        CLIP, so no iterative solver (scikit-learn's randomised PCA) is needed.

        Raises:
            InvalidInputError: ``dimensions`` not in [1, d_in), fewer vectors than ``dimensions``,
                or non-finite values.
        """
        x = _sample(_matrix(vectors, "vectors"), sample, seed).astype(np.float64)
        d = x.shape[1]
        if not isinstance(dimensions, (int, np.integer)) or not 1 <= dimensions < d:
            raise InvalidInputError(f"dimensions must be an integer in [1, {d}) for {d}-d vectors, not {dimensions!r}")
        if x.shape[0] < dimensions:
            raise InvalidInputError(f"a {dimensions}-d projection needs at least {dimensions} vectors, got {x.shape[0]}")
        if not np.isfinite(x).all():
            raise InvalidInputError("vectors hold NaN or inf")
        mean = x.mean(0) if center else np.zeros(d)
        xc = x - mean
        values, vecs = np.linalg.eigh(xc.T @ xc)  # ascending
        order = np.argsort(values)[::-1][:dimensions]
        comps = vecs[:, order]
        comps *= np.where(comps[np.abs(comps).argmax(0), np.arange(dimensions)] < 0, -1.0, 1.0)  # a fixed sign
        kept = float(values[order].sum() / max(values.sum(), 1e-30))
        return cls(comps.astype(np.float32), mean.astype(np.float32), model_id, kept)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project and re-normalise: float32 [N, dim] (a 1-D input gives [1, dim]).

        Raises:
            DimensionMismatchError: the vectors are not ``in_dim``-d.
        """
        x = np.asarray(vectors, np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise DimensionMismatchError(f"the projection maps {self.in_dim}-d vectors, got shape {x.shape}")
        y = (x - self.mean) @ self.components
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` file atomically (readers see the old file or the new one)."""
        from ..manifest import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, kind=np.array("pca"), components=self.components, mean=self.mean,
                 model_id=np.array(self.model_id or ""), kept=np.float64(self.kept))
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Projection:
        """Read a projection written by :meth:`save`.

        Raises:
            ArtifactError: missing, unreadable, or not a projection.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["kind"]) != "pca":
                    raise ArtifactError(f"{path} is a {z['kind']} file, not a projection")
                comps, mean = z["components"].astype(np.float32), z["mean"].astype(np.float32)
                model_id, kept = str(z["model_id"]) or None, float(z["kept"])
        except (OSError, KeyError, ValueError) as e:
            raise ArtifactError(f"cannot read the projection {path}: {e}") from e
        if comps.ndim != 2 or mean.shape != (comps.shape[0],) or not np.isfinite(comps).all():
            raise ArtifactError(f"{path}: malformed projection matrices {comps.shape}, {mean.shape}")
        return cls(comps, mean, model_id, kept)


class ProjectedEncoder:
    """An encoder whose embeddings go through a :class:`Projection` (``dim`` and ``model_id`` are the projected ones).

    Everything else (``tokenizer``, ``remote``, ``manifest`` ...) is the wrapped encoder's.

    Raises:
        DimensionMismatchError: the encoder's dimension is not the projection's input.
        ArtifactError: the projection was fitted on another model's embeddings.
    """

    def __init__(self, encoder: Any, projection: Projection) -> None:
        enc_dim = int(getattr(encoder, "dim", -1))
        if enc_dim != projection.in_dim:
            raise DimensionMismatchError(f"the projection maps {projection.in_dim}-d embeddings, the encoder gives {enc_dim}-d")
        base = getattr(encoder, "model_id", None)
        if projection.model_id and base and projection.model_id != base:
            raise ArtifactError(f"the projection was fitted on model {projection.model_id!r}, the encoder is {base!r}")
        self.encoder, self.projection = encoder, projection
        self.dim = projection.dim
        self.model_id = projection.projected_id(base)
        self.model_hash = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def encode_images(self, images: Any, batch_size: int = 32, progress: bool = False, **kw: Any) -> np.ndarray:
        return self.projection.apply(self.encoder.encode_images(images, batch_size=batch_size, progress=progress, **kw))

    def encode_texts(self, texts: Any, batch_size: int = 64, **kw: Any) -> Any:
        out = self.encoder.encode_texts(texts, batch_size=batch_size, **kw)
        if isinstance(out, tuple):  # return_truncated=True: (embeddings, flags)
            return (self.projection.apply(out[0]), *out[1:])
        return self.projection.apply(out)


def index_projection(index: Any) -> Projection | None:
    """The projection stored with ``index`` (``index.projection``, or ``projection.npz`` in the directory it was loaded from)."""
    proj = getattr(index, "projection", None)
    if proj is not None:
        return proj
    source = getattr(index, "_source", None)  # (real path, generation) of the directory it was loaded from
    if source:
        path = Path(source[0]) / PROJECTION_NAME
        if path.is_file():
            proj = Projection.load(path)
            index.projection = proj
            return proj
    return None


def is_projected_id(model_id: str | None) -> bool:
    return bool(model_id) and _MARK in str(model_id)


def query_projection(index: Any, encoder: Any, projection: Projection | None = None) -> Projection | None:
    """Check ``encoder`` against ``index``; the projection its queries need (None: none).

    Raises:
        ArtifactError: the index holds projected vectors but its ``projection.npz`` is missing, or
            the projection is not the one the index was built with.
        DimensionMismatchError: the encoder fits neither the index nor its projection.
    """
    proj = projection if projection is not None else index_projection(index)
    enc_dim = int(getattr(encoder, "dim", -1))
    index_dim = int(getattr(index, "dim", enc_dim))  # a store without a dim: its own check_encoder decides
    if proj is not None and enc_dim == proj.in_dim and enc_dim != index_dim:
        if proj.dim != index_dim:
            raise ArtifactError(f"the projection gives {proj.dim}-d vectors, the index holds {index_dim}-d")
        wrapped = ProjectedEncoder(encoder, proj)
        mine = getattr(index, "model_id", None)
        if mine is not None and mine != wrapped.model_id:
            raise ArtifactError(f"the index was built with {mine!r}, its projection gives {wrapped.model_id!r}: "
                                "the projection file does not belong to this index; run `clipq index project` again")
        index.check_encoder(wrapped)
        return proj
    if proj is None and enc_dim != index_dim and is_projected_id(getattr(index, "model_id", None)):
        raise ArtifactError(f"the index holds projected {index_dim}-d vectors ({index.model_id}) but its "
                            f"{PROJECTION_NAME} is missing; rebuild it with `clipq index project`")
    index.check_encoder(encoder)
    return None


def collection_codec(index: Any, *, sample: int = CALIBRATION_SAMPLE) -> Int8Codec:
    """The int8 ranges of ``index``'s collection: its directory's ``int8.npz`` if it holds one of the
    index's dimension, else fitted on (a sample of) the index's vectors; cached per index object."""
    with _codecs_lock:
        codec = _codecs.get(index)
        if codec is not None:
            return codec
        source = getattr(index, "_source", None)
        path = Path(source[0]) / INT8_NAME if source else None
        if path is not None and path.is_file() and (saved := Int8Codec.load(path)).dim == index.dim:
            codec = saved
        else:
            ids = index.ids()
            if not ids:
                raise InvalidInputError("int8 ranges need a collection: the index is empty")
            if len(ids) > sample:
                ids = [ids[i] for i in np.sort(np.random.default_rng(0).choice(len(ids), sample, replace=False))]
            codec = Int8Codec.fit(index.get_vectors(ids))
        _codecs[index] = codec
        return codec


def encoder_for_index(path: str | os.PathLike[str], encoder: Any) -> Any:
    """``encoder``, wrapped in the index's projection when the directory ``path`` holds one (the ingest side)."""
    file = Path(path) / PROJECTION_NAME
    if not file.is_file():
        return encoder
    proj = Projection.load(file)
    return ProjectedEncoder(encoder, proj) if int(getattr(encoder, "dim", -1)) == proj.in_dim else encoder


def project_index(src: str | os.PathLike[str], out: str | os.PathLike[str], dimensions: int, *,
                  center: bool = False, sample: int = CALIBRATION_SAMPLE, force: bool = False) -> tuple[Any, Projection]:
    """Fit a projection on the index at ``src`` and write the projected index, with ``projection.npz``, to ``out``.

    The index's parameters (space, M, ef, its engine ...), ids and metadata are kept; the index records the
    projected model id. ``src`` is left as it was.

    Returns:
        (the new index, the projection).

    Raises:
        InvalidInputError: ``out`` holds an index and not ``force``, ``out`` is ``src``, ``src``
            is already projected, or ``dimensions`` is out of range.
        Everything :meth:`ImageIndex.load` raises.
    """
    from ..index import SIDECAR_NAME, ImageIndex

    src_p, out_p = Path(src), Path(out)
    if src_p.resolve() == out_p.resolve():
        raise InvalidInputError("write the projected index to another directory (-o): the source stays as it was")
    if (out_p / SIDECAR_NAME).exists() and not force:
        raise InvalidInputError(f"{out_p} already holds an index: pass --force to replace it")
    index = ImageIndex.load(src_p)
    if (src_p / PROJECTION_NAME).is_file() or is_projected_id(index.model_id):
        raise InvalidInputError(f"{src_p} already holds projected vectors: project the original index")
    ids = index.ids()
    if not ids:
        raise InvalidInputError(f"{src_p} is empty: nothing to fit a projection on")
    vecs = index.get_vectors(ids)
    proj = Projection.fit(vecs, dimensions, center=center, model_id=index.model_id, sample=sample)
    log.info("projection %d -> %d keeps %.1f %% of the collection's second moment", proj.in_dim, proj.dim, 100 * proj.kept)
    new = ImageIndex.from_embeddings(
        proj.apply(vecs), ids, [index.metadata(i) for i in ids], space=index.space, M=index.M,
        ef_construction=index.ef_construction, ef=index.ef, model_id=proj.projected_id(index.model_id),
        **{k: getattr(index, k) for k in ("engine", "nprobe", "rescore") if hasattr(index, k)},  # the same engine
    )
    # the index first, then its projection: a crash in between leaves an index whose projected model id
    # names the missing file (query_projection says so), never a projection that another index would use
    (out_p / PROJECTION_NAME).unlink(missing_ok=True)
    new.save(out_p)
    proj.save(out_p / PROJECTION_NAME)
    new.projection = proj
    return new, proj
