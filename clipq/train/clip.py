"""Contrastive CLIP training on captions, with hard negatives (seed "Can CLIP read?" and NegCLIP).

A random batch of 128 scenes is told apart by colour and kind alone, so the contrastive loss seldom
needs count or place. Two kinds of hard negatives make it need them (``clipq.train.negatives``):
batches drawn from clusters of similar captions (from ``hard_start`` on), and a word-swapped copy
of captions ("two" -> "three", "left" -> "top") as extra text negatives for their image. On CPUs
with bf16 units (AVX512-BF16 or AMX) the towers run under bf16 autocast; the loss stays fp32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipq.models.factory import image_features, text_features
from clipq.models.io import init_clip_artifacts, load_tokenizer, save_clip, tokenize

from .augment import AUGMENTS, augment_batch
from .common import (
    autocast,
    channels_last,
    contrastive_step,
    cosine_with_warmup,
    resolve_precision,
    seed_everything,
    set_threads,
)
from .data import load_split
from .negatives import VARY_CLASSES, caption_clusters, kmeans, swapped_captions, word_class_groups

log = logging.getLogger(__name__)
__all__ = ["ClipTrainConfig", "kmeans", "train_clip"]
BATCH_MODES = ("random", "caption_clusters", "image_clusters", "word_groups")


@dataclass(frozen=True, kw_only=True)
class ClipTrainConfig:
    steps: int = 900
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 40
    precision: str = "auto"  # auto: bf16 where the CPU has AVX512-BF16/AMX, else fp32
    hard_negatives: bool = True  # False: random batches and no swapped captions
    batch_mode: str = "image_clusters"  # how hard batches are drawn once hard_start is reached
    hard_start: float = 0.5  # fraction of training after which hard-negative batches start
    hard_share: float = 0.5  # share of each batch drawn from clusters
    cluster_size: int = 0  # images per cluster (0: one cluster fills the hard share)
    recluster_every: int = 100  # image clusters only: re-embed and re-cluster this often
    #: word groups only: the word class a group's captions differ in (negatives.word_class_groups);
    #: measured with "shape" in docs/training.md (pair with cluster_size, e.g. 8 images per group)
    group_vary: str = "shape"
    text_negatives: float = 0.0  # share of captions that get a word-swapped negative
    augment: str = "none"  # "none" | "mirror" | "mirror_shift" (clipq.train.augment; measured in docs/training.md)
    #: weight of the caption-word loss: a linear head on the image embedding predicts which words its
    #: caption uses (multi-label, CapPa/VirTex-style bag of words); 0 turns it off. The head is used in
    #: training only and is not saved.
    word_loss: float = 0.0
    #: wall-clock budget of the run: after ``calibrate_steps`` steps the run measures its own step time
    #: and shortens itself to what fits (never beyond ``steps``); the schedule, ``hard_start`` and the
    #: warm-up follow the new length. None: exactly ``steps`` steps, on any machine.
    max_seconds: float | None = None
    calibrate_steps: int = 20
    seed: int = 0
    log_every: int = 20


def _sample_batch(
    rng: np.random.Generator, n: int, bs: int, clusters: list[np.ndarray] | None, share: float,
    per_cluster: int = 0,
) -> np.ndarray:
    """``bs`` distinct indices of ``range(n)``: ``share`` of them from clusters, the rest at random.

    ``per_cluster`` = 0 takes the whole hard share from one cluster; otherwise each cluster drawn adds
    up to ``per_cluster`` members until the hard share is full.
    """
    if clusters is None:
        return rng.choice(n, size=bs, replace=False)
    want = int(bs * share)
    hard: list[int] = []
    taken: set[int] = set()
    for _ in range(4 * len(clusters)):
        if len(hard) >= want:
            break
        c = clusters[rng.integers(len(clusters))]
        room = min(want - len(hard), len(c) if per_cluster <= 0 else per_cluster)
        pick = [int(i) for i in rng.permutation(c) if int(i) not in taken][:room]
        hard += pick
        taken.update(pick)
        if per_cluster <= 0:
            break
    hard_arr = np.asarray(hard, dtype=np.int64)
    rest = rng.choice(np.setdiff1d(np.arange(n), hard_arr), size=bs - len(hard_arr), replace=False)
    return np.concatenate([hard_arr, rest])


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
              neg: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP; optional extra text negatives ``neg`` [M, D] (NegCLIP).

    ``img``/``txt`` [B, D] are the matching pairs. Each extra negative counts for every image in the
    image -> text direction; the text -> image direction is CLIP's own.
    """
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    s = scale.float()
    logits = s * img @ txt.T  # [B, B]
    labels = torch.arange(len(img))
    i2t = logits
    if neg is not None and len(neg):
        i2t = torch.cat([logits, s * img @ F.normalize(neg.float(), dim=-1).T], dim=1)  # [B, B+M]
    return 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(logits.T, labels))


