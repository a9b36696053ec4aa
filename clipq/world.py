"""The embedded synthetic world: scenes of coloured shapes, their captions, questions and prompts.

``generate_world(out, seed)`` draws a small, fully labelled stand-in for the real datasets the
seed papers use (COCO captions, COCO-QA, the Stable Diffusion image/prompt set, TextVQA) and
writes it in those datasets' own formats, so that :mod:`clipq.readers` reads synthetic and real
data with the same code.

A scene is a 64x64 RGB image holding a *main group* of one to four identical shapes (same kind,
same colour, same size) placed together in one region (left, right, top, bottom, center) and,
when the group has fewer than four members, sometimes one *distractor* of another kind and
another colour in another region. Every question therefore has exactly one one-word answer.

Everything is drawn from ``numpy.random.Generator`` instances derived from the seed and the
image's position in its stream, so a seed reproduces byte-identical files and the scenes do not
depend on the order they are drawn in.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import multiprocessing
import os
import shutil
import textwrap
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipq.runtime.errors import InvalidInputError

__all__ = [
    "BACKGROUND_KINDS",
    "COLORS",
    "COUNT_WORDS",
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "KINDS",
    "PLACES",
    "QUESTION_TYPES",
    "SIZES",
    "STYLES",
    "WORDS",
    "PROMPT_MISMATCH",
    "Scene",
    "Shape",
    "WorldSize",
    "find_fonts",
    "generate_world",
    "render_scene",
    "render_word",
    "render_words",
]

GENERATOR_VERSION = 2
#: share of *training* scenes whose prompt describes another, random scene (a scraped image/prompt
#: set has such pairs; the image-to-prompt cosine filter exists to drop them). Val and test stay clean.
PROMPT_MISMATCH = 0.15
IMAGE_SIZE = 64
_SS = 4  # supersampling factor for anti-aliased shape edges

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring")
_PLURALS = {"cross": "crosses"}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (30, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (245, 220, 30),
    "purple": (145, 50, 190),
    "orange": (250, 135, 20),
    "white": (248, 248, 248),
    "black": (12, 12, 12),
}
_COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

PLACES: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
QUESTION_TYPES: tuple[str, ...] = ("object", "number", "color", "location")  # COCO-QA codes 0..3
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "textured")
STYLES: tuple[str, ...] = (
    "flat vector art",
    "minimalist illustration",
    "clip art",
    "simple geometric drawing",
    "digital painting",
    "pixel art",
    "children's book illustration",
    "paper cutout",
)
WORDS: tuple[str, ...] = (
    "stop", "open", "exit", "sale", "cafe", "bank", "park", "hotel", "taxi", "bus",
    "pizza", "bar", "shop", "book", "coffee", "push", "pull", "help", "free", "love",
    "home", "news", "food", "city", "road", "police", "train", "music", "play", "fire",
    "water", "bread", "milk", "sun", "moon", "fish", "bike", "car", "door", "gate",
)  # fmt: skip

_PLACE_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "on the top", "along the top"),
    "bottom": ("at the bottom", "on the bottom", "along the bottom"),
    "center": ("in the center", "in the middle", "at the center"),
}

# Each group's bounding box must lie inside its place's box (x0, y0, x1, y1) and its centre inside
# the anchor window (cx0, cy0, cx1, cy1); the boxes keep "left" visibly left of "center", etc.
_PLACE_BOX: dict[str, tuple[int, int, int, int]] = {
    "left": (1, 3, 22, 61),
    "right": (42, 3, 63, 61),
    "top": (3, 1, 61, 22),
    "bottom": (3, 42, 61, 63),
    "center": (18, 18, 46, 46),
}
_ANCHOR: dict[str, tuple[int, int, int, int]] = {
    "left": (0, 26, 15, 38),
    "right": (49, 26, 64, 38),
    "top": (26, 0, 38, 15),
    "bottom": (26, 49, 38, 64),
    "center": (29, 29, 35, 35),
}
_SIZE_RANGE = {1: (11, 16), 2: (10, 14), 3: (9, 12), 4: (9, 11)}  # shape size (px) by group count
_MIN_CONTRAST = 115.0  # minimum RGB distance between any shape colour and the background


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


@dataclass(frozen=True)
class Shape:
    """One drawn shape: kind, colour name, RGB after jitter, centre (px) and size (px)."""

    kind: str
    color: str
    rgb: tuple[int, int, int]
    x: float
    y: float
    size: int


@dataclass
class Scene:
    """A drawn scene and everything said about it."""

    image_id: str
    kind: str
    color: str
    count: int
    place: str
    distractor: tuple[str, str, str] | None  # (kind, color, place)
    background: str  # e.g. "dark gradient"
    style: str
    shapes: list[Shape] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    questions: list[tuple[str, str, int]] = field(default_factory=list)  # (question, answer, type code)
    prompt: str = ""


@dataclass
class _WordItem:
    image_id: str
    word: str
    question: str


# -- text ----------------------------------------------------------------------------------------


def _plural(kind: str) -> str:
    return _PLURALS.get(kind, kind + "s")


def _noun(kind: str, count: int) -> str:
    return kind if count == 1 else _plural(kind)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _describe_group(rng: np.random.Generator, kind: str, color: str, count: int, place: str,
                    digits: bool = False) -> str:
    if count == 1:
        number = "1" if digits else _pick(rng, ("an" if color[0] in "aeiou" else "a", "one"))
    else:
        number = str(count) if digits else COUNT_WORDS[count - 1]
    return f"{number} {color} {_noun(kind, count)} {_pick(rng, _PLACE_PHRASES[place])}"


def _captions(rng: np.random.Generator, s: Scene, n: int = 4) -> list[str]:
    """``n`` captions in distinct phrasings, each naming count, colour, kind and place of both groups."""
    main = _describe_group(rng, s.kind, s.color, s.count, s.place)
    dist = _describe_group(rng, *s.distractor[:2], 1, s.distractor[2]) if s.distractor else ""
    where = _pick(rng, _PLACE_PHRASES[s.place])
    nw, noun = COUNT_WORDS[s.count - 1], _noun(s.kind, s.count)
    be = "is" if s.count == 1 else "are"
    templates = (
        lambda: main + (f" and {dist}" if dist else ""),
        lambda: "a picture of " + _describe_group(rng, s.kind, s.color, s.count, s.place, digits=True)
        + (f" with {dist}" if dist else ""),
        lambda: f"there {be} {nw} {s.color} {noun} {where}" + (f", and there is {dist}" if dist else ""),
        lambda: f"an image showing {main}" + (f" and {dist}" if dist else ""),
        lambda: f"{nw} {noun} in {s.color} {where}" + (f" plus {dist}" if dist else ""),
        lambda: f"{where}, {nw} {s.color} {noun}" + (f"; {dist}" if dist else ""),
        lambda: f"{s.color} {noun}, {nw} in all, {where}" + (f", with {dist}" if dist else ""),
    )
    chosen = rng.choice(len(templates), size=n, replace=False)
    return [templates[int(i)]() for i in chosen]


def _group_questions(rng: np.random.Generator, kind: str, color: str, count: int, place: str,
                     qtype: str, total: int | None = None) -> tuple[str, str]:
    """One (question, answer) of ``qtype`` about a group; ``total`` adds the whole-scene count question."""
    noun, plural = _noun(kind, count), _plural(kind)
    where = _pick(rng, _PLACE_PHRASES[place])
    be = "is" if count == 1 else "are"
    shapes = "shape" if count == 1 else "shapes"
    if qtype == "object":
        options = [
            f"what is {where} ?",
            f"what {shapes} {be} {color} ?",
            f"what kind of shape is {where} ?",
            f"what {color} {shapes} {be} {where} ?",
        ]
        return _pick(rng, options), kind
    if qtype == "color":
        options = [
            f"what color {be} the {noun} ?",
            f"what is the color of the {noun} ?",
            f"what color {be} the {shapes} {where} ?",
            f"the {noun} {where} {be} what color ?",
        ]
        return _pick(rng, options), color
    if qtype == "number":
        options = [
            f"how many {plural} are there ?",
            f"how many {color} shapes are there ?",
            f"how many shapes are {where} ?",
            f"what is the number of {color} {plural} ?",
        ]
        if total is not None and rng.random() < 0.25:
            return "how many shapes are in the picture ?", COUNT_WORDS[total - 1]
        return _pick(rng, options), COUNT_WORDS[count - 1]
    if qtype == "location":
        options = [
            f"where {be} the {noun} ?",
            f"where {be} the {color} {noun} ?",
            f"where {be} the {color} {shapes} ?",
            f"where in the picture {be} the {noun} ?",
        ]
        return _pick(rng, options), place
    raise ValueError(f"unknown question type {qtype!r}")


def _questions(rng: np.random.Generator, s: Scene) -> list[tuple[str, str, int]]:
    total = s.count + (1 if s.distractor else 0)
    out = []
    for code, qtype in enumerate(QUESTION_TYPES):
        q, a = _group_questions(rng, s.kind, s.color, s.count, s.place, qtype, total=total)
        out.append((q, a, code))
    if s.distractor is not None and rng.random() < 0.75:
        code = int(rng.choice(4, p=(0.3, 0.1, 0.3, 0.3)))
        q, a = _group_questions(rng, *s.distractor[:2], 1, s.distractor[2], QUESTION_TYPES[code])
        out.append((q, a, code))
    return out


def _prompt(rng: np.random.Generator, s: Scene) -> str:
    main = _describe_group(rng, s.kind, s.color, s.count, s.place)
    dist = f" and {_describe_group(rng, *s.distractor[:2], 1, s.distractor[2])}" if s.distractor else ""
    return f"{main}{dist}, {s.background} background, {s.style}"


# -- drawing -------------------------------------------------------------------------------------


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, size: float,
                fill: tuple[int, int, int]) -> None:
    """Draw one shape of ``size`` px centred on (x, y), all in supersampled pixels."""
    r = size / 2
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "square":
        h = r * 0.86
        draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)
    elif kind == "star":
        pts = []
        for i in range(10):
            rad = r * 1.05 if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((x + rad * math.cos(a), y + r * 0.08 + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif kind == "cross":
        t = r * 0.34
        draw.rectangle((x - r, y - t, x + r, y + t), fill=fill)
        draw.rectangle((x - t, y - r, x + t, y + r), fill=fill)
    elif kind == "heart":
        c = r * 0.5
        for cx in (x - r * 0.47, x + r * 0.47):
            draw.ellipse((cx - c, y - r * 0.75, cx + c, y - r * 0.75 + 2 * c), fill=fill)
        draw.polygon([(x - r * 0.96, y - r * 0.12), (x + r * 0.96, y - r * 0.12), (x, y + r * 0.95)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(x, y - r * 1.05), (x + r * 0.78, y), (x, y + r * 1.05), (x - r * 0.78, y)], fill=fill)
    elif kind == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(1, round(r * 0.4)))
    else:
        raise ValueError(f"unknown shape kind {kind!r}")


def _jitter_rgb(rng: np.random.Generator, color: str, amount: int = 14) -> tuple[int, int, int]:
    base = np.asarray(COLORS[color], dtype=np.int64) + rng.integers(-amount, amount + 1, size=3)
    r, g, b = (int(v) for v in np.clip(base, 0, 255))
    return r, g, b


def _background(rng: np.random.Generator, avoid: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, str]:
    """A 64x64 float background far (in RGB) from every colour in ``avoid``, and its description."""
    kind = _pick(rng, BACKGROUND_KINDS)
    avoid_arr = np.asarray(avoid, dtype=np.float64).reshape(-1, 3)

    def far_enough(c: np.ndarray, margin: float) -> bool:
        return bool(np.min(np.linalg.norm(avoid_arr - c, axis=1)) >= _MIN_CONTRAST + margin)

    def draw_colour(light: bool) -> np.ndarray:
        lum = rng.uniform(165, 230) if light else rng.uniform(25, 85)
        tint = rng.normal(0.0, 22.0, size=3)
        return np.clip(lum + tint - tint.mean(), 0, 255)

    spread = {"plain": 0.0, "gradient": 45.0, "textured": 16.0}[kind]
    margin = spread * (math.sqrt(3) if kind == "textured" else 1.0)
    light = bool(rng.random() < 0.5)
    base = None
    for attempt in range(24):
        if attempt == 12:
            light = not light
        c = draw_colour(light)
        if far_enough(c, margin):
            base = c
            break
    if base is None:  # both white and black present, or similar: a mid-grey keeps both visible
        base, spread, kind, light = np.full(3, 128.0), 0.0, "plain", bool(rng.random() < 0.5)
    n = IMAGE_SIZE
    if kind == "plain":
        img = np.broadcast_to(base, (n, n, 3)).astype(np.float64)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
        t = (np.cos(a) * xx + np.sin(a) * yy) / math.sqrt(0.5)  # in [-1, 1]
        direction = 1.0 + 0.35 * rng.normal(0.0, 1.0, size=3)
        img = base + t[..., None] * spread * direction / np.linalg.norm(direction)
    else:
        coarse = rng.uniform(-1.0, 1.0, size=(8, 8, 3)).astype(np.float32)
        smooth = np.stack(
            [np.asarray(Image.fromarray(coarse[..., k], mode="F").resize((n, n), Image.BICUBIC)) for k in range(3)],
            axis=-1,
        )
        img = base + np.clip(smooth, -1.0, 1.0) * spread
    desc = f"{'light' if light else 'dark'} {kind}"
    return np.clip(img, 0, 255), desc


def _group_offsets(count: int, place: str, step: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Shape centres relative to the group centre: a line along the region, a triangle or a 2x2 block."""
    if count == 1:
        return [(0.0, 0.0)]
    if place == "center":
        vertical = bool(rng.random() < 0.5)
        layout = "line" if count == 2 else ("triangle" if count == 3 else "grid")
    else:
        vertical = place in ("left", "right")
        layout = "line" if count == 2 else _pick(rng, ("line", "triangle" if count == 3 else "grid"))
    if layout == "line":
        offs = [((i - (count - 1) / 2) * step, 0.0) for i in range(count)]
        return [(y, x) for x, y in offs] if vertical else offs
    if layout == "triangle":
        h = step * 0.45
        offs = [(-step / 2, h), (step / 2, h), (0.0, -h)]
        if bool(rng.random() < 0.5):
            offs = [(x, -y) for x, y in offs]
        return offs
    return [(dx * step / 2, dy * step / 2) for dx in (-1, 1) for dy in (-1, 1)]


