"""Train every task of the embedded default in one process (data loaded once)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from .clip import ClipTrainConfig, train_clip
from .img2prompt import Img2PromptConfig, train_img2prompt
from .reading import ReadingConfig, train_reading
from .vqa import VQATrainConfig, train_vqa


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    preset: str = "tiny"
    pretrained: str | None = None
    lm_pretrained: str | None = None
    clip_steps: int | None = None
    batch_size: int | None = None
    hard_negatives: bool = True
    vqa_variants: list[str] | None = None
    questions_per_epoch: int | None = None
    vqa_lr: float | None = None
    vqa_batch_size: int | None = None
    filter_threshold: float | None = None
    img2prompt_epochs: int | None = None
    reading_steps: int | None = None
    threads: int | None = None
    seed: int = 0
    progress: bool = True


def train_tasks(data: str, out: str, tasks: list[str], s: TrainSettings) -> dict:
    """Run the requested trainers in dependency order; returns their summaries and timings."""
    results: dict = {}
    t0 = time.perf_counter()
    if "clip" in tasks:
        cfg = ClipTrainConfig(hard_negatives=s.hard_negatives, seed=s.seed)
        if s.clip_steps is not None:
            cfg = replace(cfg, steps=s.clip_steps, warmup=min(cfg.warmup, max(1, s.clip_steps // 10)))
        if s.batch_size is not None:
            cfg = replace(cfg, batch_size=s.batch_size)
        results["clip"] = train_clip(data, out, preset=s.preset, pretrained=s.pretrained, cfg=cfg,
                                     threads=s.threads, progress=s.progress)
    if "vqa" in tasks:
        cfg = VQATrainConfig(seed=s.seed)
        if s.questions_per_epoch is not None:
            cfg = replace(cfg, questions_per_epoch=s.questions_per_epoch)
        if s.vqa_lr is not None:
            cfg = replace(cfg, lr=s.vqa_lr)
        if s.vqa_batch_size is not None:
            cfg = replace(cfg, batch_size=s.vqa_batch_size)
        results["vqa"] = train_vqa(data, out, variants=s.vqa_variants, cfg=cfg, lm_pretrained=s.lm_pretrained,
                                   threads=s.threads, progress=s.progress)
    if "img2prompt" in tasks:
        cfg = Img2PromptConfig(seed=s.seed)
        if s.filter_threshold is not None:
            cfg = replace(cfg, filter_threshold=s.filter_threshold)
        if s.img2prompt_epochs is not None:
            cfg = replace(cfg, epochs=s.img2prompt_epochs)
        results["img2prompt"] = train_img2prompt(data, out, cfg=cfg, threads=s.threads, progress=s.progress)
    if "reading" in tasks:
        cfg = ReadingConfig(seed=s.seed)
        if s.reading_steps is not None:
            cfg = replace(cfg, steps=s.reading_steps)
        results["reading"] = train_reading(data, out, cfg=cfg, threads=s.threads, progress=s.progress)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results
