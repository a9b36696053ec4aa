"""The generator: the world's files on disk, in the real datasets' own formats (docs/data.md).

:func:`generate_world` draws every scene and word image (:mod:`.draw`, in worker processes of
:mod:`.pool`) and writes images, COCO-QA question files, caption and prompt csv files, TextVQA json,
a contact sheet (``samples.png``) and ``world.json``, the summary that marks the directory as ours.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from clipq.runtime.errors import InvalidInputError

from .draw import IMAGE_SIZE, _draw_word, _font, _WordItem, find_fonts, render_scene
from .pool import _NullBar, _ordered_map, _worker_pool
from .vocab import (
    _COLOR_NAMES,
    _STREAM_IDS,
    COUNT_WORDS,
    KINDS,
    PLACES,
    PROMPT_MISMATCH,
    QUESTION_TYPES,
    STYLES,
    WORDS,
    Scene,
    mismatched_prompt,
)

GENERATOR_VERSION = 2


@dataclass(frozen=True)
class WorldSize:
    """How many images one size of the world draws.

    ``*_train_draw`` images are drawn for training; the last ``val_fraction`` of them become the
    validation split (as CLIQQA carves its validation set out of COCO-QA's training set).
    """

    scenes_train_draw: int
    scenes_test: int
    words_train_draw: int
    words_test: int
    val_fraction: float = 0.1

    def split_counts(self, train_draw: int, test: int) -> dict[str, int]:
        """Images per split for one stream, given its train draw and test counts."""
        n_val = round(train_draw * self.val_fraction)
        return {"train": train_draw - n_val, "val": n_val, "test": test}


SIZES: dict[str, WorldSize] = {
    "small": WorldSize(scenes_train_draw=200, scenes_test=50, words_train_draw=60, words_test=20),
    "medium": WorldSize(scenes_train_draw=5000, scenes_test=1000, words_train_draw=1500, words_test=300),
}


# -- writing -------------------------------------------------------------------------------------


_OUTPUTS = ("images", "cocoqa", "captions", "prompts", "words", "samples.png", "world.json")


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear a previous world there, refuse to mix with foreign files."""
    marker = out / "world.json"
    ours = False
    if marker.is_file():
        try:
            ours = json.loads(marker.read_text()).get("generator") == "clipq.world"
        except (OSError, ValueError, AttributeError):
            ours = False
    present = [name for name in _OUTPUTS if (out / name).exists()]
    if present and not ours:
        raise InvalidInputError(
            f"{out} already holds {', '.join(present)} not written by `clipq data synth`; "
            "choose an empty directory or remove them"
        )
    for name in present:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", compress_level=6)


def _split_ids(prefix: str, counts: dict[str, int]) -> Iterator[tuple[str, str, int, str]]:
    """(split, stream, index in stream, image id) for every image of one kind, in drawing order."""
    n_train = counts["train"]
    for i in range(n_train + counts["val"]):
        split = "train" if i < n_train else "val"
        local = i if i < n_train else i - n_train
        yield split, "train", i, f"{prefix}{split}_{local:06d}"
    for i in range(counts["test"]):
        yield "test", "test", i, f"{prefix}test_{i:06d}"


def _scene_job(job: tuple[int, str, str, int, str, str]) -> tuple[Scene, bool]:
    """Render and write one scene (a top-level function, so worker processes can run it)."""
    seed, split, stream, index, image_id, path = job
    scene, image = render_scene(seed, stream, index, image_id)
    wrong = mismatched_prompt(seed, index) if split == "train" else None
    if wrong is not None:
        scene.prompt = wrong
    _save_png(image, Path(path))
    return scene, wrong is not None


def _word_job(job: tuple[int, str, int, str, str]) -> _WordItem:
    seed, stream, index, image_id, path = job
    rng = np.random.default_rng([seed, _STREAM_IDS[f"words_{stream}"], index])
    item, image = _draw_word(rng, image_id, find_fonts())
    _save_png(image, Path(path))
    return item



def _write_scenes(out: Path, seed: int, counts: dict[str, int], bar: Any, pool: Any = None) -> dict[str, dict[str, int]]:
    per_split: dict[str, list[Scene]] = {s: [] for s in counts}
    mismatched: set[str] = set()
    jobs = []
    for split, stream, index, image_id in _split_ids("", counts):
        d = out / "images" / split
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((seed, split, stream, index, image_id, str(d / f"{image_id}.png")))
    for (_, split, *_rest), (scene, wrong) in zip(jobs, _ordered_map(_scene_job, jobs, bar, pool)):
        if wrong:
            mismatched.add(scene.image_id)
        per_split[split].append(scene)
    stats: dict[str, dict[str, int]] = {}
    # the answer key of the prompt noise, for measuring the filter (readers ignore .txt files here)
    _write_lines(out / "prompts" / "train_mismatched.txt", sorted(mismatched))
    for split, scenes in per_split.items():
        qa = [(q, a, t, s.image_id) for s in scenes for q, a, t in s.questions]
        qdir = out / "cocoqa" / split
        _write_lines(qdir / "questions.txt", [q for q, _, _, _ in qa])
        _write_lines(qdir / "answers.txt", [a for _, a, _, _ in qa])
        _write_lines(qdir / "img_ids.txt", [i for _, _, _, i in qa])
        _write_lines(qdir / "types.txt", [str(t) for _, _, t, _ in qa])
        captions = [(s.image_id, c) for s in scenes for c in s.captions]
        _write_csv(out / "captions" / f"{split}.csv", ("image", "text"), captions)
        _write_csv(out / "prompts" / f"{split}.csv", ("imgId", "prompt"), [(s.image_id, s.prompt) for s in scenes])
        by_type = [sum(1 for _, _, t, _ in qa if t == k) for k in range(len(QUESTION_TYPES))]
        stats[split] = {
            "images": len(scenes),
            "captions": len(captions),
            "questions": len(qa),
            **{f"questions_{name}": n for name, n in zip(QUESTION_TYPES, by_type)},
            "with_distractor": sum(1 for s in scenes if s.distractor),
            "prompts_mismatched": sum(1 for s in scenes if s.image_id in mismatched),
        }
    return stats


def _write_words(out: Path, seed: int, counts: dict[str, int], bar: Any, pool: Any = None) -> dict[str, int]:
    data: dict[str, list[dict[str, Any]]] = {s: [] for s in counts}
    qid = 0
    jobs, where = [], []
    for split, stream, index, image_id in _split_ids("word_", counts):
        d = out / "words" / "images" / split
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((seed, stream, index, image_id, str(d / f"{image_id}.png")))
        where.append((split, image_id))
    for (split, image_id), item in zip(where, _ordered_map(_word_job, jobs, bar, pool)):
        data[split].append({
            "question_id": qid,
            "image_id": image_id,
            "question": item.question,
            "answers": [item.word] * 10,
            "image_path": f"images/{split}/{image_id}.png",
        })
        qid += 1
    for split, rows in data.items():
        doc = {"dataset_name": "textvqa", "dataset_type": split, "data": rows}
        (out / "words" / f"textvqa_{split}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return {split: len(rows) for split, rows in data.items()}


def _write_samples(out: Path, seed: int, n_scenes: int, n_words: int) -> None:
    """A 4x4 grid: three rows of training scenes with a caption and a Q/A, one row of word images."""
    fonts = find_fonts()
    font = _font(fonts[0] if fonts else "", 10)
    zoom, tile_w, text_h = 2, 200, 70
    tile_h = IMAGE_SIZE * zoom + text_h
    sheet = Image.new("RGB", (4 * tile_w, 4 * tile_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    tiles: list[tuple[Image.Image, list[str]]] = []
    for i in range(min(12, n_scenes)):
        scene, image = render_scene(seed, "train", i)
        q, a, _ = scene.questions[i % len(scene.questions)]
        tiles.append((image, [scene.captions[0], f"Q: {q}  A: {a}"]))
    for i in range(min(4, n_words)):
        rng = np.random.default_rng([seed, _STREAM_IDS["words_train"], i])
        item, image = _draw_word(rng, f"word_train_{i:06d}", fonts)
        tiles.append((image, [f"Q: {item.question}  A: {item.word}"]))
    for k, (image, texts) in enumerate(tiles):
        x0, y0 = (k % 4) * tile_w, (k // 4) * tile_h
        sheet.paste(image.resize((IMAGE_SIZE * zoom,) * 2, Image.NEAREST), (x0 + (tile_w - IMAGE_SIZE * zoom) // 2, y0 + 2))
        lines = [line for t in texts for line in textwrap.wrap(t, 33)][:5]
        for j, line in enumerate(lines):
            draw.text((x0 + 4, y0 + IMAGE_SIZE * zoom + 6 + 12 * j), line, font=font, fill=(0, 0, 0))
    _save_png(sheet, out / "samples.png")



def generate_world(out: str | os.PathLike[str], seed: int = 0, size: str = "medium",
                   progress: bool = True, workers: int | None = None) -> dict[str, Any]:
    """Draw the synthetic world for ``seed`` and write it under ``out`` (layout in docs/data.md).

    The same seed and size always produce byte-identical files. A previous world in ``out`` is
    replaced; other files there are left alone.

    Args:
        out: output directory (created if missing).
        seed: world seed (any non-negative integer).
        size: "small" (tests) or "medium" (the embedded default).
        progress: show a tqdm progress bar on stderr.
        workers: processes that draw and write the images (None: one per core, or 1 for a small
            world). Every image comes from its own seeded stream, so the files are byte-identical
            whatever the number (the medium world: 16.1 s in one process, 7.8 s in two on 2 cores).

    Returns:
        The summary written to ``world.json``: seed, size, generator version, vocabularies,
        draw sizes and per-split counts.

    Raises:
        InvalidInputError: unknown size, negative seed, or ``out`` already holds files of the
            same names that a previous world did not write.
    """
    if size not in SIZES:
        raise InvalidInputError(f"unknown world size {size!r}; choose one of {', '.join(SIZES)}")
    if int(seed) < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")
    seed = int(seed)
    spec = SIZES[size]
    root = Path(out)
    _prepare_out(root)
    scene_counts = spec.split_counts(spec.scenes_train_draw, spec.scenes_test)
    word_counts = spec.split_counts(spec.words_train_draw, spec.words_test)
    total = sum(scene_counts.values()) + sum(word_counts.values())
    if progress:
        from tqdm.auto import tqdm

        bar: Any = tqdm(total=total, desc=f"world {size} seed {seed}", unit="img")
    else:
        bar = _NullBar()
    pool = _worker_pool(total, workers)
    try:
        scene_stats = _write_scenes(root, seed, scene_counts, bar, pool)
        word_stats = _write_words(root, seed, word_counts, bar, pool)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    _write_samples(root, seed, scene_counts["train"], word_counts["train"])

    answers = sorted({*KINDS, *_COLOR_NAMES, *COUNT_WORDS, *PLACES})
    summary: dict[str, Any] = {
        "generator": "clipq.world",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "image_size": IMAGE_SIZE,
        "draw": {
            "scenes_train_draw": spec.scenes_train_draw,
            "scenes_test": spec.scenes_test,
            "words_train_draw": spec.words_train_draw,
            "words_test": spec.words_test,
            "val_fraction": spec.val_fraction,
            "prompt_mismatch_train": PROMPT_MISMATCH,
        },
        "splits": {
            split: {**scene_stats[split], "words": word_stats[split]} for split in ("train", "val", "test")
        },
        "vocab": {
            "kinds": list(KINDS),
            "colors": list(_COLOR_NAMES),
            "counts": list(COUNT_WORDS),
            "places": list(PLACES),
            "answers": answers,
            "words": sorted(WORDS),
            "question_types": list(QUESTION_TYPES),
            "styles": list(STYLES),
        },
        "fonts": [Path(p).name for p in find_fonts()] or ["pillow-default"],
    }
    (root / "world.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
