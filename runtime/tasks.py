"""Task classes: pre- and post-processing once, for any backend, blocking or asyncio.

A backend (``OrtBackend`` in process, ``TritonBackend`` over the network) only moves named
tensors. These classes turn user inputs (paths, bytes, PIL images, arrays, strings) into backend
calls, split batches to each model's ``max_batch_size``, and turn outputs into L2-normalised
float32 arrays or typed results. Errors name the offending input and its index in the caller's
batch, whichever chunk it fell in.

How inputs reach the backend is the backend's *path* (:func:`clipq.runtime.backend.task_path`,
the one place that chooses): in process the images are preprocessed and the texts tokenised here;
against a clipq server they travel as bytes and strings to its ensembles. Each method is written
once as a step generator (:class:`clipq.runtime.backend.Driver`): on a blocking backend it returns
its result, on an asyncio backend (``AsyncTritonBackend``) an awaitable of the same result::

    enc = ClipEncoder(TritonBackend("grpc://127.0.0.1:8001"))
    enc.encode_images(["cat.jpg"])                     # float32 [1, D]
    async with AsyncTritonBackend("grpc://127.0.0.1:8001") as b:
        await ClipEncoder(b).encode_images(["cat.jpg"])  # the same array
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import Backend, Call, Driver, Steps, TaskPath, chunked, gather_rows, task_path
from .errors import ArtifactError, InvalidInputError, ShapeError
from .preprocess import DEFAULT_MAX_PIXELS, ImageLike, as_image_list
from .specs import CLIP_IMAGE, CLIP_TEXT, ENSEMBLE_HEAD, IMG2PROMPT_A, PROMPT_TEXT, VQA
from .text import TextLike, TextTokenizer, check_texts

# the graphs normalise already; normalising again keeps the guarantee for int8 / fp16 outputs
from .vectors import l2_normalize

log = logging.getLogger(__name__)


class _Task:
    """Common plumbing: the backend, its manifest, its driver and (on first use) its path."""

    def __init__(self, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.backend = backend
        self.manifest = backend.manifest
        self.max_pixels = max_pixels
        self.driver = Driver(backend)
        self._path: TaskPath | None = None

    @property
    def path(self) -> TaskPath:
        """How inputs reach the backend (chosen on first use: a remote backend may ask its server)."""
        if self._path is None:
            self._path = task_path(self.backend, max_pixels=self.max_pixels, window=self.driver.window)
        return self._path

    @property
    def remote(self) -> bool:
        """Whether images and texts go as bytes and strings to the server's ensembles."""
        return bool(self.path.remote)

    def run(self, steps: Steps[Any]) -> Any:
        """Drive a step generator: its result, or an awaitable of it on an asyncio backend."""
        return self.driver.run(steps)

    def _batch(self, model: str, requested: int) -> int:
        if requested < 1:
            raise ValueError(f"batch_size must be >= 1, got {requested}")
        return self.path.batch(model, requested)

    def _out_dim(self, model: str) -> int:
        return int(self.manifest.model(model).outputs[0].shape[-1])

    def _image_steps(self, model: str, images: Any, batch_size: int, progress: bool = False) -> Steps[np.ndarray]:
        items = as_image_list(images)
        out = yield from self.path.images(model, items, self._batch(model, batch_size), progress)
        return l2_normalize(out)

    def _text_steps(self, model: str, texts: Any, batch_size: int,
                    progress: bool = False) -> Steps[tuple[np.ndarray, list[bool]]]:
        items = check_texts(texts)
        out, truncated = yield from self.path.texts(model, items, self._batch(model, batch_size), progress)
        _warn_truncated(model, truncated, self._max_length(model))
        return l2_normalize(out), truncated

    def _max_length(self, model: str) -> int:
        kind = self.manifest.model(model).meta.get("tokenizer", "")
        return int((self.manifest.tokenizers.get(kind) or {}).get("max_length", 0))


def _warn_truncated(model: str, truncated: Sequence[bool], max_length: int) -> None:
    idx = [i for i, t in enumerate(truncated) if t]
    if idx:
        shown = ", ".join(map(str, idx[:10])) + (", ..." if len(idx) > 10 else "")
        log.warning("%s: %d text(s) longer than %d tokens were truncated (items %s)", model, len(idx),
                    max_length, shown)