class CaptionWords:
    """The caption-word loss: which of the training captions' word pieces does an image's caption use?

    Why: the contrastive loss is satisfied once a batch's captions can be told apart, and on the
    embedded world colour, place and count already do that, so CLIP never learns what the rarest
    visual cue (a shape's kind) looks like. Predicting the caption's words from the image (a bag of
    words, as the captioning objectives of VirTex and CapPa) asks for every word in every step; it
    needs no labels beyond the captions, so real caption sets get it too.
    """

    def __init__(self, tok, captions: list[str], dim: int) -> None:
        self.tok = tok
        vocab = sorted({i for e in self._encode(captions) for i in e})
        self.column = {i: j for j, i in enumerate(vocab)}
        self.head = torch.nn.Linear(dim, len(vocab))

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def targets(self, texts: list[str]) -> torch.Tensor:
        """Multi-hot [B, V] of the word pieces each text uses (pieces no training caption has are ignored)."""
        out = torch.zeros(len(texts), len(self.column))
        for r, ids in enumerate(self._encode(texts)):
            cols = [self.column[i] for i in ids if i in self.column]
            out[r, cols] = 1.0
        return out

    def loss(self, img: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Binary cross-entropy of the head's word logits on the unit image embeddings, summed over words."""
        logits = self.head(F.normalize(img.float(), dim=-1) * 10.0)
        return F.binary_cross_entropy_with_logits(logits, self.targets(texts), reduction="sum") / len(img)


def train_clip(
    data: str,
    out: str,
    *,
    preset: str = "tiny",
    pretrained: str | None = None,
    cfg: ClipTrainConfig | None = None,
    threads: int | None = None,
    progress: bool = True,
    monitor: Callable[[int, torch.nn.Module], dict] | None = None,
    monitor_every: int = 0,
    fit_steps: Callable[[float], int] | None = None,
) -> dict:
    """Train CLIP contrastively on the captions of ``data`` and write it to the artifacts ``out``.

    Args:
        data: world / dataset root (see ``clipq.readers.World``).
        out: artifact directory (created; its manifest is updated).
        preset: model preset for random initialisation; ``pretrained`` loads a real checkpoint instead.
        cfg: training settings.
        monitor: called as ``monitor(step, clip)`` every ``monitor_every`` steps and at the end (for
            learning curves); what it returns is recorded in the summary.
        fit_steps: called once with the measured seconds per step after ``cfg.calibrate_steps``
            steps; returns how many steps to run (capped at ``cfg.steps``). A budget for a whole
            pipeline (``TrainSettings.train_seconds``); ``cfg.max_seconds`` is CLIP's own.
    Returns:
        summary dict (steps, seconds, steps/s, precision, loss curve, final loss).
    Raises:
        ClipqError: an unknown batch mode or precision.
    """
    from clipq.runtime.errors import ClipqError

    cfg = cfg or ClipTrainConfig()
    if cfg.batch_mode not in BATCH_MODES:
        raise ClipqError(f"unknown batch mode {cfg.batch_mode!r}; choose from {', '.join(BATCH_MODES)}")
    if cfg.group_vary not in VARY_CLASSES:
        raise ClipqError(f"unknown group_vary {cfg.group_vary!r}; choose from {', '.join(VARY_CLASSES)}")
    if cfg.augment not in AUGMENTS:
        raise ClipqError(f"unknown augmentation {cfg.augment!r}; choose from {', '.join(AUGMENTS)}")
    n_threads = set_threads(threads)
    precision = resolve_precision(cfg.precision)
    seed_everything(cfg.seed)
    m, clip = init_clip_artifacts(out, preset, pretrained)
    channels_last(clip)
    size = m.preprocessing["size"]
    train = load_split(str(data), "train", size)
    tok = load_tokenizer(m, "clip")
    rng = np.random.default_rng(cfg.seed)
    missing = [train.image_ids[i] for i, c in enumerate(train.captions) if not c]
    if missing:
        log.warning("%d images have no caption and are skipped (e.g. %s)", len(missing), missing[0])
    usable = np.array([i for i, c in enumerate(train.captions) if c])
    bs = min(cfg.batch_size, len(usable))

    decay = [p for nme, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in nme]
    no_decay = [p for nme, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in nme)]
    words = CaptionWords(tok, [t for c in train.captions for t in c], clip.config.projection_dim) if cfg.word_loss else None
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if words is not None:
        groups.append({"params": list(words.head.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    plan = _Plan(cfg, fit_steps)
    sched = cosine_with_warmup(opt, lambda: plan.total, cfg.warmup)
    clip.train()
    clusters = None
    t0 = time.perf_counter()
    losses: list[float] = []
    curve: list[dict] = []
    monitored: list[dict] = []
    bar = tqdm(total=cfg.steps, desc="train clip", disable=not progress, mininterval=1.0)
    step = -1
    while step + 1 < plan.total:
        step += 1
        bar.update(1)
        hard_from = plan.hard_from
        if step >= hard_from and (
            clusters is None or (cfg.batch_mode == "image_clusters" and (step - hard_from) % cfg.recluster_every == 0)
        ):
            clusters = _clusters(clip, train, usable, bs, cfg, step, precision)
        picked = _sample_batch(rng, len(usable), bs, clusters, cfg.hard_share, cfg.cluster_size)
        idx = usable[picked]
        texts = [train.captions[i][rng.integers(len(train.captions[i]))] for i in idx]
        pixels, texts = augment_batch(train.pixels[idx], texts, rng, cfg.augment)
        negs: list[str] = []  # each counts as a negative for every image of the batch (clip_loss)
        if cfg.hard_negatives and cfg.text_negatives > 0:
            chosen = np.flatnonzero(rng.random(len(texts)) < cfg.text_negatives)
            negs, _ = swapped_captions([texts[i] for i in chosen], rng)
        input_ids, attention_mask = tokenize(tok, texts + negs)  # padded to the batch's longest
        with autocast(precision):
            img = image_features(clip, pixels)
            txt = text_features(clip, input_ids, attention_mask)
        loss = clip_loss(img, txt[: len(texts)], clip.logit_scale.exp(), txt[len(texts):] if negs else None)
        if words is not None:
            loss = loss + cfg.word_loss * words.loss(img, texts)
        contrastive_step(opt, sched, loss, clip)
        losses.append(loss.item())
        plan.measured(step + 1, time.perf_counter() - t0)
        if plan.total != bar.total:
            bar.total = plan.total
            bar.refresh()
        if (step + 1) % cfg.log_every == 0 or step + 1 == plan.total:
            recent = float(np.mean(losses[-cfg.log_every:]))
            curve.append({"step": step + 1, "loss": round(recent, 4), "s": round(time.perf_counter() - t0, 1)})
            bar.set_postfix(loss=f"{recent:.3f}")
        if monitor is not None and monitor_every and (step + 1) % monitor_every == 0 and step + 1 < plan.total:
            monitored.append({"step": step + 1, "s": round(time.perf_counter() - t0, 1), **_monitor(monitor, step + 1, clip)})
    bar.close()
    seconds = time.perf_counter() - t0
    steps = plan.total
    clip.eval()
    if monitor is not None:
        monitored.append({"step": steps, "s": round(seconds, 1), **_monitor(monitor, steps, clip)})
    save_clip(m, clip)
    summary = {
        "steps": steps, "steps_planned": cfg.steps, "max_seconds": cfg.max_seconds,
        "budgeted": cfg.max_seconds is not None or fit_steps is not None,
        "calibrated_s_per_step": None if plan.per_step is None else round(plan.per_step, 4), "batch_size": bs,
        "seconds": round(seconds, 1), "hard_from_step": plan.hard_from if cfg.hard_negatives else None,
        "steps_per_s": round(steps / max(seconds, 1e-9), 3), "precision": precision, "threads": n_threads,
        "final_loss": round(float(np.mean(losses[-20:])), 4), "hard_negatives": cfg.hard_negatives,
        "train_images": len(train.image_ids), "config": asdict(cfg), "loss_curve": curve,
    }
    if monitored:
        summary["monitor"] = monitored
    m.extra.setdefault("training", {})["clip"] = summary
    m.save()
    return summary


class _Plan:
    """The run's length: ``cfg.steps``, or what fits ``cfg.max_seconds`` and/or ``fit`` (a caller's
    budget, given the measured seconds per step) once the first ``cfg.calibrate_steps`` steps have
    been timed; decided once, and ``hard_from`` follows it."""

    def __init__(self, cfg: ClipTrainConfig, fit: Callable[[float], int] | None = None) -> None:
        self.cfg = cfg
        self.total = cfg.steps
        self.fit = fit
        self.decided = cfg.max_seconds is None and fit is None
        self.per_step: float | None = None
        self.warm_elapsed: float | None = None

    WARM = 2  # steps before the calibration's clock starts

    @property
    def hard_from(self) -> int:
        c = self.cfg
        return int(c.hard_start * self.total) if c.hard_negatives else self.total + 1

    def measured(self, done: int, elapsed: float) -> None:
        c = self.cfg
        if done == self.WARM:  # the first steps set up oneDNN's kernels: timed apart, not in the rate
            self.warm_elapsed = elapsed
        if self.decided or done < min(c.calibrate_steps, c.steps):
            return
        self.decided = True
        if self.warm_elapsed is not None and done > self.WARM:
            per_step = (elapsed - self.warm_elapsed) / (done - self.WARM)
        else:
            per_step = elapsed / max(1, done)
        self.per_step = per_step
        fits = c.steps if self.fit is None else int(self.fit(per_step))
        if c.max_seconds is not None:
            fits = min(fits, int(float(c.max_seconds) / max(per_step, 1e-9)))
        # at least one step past calibration and past the warm-up, so the cosine still decays
        self.total = max(done + 1, min(c.steps, max(fits, c.warmup + 1)))
        if self.total < c.steps:
            log.info("CLIP: %.3f s per step: %d of %d steps fit the budget", per_step, self.total, c.steps)


def _monitor(fn: Callable[[int, torch.nn.Module], dict], step: int, clip: torch.nn.Module) -> dict:
    was = clip.training
    clip.eval()
    try:
        return dict(fn(step, clip))
    finally:
        clip.train(was)


def _clusters(clip, train, usable: np.ndarray, bs: int, cfg: ClipTrainConfig, step: int,
              precision: str) -> list[np.ndarray]:
    """Clusters of training images (as positions in ``usable``) for hard-negative batches."""
    size = cfg.cluster_size or bs
    if cfg.batch_mode == "caption_clusters":
        return caption_clusters([train.captions[i] for i in usable], size, seed=cfg.seed)
    if cfg.batch_mode == "word_groups":
        groups = word_class_groups([train.captions[i] for i in usable], cfg.group_vary)
        if not groups:  # an empty list (not None) so the captions are grouped once, not every step
            log.warning("no groups of captions that differ only in %s words: random batches instead", cfg.group_vary)
        return groups
    if cfg.batch_mode == "random":
        return None  # type: ignore[return-value]
    return _image_clusters(clip, train.pixels[usable], size, cfg.seed + step, precision)


@torch.inference_mode()
def _image_clusters(clip, pixels: torch.Tensor, size: int, seed: int, precision: str) -> list[np.ndarray]:
    was = clip.training
    clip.eval()
    with autocast(precision):
        emb = torch.cat([image_features(clip, pixels[i : i + 512]).float()
                         for i in range(0, len(pixels), 512)])
    clip.train(was)
    k = max(2, len(pixels) // max(size, 1))
    labels = kmeans(F.normalize(emb, dim=-1), k, seed=seed).numpy()
    return [np.flatnonzero(labels == j) for j in range(k) if (labels == j).sum() >= 4]
