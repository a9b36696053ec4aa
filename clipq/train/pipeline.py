"""Train every task of the embedded default in one process (data loaded once)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .clip import ClipTrainConfig, train_clip
from .common import resolve_precision
from .img2prompt import Img2PromptConfig, train_img2prompt
from .plan import PlanRequest, TrainPlan, make_plan
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
    #: a time budget for the whole run, in seconds (None: the plan as set, however long). It is spent by a
    #: **plan** (:mod:`clipq.train.plan`), decided once after CLIP's first ``calibrate_steps`` steps: every
    #: trainer gets at least its floor (``floors``) and at most its steps as set here, and runs exactly its
    #: planned steps whatever the clock says afterwards (the demo's 10 minutes, on any CPU)
    train_seconds: float | None = None
    #: the least work per plan knob (``clipq.train.plan.KNOBS``) a budget may leave; a knob not named
    #: here is never shrunk
    floors: dict[str, int] = field(default_factory=dict)
    #: called once with the plan (a :class:`~clipq.train.plan.TrainPlan`) when it is decided
    on_plan: Callable[[Any], None] | None = None
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
    precision = resolve_precision(s.precision)
    req = PlanRequest(full=full_work(s), floors=dict(s.floors), budget_s=s.train_seconds)
    chosen: list[TrainPlan] = []

    def decide(per_step: float | None) -> TrainPlan:
        plan = make_plan(req, per_step, precision)
        chosen.append(plan)
        if s.on_plan is not None:
            s.on_plan(plan)
        return plan

    took: dict[str, float] = {}
    if "clip" in tasks:
        cfg = ClipTrainConfig(hard_negatives=s.hard_negatives, seed=s.seed, precision=s.precision)
        cfg = replace(cfg, **s.clip)
        if s.clip_steps is not None:
            cfg = replace(cfg, steps=s.clip_steps, warmup=min(cfg.warmup, max(1, s.clip_steps // 10)))
        if s.batch_size is not None:
            cfg = replace(cfg, batch_size=s.batch_size)
        fit = None
        if s.train_seconds is not None:

            def fit(per_step: float) -> int:
                return decide(per_step).work["clip_steps"]

        t1 = time.perf_counter()
        results["clip"] = train_clip(data, out, preset=s.preset, pretrained=s.pretrained, cfg=cfg,
                                     threads=s.threads, progress=s.progress, fit_steps=fit)
        took["clip"] = time.perf_counter() - t1
    plan = chosen[0] if chosen else decide(None)
    s = planned_settings(s, plan)
    results["plan"] = plan.to_dict()
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
        t1 = time.perf_counter()
        results["vqa"] = train_vqa(data, out, variants=s.vqa_variants, cfg=cfg_v, lm_pretrained=s.lm_pretrained,
                                   threads=s.threads, progress=s.progress)
        took["vqa"] = time.perf_counter() - t1
    if "img2prompt" in tasks:
        cfg_i = Img2PromptConfig(seed=s.seed, precision=s.precision)
        if s.filter_threshold != "unset":
            cfg_i = replace(cfg_i, filter_threshold=s.filter_threshold)
        if s.img2prompt_epochs is not None:
            cfg_i = replace(cfg_i, epochs=s.img2prompt_epochs)
        t1 = time.perf_counter()
        results["img2prompt"] = train_img2prompt(data, out, cfg=cfg_i, threads=s.threads, progress=s.progress)
        took["img2prompt"] = time.perf_counter() - t1
    if "reading" in tasks:
        cfg_r = replace(ReadingConfig(seed=s.seed, precision=s.precision), **s.reading)
        if s.reading_steps is not None:  # every row's steps, the cross-entropy row's stages too unless set apart
            cfg_r = replace(cfg_r, steps=s.reading_steps, ce_steps=s.reading.get("ce_steps", s.reading_steps),
                            ce_text_steps=s.reading.get("ce_text_steps", s.reading_steps))
        t1 = time.perf_counter()
        results["reading"] = train_reading(data, out, cfg=cfg_r, threads=s.threads, progress=s.progress)
        took["reading"] = time.perf_counter() - t1
    results["seconds"] = round(time.perf_counter() - t0, 1)
    # what each trainer took beside what the plan predicted (the cost model's error on this machine)
    results["plan"]["seconds_by_trainer"] = {k: round(v, 1) for k, v in took.items()}
    return results


def full_work(s: TrainSettings) -> dict[str, int]:
    """The plan's knobs (``clipq.train.plan.KNOBS``) as ``s`` sets them: what a budget that fits runs."""
    rd = ReadingConfig()
    ce = s.reading.get("ce_steps", s.reading_steps if s.reading_steps is not None else rd.ce_steps)
    text = s.reading.get("ce_text_steps", s.reading_steps if s.reading_steps is not None else rd.ce_text_steps)
    return {
        "clip_steps": s.clip_steps or replace(ClipTrainConfig(), **s.clip).steps,
        "vqa_questions": s.questions_per_epoch or VQATrainConfig().questions_per_epoch or 0,
        "img2prompt_epochs": s.img2prompt_epochs or Img2PromptConfig().epochs,
        "reading_ce_steps": ce,
        "reading_ce_text_steps": text,
    }


def planned_settings(s: TrainSettings, plan: TrainPlan) -> TrainSettings:
    """``s`` with the later trainers' work as ``plan`` sets it: VQA's questions per epoch, image -> prompt's
    epochs and the reading cross-entropy row's two stages (the other reading rows keep their steps).
    Learning rates are left as they are; each trainer's schedule is relative to its own length."""
    w = plan.work
    r = {**s.reading, "ce_steps": w["reading_ce_steps"], "ce_text_steps": plan.reading_ce_text_steps}
    return replace(s, questions_per_epoch=w["vqa_questions"] or None, img2prompt_epochs=w["img2prompt_epochs"],
                   reading=r)


def _recorded_clip_run(out: str) -> dict | None:
    """The CLIP training summary an earlier run recorded in the artifacts' manifest, if any."""
    from clipq.runtime.errors import ArtifactError
    from clipq.runtime.manifest import Manifest

    try:
        return Manifest.load(out).extra.get("training", {}).get("clip")
    except ArtifactError:
        return None