class ClipEncoder(_Task):
    """CLIP image and text embeddings in one space.

    Args:
        backend: Any :class:`~clipq.runtime.backend.Backend` (blocking or asyncio).
        max_pixels: Decompression-bomb limit for the images decoded here (on a server the
            server's own limit applies to encoded images).

    Attributes:
        dim: Embedding dimension.
        model_id: sha256 of the ``clip_image`` fp32 graph: embeddings from different ids must not
            share an index.
    """

    def __init__(self, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(backend, max_pixels=max_pixels)
        self._tokenizer: TextTokenizer | None = None
        spec = self.manifest.model(CLIP_IMAGE)
        self.dim = int(self.manifest.dims.get("clip_embed") or spec.outputs[0].shape[-1])
        info = self.manifest.files.get(spec.file)
        if not info:
            raise ArtifactError(f"{self.manifest.root}: clip_image graph {spec.file!r} is not in the manifest")
        # the trained checkpoint's id when the artifacts carry one (indexes built at training time
        # record it, before any graph exists); else the fp32 graph's hash
        self.model_id: str = str(self.manifest.extra.get("clip_model_id") or info["sha256"])

    @property
    def preprocessor(self) -> Any:
        """The local image preprocessor (in-process path)."""
        return self.path.preprocessor  # type: ignore[attr-defined]

    @property
    def tokenizer(self) -> TextTokenizer:
        """The local CLIP tokenizer (``ArtifactError`` on a client without the tokenizer files)."""
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer.from_manifest(self.manifest, "clip")
        return self._tokenizer

    def encode_images(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 32,
                      progress: bool = False) -> Any:
        """Embed images.

        Args:
            images: Paths, encoded bytes, PIL images or uint8 HWC arrays (or one of them, or a
                uint8 [N, H, W, C] array).
            batch_size: Images per backend call (capped at the model's ``max_batch_size``).
            progress: Show a progress bar.

        Returns:
            float32 [N, dim], L2-normalised rows (an awaitable of it on an asyncio backend).

        Raises:
            InvalidImageError, DTypeError, ShapeError: naming the bad image and its index.
        """
        return self.run(self._image_steps(CLIP_IMAGE, images, batch_size, progress))

    def encode_texts(self, texts: TextLike | Sequence[TextLike], batch_size: int = 64, *,
                     return_truncated: bool = False, progress: bool = False) -> Any:
        """Embed texts.

        Args:
            texts: Strings (or UTF-8 bytes), or one of them.
            batch_size: Texts per backend call (capped at the model's ``max_batch_size``).
            return_truncated: Also return, per text, whether it was cut at the context length
                (a warning is logged either way).
            progress: Show a progress bar.

        Returns:
            float32 [N, dim], L2-normalised; with ``return_truncated`` a tuple (embeddings, flags).

        Raises:
            InvalidTextError: empty text, invalid UTF-8, not a string (naming the index).
        """
        return self.run(_pick(self._text_steps(CLIP_TEXT, texts, batch_size, progress), return_truncated))

    def describe(self, images: ImageLike | Sequence[ImageLike], *, alpha: float | None = None, n: int = 3,
                 batch_size: int = 32) -> Any:
        """Image -> prompt with the backend's own Model B (see :func:`clipq.runtime.fusion.describe`)."""
        return self.run(self.path.describe(self, as_image_list(images), alpha, n, batch_size))


def _pick(steps: Steps[tuple[np.ndarray, list[bool]]], with_flags: bool) -> Steps[Any]:
    emb, truncated = yield from steps
    return (emb, truncated) if with_flags else emb


class PromptEncoder(_Task):
    """all-MiniLM-L6-v2 sentence embeddings (the prompt space of image -> prompt), via ``prompt_text``."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.dim = self._out_dim(PROMPT_TEXT)

    @property
    def tokenizer(self) -> TextTokenizer:
        """The local prompt tokenizer (in-process path)."""
        return self.path.tokenizer("prompt")  # type: ignore[attr-defined]

    def encode(self, texts: TextLike | Sequence[TextLike], batch_size: int = 64, *,
               return_truncated: bool = False, progress: bool = False) -> Any:
        """Embed prompts: float32 [N, 384], L2-normalised (see :meth:`ClipEncoder.encode_texts`)."""
        return self.run(_pick(self._text_steps(PROMPT_TEXT, texts, batch_size, progress), return_truncated))


class PromptRegressor(_Task):
    """Model A of image -> prompt: predicts the prompt embedding of an image (``img2prompt_a``)."""

    def __init__(self, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(backend, max_pixels=max_pixels)
        self.dim = self._out_dim(IMG2PROMPT_A)

    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 32,
                progress: bool = False) -> Any:
        """Predicted prompt embeddings: float32 [N, 384], L2-normalised.

        Raises:
            InvalidImageError, DTypeError, ShapeError: naming the bad image and its index.
        """
        return self.run(self._image_steps(IMG2PROMPT_A, images, batch_size, progress))


def head_steps(a: np.ndarray, b: np.ndarray, alpha: float | Sequence[float] | np.ndarray, batch: int,
               window: int) -> Steps[np.ndarray]:
    """The ``ensemble_head`` graph over two batches of prompt embeddings (see :meth:`EnsembleHead.fuse`)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise ShapeError(f"a and b must both be [N, E] of one shape, got {a.shape} and {b.shape}")
    n = a.shape[0]
    al = np.asarray(alpha, dtype=np.float32)
    al = np.full((n, 1), float(al), np.float32) if al.ndim == 0 else al.reshape(-1, 1)
    if al.shape[0] != n:
        raise ShapeError(f"alpha has {al.shape[0]} values for {n} rows")
    if not np.isfinite(al).all() or (al < 0).any() or (al > 1).any():
        raise InvalidInputError("alpha must lie in [0, 1]")

    def call(s: int, e: int) -> Call:
        return Call(ENSEMBLE_HEAD, {"a_embeds": a[s:e], "b_embeds": b[s:e], "alpha": np.ascontiguousarray(al[s:e])}, s)

    outs = yield from chunked(call, n, batch, window)
    return l2_normalize(gather_rows(outs, "prompt_embeds", n, a.shape[1]))


class EnsembleHead(_Task):
    """``normalize(alpha * A + (1 - alpha) * B)`` through the ``ensemble_head`` graph (tensors on every path)."""

    def fuse(self, a: np.ndarray, b: np.ndarray, alpha: float | Sequence[float] | np.ndarray = 0.5,
             batch_size: int = 64) -> Any:
        """Fuse two batches of prompt embeddings.

        Args:
            a: Model A embeddings [N, E].
            b: Model B embeddings [N, E].
            alpha: Weight of A: one number for all rows, or one per row ([N] or [N, 1]).
            batch_size: Rows per backend call.

        Returns:
            float32 [N, E], L2-normalised.

        Raises:
            ShapeError: a and b differ in shape, are not 2-D, or alpha has the wrong length.
            InvalidInputError: alpha outside [0, 1] or not finite.
        """
        return self.run(head_steps(a, b, alpha, self._batch(ENSEMBLE_HEAD, batch_size), self.driver.window))

    def _batch(self, model: str, requested: int) -> int:  # a network on every path: the manifest's limit
        if requested < 1:
            raise ValueError(f"batch_size must be >= 1, got {requested}")
        return max(1, min(int(requested), int(self.manifest.model(model).max_batch_size)))


@dataclass
class Answer:
    """One VQA answer.

    Attributes:
        answer: The most probable answer.
        prob: Its probability.
        top: The ``top_k`` answers with probabilities, best first.
        truncated: The question was longer than the context and was cut.
    """

    answer: str
    prob: float
    top: list[tuple[str, float]] = field(default_factory=list)
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "prob": self.prob, "top": [list(t) for t in self.top],
                "truncated": self.truncated}


