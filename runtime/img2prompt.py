"""Image -> prompt as one task: Model A, Model B, the ensemble head and one settings record.

The seed (2401.06167) predicts a prompt's all-MiniLM-L6-v2 embedding from an image two ways and
fuses them: Model A (``img2prompt_a``, a regressor on the image) and Model B (the distance-weighted
mean of the prompt embeddings of the K nearest training images, :class:`KnnPromptFusion`), as
``normalize(alpha*A + (1-alpha)*B)`` (the ``ensemble_head`` graph). :class:`ImageToPrompt` owns all
three and their :class:`Img2PromptSettings` (alpha, K, weighting, temperature), read from the
manifest, the settings' one home. Every caller goes through it: ``clipq describe`` and ``clipq tune``,
the web app, the demo, the thin client; the Triton server's ``knn_prompts`` model reads the same
record from its copy of the manifest. ``clipq tune --write`` changes the record with
:func:`write_settings`, so every path computes the same fused embedding after a tune.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .contract import Backend, Steps
from .errors import ArtifactError, InvalidInputError
from .fusion import (
    Img2PromptSettings,
    KnnPromptFusion,
    PromptDescription,
    _check_k,
    check_alpha,
    describe_embeds,
)
from .manifest import Manifest
from .preprocess import DEFAULT_MAX_PIXELS, ImageLike, as_image_list
from .server_path import DESCRIBE
from .specs import CLIP_IMAGE, ENSEMBLE_HEAD, IMG2PROMPT_A
from .tasks import ClipEncoder, _Task, head_steps
from .vectors import l2_normalize

KNN_DIR = "knn"


class ImageToPrompt(_Task):
    """Image -> prompt with Model A, Model B and the ensemble head, under one settings record.

    In process, CLIP and Model A run on the backend, Model B is the artifacts' ``knn/`` and the
    head is the exported ``ensemble_head`` (the numpy :func:`~clipq.runtime.fusion.ensemble`
    where none was exported). Against a clipq server that serves the ``describe`` ensemble, all of
    it runs in the server (no local files), with the settings the server's manifest holds.

    Args:
        backend: Any backend (blocking or asyncio).
        settings: Override the manifest's record (default: :meth:`Img2PromptSettings.from_manifest`).
        max_pixels: Decompression-bomb limit for images decoded here.
        clip: The CLIP image encoder of ``backend`` a caller already holds (default: a new one).

    Attributes:
        settings: The record in force.
        has_model_a: Whether the artifacts have Model A; without it the task is Model B alone
            (alpha 0).
    """

    def __init__(self, backend: Backend, *, settings: Img2PromptSettings | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, clip: ClipEncoder | None = None) -> None:
        super().__init__(backend, max_pixels=max_pixels)
        self.settings = settings or Img2PromptSettings.from_manifest(self.manifest)
        self.clip = clip if clip is not None else ClipEncoder(backend, max_pixels=max_pixels)
        self.has_model_a = IMG2PROMPT_A in self.manifest.models
        self._fusion: KnnPromptFusion | None = None

    @property
    def fusion(self) -> KnnPromptFusion:
        """Model B from the local artifacts' ``knn/`` (hash-checked), loaded once.

        Raises:
            ArtifactError: the artifacts have no Model B, or this is a thin client without them.
        """
        if self._fusion is None:
            m = self._local_manifest()
            if not any(rel.startswith(f"{KNN_DIR}/") for rel in (m.files or {})):
                raise ArtifactError(f"{m.root}: no Model B ({KNN_DIR}/) in the artifacts; "
                                    "run `clipq train img2prompt` or `clipq import --prompts`")
            self._fusion = KnnPromptFusion.load(m.resolve_dir(KNN_DIR), settings=self.settings, encoder=self.clip)
        return self._fusion

    def _local_manifest(self) -> Manifest:
        if self.path.remote:  # a server without the describe ensemble: the client's own artifacts
            return self.path._local(IMG2PROMPT_A).manifest  # type: ignore[attr-defined]
        return self.manifest

    def alpha_for(self, alpha: float | None) -> float:
        """The weight of Model A a call uses: ``alpha`` if given, else the settings' (0 without Model A).

        Raises:
            InvalidInputError: alpha outside [0, 1], or a non-zero alpha without Model A.
        """
        if alpha is None:
            return self.settings.alpha if self.has_model_a else 0.0
        w = float(check_alpha(alpha))
        if w != 0.0 and not self.has_model_a:
            raise InvalidInputError(f"alpha {w:g} weights Model A, but these artifacts have none "
                                    "(Model B alone): use alpha 0")
        return w

    def describe(self, images: ImageLike | Sequence[ImageLike], *, alpha: float | None = None, n: int = 3,
                 batch_size: int = 32) -> Any:
        """Image -> prompt for each image, as the fused embedding and the known prompts near it.

        Args:
            images: Paths, bytes, PIL images or uint8 arrays (or one of them).
            alpha: Weight of Model A (default: the settings').
            n: Known prompts reported per image.
            batch_size: Images per backend call.

        Returns:
            One :class:`~clipq.runtime.fusion.PromptDescription` per image (an awaitable of the
            list on an asyncio backend).

        Raises:
            InvalidInputError: a bad alpha or n. InvalidImageError: an image cannot be decoded
                (naming its index). ArtifactError: no Model B. DimensionMismatchError: Model B's
                index was built with another CLIP.
        """
        return self.run(self._describe_steps(as_image_list(images), self.alpha_for(alpha), _check_k(n),
                                             self._batch(CLIP_IMAGE, batch_size)))

    def _describe_steps(self, items: Sequence[Any], alpha: float, n: int, batch: int) -> Steps[list[PromptDescription]]:
        serves = getattr(self.path, "serves", None)  # a server's path: it may run the whole task
        if serves is not None and serves(DESCRIBE):
            return (yield from self.path.describe(items, alpha, n, batch))  # type: ignore[attr-defined]
        fusion = self.fusion
        image_embeds = l2_normalize((yield from self.path.images(CLIP_IMAGE, items, batch)))
        b = fusion.predict(image_embeds)
        if self.has_model_a:
            a = l2_normalize((yield from self.path.images(IMG2PROMPT_A, items, self.path.batch(IMG2PROMPT_A, batch))))
        else:
            a = b  # Model B alone: alpha is 0
        if ENSEMBLE_HEAD in self.manifest.models:
            fused = yield from head_steps(a, b, alpha, self.path.batch(ENSEMBLE_HEAD, batch), self.driver.window)
        else:
            from .fusion import ensemble

            fused = ensemble(a, b, alpha)
        return describe_embeds(fusion, image_embeds, fused, alpha, n)


def write_settings(root: str | os.PathLike[str], settings: Img2PromptSettings) -> Manifest:
    """Store ``settings`` as the image -> prompt record of the artifacts at ``root`` (atomically).

    Returns:
        The saved manifest.
    """
    m = Manifest.load(root)  # checks the files the runtime needs before the record changes
    settings.store(m)
    m.save()
    return m


__all__ = ["ImageToPrompt", "Img2PromptSettings", "write_settings"]
