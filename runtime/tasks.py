"""Task classes: pre- and post-processing once, for any backend.

A backend (``OrtBackend`` in process, ``TritonBackend`` over the network) only moves named
tensors. These classes turn user inputs (paths, bytes, PIL images, arrays, strings) into those
tensors, split batches to the model's ``max_batch_size``, and turn outputs into L2-normalised
float32 arrays or typed results. Errors name the offending input and its index in the caller's
batch, whichever chunk it fell in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import Backend
from .errors import ArtifactError, InvalidInputError, ShapeError
from .preprocess import DEFAULT_MAX_PIXELS, ImageLike, ImagePreprocessor, as_image_list
from .specs import CLIP_IMAGE, CLIP_TEXT, ENSEMBLE_HEAD, IMG2PROMPT_A, PROMPT_TEXT, VQA
from .text import TextLike, TextTokenizer, check_texts

# the graphs normalise already; normalising again keeps the guarantee for int8 / fp16 outputs
from .vectors import l2_normalize

log = logging.getLogger(__name__)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(n, s + size)


def _progress(it: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a base dependency
        return it
    return tqdm(it, total=total, desc=desc, unit="batch")


class _Task:
    """Common plumbing: the backend, its manifest, batch limits from the model specs."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.manifest = backend.manifest

    def _batch(self, model: str, requested: int) -> int:
        if requested < 1:
            raise ValueError(f"batch_size must be >= 1, got {requested}")
        return max(1, min(int(requested), int(self.backend.spec(model).max_batch_size)))

    def _out_dim(self, model: str) -> int:
        return int(self.backend.spec(model).outputs[0].shape[-1])

    def _images(self, model: str, pre: ImagePreprocessor, images: Any, batch_size: int,
                progress: bool = False) -> np.ndarray:
        items = as_image_list(images)
        out_name = self.backend.spec(model).outputs[0].name
        bs = self._batch(model, batch_size)
        out = np.empty((len(items), self._out_dim(model)), dtype=np.float32)
        chunks = list(_chunks(len(items), bs))
        for s, e in _progress(chunks, len(chunks), progress, model):
            pixels = pre(items[s:e], start=s)
            out[s:e] = self.backend.infer(model, {"pixel_values": pixels})[out_name]
        return l2_normalize(out)

    def _texts(self, model: str, tok: TextTokenizer, texts: Any, batch_size: int,
               progress: bool = False) -> tuple[np.ndarray, list[bool]]:
        items = check_texts(texts)
        out_name = self.backend.spec(model).outputs[0].name
        bs = self._batch(model, batch_size)
        out = np.empty((len(items), self._out_dim(model)), dtype=np.float32)
        truncated: list[bool] = []
        chunks = list(_chunks(len(items), bs))
        for s, e in _progress(chunks, len(chunks), progress, model):
            enc = tok(items[s:e], start=s)
            truncated.extend(enc.truncated)
            out[s:e] = self.backend.infer(model, enc.as_inputs())[out_name]
        _warn_truncated(model, truncated, tok.max_length)
        return l2_normalize(out), truncated


def _warn_truncated(model: str, truncated: Sequence[bool], max_length: int) -> None:
    idx = [i for i, t in enumerate(truncated) if t]
    if idx:
        shown = ", ".join(map(str, idx[:10])) + (", ..." if len(idx) > 10 else "")
        log.warning("%s: %d text(s) longer than %d tokens were truncated (items %s)", model, len(idx),
                    max_length, shown)


