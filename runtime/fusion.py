"""Model B (KNN text fusion), the A/B ensemble, and ``describe`` (image -> prompt with both).

Model B of the image-to-prompt seed (2401.06167): find the K training images nearest to a query
image in CLIP space (an :class:`~clipq.runtime.index.ImageIndex`), and return the distance-weighted
mean of their prompts' sentence embeddings (all-MiniLM-L6-v2, 384-d), re-normalised. The ensemble
with Model A (a regressor from the image to the same space) is ``normalize(alpha*A + (1-alpha)*B)``;
the paper left alpha and K open, so :func:`clipq.runtime.sweep.sweep` scores a grid of them on
validation data with the competition's metric, the mean cosine similarity to the true prompt
embeddings.

Everything here is numpy on top of the index: no torch. ``KnnPromptFusion`` persists to a directory
(the artifact's ``knn/``) as the index, an ``.npy`` file and JSON; nothing is pickled. ``knn/`` holds
Model B's *data* only; the settings of the whole task (alpha, K, weighting, temperature) are one
:class:`Img2PromptSettings` record kept in the manifest (``extra["img2prompt"]``), read by every
caller through :class:`clipq.runtime.img2prompt.ImageToPrompt`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, IndexCorruptError, InvalidInputError, SchemaVersionError, ShapeError
from .index import ImageEncoder, ImageIndex
from .manifest import Manifest, atomic_write_bytes, atomic_write_json, sha256_file
from .vectors import l2_normalize

#: 2: knn.json holds data only (the settings moved to the manifest); 1 is still read (its settings ignored)
FUSION_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
CONFIG_NAME = "knn.json"
EMBEDS_NAME = "prompt_embeds.npy"
INDEX_DIRNAME = "index"
WEIGHTINGS = ("inverse_distance", "softmax", "uniform")

#: keeps 1/d finite for an exact duplicate (d = 0), which then dominates its neighbours as it should
_EPS = 1e-6
#: the manifest's key of the image -> prompt settings record
SETTINGS_KEY = "img2prompt"


def check_alpha(alpha: Any) -> np.ndarray:
    """Validate the ensemble weight of Model A: finite and in [0, 1] (a scalar or one per row).

    The one range check of alpha: the settings record, the numpy ensemble, the head graph's
    inputs, the server path and the CLI all call it.

    Returns:
        ``alpha`` as a float32 array of its own shape.

    Raises:
        InvalidInputError: not a number, NaN / inf, or outside [0, 1].
    """
    try:
        w = np.asarray(alpha, np.float32)
    except (TypeError, ValueError):
        raise InvalidInputError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if w.dtype.kind != "f" or not np.all(np.isfinite(w) & (w >= 0) & (w <= 1)):
        raise InvalidInputError(f"alpha must lie in [0, 1], got {alpha!r}")
    return w


@dataclass(frozen=True, kw_only=True)
class Img2PromptSettings:
    """The image -> prompt task's settings: one record, validated once, kept in the manifest.

    Args:
        alpha: weight of Model A in ``normalize(alpha*A + (1-alpha)*B)``; 0 is Model B alone.
        k: neighbours Model B averages.
        weighting: how the K neighbours are weighted (``inverse_distance``, ``softmax``, ``uniform``).
        temperature: softmax temperature (``weighting="softmax"`` only).

    Raises:
        InvalidInputError: a value out of range (naming it).
    """

    alpha: float = 0.5
    k: int = 10
    weighting: str = "inverse_distance"
    temperature: float = 0.05

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "k", _check_k(self.k))
        neighbour_weights(np.zeros((1, 1)), self.weighting, self.temperature)  # validates both
        object.__setattr__(self, "temperature", float(self.temperature))

    def replace(self, **changes: Any) -> Img2PromptSettings:
        """A copy with ``changes`` (None values are ignored), validated."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Img2PromptSettings:
        """From a stored record; fields it lacks take their defaults, other keys are ignored.

        Raises:
            ArtifactError: the record is not a mapping or holds a value out of range.
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ArtifactError(f"the image -> prompt settings must be a JSON object, not {type(d).__name__}")
        try:
            return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        except InvalidInputError as e:
            raise ArtifactError(f"the stored image -> prompt settings are invalid: {e}") from e

    @classmethod
    def from_manifest(cls, m: Manifest) -> Img2PromptSettings:
        """The record a manifest holds (``extra["img2prompt"]``), or the defaults where it has none."""
        return cls.from_dict(m.extra.get(SETTINGS_KEY))

    def store(self, m: Manifest) -> None:
        """Put the record into ``m`` (in memory; the caller saves the manifest)."""
        m.extra[SETTINGS_KEY] = self.to_dict()


def ensemble(a: np.ndarray, b: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Numpy reference of the exported ``ensemble_head``: ``normalize(alpha*a + (1-alpha)*b)``.

    Args:
        a: Model A embeddings [N, D].
        b: Model B embeddings [N, D].
        alpha: weight of A: a scalar, or one per row ([N] or [N, 1]).

    Returns:
        float32 [N, D], L2-normalised.

    Raises:
        ShapeError: shapes do not fit.
        InvalidInputError: alpha outside [0, 1].
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise ShapeError(f"ensemble needs A and B of one [N, D] shape, got {a.shape} and {b.shape}")
    w = check_alpha(alpha)
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim not in (0, 2) or (w.ndim == 2 and w.shape not in ((a.shape[0], 1), (1, 1))):
        raise ShapeError(f"alpha must be a scalar, [N] or [N, 1] (N={a.shape[0]}), got shape {np.shape(alpha)}")
    return l2_normalize(w * a + (1.0 - w) * b)


def neighbour_weights(scores: np.ndarray, weighting: str, temperature: float, space: str = "cosine") -> np.ndarray:
    """Weights of K neighbours from their similarity scores: float32 [N, K], rows sum to 1.

    Args:
        scores: similarities from :meth:`ImageIndex.search_ids` [N, K] (higher is nearer).
        weighting: ``"inverse_distance"`` (w = 1/d), ``"softmax"`` (softmax of scores/temperature)
            or ``"uniform"``.
        temperature: softmax temperature (smaller is sharper).
        space: the index's space, which fixes how a score turns into a distance.

    Raises:
        InvalidInputError: unknown weighting or a temperature <= 0.
    """
    s = np.asarray(scores, np.float64)
    if weighting == "inverse_distance":
        # cosine/ip scores are 1 - distance; l2 scores are -squared distance
        d = np.sqrt(np.maximum(-s, 0.0)) if space == "l2" else np.maximum(1.0 - s, 0.0)
        w = 1.0 / (d + _EPS)
    elif weighting == "softmax":
        if not temperature > 0:
            raise InvalidInputError(f"temperature must be > 0, not {temperature!r}")
        z = s / temperature
        w = np.exp(z - z.max(axis=1, keepdims=True))
    elif weighting == "uniform":
        w = np.ones_like(s)
    else:
        raise InvalidInputError(f"weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


# -- Model B -------------------------------------------------------------------------------------
class KnnPromptFusion:
    """Model B: distance-weighted mean of the prompt embeddings of the K nearest indexed images.

    Args:
        index: image index over the training images' CLIP embeddings.
        prompt_embeds: float [n, P] prompt embeddings (P = 384 for all-MiniLM-L6-v2), row i
            belonging to ``ids[i]``.
        prompt_texts: the n prompts as text (for :meth:`nearest_prompts`).
        settings: the task's settings (K, weighting and temperature are Model B's); default
            :class:`Img2PromptSettings`'s defaults.
        ids: index ids aligned with the rows; default ``index.ids()`` (insertion order).
        k, weighting, temperature: override those fields of ``settings``.

    Raises:
        ShapeError / InvalidInputError: sizes or values do not fit.
        ArtifactError: an id is not in the index, or the index has items without a prompt.
    """

    def __init__(
        self,
        index: ImageIndex,
        prompt_embeds: np.ndarray,
        prompt_texts: Sequence[str],
        *,
        settings: Img2PromptSettings | None = None,
        ids: Sequence[str] | None = None,
        k: int | None = None,
        weighting: str | None = None,
        temperature: float | None = None,
    ) -> None:
        emb = np.asarray(prompt_embeds, np.float32)
        ids = list(index.ids() if ids is None else ids)
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise ShapeError(f"prompt_embeds must be [{len(ids)}, P] (one row per id), got {emb.shape}")
        if len(prompt_texts) != len(ids):
            raise InvalidInputError(f"got {len(prompt_texts)} prompt texts for {len(ids)} ids")
        if not np.isfinite(emb).all():
            raise InvalidInputError("prompt_embeds contain NaN or inf values")
        missing = [i for i in ids if i not in index]
        if missing:
            raise ArtifactError(f"{len(missing)} prompt ids are not in the index (first: {missing[0]!r})")
        if len(index) != len(ids):
            raise ArtifactError(f"the index holds {len(index)} items but {len(ids)} have prompts")
        self.index = index
        self.prompt_embeds = l2_normalize(emb)
        self.prompt_texts = [str(t) for t in prompt_texts]
        self.ids = ids
        self._row = {item_id: n for n, item_id in enumerate(ids)}
        self.settings = (settings or Img2PromptSettings()).replace(k=k, weighting=weighting, temperature=temperature)

    @property
    def k(self) -> int:
        return self.settings.k

    @property
    def weighting(self) -> str:
        return self.settings.weighting

    @property
    def temperature(self) -> float:
        return self.settings.temperature

    @property
    def prompt_dim(self) -> int:
        return int(self.prompt_embeds.shape[1])

    @classmethod
    def from_embeddings(
        cls,
        image_embeds: np.ndarray,
        prompt_embeds: np.ndarray,
        prompt_texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        model_id: str | None = None,
        index_params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> KnnPromptFusion:
        """Build Model B from training data: CLIP image embeddings and their prompts.

        Args:
            image_embeds: float [n, D] CLIP image embeddings.
            prompt_embeds: float [n, P] embeddings of the prompts.
            prompt_texts: the n prompts.
            ids: n unique image ids (default ``item-<n>``).
            model_id: the CLIP encoder's model id (recorded in the index).
            index_params: extra :class:`ImageIndex` parameters (``M``, ``ef`` ...).
            **kwargs: :class:`KnnPromptFusion` parameters (``k``, ``weighting`` ...).

        Returns:
            Model B.
        """
        index = ImageIndex.from_embeddings(image_embeds, ids, model_id=model_id, **dict(index_params or {}))
        return cls(index, prompt_embeds, prompt_texts, ids=index.ids(), **kwargs)

    # -- prediction ----------------------------------------------------------------------------
    def _neighbours(self, image_embeds: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = self.index.search_ids(image_embeds, k, num_threads=-1)
        try:
            rows = np.array([[self._row[i] for i in r] for r in ids], dtype=np.int64).reshape(scores.shape)
        except KeyError as e:
            raise ArtifactError(f"index item {e.args[0]!r} has no prompt (index changed after Model B was built)") from None
        return rows, scores

    def predict(self, image_embeds: np.ndarray, k: int | None = None) -> np.ndarray:
        """Model B's prompt embeddings for CLIP image embeddings.

        Args:
            image_embeds: float [N, D] (or [D]).
            k: neighbours (default ``self.k``); capped at the index size.

        Returns:
            float32 [N, P], L2-normalised.

        Raises:
            DimensionMismatchError / InvalidInputError: unusable embeddings.
        """
        kk = self.k if k is None else k
        return self.predict_many_k(image_embeds, [kk])[kk]

    def predict_many_k(self, image_embeds: np.ndarray, ks: Iterable[int]) -> dict[int, np.ndarray]:
        """Predictions for several K from one neighbour search (what :func:`clipq.runtime.sweep.sweep` needs).

        Args:
            image_embeds: float [N, D] (or [D]).
            ks: neighbour counts.

        Returns:
            K -> float32 [N, P], L2-normalised.
        """
        ks = [_check_k(k) for k in ks]
        if not ks:
            raise InvalidInputError("no K given")
        rows, scores = self._neighbours(image_embeds, max(ks))
        out = {}
        for k in ks:
            kk = min(k, rows.shape[1])
            w = neighbour_weights(scores[:, :kk], self.weighting, self.temperature, self.index.space)
            mixed = np.einsum("nk,nkp->np", w, self.prompt_embeds[rows[:, :kk]])  # [N, P]
            out[k] = l2_normalize(mixed)
        return out

    def nearest_prompts(self, image_embeds: np.ndarray, n: int = 3) -> list[list[tuple[str, float]]]:
        """Prompts of the nearest indexed images, as text, with the image similarity.

        Repeated prompt texts are listed once (at their best score).

        Args:
            image_embeds: float [N, D] (or [D]).
            n: prompts per image.

        Returns:
            Per image, up to ``n`` (prompt, score) pairs, best first.
        """
        n = _check_k(n)
        ids, scores = self.index.search_ids(image_embeds, min(max(4 * n, self.k), len(self.index)))
        out = []
        for row_ids, row_scores in zip(ids, scores.tolist()):
            out.append(_dedup_top(((self.prompt_texts[self._row[i]], s) for i, s in zip(row_ids, row_scores)), n))
        return out

    def closest_prompts(self, prompt_vectors: np.ndarray, n: int = 3) -> list[list[tuple[str, float]]]:
        """Known prompts nearest to predicted prompt embeddings (cosine in prompt space).

        Use it on the ensemble's output to say in words what it predicts.

        Args:
            prompt_vectors: float [N, P] (or [P]).
            n: prompts per row.

        Returns:
            Per row, up to ``n`` distinct (prompt, cosine) pairs, best first.
        """
        n = _check_k(n)
        q = np.asarray(prompt_vectors, np.float32)
        q = q[None, :] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.prompt_dim:
            raise ShapeError(f"prompt vectors must be [N, {self.prompt_dim}], got {np.shape(prompt_vectors)}")
        sims = l2_normalize(q) @ self.prompt_embeds.T  # [N, n_prompts]
        take = min(4 * n, sims.shape[1])
        out = []
        for row in sims:
            top = np.argpartition(-row, take - 1)[:take]
            top = top[np.argsort(-row[top])]
            out.append(_dedup_top(((self.prompt_texts[j], float(row[j])) for j in top), n))
        return out

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save to a directory: ``index/`` (the image index), ``prompt_embeds.npy``, ``knn.json``.

        Each file is written atomically; ``knn.json`` goes last and records the others' hashes,
        so a half-finished save is detected on load rather than silently mixed.

        Returns:
            The directory.
        """
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.index.save(root / INDEX_DIRNAME)
        buf = io.BytesIO()
        np.save(buf, self.prompt_embeds, allow_pickle=False)
        atomic_write_bytes(root / EMBEDS_NAME, buf.getvalue())
        self.write_config(root)
        return root

    def write_config(self, path: str | os.PathLike[str]) -> Path:
        """(Re)write only ``knn.json`` (ids, prompts, the embeddings' hash) atomically.

        The settings (K, weighting, alpha ...) are not written here: they live in the manifest
        (:meth:`Img2PromptSettings.store`).

        Raises:
            IndexCorruptError: the directory holds no prompt embeddings to point at.
        """
        root = Path(path)
        emb_path = root / EMBEDS_NAME
        if not emb_path.is_file():
            raise IndexCorruptError(f"{root}: {EMBEDS_NAME} is missing; save() the whole model first")
        cfg_path = root / CONFIG_NAME
        atomic_write_json(
            cfg_path,
            {
                "schema_version": FUSION_SCHEMA_VERSION,
                "format": "clipq.knn_prompt_fusion",
                "prompt_dim": self.prompt_dim,
                "count": len(self.ids),
                "embeds": {"file": EMBEDS_NAME, "sha256": sha256_file(emb_path)},
                "index": INDEX_DIRNAME,
                "ids": self.ids,
                "prompts": self.prompt_texts,
            },
        )
        return cfg_path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, settings: Img2PromptSettings | None = None,
        encoder: ImageEncoder | None = None, verify: bool = True
    ) -> KnnPromptFusion:
        """Load what :meth:`save` wrote.

        Args:
            path: the directory.
            settings: the task's settings (:meth:`Img2PromptSettings.from_manifest`); default
                the defaults. A schema-1 ``knn.json`` also held K and alpha: they are ignored.
            encoder: if given, the index must have been built with this encoder's model and dim.
            verify: check file hashes.

        Returns:
            Model B.

        Raises:
            IndexCorruptError: a file is missing, corrupt or inconsistent.
            SchemaVersionError: written by another schema version.
            DimensionMismatchError / ArtifactError: the encoder does not match the index.
        """
        root = Path(path)
        cfg_path = root / CONFIG_NAME
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexCorruptError(f"no Model B at {root}: {CONFIG_NAME} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexCorruptError(f"cannot read {cfg_path}: {e}") from e
        if not isinstance(cfg, dict) or cfg.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            found = cfg.get("schema_version") if isinstance(cfg, dict) else None
            raise SchemaVersionError(f"{cfg_path} has schema version {found!r}; this clipq reads "
                                     f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
        try:
            emb_path = root / str(cfg["embeds"]["file"])
            emb_sha = cfg["embeds"]["sha256"]
            ids, prompts = list(cfg["ids"]), list(cfg["prompts"])
            index_dir = root / str(cfg.get("index", INDEX_DIRNAME))
        except (KeyError, TypeError, ValueError) as e:
            raise IndexCorruptError(f"{cfg_path}: missing or malformed field: {e!r}") from e
        if not emb_path.is_file():
            raise IndexCorruptError(f"Model B at {root}: {emb_path.name} is missing")
        if verify and sha256_file(emb_path) != emb_sha:
            raise IndexCorruptError(f"{emb_path}: sha256 does not match {CONFIG_NAME} (corrupt or half-saved)")
        try:
            emb = np.load(emb_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise IndexCorruptError(f"cannot read {emb_path}: {e}") from e
        index = ImageIndex.load(index_dir, encoder=encoder, verify=verify)
        try:
            return cls(index, emb, prompts, ids=ids, settings=settings)
        except (InvalidInputError, ArtifactError) as e:
            raise IndexCorruptError(f"Model B at {root} is inconsistent: {e}") from e


# -- descriptions ------------------------------------------------------------------------------------
@dataclass
class PromptDescription:
    """Image -> prompt for one image: the ensemble's embedding and what it is close to, in words."""

    embedding: np.ndarray  # float32 [P], L2-normalised: normalize(alpha*A + (1-alpha)*B)
    closest: list[tuple[str, float]]  # known prompts nearest to the embedding (cosine in prompt space)
    neighbours: list[tuple[str, float]]  # prompts of the nearest indexed images (Model B's evidence)
    alpha: float
    k: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedding": [round(float(v), 6) for v in self.embedding],
            "closest": [{"prompt": t, "score": s} for t, s in self.closest],
            "neighbours": [{"prompt": t, "score": s} for t, s in self.neighbours],
            "alpha": self.alpha,
            "k": self.k,
        }


def describe_embeds(fusion: KnnPromptFusion, image_embeds: np.ndarray, fused: np.ndarray,
                    alpha: float | Sequence[float] | np.ndarray, n: int | Sequence[int] = 3) -> list[PromptDescription]:
    """The descriptions of fused embeddings: the known prompts nearest to each and to its image.

    The last step of :meth:`ImageToPrompt.describe <clipq.runtime.img2prompt.ImageToPrompt.describe>`,
    shared by the in-process path and the server's KNN model.

    Args:
        fusion: Model B.
        image_embeds: float [N, D] CLIP image embeddings (for the neighbours' prompts).
        fused: float [N, P] fused prompt embeddings.
        alpha: the weight of Model A used, one for all rows or one per row.
        n: prompts per image, one for all rows or one per row.

    Returns:
        One :class:`PromptDescription` per row.
    """
    fused = l2_normalize(np.asarray(fused, np.float32))
    rows = fused.shape[0]
    ns = [_check_k(int(v)) for v in np.broadcast_to(np.asarray(n), (rows,))]
    ws = [float(v) for v in np.broadcast_to(np.asarray(alpha, np.float64).reshape(-1), (rows,))] if rows else []
    top = max(ns, default=1)
    closest = fusion.closest_prompts(fused, n=top) if rows else []
    neighbours = fusion.nearest_prompts(image_embeds, n=top) if rows else []
    return [
        PromptDescription(embedding=fused[i], closest=closest[i][:ns[i]], neighbours=neighbours[i][:ns[i]],
                          alpha=ws[i], k=fusion.k)
        for i in range(rows)
    ]


def _check_k(k: Any) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InvalidInputError(f"k must be an integer >= 1, not {k!r}")
    return int(k)


def _dedup_top(pairs: Iterable[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    seen: set[str] = set()
    out = []
    for text, score in pairs:
        if text not in seen:
            seen.add(text)
            out.append((text, float(score)))
            if len(out) == n:
                break
    return out
