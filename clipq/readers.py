"""Readers for the dataset formats clipq trains and evaluates on, synthetic or real.

* COCO-QA: a split directory with ``questions.txt``, ``answers.txt``, ``img_ids.txt`` and
  ``types.txt``, one item per line (types 0 object, 1 number, 2 color, 3 location).
* Captions: a csv with header ``image,text`` (``caption`` is accepted for ``text``), several
  rows per image.
* Prompts: a csv with header ``imgId,prompt`` (the Stable Diffusion image-to-prompt layout).
* TextVQA: ``{"dataset_name": ..., "dataset_type": ..., "data": [{question_id, image_id, question,
  answers, image_path?}]}``.

:class:`World` ties them together for a directory laid out as ``clipq data synth`` writes it
(see docs/data.md); real data arranged the same way reads with the same code. Every malformed
input raises :class:`~clipq.runtime.errors.DataFormatError` naming the file and, where there is
one, the line.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime.errors import DataFormatError, InvalidImageError, InvalidInputError

__all__ = [
    "QTYPES",
    "CaptionRecord",
    "PromptRecord",
    "QARecord",
    "TextVQARecord",
    "World",
    "WorldSplit",
    "load_images",
    "parse_qtype",
    "read_captions",
    "read_cocoqa",
    "read_prompts",
    "read_textvqa",
]

QTYPES: tuple[str, ...] = ("object", "number", "color", "location")
"""Question types in COCO-QA code order (``types.txt`` holds the index)."""

_QTYPE_ALIASES = {
    **{str(i): name for i, name in enumerate(QTYPES)},
    **{name: name for name in QTYPES},
    "colour": "color",
}
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_SPLIT_ORDER = ("train", "val", "test")
_PathLike = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class QARecord:
    """One COCO-QA question: ``qtype`` is one of :data:`QTYPES`."""

    image_id: str
    question: str
    answer: str
    qtype: str


@dataclass(frozen=True, slots=True)
class CaptionRecord:
    """One caption row: ``image`` is an image id or file name."""

    image: str
    text: str


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """One image-to-prompt row."""

    image_id: str
    prompt: str


@dataclass(frozen=True, slots=True)
class TextVQARecord:
    """One TextVQA question; ``image_path`` is resolved (absolute or cwd-relative) or None if unknown."""

    question_id: int | str
    image_id: str
    question: str
    answers: list[str]
    image_path: str | None


# -- image directories ---------------------------------------------------------------------------


class _ImageDir:
    """The images of one directory, found by file name, stem, or trailing integer (COCO ids)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._by_key: dict[str, Path] = {}
        numbered: dict[str, list[Path]] = {}
        with os.scandir(directory) as it:
            entries = sorted(e.name for e in it if e.is_file())
        for name in entries:
            p = directory / name
            stem, ext = os.path.splitext(name)
            if ext.lower() not in _IMAGE_EXTS:
                continue
            self._by_key.setdefault(name, p)
            self._by_key.setdefault(stem, p)
            m = re.search(r"(\d+)$", stem)
            if m:
                numbered.setdefault(str(int(m.group(1))), []).append(p)
        for key, paths in numbered.items():
            if len(paths) == 1:
                self._by_key.setdefault(key, paths[0])

    def resolve(self, ref: str) -> Path | None:
        """The path of image ``ref`` (a file name, a stem, or a number), or None."""
        if ref in self._by_key:
            return self._by_key[ref]
        if ref.isdigit():
            return self._by_key.get(str(int(ref)))
        return None

    def ids(self) -> list[str]:
        """Stems of every image, sorted."""
        return sorted({p.stem for p in self._by_key.values()})


def _image_dir(image_dir: _PathLike | None) -> _ImageDir | None:
    if image_dir is None:
        return None
    d = Path(image_dir)
    if not d.is_dir():
        raise DataFormatError("image directory does not exist", path=str(d))
    return _ImageDir(d)


def _check_image(images: _ImageDir | None, ref: str, path: Path, line: int | None) -> None:
    if images is not None and images.resolve(ref) is None:
        raise DataFormatError(f"image {ref!r} not found in {images.directory}", path=str(path), line=line)