class VqaModel(_Task):
    """Visual question answering: CLIP image embedding + question -> answer probabilities.

    The image goes through ``clip_image`` and the question through the ``lm`` tokenizer; the
    ``vqa`` graph holds mapper, language model and answer head. On a server: ``embed_image`` for
    the images, ``ask_embeds`` (question text in) for the answers.
    """

    def __init__(self, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 encoder: ClipEncoder | None = None) -> None:
        super().__init__(backend, max_pixels=max_pixels)
        self.encoder = encoder or ClipEncoder(backend, max_pixels=max_pixels)
        self.vocab = list(self.manifest.answer_vocab)
        n_out = self._out_dim(VQA)
        if len(self.vocab) != n_out:
            raise ArtifactError(
                f"{self.manifest.root}: answer_vocab has {len(self.vocab)} answers, the vqa graph gives {n_out}"
            )

    @property
    def tokenizer(self) -> TextTokenizer:
        """The local question tokenizer (in-process path)."""
        return self.path.tokenizer("lm")  # type: ignore[attr-defined]

    def ask(self, images: ImageLike | Sequence[ImageLike], questions: TextLike | Sequence[TextLike],
            top_k: int = 3, batch_size: int = 32) -> Any:
        """Answer questions about images.

        One image with several questions, several images with one question, or pairs of equal
        length; each distinct image is encoded once.

        Args:
            images: Images (any accepted form), or one image.
            questions: Questions, or one question.
            top_k: Answers to list in :attr:`Answer.top`.
            batch_size: Items per backend call.

        Returns:
            One :class:`Answer` per (image, question) pair.

        Raises:
            InvalidImageError, InvalidTextError: naming the bad input and its index.
            ShapeError: image and question counts that cannot be paired.
        """
        return self.run(self._ask_steps(images, questions, top_k, batch_size))

    def _ask_steps(self, images: Any, questions: Any, top_k: int, batch_size: int) -> Steps[list[Answer]]:
        imgs = as_image_list(images)
        qs = check_texts(questions)
        if len(imgs) != len(qs) and len(imgs) != 1 and len(qs) != 1:
            raise ShapeError(f"{len(imgs)} images and {len(qs)} questions cannot be paired")
        emb = yield from self.encoder._image_steps(CLIP_IMAGE, imgs, batch_size)
        n = max(len(imgs), len(qs))
        if len(imgs) == 1:
            emb = np.repeat(emb, n, axis=0)
        if len(qs) == 1:
            qs = qs * n
        probs, truncated = yield from self._probs_steps(emb, qs, batch_size)
        return self._answers(probs, truncated, top_k)

    def ask_embeds(self, image_embeds: np.ndarray, questions: Sequence[TextLike], top_k: int = 3,
                   batch_size: int = 32) -> Any:
        """Answer questions given precomputed CLIP image embeddings ``[N, D]`` (one per question)."""
        return self.run(self._ask_embeds_steps(image_embeds, questions, top_k, batch_size))

    def _ask_embeds_steps(self, image_embeds: np.ndarray, questions: Sequence[TextLike], top_k: int,
                          batch_size: int) -> Steps[list[Answer]]:
        probs, truncated = yield from self._probs_steps(image_embeds, questions, batch_size)
        return self._answers(probs, truncated, top_k)

    def _answers(self, probs: np.ndarray, truncated: Sequence[bool], top_k: int) -> list[Answer]:
        k = max(1, min(int(top_k), probs.shape[1]))
        order = np.argsort(-probs, axis=1)[:, :k]
        out = []
        for i, row in enumerate(order):
            top = [(self.vocab[j], float(probs[i, j])) for j in row]
            out.append(Answer(top[0][0], top[0][1], top, truncated[i]))
        return out

    def probs(self, image_embeds: np.ndarray, questions: Sequence[TextLike], batch_size: int = 32) -> Any:
        """Answer probabilities float32 [N, n_answers] and per-question truncation flags."""
        return self.run(self._probs_steps(image_embeds, questions, batch_size))

    def _probs_steps(self, image_embeds: np.ndarray, questions: Sequence[TextLike],
                     batch_size: int) -> Steps[tuple[np.ndarray, list[bool]]]:
        emb = np.asarray(image_embeds, dtype=np.float32)
        qs = check_texts(questions)
        if emb.ndim != 2 or emb.shape[0] != len(qs):
            raise ShapeError(f"image_embeds must be [{len(qs)}, D], got {list(emb.shape)}")
        probs, truncated = yield from self.path.vqa(emb, qs, self._batch(VQA, batch_size))
        _warn_truncated(VQA, truncated, self._max_length(VQA))
        return probs, truncated


__all__ = ["Answer", "ClipEncoder", "EnsembleHead", "PromptEncoder", "PromptRegressor", "VqaModel", "head_steps",
           "l2_normalize"]