def _place_group(rng: np.random.Generator, count: int, place: str, size_range: tuple[int, int],
                 taken: Sequence[tuple[float, float, float]]) -> tuple[int, list[tuple[float, float]]] | None:
    """Sample size and centres of a group inside ``place`` clear of ``taken`` (x, y, size) shapes."""
    lo, hi = size_range
    bx0, by0, bx1, by1 = _PLACE_BOX[place]
    ax0, ay0, ax1, ay1 = _ANCHOR[place]
    for attempt in range(40):
        size = int(rng.integers(lo, hi + 1)) if attempt < 20 else lo
        step = size + float(rng.integers(2, 5))
        offs = _group_offsets(count, place, step, rng)
        xs, ys = [o[0] for o in offs], [o[1] for o in offs]
        half = size / 2
        cx_lo, cx_hi = max(bx0 + half - min(xs), ax0), min(bx1 - half - max(xs), ax1)
        cy_lo, cy_hi = max(by0 + half - min(ys), ay0), min(by1 - half - max(ys), ay1)
        if cx_lo > cx_hi or cy_lo > cy_hi:
            continue
        cx, cy = rng.uniform(cx_lo, cx_hi), rng.uniform(cy_lo, cy_hi)
        pts = [(cx + dx + rng.uniform(-0.7, 0.7), cy + dy + rng.uniform(-0.7, 0.7)) for dx, dy in offs]
        clear = all(
            max(abs(px - tx), abs(py - ty)) >= (size + ts) / 2 + 3 for px, py in pts for tx, ty, ts in taken
        )
        if clear:
            return size, pts
    return None


