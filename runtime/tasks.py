"""Task classes: pre- and post-processing once, for any backend, blocking or asyncio.

A backend (``OrtBackend`` in process, ``TritonBackend`` over the network) only moves named
tensors. These classes turn user inputs (paths, bytes, PIL images, arrays, strings) into backend
calls, split batches to each model's ``max_batch_size``, and turn outputs into L2-normalised
float32 arrays or typed results. Errors name the offending input and its index in the caller's
batch, whichever chunk it fell in.

How inputs reach the backend is the backend's *path* (:func:`clipq.runtime.local_path.task_path`,
the one place that chooses): in process the images are preprocessed and the texts tokenised here;
against a clipq server they travel as bytes and strings to its ensembles. Each method is written
once as a step generator (:class:`clipq.runtime.contract.Driver`): on a blocking backend it returns
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

from .contract import Backend, Call, Driver, Steps, chunked, gather_rows
from .errors import ArtifactError, InvalidInputError, InvalidTextError, ShapeError
from .fusion import check_alpha
from .local_path import TaskPath, task_path
from .preprocess import DEFAULT_MAX_PIXELS, ImageLike, as_image_list
from .scores import PairScore
from .specs import (
    CLIP_IMAGE,
    CLIP_TEXT,
    ENSEMBLE_HEAD,
    IMG2PROMPT_A,
    PROMPT_TEXT,
    READING_IMAGE,
    READING_TEXT,
    VQA,
)
from .templates import apply_templates, parse_templates
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
        backend: Any :class:`~clipq.runtime.contract.Backend` (blocking or asyncio).
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
        #: what an image-text score means for this model: CLIP's cosine or SigLIP's sigmoid probability
        self.pair_score = PairScore.from_manifest(self.manifest)

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


    def scores(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
        """The family's score of every (image, text) pair: float32 [N, M].

        CLIP: the cosine. SigLIP: ``sigmoid(logit_scale * cos + logit_bias)``, the model's probability
        that the text matches the image (:class:`~clipq.runtime.scores.PairScore`).
        """
        img = l2_normalize(np.asarray(image_embeds, np.float32).reshape(-1, self.dim))
        txt = l2_normalize(np.asarray(text_embeds, np.float32).reshape(-1, self.dim))
        return self.pair_score(img @ txt.T)

    def classify(self, images: ImageLike | Sequence[ImageLike], labels: Sequence[str], *,
                 templates: str | Sequence[str] | None = "{}", top_k: int = 5,
                 batch_size: int = 32) -> Any:
        """Zero-shot labels: per image, the ``top_k`` labels with the family's score, best first.

        Args:
            images: Images as :meth:`encode_images` takes them.
            labels: Candidate labels (each phrased by every template, the embeddings averaged).
            templates: Prompt templates with one ``{}`` (default: the bare label).
            top_k: Labels returned per image.
            batch_size: Images per backend call.

        Returns:
            Per image a list of (label, score): SigLIP's sigmoid probability (each label on its own:
            several or none may pass 0.5) or CLIP's cosine (an ordering, not a probability).
        Raises:
            InvalidInputError: no labels. InvalidTextError: an empty label (naming its index).
        """
        return self.run(self._classify_steps(images, labels, templates, top_k, batch_size))

    def _classify_steps(self, images: Any, labels: Sequence[str], templates: Any, top_k: int,
                        batch_size: int) -> Steps[list[list[tuple[str, float]]]]:
        labels = check_texts(labels)
        if not labels:
            raise InvalidInputError("classify needs at least one label")
        tpl = parse_templates(templates)
        phrased: list[str] = []
        for n, label in enumerate(labels):
            try:
                phrased.extend(apply_templates(label, tpl))
            except InvalidTextError as e:
                raise InvalidTextError(e.reason, index=n) from None
        img = yield from self._image_steps(CLIP_IMAGE, images, batch_size)
        txt, _ = yield from self._text_steps(CLIP_TEXT, phrased, 64)
        txt = l2_normalize(txt.reshape(len(labels), len(tpl), -1).mean(axis=1))
        return ranked(self.scores(img, txt), labels, top_k)


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
    al = check_alpha(alpha)
    al = np.full((n, 1), float(al), np.float32) if al.ndim == 0 else al.reshape(-1, 1)
    if al.shape[0] != n:
        raise ShapeError(f"alpha has {al.shape[0]} values for {n} rows")

    def call(s: int, e: int) -> Call:
        return Call(ENSEMBLE_HEAD, {"a_embeds": a[s:e], "b_embeds": b[s:e], "alpha": np.ascontiguousarray(al[s:e])}, s)

    outs = yield from chunked(call, n, batch, window)
    return l2_normalize(gather_rows(outs, "prompt_embeds", n, a.shape[1]))


class EnsembleHead(_Task):
    """``normalize(alpha * A + (1 - alpha) * B)`` through the ``ensemble_head`` graph (tensors on every path)."""

    def fuse(self, a: np.ndarray, b: np.ndarray, alpha: float | Sequence[float] | np.ndarray,
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


def pairs(n_images: int, n_questions: int) -> tuple[np.ndarray, np.ndarray]:
    """Which image and which question each (image, question) pair takes: one image with several
    questions, several images with one question, or pairs of equal length.

    Raises:
        ShapeError: counts that cannot be paired (e.g. 3 images and 2 questions).
    """
    if n_images != n_questions and min(n_images, n_questions) != 1:
        raise ShapeError(f"{n_images} images and {n_questions} questions cannot be paired")
    n = max(n_images, n_questions)
    return (np.zeros(n, np.intp) if n_images == 1 else np.arange(n),
            np.zeros(n, np.intp) if n_questions == 1 else np.arange(n))


def ranked(values: np.ndarray, labels: Sequence[str], top_k: int) -> list[list[tuple[str, float]]]:
    """Per row of ``values`` [N, C], the ``top_k`` labels with their values, best first (ties: the first label)."""
    k = max(1, min(int(top_k), values.shape[1]))
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return [[(labels[j], float(values[i, j])) for j in row] for i, row in enumerate(order)]


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
        image_of, question_of = pairs(len(imgs), len(qs))
        emb = yield from self.encoder._image_steps(CLIP_IMAGE, imgs, batch_size)
        probs, truncated = yield from self._probs_steps(emb[image_of], [qs[j] for j in question_of], batch_size)
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
        return [Answer(top[0][0], top[0][1], top, truncated[i]) for i, top in enumerate(ranked(probs, self.vocab, top_k))]

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


#: how a question and a candidate answer make the reading model's text where the manifest names no template
READ_TEMPLATE = "{question} {answer}"


@dataclass
class ReadResult:
    """The reading model's answer to one question about the text in an image.

    Attributes:
        answer: The best-scoring candidate.
        score: Its score: the cosine of the image and the text of question + candidate.
        top: The ``top_k`` candidates with their scores, best first.
    """

    answer: str
    score: float
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "score": self.score, "top": [list(t) for t in self.top]}


class ReadingModel(_Task):
    """Reading ("Can CLIP read?"): which candidate answer the text in an image gives.

    The answer to question ``q`` about an image is the candidate ``c`` whose text
    ``template.format(question=q, answer=c)`` is closest to the image in the space of the CLIP
    fine-tuned for reading (the ``reading_image`` and ``reading_text`` graphs), as training scores
    it (``clipq.train.reading.candidate_scores``, on the whole image). The template and the default
    candidates are the manifest's (``extra["reading"]``: ``text``, ``candidates``; a thin client
    gets them from the server). On a server: ``read_image`` for the images, ``read_text`` for the
    candidate texts; each distinct question's candidate texts are embedded once per call.

    Args:
        backend: Any :class:`~clipq.runtime.contract.Backend` (blocking or asyncio).
        max_pixels: Decompression-bomb limit for the images decoded here.

    Attributes:
        candidates: The manifest's candidate answers (empty where it lists none).
        template: How a question and a candidate make one text.

    Raises:
        ArtifactError: the artifacts (or the server) hold no reading model, or its template is unusable.
    """

    def __init__(self, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(backend, max_pixels=max_pixels)
        missing = [n for n in (READING_IMAGE, READING_TEXT) if n not in self.manifest.models]
        if missing:
            raise ArtifactError(f"{self.manifest.root}: no reading model (no {' or '.join(missing)} graph); train it "
                                "with `clipq train reading` and export it with `clipq export`")
        info = self.manifest.extra.get("reading") or {}
        self.candidates: list[str] = [str(c) for c in info.get("candidates") or []]
        self.template: str = str(info.get("text") or READ_TEMPLATE)
        try:
            self.template.format(question="q", answer="a")
        except (KeyError, IndexError, ValueError) as e:
            raise ArtifactError(f"{self.manifest.root}: the reading text template {self.template!r} is unusable "
                                f"({e}); it takes {{question}} and {{answer}}") from e
        self.dim = self._out_dim(READING_IMAGE)

    def read(self, images: ImageLike | Sequence[ImageLike], questions: TextLike | Sequence[TextLike],
             candidates: Sequence[str] | None = None, top_k: int = 3, batch_size: int = 32) -> Any:
        """Answer questions about the text in images, choosing among candidate answers.

        Images and questions pair as in :meth:`VqaModel.ask` (one image with several questions,
        several images with one question, or pairs of equal length).

        Args:
            images: Images (any accepted form), or one image.
            questions: Questions, or one question.
            candidates: The answers to choose from (default: the manifest's list).
            top_k: Candidates to list in :attr:`ReadResult.top`.
            batch_size: Items per backend call.

        Returns:
            One :class:`ReadResult` per (image, question) pair (an awaitable of the list on an
            asyncio backend).

        Raises:
            InvalidImageError, InvalidTextError: a bad image; an empty question, or one so long that
                question + candidate exceeds the model's context (naming the item and its index).
            InvalidInputError: no candidates (an empty list, or none given and none in the manifest).
            ShapeError: image and question counts that cannot be paired.
        """
        return self.run(self._read_steps(images, questions, candidates, top_k, batch_size))

    def scores(self, images: ImageLike | Sequence[ImageLike], questions: TextLike | Sequence[TextLike],
               candidates: Sequence[str] | None = None, batch_size: int = 32) -> Any:
        """The score of every candidate per (image, question) pair: float32 [N, C], columns in the
        order of ``candidates`` (duplicates dropped) or of :attr:`candidates`. Errors as :meth:`read`."""
        return self.run(_first(self._score_steps(images, questions, candidates, batch_size)))

    def _read_steps(self, images: Any, questions: Any, candidates: Sequence[str] | None, top_k: int,
                    batch_size: int) -> Steps[list[ReadResult]]:
        scores, cands = yield from self._score_steps(images, questions, candidates, batch_size)
        return [ReadResult(top[0][0], top[0][1], top) for top in ranked(scores, cands, top_k)]

    def _score_steps(self, images: Any, questions: Any, candidates: Sequence[str] | None,
                     batch_size: int) -> Steps[tuple[np.ndarray, list[str]]]:
        imgs = as_image_list(images)
        qs = check_texts(questions)
        image_of, question_of = pairs(len(imgs), len(qs))
        cands = self._candidates(candidates)
        if not len(image_of):
            return np.zeros((0, len(cands)), np.float32), cands
        emb = yield from self._image_steps(READING_IMAGE, imgs, batch_size)  # [n_images, D]
        distinct = list(dict.fromkeys(qs))
        texts = [self.template.format(question=q, answer=c) for q in distinct for c in cands]
        txt, truncated = yield from self.path.texts(READING_TEXT, texts, self._batch(READING_TEXT, batch_size))
        if any(truncated):
            first = truncated.index(True)
            q, c = distinct[first // len(cands)], cands[first % len(cands)]
            raise InvalidTextError(
                f"question + candidate {c!r} is longer than the reading model's context of "
                f"{self._max_length(READING_TEXT)} tokens, so the answer would be cut off: ask a shorter question",
                index=qs.index(q), source=q)
        txt = l2_normalize(txt).reshape(len(distinct), len(cands), -1)  # [Q, C, D]
        row = {q: i for i, q in enumerate(distinct)}
        which = np.array([row[qs[j]] for j in question_of])
        out = np.empty((len(which), len(cands)), np.float32)
        for k in range(len(distinct)):
            rows = np.flatnonzero(which == k)
            out[rows] = emb[image_of[rows]] @ txt[k].T
        return out, cands

    def _candidates(self, candidates: Sequence[str] | None) -> list[str]:
        if candidates is None:
            if not self.candidates:
                raise InvalidInputError(f"{self.manifest.root}: the artifacts list no candidate answers for reading "
                                        "(manifest extra.reading.candidates): pass candidates")
            return list(self.candidates)
        given = [candidates] if isinstance(candidates, (str, bytes, bytearray)) else list(candidates)
        if not given:
            raise InvalidInputError("the candidate list is empty: give at least one candidate answer")
        try:
            checked = check_texts(given)
        except InvalidTextError as e:
            raise InvalidTextError(f"candidate {e.index}: {e.reason}", source=e.source) from None
        return list(dict.fromkeys(checked))


def _first(steps: Steps[tuple[np.ndarray, list[str]]]) -> Steps[np.ndarray]:
    out, _ = yield from steps
    return out


__all__ = ["READ_TEMPLATE", "Answer", "ClipEncoder", "EnsembleHead", "PromptEncoder", "PromptRegressor", "ReadResult",
           "ReadingModel", "VqaModel", "head_steps", "l2_normalize", "pairs", "ranked"]
