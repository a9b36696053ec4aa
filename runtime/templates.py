"""Prompt templates and their ensembling: one function for search and for the evaluation's Recall@K.

Text queries go through prompt templates, as in the image-search seed: the query is wrapped in
several start phrases ("a photo of ...", "a picture of ..."), each is embedded with CLIP's text
tower, and the mean of the normalised embeddings (re-normalised) is the query vector. A template
ensemble smooths over the phrasing the text tower happened to learn. Written against any encoder
with ``encode_texts`` (the runtime's ``ClipEncoder`` on any backend, or the evaluation's PyTorch one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .errors import InvalidInputError, InvalidTextError
from .vectors import l2_normalize

#: the default ensemble: mixed start phrases plus the bare text
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image showing {}",
    "a drawing of {}",
    "there are {}",
    "a rendering of {}",
    "a close-up photo of {}",
)
#: the one-template baseline of the retrieval tables
SINGLE_TEMPLATE = "a photo of {}"
#: named template sets, the rows of the evaluation's template study (seed on image search)
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "none": ("{}",),
    "a photo of": (SINGLE_TEMPLATE,),
    "this is": ("this is {}",),
    "mixed": DEFAULT_TEMPLATES,
}
_PUNCTUATION = re.compile(r"[^\w\s]+")
#: start phrases removed from a query before templating ("a photo of a photo of ..." helps no one)
_LEAD_PHRASES = (
    "a photo of",
    "a photograph of",
    "a picture of",
    "an image of",
    "a rendering of",
    "an image showing",
    "a photo showing",
)


class ClipLikeEncoder(Protocol):
    """What search needs: ``ClipEncoder`` (any backend) or a test double."""

    dim: int
    model_id: str

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def encode_images(self, images: Sequence[Any], batch_size: int = 32, progress: bool = False) -> np.ndarray: ...


def parse_templates(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Templates from a user spec.

    Args:
        spec: ``None``/``"none"`` (the bare text), ``"default"`` (:data:`DEFAULT_TEMPLATES`), a
            ``|``-separated string, or a sequence of templates. Each must contain ``{}`` once.

    Returns:
        The templates.

    Raises:
        InvalidInputError: a template lacks ``{}`` or has it twice.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return ("{}",)
    if isinstance(spec, str):
        templates: Sequence[str] = (
            DEFAULT_TEMPLATES if spec.strip().lower() == "default" else [t for t in spec.split("|") if t.strip()]
        )
    else:
        templates = list(spec)
    if not templates:
        raise InvalidInputError("no prompt templates given")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise InvalidInputError(f"a prompt template needs exactly one '{{}}', got {t!r}")
    return tuple(templates)


def apply_templates(text: str, templates: Sequence[str]) -> list[str]:
    """The query as each template phrases it, after dropping a start phrase it already has.

    Raises:
        InvalidTextError: the text is empty.
    """
    core = " ".join(str(text).split())
    if not core:
        raise InvalidTextError("empty search text")
    low = core.lower()
    for lead in _LEAD_PHRASES:
        if low.startswith(lead + " ") and len(core) > len(lead) + 1:
            core = core[len(lead) + 1 :]
            break
    core = core.rstrip(".")
    # replace, not str.format: a query may contain braces
    return [t.replace("{}", core) for t in templates]


def strip_punctuation(text: str) -> str:
    """``text`` without punctuation ("on the left, two red circles; ..." -> "on the left two red circles ...")."""
    return " ".join(_PUNCTUATION.sub(" ", str(text)).split())


def embed_texts(encoder: ClipLikeEncoder, texts: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                *, punctuation: bool = True) -> np.ndarray:
    """Template-ensembled text embeddings: mean of normalised template embeddings, re-normalised.

    Args:
        encoder: a CLIP encoder with ``encode_texts``.
        texts: queries.
        templates: templates (``("{}",)`` for the bare text), or the name of a set in :data:`TEMPLATE_SETS`.
        punctuation: False strips punctuation from the queries first (:func:`strip_punctuation`).

    Returns:
        float32 [N, D], L2-normalised.

    Raises:
        InvalidTextError: a query is empty (``index`` names it).
    """
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(templates, str) and templates in TEMPLATE_SETS:
        templates = TEMPLATE_SETS[templates]
    templates = parse_templates(templates)
    if not punctuation:
        texts = [strip_punctuation(t) for t in texts]
    phrased: list[str] = []
    for n, text in enumerate(texts):
        try:
            phrased.extend(apply_templates(text, templates))
        except InvalidTextError as e:
            raise InvalidTextError(e.reason, index=n) from None
    if not phrased:
        raise InvalidInputError("no search texts given")
    emb = l2_normalize(np.asarray(encoder.encode_texts(phrased), np.float32))  # [N*T, D]
    return l2_normalize(emb.reshape(len(texts), len(templates), -1).mean(axis=1))  # [N, D]
