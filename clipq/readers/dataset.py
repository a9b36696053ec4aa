"""A data directory laid out as ``clipq data synth`` writes it (see docs/data.md), split by split.

:class:`World` ties the format readers of :mod:`.formats` together; real data arranged the same way
reads with the same code. :func:`load_images` decodes image files into one uint8 array.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime.errors import DataFormatError, InvalidImageError, InvalidInputError

from .formats import (
    _IMAGE_EXTS,
    _SPLIT_ORDER,
    QTYPES,
    CaptionRecord,
    QARecord,
    TextVQARecord,
    _ImageDir,
    _PathLike,
    read_captions,
    read_cocoqa,
    read_prompts,
    read_textvqa,
)

# -- images --------------------------------------------------------------------------------------


def load_images(paths: Sequence[_PathLike], size: int | tuple[int, int] | None = None, *,
                progress: bool | None = None) -> np.ndarray:
    """Decode images into one uint8 array.

    Args:
        paths: image files.
        size: resize every image to ``size`` x ``size`` (or ``(width, height)``) with bicubic
            resampling; None keeps the sizes, which must then all agree.
        progress: show a tqdm bar; None shows one for more than 500 images.

    Returns:
        ``np.uint8`` array ``[N, H, W, 3]`` (RGB).

    Raises:
        InvalidImageError: a file is missing or cannot be decoded, or sizes differ without ``size``.
    """
    from PIL import Image, UnidentifiedImageError

    target = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
    if target is not None and (len(target) != 2 or min(target) < 1):
        raise InvalidInputError(f"size must be a positive int or (width, height), got {size!r}")
    items: Iterable[tuple[int, _PathLike]] = enumerate(paths)
    if progress or (progress is None and len(paths) > 500):
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(paths), desc="images", unit="img")
    arrays: list[np.ndarray] = []
    for i, p in items:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if target is not None and im.size != target:
                    im = im.resize(target, Image.BICUBIC)
                arr = np.asarray(im, dtype=np.uint8)
        except FileNotFoundError as e:
            raise InvalidImageError("file not found", index=i, source=str(p)) from e
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidImageError(f"cannot decode image: {e}", index=i, source=str(p)) from e
        if arrays and arr.shape != arrays[0].shape:
            raise InvalidImageError(
                f"size {arr.shape[1]}x{arr.shape[0]} differs from the first image's "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; pass size=", index=i, source=str(p),
            )
        arrays.append(arr)
    if not arrays:
        h, w = (target[1], target[0]) if target is not None else (0, 0)
        return np.zeros((0, h, w, 3), dtype=np.uint8)
    return np.stack(arrays)


# -- world ---------------------------------------------------------------------------------------


@dataclass
class WorldSplit:
    """Everything a world directory holds for one split.

    ``image_ids`` and ``image_paths`` are aligned; ``prompts`` maps image id to prompt;
    ``words`` are the reading-study items (TextVQA records).
    """

    name: str
    image_ids: list[str] = field(default_factory=list)
    image_paths: list[Path] = field(default_factory=list)
    captions: list[CaptionRecord] = field(default_factory=list)
    questions: list[QARecord] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)
    words: list[TextVQARecord] = field(default_factory=list)
    _index: dict[str, Path] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.image_ids)

    def path_of(self, image_id: str) -> Path:
        """The image file of ``image_id``.

        Raises:
            KeyError: the id is not in this split.
        """
        if self._index is None or len(self._index) != len(self.image_ids):
            self._index = dict(zip(self.image_ids, self.image_paths))
        return self._index[image_id]


class World:
    """A data directory laid out as ``clipq data synth`` writes it, synthetic or real.

    Every part is optional: a real directory may hold only COCO-QA questions and images, or only
    prompts. ``world.json`` (written by the generator) supplies the split names and vocabularies;
    without it they are discovered from the files present.

    Args:
        root: the directory.
        check_images: require every image a label file names to exist.

    Raises:
        DataFormatError: ``root`` is not a directory or ``world.json`` is not valid json.
    """

    def __init__(self, root: _PathLike, *, check_images: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataFormatError("data directory does not exist", path=str(self.root))
        self.check_images = check_images
        self.info: dict[str, Any] = {}
        marker = self.root / "world.json"
        if marker.is_file():
            try:
                info = json.loads(marker.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataFormatError(f"invalid json: {e.msg}", path=str(marker), line=e.lineno) from e
            if not isinstance(info, dict):
                raise DataFormatError("expected a json object", path=str(marker))
            self.info = info
        self._splits: dict[str, WorldSplit] = {}

    def __repr__(self) -> str:
        return f"World({str(self.root)!r}, splits={list(self.splits)})"

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names: those in ``world.json``, else those with any file present."""
        names: set[str] = set(self.info.get("splits", {}) or {})
        if not names:
            for sub in ("images", "cocoqa", "words/images"):
                d = self.root / sub
                if d.is_dir():
                    names.update(p.name for p in d.iterdir() if p.is_dir())
            for sub in ("captions", "prompts"):
                d = self.root / sub
                if d.is_dir():
                    names.update(p.stem for p in d.glob("*.csv"))
            names.update(p.stem.removeprefix("textvqa_") for p in (self.root / "words").glob("textvqa_*.json"))
        known = [s for s in _SPLIT_ORDER if s in names]
        return tuple(known + sorted(names - set(known)))

    @property
    def vocab(self) -> dict[str, list[str]]:
        """Vocabularies from ``world.json`` (kinds, colors, counts, places, answers, words, ...).

        Without ``world.json``: ``answers`` (every answer of every split's questions) and
        ``question_types``.
        """
        if "vocab" in self.info:
            return dict(self.info["vocab"])
        answers = sorted({q.answer for s in self.splits for q in self.split(s).questions})
        return {"answers": answers, "question_types": list(QTYPES)}

    def split(self, name: str) -> WorldSplit:
        """Read split ``name`` (cached).

        Args:
            name: e.g. "train", "val", "test".

        Returns:
            The split's image ids and paths, captions, questions, prompts and word items.

        Raises:
            InvalidInputError: no such split.
            DataFormatError: a file of the split is malformed or names a missing image.
        """
        if name in self._splits:
            return self._splits[name]
        if name not in self.splits:
            raise InvalidInputError(
                f"no split {name!r} in {self.root}; available: {', '.join(self.splits) or 'none'}"
            )
        images = self._images(name)
        check = images.directory if images is not None and self.check_images else None
        out = WorldSplit(name=name)
        qa_dir = self.root / "cocoqa" / name
        if qa_dir.is_dir():
            out.questions = read_cocoqa(qa_dir, image_dir=check)
        cap = self.root / "captions" / f"{name}.csv"
        if cap.is_file():
            out.captions = read_captions(cap, image_dir=check)
        prm = self.root / "prompts" / f"{name}.csv"
        prompts = read_prompts(prm, image_dir=check) if prm.is_file() else []
        out.prompts = {p.image_id: p.prompt for p in prompts}
        words = self.root / "words" / f"textvqa_{name}.json"
        if words.is_file():
            wdir = self.root / "words" / "images" / name
            out.words = read_textvqa(words, image_dir=wdir if wdir.is_dir() else None,
                                     check_images=self.check_images)

        ids = _ordered_unique([p.image_id for p in prompts], [c.image for c in out.captions],
                              [q.image_id for q in out.questions])
        if not ids and images is not None:
            ids = images.ids()
        if ids and images is None:
            raise DataFormatError(
                f"labels of split {name!r} name {len(ids)} images but there is no image directory "
                f"(expected {self.root / 'images' / name} or {self.root / 'images'})",
                path=str(self.root),
            )
        paths = []
        if images is not None:
            for image_id in ids:
                p = images.resolve(image_id)
                paths.append(p if p is not None else images.directory / image_id)
        out.image_ids, out.image_paths = ids, paths
        self._splits[name] = out
        return out

    def _images(self, name: str) -> _ImageDir | None:
        for d in (self.root / "images" / name, self.root / "images"):
            if d.is_dir() and any(Path(e).suffix.lower() in _IMAGE_EXTS for e in os.listdir(d)):
                return _ImageDir(d)
        return None


def _ordered_unique(*lists: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        for x in items:
            seen.setdefault(x, None)
    return list(seen)
