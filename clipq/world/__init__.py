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

Modules: :mod:`.vocab` (vocabulary, the scene record, captions, questions, prompts, the seeded
streams), :mod:`.draw` (scenes and word images), :mod:`.layout` (:func:`generate_world`: the files
on disk) and :mod:`.pool` (the worker processes that draw).
"""

from __future__ import annotations

from .draw import IMAGE_SIZE, find_fonts, render_scene, render_word, render_words
from .layout import GENERATOR_VERSION, SIZES, WorldSize, generate_world
from .vocab import (
    BACKGROUND_KINDS,
    COLORS,
    COUNT_WORDS,
    KINDS,
    PLACES,
    PROMPT_MISMATCH,
    QUESTION_TYPES,
    STYLES,
    WORDS,
    Scene,
    Shape,
    mismatched_prompt,
)

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
    "mismatched_prompt",
    "render_scene",
    "render_word",
    "render_words",
]