def _draw_scene(rng: np.random.Generator, image_id: str) -> tuple[Scene, Image.Image]:
    """Draw one scene (layout, colours, background, noise) and its labels."""
    kind = _pick(rng, KINDS)
    color = _pick(rng, _COLOR_NAMES)
    count = int(rng.integers(1, 5))
    place = _pick(rng, PLACES)
    placed = _place_group(rng, count, place, _SIZE_RANGE[count], ())
    if placed is None:  # the place boxes fit every group size; this guards edits to them
        raise RuntimeError(f"cannot fit {count} shapes at {place}: check _PLACE_BOX and _SIZE_RANGE")
    size, pts = placed
    rgb = _jitter_rgb(rng, color)
    shapes = [Shape(kind, color, rgb, x, y, size) for x, y in pts]

    distractor = None
    if count < 4 and rng.random() < 0.6:
        d_kind = _pick(rng, [k for k in KINDS if k != kind])
        d_color = _pick(rng, [c for c in _COLOR_NAMES if c != color])
        for d_place in rng.permutation([p for p in PLACES if p != place]):
            d = _place_group(rng, 1, str(d_place), (10, 15), [(s.x, s.y, s.size) for s in shapes])
            if d is not None:
                d_size, ((dx, dy),) = d
                shapes.append(Shape(d_kind, d_color, _jitter_rgb(rng, d_color), dx, dy, d_size))
                distractor = (d_kind, d_color, str(d_place))
                break

    bg, bg_desc = _background(rng, [s.rgb for s in shapes])
    big = Image.fromarray(bg.astype(np.uint8), "RGB").resize((IMAGE_SIZE * _SS,) * 2, Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for s in shapes:
        _draw_shape(draw, s.kind, s.x * _SS, s.y * _SS, s.size * _SS, s.rgb)
    img = np.asarray(big.reduce(_SS), dtype=np.float32)
    sigma = rng.uniform(2.0, 7.0)
    img = img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    image = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")

    scene = Scene(image_id=image_id, kind=kind, color=color, count=count, place=place,
                  distractor=distractor, background=bg_desc, style=_pick(rng, STYLES), shapes=shapes)
    scene.captions = _captions(rng, scene)
    scene.questions = _questions(rng, scene)
    scene.prompt = _prompt(rng, scene)
    return scene, image


def render_scene(seed: int, stream: str, index: int, image_id: str | None = None) -> tuple[Scene, Image.Image]:
    """Draw scene ``index`` of ``stream`` ("train" or "test") for ``seed``, exactly as the generator does.

    Args:
        seed: world seed.
        stream: "train" (the train/val draw) or "test".
        index: position in the stream.
        image_id: id to record in the scene; defaults to ``f"{stream}_{index:06d}"``.

    Returns:
        The scene's labels and its 64x64 RGB image.
    """
    rng = np.random.default_rng([seed, _STREAM_IDS[stream], index])
    return _draw_scene(rng, image_id or f"{stream}_{index:06d}")


_STREAM_IDS = {"train": 1, "test": 2, "words_train": 3, "words_test": 4, "prompt_mismatch": 5, "words_synth": 6}


def mismatched_prompt(seed: int, index: int, share: float = PROMPT_MISMATCH) -> str | None:
    """The wrong prompt that training scene ``index`` carries, or None for a true pair.

    Drawn from its own stream, so the scenes (images, captions, questions) do not change with ``share``.
    The wrong prompt describes a random scene of the same vocabulary in the same style of phrasing.
    """
    rng = np.random.default_rng([seed, _STREAM_IDS["prompt_mismatch"], index])
    if rng.random() >= share:
        return None
    kind, color = _pick(rng, KINDS), _pick(rng, _COLOR_NAMES)
    count, place = int(rng.integers(1, 5)), _pick(rng, PLACES)
    distractor = None
    if count < 4 and rng.random() < 0.6:
        distractor = (_pick(rng, [k for k in KINDS if k != kind]), _pick(rng, [c for c in _COLOR_NAMES if c != color]),
                      _pick(rng, [p for p in PLACES if p != place]))
    fake = Scene(image_id="", kind=kind, color=color, count=count, place=place, distractor=distractor,
                 background=f"{_pick(rng, ('light', 'dark'))} {_pick(rng, BACKGROUND_KINDS)}", style=_pick(rng, STYLES))
    return _prompt(rng, fake)


# -- words ---------------------------------------------------------------------------------------


_FONT_NAMES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansCondensed.ttf",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def find_fonts() -> tuple[str, ...]:
    """TrueType fonts available for the reading study, as absolute paths in a fixed order.

    Looks in ``$CLIPQ_FONT_DIR``, the system DejaVu directories and matplotlib's bundled fonts
    (located without importing matplotlib). Returns an empty tuple when none is found; callers then
    use Pillow's built-in scalable font.

    Returns:
        Paths of the DejaVu fonts found, each file name once.
    """
    import importlib.util

    dirs = [os.environ.get("CLIPQ_FONT_DIR", ""), "/usr/share/fonts/truetype/dejavu",
            "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF", "/Library/Fonts"]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        dirs.append(str(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"))
    found: dict[str, str] = {}
    for d in dirs:
        if not d or not Path(d).is_dir():
            continue
        for name in _FONT_NAMES:
            p = Path(d) / name
            if name not in found and p.is_file():
                found[name] = str(p)
    return tuple(found[n] for n in _FONT_NAMES if n in found)


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path:
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


_WORD_QUESTIONS = (
    "what is written on the sign ?",
    "what does the sign say ?",
    "what word is shown ?",
    "what is written here ?",
    "what does it say ?",
    "what word is written in the picture ?",
)


def _contrasting(rng: np.random.Generator, other: np.ndarray) -> tuple[int, int, int]:
    """A colour whose luminance is far from ``other``'s."""
    lum = float(other @ np.array([0.299, 0.587, 0.114]))
    target = rng.uniform(10, 70) if lum > 128 else rng.uniform(190, 250)
    c = np.clip(target + rng.normal(0, 40, size=3), 0, 255)
    c = np.clip(c + (target - float(c @ np.array([0.299, 0.587, 0.114]))), 0, 255)
    r, g, b = (int(v) for v in np.rint(c))
    return r, g, b


def render_word(seed: int, index: int, words: Sequence[str] = WORDS) -> tuple[str, str, Image.Image]:
    """Word image ``index`` of the synthetic-word set for ``seed`` (stream ``words_synth``).

    The reading study's proposed remedy ("Can CLIP read?"): any number of extra rendered words, drawn
    as the world's word images are (fonts, case, colours, plates, noise), but never the same images
    as the world's splits.

    Returns:
        (word, question, 64x64 RGB image).
    """
    rng = np.random.default_rng([seed, _STREAM_IDS["words_synth"], index])
    item, image = _draw_word(rng, f"word_synth_{index:06d}", find_fonts(), words)
    return item.word, item.question, image


def _synth_word_job(job: tuple[int, int, tuple[str, ...], int]) -> tuple[str, str, np.ndarray]:
    seed, index, words, size = job
    word, question, image = render_word(seed, index, words)
    if image.size != (size, size):
        image = image.resize((size, size))
    return word, question, np.asarray(image.convert("RGB"))


def render_words(seed: int, n: int, words: Sequence[str] = WORDS, size: int = IMAGE_SIZE,
                 workers: int | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """Word images ``0 .. n-1`` of the synthetic-word set (:func:`render_word`), drawn in worker
    processes as the world is (one per core for a large set; identical for any number).

    Returns:
        (uint8 images [n, size, size, 3], words, questions).
    """
    pool = _worker_pool(n, workers)
    jobs = [(int(seed), i, tuple(words), int(size)) for i in range(n)]
    try:
        items = list(_ordered_map(_synth_word_job, jobs, _NullBar(), pool))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if not items:
        return np.zeros((0, size, size, 3), np.uint8), [], []
    return np.stack([a for _, _, a in items]), [w for w, _, _ in items], [q for _, q, _ in items]


def _draw_word(rng: np.random.Generator, image_id: str, fonts: Sequence[str],
               words: Sequence[str] = WORDS) -> tuple[_WordItem, Image.Image]:
    """Draw one rendered-word image and its question."""
    word = _pick(rng, words)
    case = _pick(rng, ("lower", "upper", "title"))
    text = word.upper() if case == "upper" else word.title() if case == "title" else word
    font_path = _pick(rng, fonts) if fonts else ""
    n = IMAGE_SIZE

    bg_rgb = rng.uniform(0, 255, size=3)
    bg = np.broadcast_to(bg_rgb, (n, n, 3)).astype(np.float32)
    if rng.random() < 0.4:
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
        bg = bg + ((np.cos(a) * xx + np.sin(a) * yy)[..., None] * rng.normal(0, 40, size=3)).astype(np.float32)
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    size = int(rng.integers(13, 29))
    font = _font(font_path, size)
    while size > 8:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= n - 8 and bottom - top <= n - 8:
            break
        size -= 1
        font = _font(font_path, size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left, bottom - top
    x = int(rng.integers(4, max(5, n - 4 - w + 1))) - left
    y = int(rng.integers(4, max(5, n - 4 - h + 1))) - top

    plate = bg_rgb
    if rng.random() < 0.5:
        plate = rng.uniform(0, 255, size=3)
        pad = int(rng.integers(2, 5))
        box = (x + left - pad, y + top - pad, x + right + pad, y + bottom + pad)
        draw.rectangle(box, fill=tuple(int(v) for v in plate))
    draw.text((x, y), text, font=font, fill=_contrasting(rng, np.asarray(plate, dtype=np.float64)))

    arr = np.asarray(image, dtype=np.float32) + rng.normal(0.0, rng.uniform(1.0, 5.0), size=(n, n, 3))
    image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    return _WordItem(image_id=image_id, word=word, question=_pick(rng, _WORD_QUESTIONS)), image


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


def _ordered_map(fn: Any, jobs: list[Any], bar: Any, pool: Any) -> Iterator[Any]:
    """``fn`` over ``jobs`` in order: in this process, or in ``pool``'s workers (every image is drawn
    from its own seeded stream, so both give byte-identical files)."""
    results = map(fn, jobs) if pool is None else pool.map(fn, jobs, chunksize=64)
    for r in results:
        bar.update(1)
        yield r


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


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


#: worlds with fewer images than this are drawn in-process (the small test world: starting workers
#: would cost more than it saves)
_PARALLEL_FROM = 2000


def _worker_pool(total: int, workers: int | None) -> ProcessPoolExecutor | None:
    """The processes that draw ``total`` images (None: draw in this process).

    Raises:
        InvalidInputError: ``workers`` below 1.
    """
    n_workers = _default_workers(total) if workers is None else int(workers)
    if n_workers < 1:
        raise InvalidInputError(f"workers must be >= 1, got {workers}")
    # spawn, not fork: the caller may hold torch's or BLAS's thread pools, which do not survive a fork
    return ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn")) if n_workers > 1 else None


def _default_workers(total: int) -> int:
    """One process per usable core (at most 8) for a world worth it (a worker starts in about 0.3 s)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if total < _PARALLEL_FROM else max(1, min(cores, 8))


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
