"""Dataset readers: the real formats (:mod:`.formats`) and the world directory (:mod:`.dataset`)."""

from __future__ import annotations

from .dataset import World, WorldSplit, load_images
from .formats import (
    QTYPES,
    CaptionRecord,
    PromptRecord,
    QARecord,
    TextVQARecord,
    parse_qtype,
    read_captions,
    read_cocoqa,
    read_prompts,
    read_textvqa,
    resolve_images,
)

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
    "resolve_images",
]
