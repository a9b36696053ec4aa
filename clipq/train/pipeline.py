"""Train every task of the embedded default in one process (data loaded once)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from .clip import ClipTrainConfig, train_clip
from .img2prompt import Img2PromptConfig, train_img2prompt
from .reading import ReadingConfig, train_reading
from .vqa import VQATrainConfig, train_vqa

TASKS = ("clip", "baseline", "vqa", "img2prompt", "reading")


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    preset: str = "tiny"
    pretrained: str | None = None
    lm_pretrained: str | None = None
    clip_steps: int | None = None
    batch_size: int | None = None
    hard_negatives: bool = True
    precision: str = "auto"  # every trainer: bf16 autocast where the CPU has bf16 units, else fp32
    clip: dict[str, Any] = field(default_factory=dict)  # further ClipTrainConfig fields
    #: a wall-clock budget for the whole run (None: the plan as set, however long). CLIP times its
    #: first steps, the plan's full time is predicted from them (:func:`fit_share`), and CLIP and every
    #: later trainer run the share of their steps that fits, so a slower CPU gets fewer steps, not a
    #: longer run (the demo's 10 minutes)
    train_seconds: float | None = None
    #: the prediction's two measured ratios (docs/training.md#time): the whole plan's time over CLIP's
    plan_over_clip: float = 2.6
    #: and the share of the whole plan's time that does not shrink with the steps (scoring, embedding
    #: the prompts, drawing the synthetic words)
    fixed_share: float = 0.25
    vqa_variants: list[str] | None = None
    questions_per_epoch: int | None = None
    vqa_lr: float | None = None
    vqa_batch_size: int | None = None
    filter_threshold: float | str | None = "unset"  # "unset": the trainer's default ("auto")
    img2prompt_epochs: int | None = None
    reading_steps: int | None = None
    reading: dict[str, Any] = field(default_factory=dict)  # further ReadingConfig fields
    baseline_seconds: float | None = None  # dual encoder: wall-clock budget (None: CLIP's own time)
    threads: int | None = None
    seed: int = 0
    progress: bool = True


def train_tasks(data: str, out: str, tasks: list[str], s: TrainSettings) -> dict:
    """Run the requested trainers in dependency order; returns their summaries and timings."""
    results: dict = {}
    t0 = time.perf_counter()
    if "clip" in tasks:
        cfg = ClipTrainConfig(hard_negatives=s.hard_negatives, seed=s.seed, precision=s.precision)
        cfg = replace(cfg, **s.clip)
        if s.clip_steps is not None:
            cfg = replace(cfg, steps=s.clip_steps, warmup=min(cfg.warmup, max(1, s.clip_steps // 10)))
        if s.batch_size is not None:
            cfg = replace(cfg, batch_size=s.batch_size)
        fit = None
        if s.train_seconds is not None:
            steps, budget = cfg.steps, float(s.train_seconds)

            def fit(per_step: float) -> int:
                return round(steps * fit_share(budget, per_step * steps * s.plan_over_clip, s.fixed_share))

        results["clip"] = train_clip(data, out, preset=s.preset, pretrained=s.pretrained, cfg=cfg,
                                     threads=s.threads, progress=s.progress, fit_steps=fit)
    share = work_share(results.get("clip")) if s.train_seconds is not None else 1.0
    if share < 1.0:
        s = scaled_settings(s, share)
        results["scaled"] = {"share": round(share, 3), "train_seconds": s.train_seconds,
                             "why": "the whole plan, predicted from CLIP's measured steps, would not fit train_seconds",
                             "settings": {k: getattr(s, k) for k in ("questions_per_epoch", "img2prompt_epochs")}
                             | {"reading": s.reading}}
    if "baseline" in tasks:
        from .baseline import BaselineConfig, train_baseline

        # CLIP's own run: trained now, or recorded in the artifacts by an earlier `clipq train clip`
        clip_run = results.get("clip") or _recorded_clip_run(out)
        budget = s.baseline_seconds if s.baseline_seconds is not None else (clip_run or {}).get("seconds")
        cfg_b = BaselineConfig(seed=s.seed, precision=s.precision, seconds=budget)
        if clip_run and "config" in clip_run:  # the same batch size, schedule length and learning rate as CLIP
            c = clip_run["config"]
            cfg_b = replace(cfg_b, steps=c["steps"], batch_size=c["batch_size"], lr=c["lr"], warmup=c["warmup"])
        results["baseline"] = train_baseline(data, out, cfg=cfg_b, threads=s.threads, progress=s.progress)
    if "vqa" in tasks:
        cfg_v = VQATrainConfig(seed=s.seed, precision=s.precision)
        if s.questions_per_epoch is not None:
            cfg_v = replace(cfg_v, questions_per_epoch=s.questions_per_epoch)
        if s.vqa_lr is not None:
            cfg_v = replace(cfg_v, lr=s.vqa_lr)
        if s.vqa_batch_size is not None:
            cfg_v = replace(cfg_v, batch_size=s.vqa_batch_size)
        results["vqa"] = train_vqa(data, out, variants=s.vqa_variants, cfg=cfg_v, lm_pretrained=s.lm_pretrained,
                                   threads=s.threads, progress=s.progress)
    if "img2prompt" in tasks:
        cfg_i = Img2PromptConfig(seed=s.seed, precision=s.precision)
        if s.filter_threshold != "unset":
            cfg_i = replace(cfg_i, filter_threshold=s.filter_threshold)
        if s.img2prompt_epochs is not None:
            cfg_i = replace(cfg_i, epochs=s.img2prompt_epochs)
        results["img2prompt"] = train_img2prompt(data, out, cfg=cfg_i, threads=s.threads, progress=s.progress)
    if "reading" in tasks:
        cfg_r = replace(ReadingConfig(seed=s.seed, precision=s.precision), **s.reading)
        if s.reading_steps is not None:  # every row's steps, the cross-entropy row's stages too unless set apart
            cfg_r = replace(cfg_r, steps=s.reading_steps, ce_steps=s.reading.get("ce_steps", s.reading_steps),
                            ce_text_steps=s.reading.get("ce_text_steps", s.reading_steps))
        results["reading"] = train_reading(data, out, cfg=cfg_r, threads=s.threads, progress=s.progress)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def fit_share(budget: float, predicted: float, fixed_share: float) -> float:
    """The share of every trainer's steps that fits ``budget`` seconds, where the whole plan is
    predicted to take ``predicted`` seconds of which ``fixed_share`` does not shrink with the steps:
    budget = predicted * (fixed + (1 - fixed) * share). Between 0.05 and 1."""
    if predicted <= budget:
        return 1.0
    share = (budget / predicted - fixed_share) / max(1e-9, 1.0 - fixed_share)
    return float(min(1.0, max(0.05, share)))


def work_share(clip_run: dict | None) -> float:
    """The share of its planned steps that CLIP's time budget let it run (1.0: all, or no budget)."""
    if not clip_run or not clip_run.get("budgeted"):
        return 1.0
    return min(1.0, clip_run["steps"] / max(1, clip_run.get("steps_planned") or clip_run["steps"]))


