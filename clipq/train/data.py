"""Split data as tensors, loaded once per process (the demo trains every task on the same arrays)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clipq.runtime.errors import DataFormatError

from .common import to_pixel_values


@dataclass
class SplitData:
    name: str
    image_ids: list[str]
    pixels: torch.Tensor  # [N,3,S,S] normalised
    captions: list[list[str]]  # per image, every phrasing
    questions: list  # QARecord
    prompts: list[str | None]  # per image
    words: list = field(default_factory=list)  # TextVQARecord
    id_to_index: dict[str, int] = field(default_factory=dict)


@lru_cache(maxsize=8)
def load_split(root: str, split: str, size: int) -> SplitData:
    """Images (as model input), captions, questions and prompts of one split.

    Raises:
        DataFormatError: the split is missing or malformed (the reader names file and line).
    """
    from clipq.readers import World, load_images

    world = World(Path(root))
    s = world.split(split)
    ids = list(s.image_ids)
    if not ids:
        raise DataFormatError(f"split {split!r} has no images", path=str(root))
    index = {k: i for i, k in enumerate(ids)}
    caps: dict[str, list[str]] = defaultdict(list)
    for c in s.captions:
        caps[c.image].append(c.text)
    pixels = to_pixel_values(load_images(list(s.image_paths)), size)
    prompts = [s.prompts.get(i) for i in ids] if s.prompts else [None] * len(ids)
    return SplitData(
        name=split,
        image_ids=ids,
        pixels=pixels,
        captions=[caps.get(i, []) for i in ids],
        questions=list(s.questions),
        prompts=prompts,
        words=list(getattr(s, "words", []) or []),
        id_to_index=index,
    )


def load_word_images(root: str, records: list, size: int) -> torch.Tensor:
    from clipq.readers import load_images

    # the reader resolves image_path against the json's directory already; join only bare names
    paths = [Path(r.image_path) if Path(r.image_path).exists() else Path(root) / r.image_path for r in records]
    return to_pixel_values(load_images(paths), size)


def caption_matrix(captions: list[list[str]], rng: np.random.Generator) -> list[str]:
    """One random phrasing per image."""
    return [c[rng.integers(len(c))] if c else "" for c in captions]