# -- COCO-QA -------------------------------------------------------------------------------------


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataFormatError("file not found", path=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataFormatError(f"not valid UTF-8: {e.reason}", path=str(path), line=line) from e
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataFormatError("file is empty", path=str(path))
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise DataFormatError("blank line", path=str(path), line=i)
    return [line.strip() for line in lines]


def parse_qtype(value: str) -> str | None:
    """The question type named by ``value`` ("0".."3" or a name), or None when unknown.

    Args:
        value: a ``types.txt`` entry.

    Returns:
        One of :data:`QTYPES`, or None.
    """
    return _QTYPE_ALIASES.get(value.strip().lower())


def read_cocoqa(split_dir: _PathLike, *, image_dir: _PathLike | None = None) -> list[QARecord]:
    """Read one COCO-QA split directory.

    Args:
        split_dir: directory holding ``questions.txt``, ``answers.txt``, ``img_ids.txt`` and
            ``types.txt`` (types as 0..3 integers or as names).
        image_dir: when given, every image id must name an image in this directory.

    Returns:
        One record per line, in file order.

    Raises:
        DataFormatError: a file is missing or empty, the files' line counts disagree, a line is
            blank, a type is unknown, or (with ``image_dir``) an image does not exist.
    """
    d = Path(split_dir)
    names = ("questions.txt", "answers.txt", "img_ids.txt", "types.txt")
    columns = {name: _read_lines(d / name) for name in names}
    n = len(columns["questions.txt"])
    for name in names[1:]:
        if len(columns[name]) != n:
            raise DataFormatError(
                f"{name} has {len(columns[name])} lines but questions.txt has {n} "
                f"({d / 'questions.txt'})",
                path=str(d / name),
            )
    images = _image_dir(image_dir)
    records = []
    for i, (q, a, img, t) in enumerate(zip(*(columns[name] for name in names)), 1):
        qtype = parse_qtype(t)
        if qtype is None:
            raise DataFormatError(
                f"unknown question type {t!r} (expected 0-3 or one of {', '.join(QTYPES)})",
                path=str(d / "types.txt"), line=i,
            )
        _check_image(images, img, d / "img_ids.txt", i)
        records.append(QARecord(image_id=img, question=q, answer=a, qtype=qtype))
    return records


# -- csv -----------------------------------------------------------------------------------------


def _read_csv(path: Path, wanted: Sequence[tuple[str, ...]]) -> list[tuple[int, list[str]]]:
    """(line, values) per row of ``path`` for one column of each alias group in ``wanted``."""
    if not path.is_file():
        raise DataFormatError("file not found", path=str(path))
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataFormatError("file is empty (no header)", path=str(path))
            header = [h.strip() for h in header]
            index = []
            for aliases in wanted:
                found = next((header.index(a) for a in aliases if a in header), None)
                if found is None:
                    raise DataFormatError(
                        f"missing column {aliases[0]!r} (header is {','.join(header)})", path=str(path), line=1
                    )
                index.append(found)
            rows = []
            for row in reader:
                if not row or not any(v.strip() for v in row):
                    continue
                if len(row) != len(header):
                    raise DataFormatError(
                        f"row has {len(row)} fields but the header has {len(header)}",
                        path=str(path), line=reader.line_num,
                    )
                rows.append((reader.line_num, [row[k].strip() for k in index]))
    except csv.Error as e:
        raise DataFormatError(f"malformed csv: {e}", path=str(path)) from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"not valid UTF-8: {e.reason}", path=str(path)) from e
    if not rows:
        raise DataFormatError("file has a header but no rows", path=str(path))
    return rows


def read_captions(csv_path: _PathLike, *, image_dir: _PathLike | None = None) -> list[CaptionRecord]:
    """Read a caption csv (header ``image,text``; ``caption`` is accepted for ``text``).

    Args:
        csv_path: the csv file.
        image_dir: when given, every ``image`` must name an image in this directory.

    Returns:
        One record per row, in file order.

    Raises:
        DataFormatError: the file is missing or empty, a column is missing, a row is short or has
            an empty field, or (with ``image_dir``) an image does not exist.
    """
    path = Path(csv_path)
    images = _image_dir(image_dir)
    records = []
    for line, (image, text) in _read_csv(path, (("image",), ("text", "caption"))):
        if not image or not text:
            raise DataFormatError("empty image or text", path=str(path), line=line)
        _check_image(images, image, path, line)
        records.append(CaptionRecord(image=image, text=text))
    return records


