"""Image -> prompt embedding (seed 2401.06167): Model A, Model B (KNN) and their ensemble.

Targets are real all-MiniLM-L6-v2 sentence embeddings of the prompts (mean pooling, normalised).
Training pairs whose CLIP image-prompt cosine falls below ``filter_threshold`` are dropped, as in the
paper, where noisy scraped pairs hurt; the share dropped is reported.
Model A: the trained CLIP vision tower + FC1/LN/FC2/LN head, a small LR on the tower and a larger one
on the head, cosine loss. Model B: KNN over CLIP image embeddings of the training images (HNSW, in the
runtime), distance-weighted mean of the neighbours' prompt embeddings. alpha and K are tuned on val.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipq.models.factory import image_features
from clipq.models.img2prompt import PromptRegressorA
from clipq.models.io import load_clip, load_tokenizer, save_img2prompt, tokenize
from clipq.models.prompt_encoder import SentenceEncoder
from clipq.runtime.errors import DataFormatError
from clipq.runtime.manifest import Manifest
from clipq.runtime.metrics import mean_cosine

from .common import (
    autocast,
    batched,
    channels_last,
    cosine_with_warmup,
    encode_texts,
    resolve_precision,
    seed_everything,
    set_threads,
)
from .data import load_split

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
KS = (1, 3, 5, 10, 20, 50)


@dataclass(frozen=True, kw_only=True)
class Img2PromptConfig:
    epochs: int = 4
    batch_size: int = 128
    backbone_lr: float = 1e-4
    head_lr: float = 1e-3
    #: CLIP image-prompt cosine below which a training pair is dropped; "auto": the sweep's best on val;
    #: None: no filter
    filter_threshold: float | str | None = "auto"
    #: the sweep's thresholds: the cosines below which these shares of the training pairs fall
    sweep_drop_shares: tuple[float, ...] = (0.05, 0.15, 0.3, 0.5)
    sweep_epochs: int = 6  # head-only Model A in the sweep
    knn_weighting: str = "inverse_distance"
    precision: str = "auto"
    seed: int = 0


@torch.inference_mode()
def prompt_embeddings(m: Manifest, prompts: list[str], encoder: SentenceEncoder | None = None) -> torch.Tensor:
    """The all-MiniLM-L6-v2 targets of ``prompts`` (normalised, in their order).

    Batches are drawn in order of token length and cut to their longest prompt: a batch in the given
    order pads every prompt to the longest of 256 (the demo's 11-21 word prompts; docs/training.md#the-training-plan).
    """
    enc = encoder or SentenceEncoder.pretrained()
    tok = load_tokenizer(m, "prompt")
    if not prompts:
        return enc(*tokenize(tok, [""]))[:0]
    ids, mask = tokenize(tok, prompts)  # padded to the longest prompt of all
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    parts = []
    for i in range(0, len(prompts), 256):
        idx = order[i : i + 256]
        n = int(lengths[idx].max())
        parts.append(enc(ids[idx, :n], mask[idx, :n]))
    out = torch.cat(parts)
    return out[torch.argsort(order)]  # back to the prompts' order


def _require_prompts(split) -> list[str]:
    missing = [i for i, p in zip(split.image_ids, split.prompts) if not p]
    if missing:
        raise DataFormatError(f"{len(missing)} {split.name} images have no prompt (first: {missing[0]})")
    return list(split.prompts)


def _mismatched_ids(data: str) -> set[str] | None:
    """The synthetic world's answer key of wrong training prompts (None for real data)."""
    from pathlib import Path

    p = Path(data) / "prompts" / "train_mismatched.txt"
    return set(p.read_text(encoding="utf-8").split()) if p.is_file() else None


def _head_only_a(feats_tr: torch.Tensor, y_tr: torch.Tensor, keep: np.ndarray, feats: list[torch.Tensor],
                 cfg: Img2PromptConfig) -> list[np.ndarray]:
    """Model A's head on the frozen tower's features, trained on the ``keep`` pairs (the sweep's cheap A)."""
    torch.manual_seed(cfg.seed)
    head = PromptRegressorA.make_head(feats_tr.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=0.01, fused=True)
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.sweep_epochs):
        order = rng.permutation(keep)
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[i : i + cfg.batch_size])
            pred = F.normalize(head(feats_tr[idx]), dim=-1)
            loss = (1 - (pred * y_tr[idx]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.inference_mode():
        return [F.normalize(head(f), dim=-1).numpy() for f in feats]


def filter_sweep(sims: np.ndarray, thresholds: list[float | None], *, feats: tuple[torch.Tensor, ...],
                 embeds: tuple[np.ndarray, ...], y: tuple[torch.Tensor, ...], prompts: list[str],
                 cfg: Img2PromptConfig, wrong: np.ndarray | None) -> list[dict]:
    """Per threshold: share kept, share of wrong pairs dropped, and val/test mean cosine of B (K = 10),
    of A with a frozen tower (head only) and of their mean (alpha 0.5)."""
    from clipq.runtime.fusion import KnnPromptFusion, ensemble

    f_tr, f_va, f_te = feats
    e_tr, e_va, e_te = embeds
    y_tr, y_va, y_te = y
    rows = []
    for th in thresholds:
        keep = np.arange(len(sims)) if th is None else np.flatnonzero(sims >= th)
        if len(keep) < max(10, 0.05 * len(sims)):
            continue
        b = KnnPromptFusion.from_embeddings(e_tr[keep], y_tr.numpy()[keep], [prompts[i] for i in keep], k=10,
                                            weighting=cfg.knn_weighting)
        a_va, a_te = _head_only_a(f_tr, y_tr, keep, [f_va, f_te], cfg)
        b_va, b_te = b.predict(e_va), b.predict(e_te)
        row = {"threshold": th, "kept": int(len(keep)), "kept_share": round(len(keep) / len(sims), 4)}
        if wrong is not None and wrong.any():
            dropped = np.ones(len(sims), bool)
            dropped[keep] = False
            row["wrong_dropped"] = round(float(dropped[wrong].mean()), 4)
            row["right_dropped"] = round(float(dropped[~wrong].mean()), 4)
        for split, a_, b_, t in (("val", a_va, b_va, y_va), ("test", a_te, b_te, y_te)):
            t = t.numpy()
            row[split] = {"A_head": mean_cosine(a_, t), "B": mean_cosine(b_, t),
                          "ensemble": mean_cosine(ensemble(a_, b_, 0.5), t)}
        rows.append(row)
    return rows


def train_img2prompt(data: str, artifacts: str, *, cfg: Img2PromptConfig | None = None,
                     threads: int | None = None, progress: bool = True) -> dict:
    """Sweep the cosine filter, train Model A, build Model B's KNN store in ``knn/``, sweep alpha and K
    on val, score test. With ``filter_threshold="auto"`` the threshold is the sweep's best on val."""
    cfg = cfg or Img2PromptConfig()
    set_threads(threads)
    seed_everything(cfg.seed)
    precision = resolve_precision(cfg.precision)
    m = Manifest.load(artifacts)
    size = m.preprocessing["size"]
    tr, va, te = (load_split(data, s, size) for s in ("train", "val", "test"))
    p_tr, p_va, p_te = _require_prompts(tr), _require_prompts(va), _require_prompts(te)
    t0 = time.perf_counter()
    phases: dict[str, float] = {}  # seconds per phase: where the fixed costs are (docs/training.md#the-training-plan)

    def phase(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = round(now - since, 1)
        return now

    encoder = SentenceEncoder.pretrained()
    y_tr, y_va, y_te = (prompt_embeddings(m, p, encoder) for p in (p_tr, p_va, p_te))
    t1 = phase("prompt_targets", t0)
    clip = channels_last(load_clip(m).eval())
    # CLIP's projected image features (Model A's head input) and their normalised form (CLIP's embedding)
    feats = tuple(batched(lambda x: image_features(clip, x), s.pixels)
                  for s in (tr, va, te))
    e_tr, e_va, e_te = (F.normalize(f, dim=-1) for f in feats)
    t1 = phase("image_features", t1)

    # the cosine filter (CLIP image vs prompt), swept over thresholds at the quantiles of the cosines
    sims = (e_tr.numpy() * encode_texts(clip, load_tokenizer(m, "clip"), p_tr)).sum(-1)
    wrong_ids = _mismatched_ids(data)
    wrong = np.array([i in wrong_ids for i in tr.image_ids]) if wrong_ids is not None else None
    grid = [None] + sorted({round(float(np.quantile(sims, q)), 3) for q in cfg.sweep_drop_shares})
    table = filter_sweep(sims, grid, feats=feats, embeds=(e_tr.numpy(), e_va.numpy(), e_te.numpy()),
                         y=(y_tr, y_va, y_te), prompts=p_tr, cfg=cfg, wrong=wrong)
    if cfg.filter_threshold == "auto":
        chosen = max(table, key=lambda r: r["val"]["ensemble"])["threshold"]
    else:
        chosen = cfg.filter_threshold
    keep = np.arange(len(p_tr)) if chosen is None else np.flatnonzero(sims >= float(chosen))
    t1 = phase("filter_sweep", t1)
    if len(keep) < 0.2 * len(p_tr):  # a threshold that leaves too little data is a setting error
        keep = np.argsort(-sims)[: max(1, int(0.2 * len(p_tr)))]
    filt = {"threshold": chosen, "kept": int(len(keep)), "total": len(p_tr),
            "chosen_on": "val" if cfg.filter_threshold == "auto" else "setting", "sweep": table}
    if wrong is not None:
        filt["mismatched_in_train"] = int(wrong.sum())
        filt["mismatched_kept"] = int(wrong[keep].sum())

    # Model A: a copy of the trained CLIP tower (CLIP itself stays as trained for the other tasks)
    model = PromptRegressorA(copy.deepcopy(clip))
    opt = torch.optim.AdamW(
        [{"params": model.backbone_parameters(), "lr": cfg.backbone_lr},
         {"params": model.head.parameters(), "lr": cfg.head_lr}],
        weight_decay=0.01, fused=True,
    )
    steps_per_epoch = max(1, int(np.ceil(len(keep) / cfg.batch_size)))
    sched = cosine_with_warmup(opt, cfg.epochs * steps_per_epoch, warmup=max(1, steps_per_epoch // 4))
    rng = np.random.default_rng(cfg.seed)
    model.train()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="train img2prompt A", disable=not progress, mininterval=1.0)
    for _ in range(cfg.epochs):
        order = rng.permutation(keep)
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[i : i + cfg.batch_size])
            with autocast(precision):
                pred = model(tr.pixels[idx])
            loss = (1 - (pred.float() * y_tr[idx]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    model.eval()
    save_img2prompt(m, model)
    a_va = batched(model, va.pixels).numpy()
    a_te = batched(model, te.pixels).numpy()
    t1 = phase("model_a", t1)

    # Model B on the runtime's HNSW index, built from the kept training pairs
    from clipq.runtime.fusion import Img2PromptSettings, KnnPromptFusion, ensemble
    from clipq.runtime.sweep import sweep

    fusion = KnnPromptFusion.from_embeddings(
        e_tr.numpy()[keep], y_tr.numpy()[keep], [p_tr[i] for i in keep], ids=[tr.image_ids[i] for i in keep],
        model_id=m.extra.get("clip_model_id"), k=10, weighting=cfg.knn_weighting,
    )
    table = sweep(a_va, fusion.predict_many_k(e_va.numpy(), KS), y_va.numpy(), ALPHAS)
    best = table.best
    settings = Img2PromptSettings(alpha=best.alpha, k=best.k, weighting=cfg.knn_weighting)
    fusion.settings = settings
    knn_dir = m.root / "knn"
    if knn_dir.exists():
        shutil.rmtree(knn_dir)
    fusion.save(knn_dir)
    m.add_tree("knn")
    b_te = fusion.predict(e_te.numpy())
    phase("model_b_and_sweep", t1)
    y = y_te.numpy()
    result = {
        "A": mean_cosine(a_te, y), "B": mean_cosine(b_te, y),
        "ensemble": mean_cosine(ensemble(a_te, b_te, best.alpha), y),
        "alpha": best.alpha, "k": best.k, "filter": filt, "sweep_val": table.to_dict(),
        "sweep_val_markdown": table.to_markdown(), "seconds": round(time.perf_counter() - t0, 1),
        "precision": precision, "phases_s": phases, "epochs": cfg.epochs,
    }
    settings.store(m)
    m.metrics["img2prompt"] = result
    m.save()
    return result