class ClipEncoder(_Task):
    """CLIP image and text embeddings in one space.

    Args:
        backend: Any :class:`~clipq.runtime.backend.Backend`.
        max_pixels: Decompression-bomb limit for input images (width x height).

    Attributes:
        dim: Embedding dimension.
        model_id: sha256 of the ``clip_image`` fp32 graph: embeddings from different ids must not
            share an index.
    """

    def __init__(self, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(backend)
        self.preprocessor = ImagePreprocessor.from_manifest(self.manifest, max_pixels=max_pixels)
        self._tokenizer: TextTokenizer | None = None
        spec = backend.spec(CLIP_IMAGE)
        self.dim = int(self.manifest.dims.get("clip_embed") or spec.outputs[0].shape[-1])
        info = self.manifest.files.get(spec.file)
        if not info:
            raise ArtifactError(f"{self.manifest.root}: clip_image graph {spec.file!r} is not in the manifest")
        # the trained checkpoint's id when the artifacts carry one (indexes built at training time
        # record it, before any graph exists); else the fp32 graph's hash
        self.model_id: str = str(self.manifest.extra.get("clip_model_id") or info["sha256"])

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer.from_manifest(self.manifest, "clip")
        return self._tokenizer

    def encode_images(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 32,
                      progress: bool = False) -> np.ndarray:
        """Embed images.

        Args:
            images: Paths, encoded bytes, PIL images or uint8 HWC arrays (or one of them, or a
                uint8 [N, H, W, C] array).
            batch_size: Images per backend call (capped at the model's ``max_batch_size``).
            progress: Show a progress bar.

        Returns:
            float32 [N, dim], L2-normalised rows.

        Raises:
            InvalidImageError, DTypeError, ShapeError: naming the bad image and its index.
        """
        return self._images(CLIP_IMAGE, self.preprocessor, images, batch_size, progress)

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
        emb, truncated = self._texts(CLIP_TEXT, self.tokenizer, texts, batch_size, progress)
        return (emb, truncated) if return_truncated else emb


class PromptEncoder(_Task):
    """all-MiniLM-L6-v2 sentence embeddings (the prompt space of image -> prompt), via ``prompt_text``."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.tokenizer = TextTokenizer.from_manifest(self.manifest, "prompt")
        self.dim = self._out_dim(PROMPT_TEXT)

    def encode(self, texts: TextLike | Sequence[TextLike], batch_size: int = 64, *,
               return_truncated: bool = False, progress: bool = False) -> Any:
        """Embed prompts: float32 [N, 384], L2-normalised (see :meth:`ClipEncoder.encode_texts`)."""
        emb, truncated = self._texts(PROMPT_TEXT, self.tokenizer, texts, batch_size, progress)
        return (emb, truncated) if return_truncated else emb


class PromptRegressor(_Task):
    """Model A of image -> prompt: predicts the prompt embedding of an image (``img2prompt_a``)."""

    def __init__(self, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(backend)
        self.preprocessor = ImagePreprocessor.from_manifest(self.manifest, max_pixels=max_pixels)
        self.dim = self._out_dim(IMG2PROMPT_A)

    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 32,
                progress: bool = False) -> np.ndarray:
        """Predicted prompt embeddings: float32 [N, 384], L2-normalised.

        Raises:
            InvalidImageError, DTypeError, ShapeError: naming the bad image and its index.
        """
        return self._images(IMG2PROMPT_A, self.preprocessor, images, batch_size, progress)


class EnsembleHead(_Task):
    """``normalize(alpha * A + (1 - alpha) * B)`` through the ``ensemble_head`` graph."""

    def fuse(self, a: np.ndarray, b: np.ndarray, alpha: float | Sequence[float] | np.ndarray = 0.5,
             batch_size: int = 64) -> np.ndarray:
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
        out = np.empty_like(a)
        out_name = self.backend.spec(ENSEMBLE_HEAD).outputs[0].name
        for s, e in _chunks(n, self._batch(ENSEMBLE_HEAD, batch_size)):
            feeds = {"a_embeds": a[s:e], "b_embeds": b[s:e], "alpha": np.ascontiguousarray(al[s:e])}
            out[s:e] = self.backend.infer(ENSEMBLE_HEAD, feeds)[out_name]
        return l2_normalize(out)


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
    ``vqa`` graph holds mapper, language model and answer head.
    """

    def __init__(self, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 encoder: ClipEncoder | None = None) -> None:
        super().__init__(backend)
        self.encoder = encoder or ClipEncoder(backend, max_pixels=max_pixels)
        self.tokenizer = TextTokenizer.from_manifest(self.manifest, "lm")
        self.vocab = list(self.manifest.answer_vocab)
        n_out = self._out_dim(VQA)
        if len(self.vocab) != n_out:
            raise ArtifactError(
                f"{self.manifest.root}: answer_vocab has {len(self.vocab)} answers, the vqa graph gives {n_out}"
            )

    def ask(self, images: ImageLike | Sequence[ImageLike], questions: TextLike | Sequence[TextLike],
            top_k: int = 3, batch_size: int = 32) -> list[Answer]:
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
        imgs = as_image_list(images)
        qs = check_texts(questions)
        if len(imgs) != len(qs) and len(imgs) != 1 and len(qs) != 1:
            raise ShapeError(f"{len(imgs)} images and {len(qs)} questions cannot be paired")
        emb = self.encoder.encode_images(imgs, batch_size=batch_size)
        n = max(len(imgs), len(qs))
        if len(imgs) == 1:
            emb = np.repeat(emb, n, axis=0)
        if len(qs) == 1:
            qs = qs * n
        return self.ask_embeds(emb, qs, top_k=top_k, batch_size=batch_size)

    def ask_embeds(self, image_embeds: np.ndarray, questions: Sequence[TextLike], top_k: int = 3,
                   batch_size: int = 32) -> list[Answer]:
        """Answer questions given precomputed CLIP image embeddings ``[N, D]`` (one per question)."""
        probs, truncated = self.probs(image_embeds, questions, batch_size=batch_size)
        k = max(1, min(int(top_k), probs.shape[1]))
        order = np.argsort(-probs, axis=1)[:, :k]
        out = []
        for i, row in enumerate(order):
            top = [(self.vocab[j], float(probs[i, j])) for j in row]
            out.append(Answer(top[0][0], top[0][1], top, truncated[i]))
        return out

    def probs(self, image_embeds: np.ndarray, questions: Sequence[TextLike],
              batch_size: int = 32) -> tuple[np.ndarray, list[bool]]:
        """Answer probabilities float32 [N, n_answers] and per-question truncation flags."""
        emb = np.asarray(image_embeds, dtype=np.float32)
        qs = check_texts(questions)
        if emb.ndim != 2 or emb.shape[0] != len(qs):
            raise ShapeError(f"image_embeds must be [{len(qs)}, D], got {list(emb.shape)}")
        out = np.empty((len(qs), len(self.vocab)), dtype=np.float32)
        truncated: list[bool] = []
        for s, e in _chunks(len(qs), self._batch(VQA, batch_size)):
            enc = self.tokenizer(qs[s:e], start=s)
            truncated.extend(enc.truncated)
            feeds = {"image_embeds": np.ascontiguousarray(emb[s:e]), **enc.as_inputs()}
            out[s:e] = self.backend.infer(VQA, feeds)["probs"]
        _warn_truncated(VQA, truncated, self.tokenizer.max_length)
        return out, truncated


__all__ = ["Answer", "ClipEncoder", "EnsembleHead", "PromptEncoder", "PromptRegressor", "VqaModel", "l2_normalize"]
