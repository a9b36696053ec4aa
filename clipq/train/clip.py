"""Contrastive CLIP training on captions, with optional hard-negative batches (seed "Can CLIP read?").

Hard negatives: image embeddings of the current model are clustered (k-means), and a share of each
batch is drawn from one cluster, so the contrastive loss has to separate images that look alike
(same colour and kind, different count or place) instead of the easy ones a random batch holds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipq.models.io import init_clip_artifacts, load_tokenizer, save_clip, tokenize

from .common import cosine_with_warmup, seed_everything, set_threads
from .data import load_split

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClipTrainConfig:
    steps: int = 900
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 40
    hard_negatives: bool = True
    hard_start: float = 0.5  # fraction of training after which hard-negative batches start
    hard_share: float = 0.5  # share of each batch drawn from one cluster
    recluster_every: int = 100
    seed: int = 0


def kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0) -> torch.Tensor:
    """Cluster assignment of rows of ``x`` (cosine k-means). Returns labels [N]."""
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    labels = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iters):
        labels = (x @ centers.T).argmax(1)
        for j in range(k):
            sel = x[labels == j]
            if len(sel):
                centers[j] = F.normalize(sel.mean(0), dim=0)
    return labels


def _sample_batch(
    rng: np.random.Generator, n: int, bs: int, clusters: list[np.ndarray] | None, share: float
) -> np.ndarray:
    if clusters is None:
        return rng.choice(n, size=bs, replace=False)
    c = clusters[rng.integers(len(clusters))]
    hard = rng.choice(c, size=min(len(c), int(bs * share)), replace=False)
    rest = rng.choice(np.setdiff1d(np.arange(n), hard), size=bs - len(hard), replace=False)
    return np.concatenate([hard, rest])


def train_clip(
    data: str,
    out: str,
    *,
    preset: str = "tiny",
    pretrained: str | None = None,
    cfg: ClipTrainConfig | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Train CLIP contrastively on the captions of ``data`` and write it to the artifacts ``out``.

    Args:
        data: world / dataset root (see ``clipq.readers.World``).
        out: artifact directory (created; its manifest is updated).
        preset: model preset for random initialisation; ``pretrained`` loads a real checkpoint instead.
        cfg: training settings.
    Returns:
        summary dict (steps, seconds, final loss).
    """
    cfg = cfg or ClipTrainConfig()
    set_threads(threads)
    seed_everything(cfg.seed)
    m, clip = init_clip_artifacts(out, preset, pretrained)
    size = m.preprocessing["size"]
    train = load_split(str(data), "train", size)
    tok = load_tokenizer(m, "clip")
    rng = np.random.default_rng(cfg.seed)
    n = len(train.image_ids)
    bs = min(cfg.batch_size, n)
    # captions tokenised once, padded to one length: per image, the rows of its phrasings
    flat = [c for caps in train.captions for c in caps]
    all_ids, all_mask = tokenize(tok, flat) if flat else (torch.zeros(0, 1, dtype=torch.long),) * 2
    cap_ids, start = [], 0
    for caps in train.captions:
        cap_ids.append((all_ids[start : start + len(caps)], all_mask[start : start + len(caps)]) if caps else None)
        start += len(caps)
    missing = [train.image_ids[i] for i, c in enumerate(cap_ids) if c is None]
    if missing:
        log.warning("%d images have no caption and are skipped (e.g. %s)", len(missing), missing[0])
    usable = np.array([i for i, c in enumerate(cap_ids) if c is not None])

    decay = [p for nme, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in nme]
    no_decay = [p for nme, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in nme)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    sched = cosine_with_warmup(opt, cfg.steps, cfg.warmup)
    clip.train()
    clusters = None
    t0 = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="train clip", disable=not progress, mininterval=1.0)
    for step in bar:
        if cfg.hard_negatives and step >= cfg.hard_start * cfg.steps and (
            clusters is None or (step - int(cfg.hard_start * cfg.steps)) % cfg.recluster_every == 0
        ):
            clusters = _clusters(clip, train.pixels[usable], bs, cfg.seed + step)
            clusters = [usable[c] for c in clusters]
        idx = usable[_sample_batch(rng, len(usable), bs, None, 0)] if clusters is None else _sample_batch(
            rng, n, bs, clusters, cfg.hard_share
        )
        idx = np.array([i for i in idx if cap_ids[i] is not None])
        ids_list, mask_list = [], []
        for i in idx:
            ids, mask = cap_ids[i]
            j = rng.integers(ids.shape[0])
            ids_list.append(ids[j])
            mask_list.append(mask[j])
        length = int(max(int(mk.sum()) for mk in mask_list))
        input_ids = torch.stack([x[:length] for x in ids_list])
        attention_mask = torch.stack([x[:length] for x in mask_list])
        outputs = clip(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=train.pixels[idx], return_loss=True
        )
        loss = outputs.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():  # as in CLIP: the temperature may not exceed 100
            clip.logit_scale.clamp_(0, 4.6052)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    clip.eval()
    save_clip(m, clip)
    summary = {
        "steps": cfg.steps, "batch_size": bs, "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": round(float(np.mean(losses[-20:])), 4), "hard_negatives": cfg.hard_negatives,
        "train_images": n,
    }
    m.extra.setdefault("training", {})["clip"] = summary
    m.save()
    return summary


@torch.inference_mode()
def _clusters(clip, pixels: torch.Tensor, bs: int, seed: int) -> list[np.ndarray]:
    was = clip.training
    clip.eval()
    emb = torch.cat([F.normalize(clip.get_image_features(pixel_values=pixels[i : i + 512]), dim=-1)
                     for i in range(0, len(pixels), 512)])
    clip.train(was)
    k = max(2, len(pixels) // max(bs, 1))
    labels = kmeans(emb, k, seed=seed).numpy()
    return [np.flatnonzero(labels == j) for j in range(k) if (labels == j).sum() >= 4]