def read_prompts(csv_path: _PathLike, *, image_dir: _PathLike | None = None) -> list[PromptRecord]:
    """Read an image-to-prompt csv (header ``imgId,prompt``), one row per image.

    Args:
        csv_path: the csv file.
        image_dir: when given, every ``imgId`` must name an image in this directory.

    Returns:
        One record per row, in file order.

    Raises:
        DataFormatError: the file is missing or empty, a column is missing, a field is empty, an
            ``imgId`` repeats, or (with ``image_dir``) an image does not exist.
    """
    path = Path(csv_path)
    images = _image_dir(image_dir)
    records, seen = [], set()
    for line, (image_id, prompt) in _read_csv(path, (("imgId", "image_id"), ("prompt",))):
        if not image_id or not prompt:
            raise DataFormatError("empty imgId or prompt", path=str(path), line=line)
        if image_id in seen:
            raise DataFormatError(f"imgId {image_id!r} repeats", path=str(path), line=line)
        seen.add(image_id)
        _check_image(images, image_id, path, line)
        records.append(PromptRecord(image_id=image_id, prompt=prompt))
    return records


# -- TextVQA -------------------------------------------------------------------------------------


def read_textvqa(json_path: _PathLike, *, image_dir: _PathLike | None = None,
                 check_images: bool = True) -> list[TextVQARecord]:
    """Read a TextVQA-style json file.

    An entry's ``image_path`` is taken relative to the json file's directory; entries without
    one (the official files) are looked up by ``image_id`` in ``image_dir`` when it is given.
    ``answers`` may be absent (TextVQA's test split) and then reads as an empty list.

    Args:
        json_path: the json file.
        image_dir: directory to find images by ``image_id`` in, for entries without ``image_path``.
        check_images: require every known image path to exist.

    Returns:
        One record per entry of ``data``, in file order.

    Raises:
        DataFormatError: the file is missing, empty or not json, ``data`` is missing or not a
            list, an entry lacks a key or has a wrong type, or an image does not exist.
    """
    path = Path(json_path)
    if not path.is_file():
        raise DataFormatError("file not found", path=str(path))
    raw = path.read_bytes()
    if not raw.strip():
        raise DataFormatError("file is empty", path=str(path))
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"invalid json: {e.msg} (column {e.colno})", path=str(path), line=e.lineno) from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"not valid UTF-8: {e.reason}", path=str(path)) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataFormatError("expected an object with a 'data' list", path=str(path))
    images = _image_dir(image_dir)
    records = []
    for k, entry in enumerate(doc["data"]):
        where = f"data[{k}]"
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where} is not an object", path=str(path))
        for key in ("question_id", "image_id", "question"):
            if key not in entry:
                raise DataFormatError(f"{where} lacks {key!r}", path=str(path))
        answers = entry.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataFormatError(f"{where}.answers must be a list of strings", path=str(path))
        qid = entry["question_id"]
        if not isinstance(qid, int | str) or isinstance(qid, bool):
            raise DataFormatError(f"{where}.question_id must be an integer or a string", path=str(path))
        image_id, question = str(entry["image_id"]), entry["question"]
        if not isinstance(question, str) or not question.strip():
            raise DataFormatError(f"{where}.question must be a non-empty string", path=str(path))
        image_path: Path | None = None
        if entry.get("image_path"):
            image_path = path.parent / str(entry["image_path"])
            if check_images and not image_path.is_file():
                raise DataFormatError(f"{where}: image {str(image_path)!r} does not exist", path=str(path))
        elif images is not None:
            image_path = images.resolve(image_id)
            if image_path is None and check_images:
                raise DataFormatError(f"{where}: image {image_id!r} not found in {images.directory}",
                                      path=str(path))
        records.append(TextVQARecord(
            question_id=qid, image_id=image_id, question=question.strip(), answers=list(answers),
            image_path=None if image_path is None else str(image_path),
        ))
    return records


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
