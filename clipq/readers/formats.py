"""Readers for the dataset formats clipq trains and evaluates on, synthetic or real.

* COCO-QA: a split directory with ``questions.txt``, ``answers.txt``, ``img_ids.txt`` and
  ``types.txt``, one item per line (types 0 object, 1 number, 2 color, 3 location).
* Captions: a csv with header ``image,text`` (``caption`` is accepted for ``text``), several
  rows per image.
* Prompts: a csv with header ``imgId,prompt`` (the Stable Diffusion image-to-prompt layout).
* TextVQA: ``{"dataset_name": ..., "dataset_type": ..., "data": [{question_id, image_id, question,
  answers, image_path?}]}``.

Every malformed input raises :class:`~clipq.runtime.errors.DataFormatError` naming the file and,
where there is one, the line.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clipq.runtime.errors import DataFormatError

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


def resolve_images(image_dir: _PathLike, refs: Iterable[str]) -> list[Path]:
    """The files of images named as the readers accept them (file name, stem or trailing number).

    Raises:
        DataFormatError: the directory is missing, or an image is not in it.
    """
    images = _image_dir(image_dir)
    assert images is not None
    out = []
    for ref in refs:
        p = images.resolve(ref)
        if p is None:
            raise DataFormatError(f"image {ref!r} not found", path=str(image_dir))
        out.append(p)
    return out


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