def scaled_settings(s: TrainSettings, share: float) -> TrainSettings:
    """``s`` with the later trainers' amounts of work times ``share``: VQA's questions per epoch, the
    reading rows' steps (each stage of the cross-entropy row too) and image -> prompt's epochs
    (rounded, at least 1). Learning rates and schedules are left as they are: each trainer's
    schedule is relative to its own length."""
    from .img2prompt import Img2PromptConfig
    from .reading import ReadingConfig
    from .vqa import VQATrainConfig

    def times(n: int) -> int:
        return max(1, round(n * share))

    rd, r = ReadingConfig(), dict(s.reading)
    for key in ("ce_steps", "ce_text_steps"):
        r[key] = times(r.get(key, s.reading_steps if s.reading_steps is not None else getattr(rd, key)))
    q = s.questions_per_epoch or VQATrainConfig().questions_per_epoch
    return replace(
        s,
        questions_per_epoch=times(q) if q else None,
        img2prompt_epochs=times(s.img2prompt_epochs or Img2PromptConfig().epochs),
        reading_steps=times(s.reading_steps if s.reading_steps is not None else rd.steps),
        reading=r,
    )


def _recorded_clip_run(out: str) -> dict | None:
    """The CLIP training summary an earlier run recorded in the artifacts' manifest, if any."""
    from clipq.runtime.errors import ArtifactError
    from clipq.runtime.manifest import Manifest

    try:
        return Manifest.load(out).extra.get("training", {}).get("clip")
    except ArtifactError:
        return None
