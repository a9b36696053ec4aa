"""Text -> image and image -> image search over an :class:`~clipq.runtime.index.ImageIndex`.

Text queries go through prompt templates, as in the image-search seed: the query is wrapped in
several start phrases ("a photo of ...", "a picture of ..."), each is embedded with CLIP's text
tower, and the mean of the normalised embeddings (re-normalised) is the query vector. A template
ensemble smooths over the phrasing the text tower happened to learn. Results are typed
:class:`~clipq.runtime.index.SearchResult` objects.

Written against the encoder interface (``encode_texts`` / ``encode_images``), so the same code runs
on the in-process and the Triton backends.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .index import ImageIndex, MetadataFilter, SearchResult
from .scores import PairScore
from .templates import DEFAULT_TEMPLATES, ClipLikeEncoder, embed_texts, parse_templates


class ImageSearch:
    """Search an image index with text or with images.

    Args:
        index: the image index (built with this encoder's model).
        encoder: a CLIP encoder on any backend.
        templates: the default prompt templates for text queries (see :func:`parse_templates`).
        projection: the :class:`~clipq.runtime.compact.Projection` of an index of shorter vectors
            (default: the index's own ``projection.npz``, if any); queries go through it.

    Raises:
        DimensionMismatchError / ArtifactError: the encoder (or projection) is not the one the index
            was built with.
    """

    def __init__(
        self, index: ImageIndex, encoder: ClipLikeEncoder, templates: str | Sequence[str] | None = DEFAULT_TEMPLATES,
        projection: Any = None,
    ) -> None:
        from .compact import query_projection

        # compact embeddings (issue 30): an index of projected vectors projects its queries with its own file
        self.projection = query_projection(index, encoder, projection)
        self.index = index
        self.encoder = encoder
        self.templates = parse_templates(templates)
        #: text -> image scores: CLIP's cosine, SigLIP's sigmoid probability (image -> image: cosine)
        self.pair_score = PairScore.from_manifest(getattr(encoder, "manifest", None))

    def search(
        self,
        text: str,
        k: int = 5,
        *,
        templates: str | Sequence[str] | None = None,
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        min_score: float | None = None,
    ) -> list[SearchResult]:
        """Images that best match ``text``.

        Args:
            text: the query.
            k: results wanted.
            templates: override the default templates for this query.
            filter: metadata filter (see :meth:`ImageIndex.search`).
            exact: force exact (True) or HNSW (False) search.
            min_score: drop results scoring below it, in the family's score (docs/retrieval.md).

        Returns:
            Results best first; score = the model family's pair score (:class:`PairScore`): the cosine
            for CLIP, ``sigmoid(logit_scale * cos + logit_bias)`` for SigLIP.

        Raises:
            InvalidTextError: empty text.
            InvalidInputError: k < 1 or an empty index.
        """
        return self.search_many([text], k, templates=templates, filter=filter, exact=exact, min_score=min_score)[0]

    def search_many(
        self,
        texts: Sequence[str],
        k: int = 5,
        *,
        templates: str | Sequence[str] | None = None,
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        min_score: float | None = None,
    ) -> list[list[SearchResult]]:
        """:meth:`search` for several queries with one encoder call."""
        tpl = self.templates if templates is None else parse_templates(templates)
        vecs = self._project(embed_texts(self.encoder, list(texts), tpl))
        hits = self.index.search_batch(vecs, k, filter=filter, exact=exact)
        if self.pair_score.kind != "cosine":  # ranked by cosine; the sigmoid keeps the order
            hits = [[replace(h, score=float(self.pair_score(h.score))) for h in row] for row in hits]
        if min_score is not None:
            hits = [[h for h in row if h.score >= min_score] for row in hits]
        return hits

    def search_image(
        self,
        image: Any,
        k: int = 5,
        *,
        exclude: Iterable[str] = (),
        filter: MetadataFilter | None = None,
        exact: bool | None = None,
        min_score: float | None = None,
    ) -> list[SearchResult]:
        """Images most similar to ``image`` (a path, bytes, PIL image or uint8 array).

        Args:
            image: the query image.
            k: results wanted.
            exclude: ids to leave out (e.g. the query's own id when it is indexed).
            filter: metadata filter.
            exact: force exact or HNSW search.
            min_score: drop results whose score (the image-image cosine) is below it.

        Returns:
            Results best first.

        Raises:
            InvalidImageError: the image cannot be decoded.
        """
        skip = set(exclude)
        vec = self._project(np.asarray(self.encoder.encode_images([_image_arg(image)], batch_size=1), np.float32))
        hits = self.index.search(vec[0], k + len(skip), filter=filter, exact=exact)
        return [h for h in hits if h.id not in skip and (min_score is None or h.score >= min_score)][:k]

    def _project(self, vecs: np.ndarray) -> np.ndarray:
        return vecs if self.projection is None else self.projection.apply(vecs)


def results_to_json(queries: Sequence[Any], results: Sequence[Sequence[SearchResult]]) -> list[dict[str, Any]]:
    """JSON-ready list of {"query", "results": [{"rank", "id", "score", "metadata"}]}."""
    return [
        {
            "query": q if isinstance(q, str) else os.fspath(q) if isinstance(q, os.PathLike) else "<image>",
            "results": [{"rank": n + 1, **r.to_dict()} for n, r in enumerate(rs)],
        }
        for q, rs in zip(queries, results)
    ]


def _image_arg(image: Any) -> Any:
    return os.fspath(image) if isinstance(image, os.PathLike) else image
