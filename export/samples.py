"""Example inputs for export, parity checks, calibration and timing.

Inputs are made the way the runtime makes them (``ImagePreprocessor``, ``TextTokenizer``), from
real data when a data directory is given and from seeded synthetic images and phrases otherwise,
so that parity is checked on the distribution the graphs will see: padded batches of mixed
lengths, one text long enough to be truncated, VQA image embeddings from the CLIP tower itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipq.runtime.manifest import Manifest, ModelSpec
from clipq.runtime.preprocess import ImagePreprocessor
from clipq.runtime.text import TextTokenizer

_WORDS = {
    "color": ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"],
    "kind": ["circle", "square", "triangle", "star", "cross", "ring"],
    "place": ["on the left", "on the right", "at the top", "at the bottom", "in the middle"],
    "count": ["one", "two", "three"],
}


def synthetic_phrases(n: int, rng: np.random.Generator, long_every: int = 8) -> list[str]:
    """``n`` short scene descriptions / questions; every ``long_every``-th one is very long."""
    out = []
    for i in range(n):
        c, k, p, m = (rng.choice(_WORDS[key]) for key in ("color", "kind", "place", "count"))
        form = i % 4
        if form == 0:
            s = f"a {c} {k} {p}"
        elif form == 1:
            s = f"{m} {c} shapes {p} of the picture"
        elif form == 2:
            s = f"what color is the {k} {p}?"
        else:
            s = f"how many {k}s are there?"
        if long_every and i % long_every == long_every - 1:
            s = " ".join([s] * 40)  # longer than any context: exercises truncation
        out.append(s)
    return out


def synthetic_images(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` smooth random RGB images (uint8 HWC): coarse noise upsampled, with photo-like statistics."""
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size + 16, size + 16), Image.Resampling.BICUBIC)
        out.append(np.asarray(img))
    return out


class SampleFactory:
    """Seeded example inputs for any network spec.

    Args:
        manifest: The artifact manifest (preprocessing, tokenizers).
        seed: Random seed; the same seed gives the same inputs.
        images: Image files to draw from (cycled); synthetic images when empty.
        texts: Texts to draw from (cycled), one list for all tokenizers or a mapping tokenizer
            name ("clip", "lm", "prompt") -> texts; synthetic phrases where none are given.
        image_embedder: pixel_values -> CLIP image embeddings, for the VQA graph's input.
    """

    def __init__(self, manifest: Manifest, *, seed: int = 0, images: Sequence[str | Path] = (),
                 texts: Sequence[str] | Mapping[str, Sequence[str]] = (), image_embedder: Callable[[np.ndarray], np.ndarray] | None = None):
        self.manifest = manifest
        self.seed = seed
        self.images = list(images)
        self.texts: dict[str, list[str]] | list[str] = (
            {k: list(v) for k, v in texts.items()} if isinstance(texts, Mapping) else list(texts)
        )
        self.image_embedder = image_embedder
        self._pre = ImagePreprocessor.from_manifest(manifest) if manifest.preprocessing else None
        self._toks: dict[str, TextTokenizer] = {}

    def _rng(self, spec: ModelSpec, batch: int, offset: int) -> np.random.Generator:
        key = sum(map(ord, spec.name)) * 1000 + batch
        return np.random.default_rng([self.seed, key, offset])

    def pixel_values(self, batch: int, rng: np.random.Generator, offset: int = 0) -> np.ndarray:
        assert self._pre is not None, "manifest has no preprocessing"
        if self.images:
            items: list[Any] = [self.images[(offset + i) % len(self.images)] for i in range(batch)]
        else:
            items = synthetic_images(batch, self._pre.size, rng)
        return self._pre(items)

    def tokens(self, tokenizer: str, batch: int, rng: np.random.Generator, offset: int = 0,
               long_texts: bool = True) -> dict[str, np.ndarray]:
        if tokenizer not in self._toks:
            self._toks[tokenizer] = TextTokenizer.from_manifest(self.manifest, tokenizer)
        pool = self.texts.get(tokenizer, []) if isinstance(self.texts, dict) else self.texts
        if pool:
            texts = [pool[(offset + i) % len(pool)] for i in range(batch)]
            if batch >= 8 and long_texts:  # keep one over-long text in real batches too: truncation must match
                texts[-1] = " ".join([texts[-1]] * 40)
        else:
            texts = synthetic_phrases(batch, rng, long_every=8 if long_texts else 0)
        return self._toks[tokenizer](texts).as_inputs()

    def inputs(self, spec: ModelSpec, batch: int, offset: int = 0, *, long_texts: bool = True) -> dict[str, np.ndarray]:
        """Inputs of ``spec`` with batch size ``batch``.

        Args:
            spec: The network's tensor contract.
            batch: Batch size.
            offset: Selects other data items (and another random stream).
            long_texts: Put one text longer than the context in batches of 8 or more (parity wants
                truncation covered; timing wants typical lengths).
        """
        rng = self._rng(spec, batch, offset)
        out: dict[str, np.ndarray] = {}
        names = [t.name for t in spec.inputs]
        if "input_ids" in names:
            out.update(self.tokens(spec.meta.get("tokenizer", "clip"), batch, rng, offset, long_texts))
        for t in spec.inputs:
            if t.name in out:
                continue
            if t.name == "pixel_values":
                out[t.name] = self.pixel_values(batch, rng, offset)
            elif t.name == "image_embeds" and self.image_embedder is not None and self._pre is not None:
                out[t.name] = self.image_embedder(self.pixel_values(batch, rng, offset)).astype(np.float32)
            elif t.name == "alpha":
                out[t.name] = rng.uniform(0.0, 1.0, size=(batch, 1)).astype(np.float32)
            elif t.dtype == "float32":
                x = rng.standard_normal((batch, *t.shape[1:])).astype(np.float32)
                if t.name.endswith("embeds"):  # embeddings are unit vectors
                    x /= np.linalg.norm(x, axis=-1, keepdims=True)
                out[t.name] = x
            else:
                out[t.name] = np.zeros((batch, *[max(d, 1) for d in t.shape[1:]]), dtype=t.dtype)
        return out
