"""The world's vocabulary and what is said about a scene: captions, questions, prompts.

The shape kinds, colours, places, count words, styles and the reading study's words; the records
of a drawn scene (:class:`Scene`, :class:`Shape`); the text generated for it from its labels; and
the seeded streams every image and prompt is drawn from (each item from its own stream, so a seed
reproduces byte-identical files whatever the drawing order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: share of *training* scenes whose prompt describes another, random scene (a scraped image/prompt
#: set has such pairs; the image-to-prompt cosine filter exists to drop them). Val and test stay clean.
PROMPT_MISMATCH = 0.15

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

#: the questions asked of a word image
_WORD_QUESTIONS = (
    "what is written on the sign ?",
    "what does the sign say ?",
    "what word is shown ?",
    "what is written here ?",
    "what does it say ?",
    "what word is written in the picture ?",
)

#: the seeded stream of each kind of item: image ``index`` of stream ``s`` is drawn from
#: ``numpy.random.default_rng([seed, _STREAM_IDS[s], index])``
_STREAM_IDS = {"train": 1, "test": 2, "words_train": 3, "words_test": 4, "prompt_mismatch": 5, "words_synth": 6}


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
